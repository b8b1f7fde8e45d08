"""Recovery at start: invalidate dead worlds, take over their plans, execute what waits (§5.4).

A world is dead when its record names this host and a process that no longer runs (or this
very process: an earlier incarnation), or when its heartbeat is older than ``world_timeout``.
Each plan it was executing gets its ``running`` steps failed with "Abnormal termination", the
history entry "terminate execution" and ``paused``; then the rescue strategy decides, and a plan
without errors is executed again here (its suspended steps re-run with no event). The run step
of an action class with ``rerun_on_recovery`` is not failed: it goes back to ``suspended`` and
re-runs with no event like the others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any, Protocol

from . import delayed, locks
from .coordinator import (
    EXECUTION_LOCK,
    PLANNING_LOCK,
    SINGLETON_LOCK,
    WORLD_OWNED_LOCKS,
    WORLD_RECORD,
    plan_owner,
)
from .errors import DynflowError, PlanUnreadable
from .step import FinalizeStep, RunStep, plain_error

if TYPE_CHECKING:
    from .execution_plan import ExecutionPlan
    from .persistence.store import Store

log = logging.getLogger("dynflow.recovery")


class RecoverySettings(Protocol):
    """How long a silent world is taken for alive (``WorldConfig`` is one)."""

    @property
    def world_timeout(self) -> float: ...


class RecoveringWorld(Protocol):
    """What recovery uses of the world that recovers (``dynflow.world.World`` is one)."""

    @property
    def id(self) -> str: ...
    @property
    def store(self) -> Store: ...
    @property
    def config(self) -> RecoverySettings: ...
    def is_running(self, plan_id: str) -> bool: ...
    async def run_hooks(self, plan: ExecutionPlan, state: str) -> None: ...
    async def execute(self, plan_id: str) -> asyncio.Future[ExecutionPlan]: ...


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_dead(world: RecoveringWorld, record: dict[str, Any]) -> bool:
    data = record.get("data") or {}
    meta = data.get("meta") or {}
    if meta.get("hostname") == socket.gethostname():
        pid = meta.get("pid")
        if isinstance(pid, int) and (pid == os.getpid() or not _pid_alive(pid)):
            return True
    last_seen = data.get("last_seen_epoch")
    if not isinstance(last_seen, int | float):
        return True
    return time.time() - last_seen > world.config.world_timeout


async def invalidate_dead_worlds(world: RecoveringWorld) -> int:
    store = world.store
    count = 0
    for record in await store.find_records(cls=WORLD_RECORD):
        if record["id"] == world.id or not is_dead(world, record):
            continue
        log.warning("world %s is gone; recovering its plans", record["id"])
        await store.release_lock(WORLD_RECORD, record["id"])
        count += 1
    live = {r["id"] for r in await store.find_records(cls=WORLD_RECORD)}
    for lock in await store.find_records(cls=EXECUTION_LOCK):
        if lock["owner_id"] in live:
            continue
        plan_id = (lock.get("data") or {}).get("execution_plan_id") or lock["id"].split(":", 1)[-1]
        await recover_plan(world, plan_id, lock)
    await _release_locks_of_dead_worlds(world, live)
    await locks.clean_orphaned_locks(world)
    return count


async def _release_locks_of_dead_worlds(world: RecoveringWorld, live: set[str]) -> None:
    """Release what worlds without a record held for themselves (as Dynflow's lock validity
    check): a delayed plan one left ``planning`` is scheduled again, its delayed-executor and
    cleaner locks are freed (a stale cleaner lock stopped every world from cleaning)."""
    store = world.store
    for cls in WORLD_OWNED_LOCKS:
        for record in await store.find_records(cls=cls):
            owner = record["owner_id"]
            if owner in live:
                continue
            if cls == PLANNING_LOCK:
                plan_id = (record.get("data") or {}).get("execution_plan_id")
                if isinstance(plan_id, str) and await delayed.repair(world, plan_id, owner):
                    continue
            log.warning("releasing %s %s of dead world %s", cls, record["id"], owner)
            await store.write(
                f"lock:{record['id']}", [store.release_lock_stmt(cls, record["id"], owner)]
            )


async def recover_plan(world: RecoveringWorld, plan_id: str, lock: dict[str, Any]) -> None:
    store = world.store
    release = store.release_lock_stmt(EXECUTION_LOCK, lock["id"], lock["owner_id"])
    try:
        plan = await store.load_plan(plan_id, world)
    except PlanUnreadable as exc:
        # Its rows stay as they are, for an admin to look at; it is not recovered again.
        log.error("cannot recover plan %s of a dead world: %s", plan_id, exc)
        await store.write(plan_id, [release])
        return
    if plan is None:  # its planning died before it was stored: its singletons are free too
        singletons = store.release_locks_of_owner_stmt(SINGLETON_LOCK, plan_owner(plan_id))
        await store.write(plan_id, [release, singletons])
        return
    stmts = []
    for step in plan.steps.values():
        if step.state == "running":
            if isinstance(step, RunStep) and _reruns(plan, step):
                step.state = "suspended"
                stmts.append(store.update_step_stmt(step))
                continue
            step.state = "error"
            step.error = plain_error(
                "Abnormal termination (previous state: running)", "Dynflow::Errors::FatalError"
            )
            stmts.append(store.update_step_stmt(step))
    if plan.state == "running":
        plan.set_state("paused", history="terminate execution", world_id=lock["owner_id"])
    stmts.append(store.update_plan_stmt(plan))
    # Guarded on the dead world's lock: another world recovering the same plan at the same
    # time (it read the plan too) wins or loses as a whole; the loser leaves the plan alone.
    release.guard = True
    stmts.append(release)
    stmts.extend(locks.end_stmts(store, plan, plan.state))
    if not await store.write(plan.id, stmts):
        log.info("plan %s was recovered by another world", plan.id)
        return
    log.warning("plan %s recovered from a dead world (%s)", plan.id, plan.result)
    if plan.state != "paused":
        return
    if plan.failed_steps():  # as Dynflow's invalidation: the rescue strategy, auto_rescue or not
        strategy = plan.rescue_strategy()
        if strategy == "skip":
            stmts = []
            for step in plan.failed_steps():
                if isinstance(step, RunStep):
                    step.set_state("skipping")
                    stmts.append(store.update_step_stmt(step))
                elif isinstance(step, FinalizeStep):  # as the executor's rescue does (§1.6)
                    step.set_state("skipped")
                    stmts.append(store.update_step_stmt(step))
            await store.write(plan.id, stmts)
        elif strategy == "fail":
            plan.set_state("stopped", world_id=world.id)
            await store.write(
                plan.id,
                [
                    store.update_plan_stmt(plan),
                    store.delete_plan_events_stmt(plan.id),  # a stopped plan waits for nothing
                    *locks.end_stmts(store, plan, "stopped"),
                ],
            )
            await world.run_hooks(plan, "stopped")
            return
        else:
            await world.run_hooks(plan, "paused")
            return
    try:
        await world.execute(plan.id)
    except DynflowError as exc:
        log.warning("could not execute recovered plan %s: %s", plan.id, exc)


def _reruns(plan: Any, step: RunStep) -> bool:
    action = plan.actions.get(step.action_id)
    return action is not None and bool(type(action).rerun_on_recovery)


async def auto_execute(world: RecoveringWorld) -> int:
    """Execute every planned or paused plan without errors that nobody executes."""
    store = world.store
    locked = {
        (lock.get("data") or {}).get("execution_plan_id")
        for lock in await store.find_records(cls=EXECUTION_LOCK)
    }
    count = 0
    for plan in await store.find_plans(world, filters={"state": ["planned", "paused"]}):
        if plan.result == "error" or plan.id in locked or world.is_running(plan.id):
            continue
        try:
            await world.execute(plan.id)
            count += 1
        except DynflowError as exc:
            log.warning("auto-execute of %s failed: %s", plan.id, exc)
    return count
