"""The delayed executor: plans and starts delayed plans when they are due (spec §1.8).

One world of a cluster runs it: the one holding the ``delayed-executor`` lock (a coordinator
record). A world takes the lock over when its owner is dead: the owner's world record is gone
(recovery removed it), its process on this host is gone, or its heartbeat is older than
``world_timeout``. Every ``delayed_executor_interval`` seconds (or earlier: at the next known
``start_at``, when a plan is delayed here, when a prerequisite of a chained plan stops here) the
holder:

* reads the ready records with their plan's state (one query);
* drops the records whose plan is no longer ``scheduled`` (or ``planning``);
* puts plans left in ``planning`` by a dead world back to ``scheduled`` (the repair after a
  crash) and plans them;
* plans the ``scheduled`` ones (``delayed.plan_delayed``: guarded, so never twice).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import delayed
from .coordinator import DELAYED_EXECUTOR_ID, DELAYED_EXECUTOR_LOCK, PLANNING_LOCK, WORLD_RECORD
from .recovery import _pid_alive
from .serialization import utcnow

if TYPE_CHECKING:
    from .world import World

log = logging.getLogger("dynflow.delayed")


def world_alive(world: World, record: dict[str, Any]) -> bool:
    """Is the world of this ``ExecutorWorld`` record alive? (Its process runs on this host, or
    its heartbeat is recent.)"""
    data = record.get("data") or {}
    meta = data.get("meta") or {}
    if meta.get("hostname") == socket.gethostname():
        pid = meta.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and not _pid_alive(pid):
            return False
    last_seen = data.get("last_seen_epoch")
    if not isinstance(last_seen, int | float):
        return False
    return time.time() - last_seen <= world.config.world_timeout


class DelayedExecutor:
    def __init__(self, world: World) -> None:
        self.world = world
        self.holding = False
        self.batch_size = 500
        self.planning: set[str] = set()  # plans being planned by this world right now
        self._wakeup: asyncio.Event | None = None
        self._wake_at = 0.0  # epoch seconds of the next planned tick
        self._waited_on: set[str] = set()  # prerequisites of waiting chained plans

    # ---- the lock --------------------------------------------------------------------------------
    async def _alive(self, owner: str) -> bool:
        if owner == self.world.id:
            return True
        records = await self.world.store.find_records(cls=WORLD_RECORD, record_id=owner)
        return bool(records) and world_alive(self.world, records[0])

    async def hold(self) -> bool:
        """Take (or keep) the ``delayed-executor`` lock; True if this world holds it."""
        store = self.world.store
        world_id = self.world.id
        data = {"world_id": world_id}
        records = await store.find_records(cls=DELAYED_EXECUTOR_LOCK, record_id=DELAYED_EXECUTOR_ID)
        if records and records[0]["owner_id"] == world_id:
            self.holding = True
            return True
        if self.holding:
            log.warning("world %s lost the delayed-executor lock", world_id)
            self.holding = False
        if records:
            owner = records[0]["owner_id"]
            if await self._alive(owner):
                return False
            log.warning(
                "world %s takes the delayed executor over from dead world %s", world_id, owner
            )
            await store.release_lock(DELAYED_EXECUTOR_LOCK, DELAYED_EXECUTOR_ID, owner)
        self.holding = await store.acquire_lock(
            DELAYED_EXECUTOR_LOCK, DELAYED_EXECUTOR_ID, world_id, data
        )
        if self.holding:
            log.info("world %s runs the delayed executor", world_id)
        return self.holding

    async def release(self) -> None:
        if self.holding:
            self.holding = False
            await self.world.store.release_lock(
                DELAYED_EXECUTOR_LOCK, DELAYED_EXECUTOR_ID, self.world.id
            )

    # ---- waking up -------------------------------------------------------------------------------
    def notify(self, start_at: datetime | None, prerequisites: Iterable[str]) -> None:
        """A plan was delayed (or unfrozen) here: tick earlier if it is due before the next tick."""
        if not self.holding or self._wakeup is None:
            return
        self._waited_on.update(prerequisites)
        if prerequisites:
            return  # it waits for those; plan_stopped wakes us
        due = time.time() if start_at is None else _epoch(start_at)
        if due < self._wake_at:
            self._wake_at = due
            self._wakeup.set()

    def plan_stopped(self, plan_id: str) -> None:
        """A plan stopped in this world: if chained plans wait for it, tick now."""
        if self.holding and self._wakeup is not None and plan_id in self._waited_on:
            self._waited_on.discard(plan_id)
            self._wake_at = time.time()
            self._wakeup.set()

    # ---- the loop --------------------------------------------------------------------------------
    async def loop(self, interval: float) -> None:
        self._wakeup = asyncio.Event()
        while True:
            # Until the next tick time is known, any notification wakes the loop up again (one
            # arriving while this round reads the database is not lost).
            self._wakeup.clear()
            self._wake_at = float("inf")
            more = False
            try:
                more = await self.tick()
            except Exception:  # try again next time
                log.exception("delayed executor failed")
            now = time.time()
            wake_at = now if more else now + interval
            if self.holding and not more:
                try:
                    wake_at = min(wake_at, await self._next_due(now))
                except Exception:
                    log.exception("delayed executor could not read the next start")
            self._wake_at = wake_at
            try:
                await asyncio.wait_for(self._wakeup.wait(), max(0.0, wake_at - time.time()))
            except TimeoutError:
                pass

    async def _next_due(self, now: float) -> float:
        store = self.world.store
        self._waited_on = await store.delayed.waited_on()
        start = await store.delayed.next_start(utcnow())
        if start is None:
            return float("inf")
        return max(now, _epoch(start))

    async def tick(self) -> bool:
        """One round; True if the batch was full (more may be ready)."""
        world = self.world
        if world.terminating or not await self.hold():
            return False
        store = world.store
        rows = await store.delayed.find_ready(utcnow(), self.batch_size)
        planning_owners: dict[str, str] | None = None
        to_plan: list[str] = []
        for row in rows:
            plan_id = row["execution_plan_id"]
            if plan_id in self.planning:
                continue
            state = row["state"]
            if state == "planning":
                if planning_owners is None:
                    planning_owners = {
                        (r.get("data") or {}).get("execution_plan_id", ""): r["owner_id"]
                        for r in await store.find_records(cls=PLANNING_LOCK)
                    }
                owner = planning_owners.get(plan_id)
                if owner is not None and owner != world.id and await self._alive(owner):
                    continue  # being planned by a live world
                if not await delayed.repair(world, plan_id, owner):
                    continue
                state = "scheduled"
            if state != "scheduled":
                log.info("dropping the delayed record of %s (plan is %s)", plan_id, state)
                await store.write(plan_id, [store.delayed.delete_stmt(plan_id)])
                continue
            to_plan.append(plan_id)
        if to_plan:
            await asyncio.gather(*(self.plan(plan_id) for plan_id in to_plan))
        return len(rows) >= self.batch_size

    async def plan(self, plan_id: str) -> asyncio.Future[Any] | None:
        """Plan and start one delayed plan in this world (once at a time per plan)."""
        if plan_id in self.planning:
            return None
        self.planning.add(plan_id)
        try:
            return await delayed.plan_delayed(self.world, plan_id)
        except Exception:  # left in planning; repaired on a later tick
            log.exception("planning delayed plan %s failed", plan_id)
            return None
        finally:
            self.planning.discard(plan_id)


def _epoch(naive_utc: datetime) -> float:
    """Epoch seconds of a naive UTC time (``timestamp()`` alone would read it as local time)."""
    return naive_utc.replace(tzinfo=UTC).timestamp()
