"""Helpers and actions for the recovery, world, cleaner and persistence conformance tests.

Several worlds share one database inside the test process. Two things stand in for Dynflow's
multi-process set-up:

* ``World.abandon()`` drops a world as a ``kill -9`` would: its tasks are cancelled and its
  store closed, while its world record and its locks stay in the database;
* a world that must stay *alive* in the eyes of the other worlds gets a foreign hostname in its
  meta (``live_world``): our engine judges a world on this host by its pid, and every world of
  this process shares the test's pid, so it would be taken for "an earlier incarnation" and
  invalidated. With a foreign hostname only its heartbeat counts, which is recent.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from typing import Any

from dynflow import Action, World
from dynflow.delayed import PLANNING_LOCK, planning_lock_id
from dynflow.executor import EXECUTION_LOCK
from dynflow.world import WORLD_RECORD

_hosts = itertools.count(1)


def options(**extra: Any) -> dict[str, Any]:
    """World options of these tests, as Dynflow's WorldFactory has them: no validity check
    (our ``auto_recover``), no auto-execute, no cleaner, no delayed executor, a ``slow`` queue
    of one worker; a test turns on what it needs."""
    base: dict[str, Any] = {
        "auto_recover": False,
        "auto_execute": False,
        "cleaner_interval": None,
        "delayed_executor_interval": None,
        "termination_timeout": 5,
        "queues": {"slow": 1},
    }
    base.update(extra)
    return base


def world(db_url: str, **extra: Any) -> World:
    return World(db_url, **options(**extra))


def live_world(db_url: str, **extra: Any) -> World:
    """A world the other worlds of this process take for alive (see the module docstring)."""
    meta = {"hostname": f"elsewhere-{next(_hosts)}.example.com", **extra.pop("meta", {})}
    return World(db_url, **options(meta=meta, **extra))


def serialize_migrations(*worlds: World) -> None:
    """Let the worlds start concurrently in this process: Alembic, run by each world's start,
    keeps module-global state, so their migrations take turns (separate processes need not)."""
    turn = asyncio.Lock()
    for w in worlds:
        migrate = w.store.migrate

        async def migrate_in_turn(revision: str = "head", _migrate: Any = migrate) -> None:
            async with turn:
                await _migrate(revision)

        w.store.migrate = migrate_in_turn  # type: ignore[method-assign]




async def stop_all(*worlds: World) -> None:
    for w in worlds:
        try:
            await w.stop()
        except Exception:  # best effort in a finally
            pass


def history(plan: Any) -> list[tuple[str, str | None]]:
    return [(h["name"], h["world_id"]) for h in plan.execution_history]


def history_names(plan: Any) -> list[str]:
    return [h["name"] for h in plan.execution_history]


async def lock_ids(world: World, cls: str) -> set[str]:
    return {r["id"] for r in await world.store.find_records(cls=cls)}


async def put_lock(world: World, cls: str, lock_id: str, owner: str, data: dict[str, Any]) -> None:
    assert await world.store.acquire_lock(cls, lock_id, owner, data)


async def put_execution_lock(world: World, plan_id: str, owner_world_id: str) -> None:
    """An execution lock as a world executing ``plan_id`` holds it."""
    await put_lock(
        world,
        EXECUTION_LOCK,
        f"execution-plan:{plan_id}",
        owner_world_id,
        {"world_id": owner_world_id, "execution_plan_id": plan_id},
    )


async def put_world_record(
    world: World, world_id: str, *, meta: dict[str, Any] | None = None, last_seen: float | None
) -> None:
    """A world record as a world registers it; ``last_seen`` None: it never beat."""
    data: dict[str, Any] = {"class": WORLD_RECORD, "id": world_id, "meta": meta or {}}
    data["active"] = True
    if last_seen is not None:
        data["last_seen_epoch"] = last_seen
    await put_lock(world, WORLD_RECORD, world_id, f"world:{world_id}", data)


async def world_ids(world: World) -> set[str]:
    return {r["id"] for r in await world.store.find_records(cls=WORLD_RECORD)}


async def claim_for_planning(world: World, plan_id: str, root_step_state: str | None) -> None:
    """Do what a world does when it starts planning a due delayed plan (``scheduled`` →
    ``planning`` and its planning lock), optionally with the root plan step in another state;
    the world is then abandoned by the test, as if it died while planning."""
    store = world.store
    plan = await store.load_plan(plan_id, world)
    assert plan is not None and plan.state == "scheduled"
    plan.set_state("planning", world_id=world.id)
    stmts = [
        store.delayed.guarded_state_stmt(plan, "scheduled"),
        store.acquire_lock_stmt(
            PLANNING_LOCK,
            planning_lock_id(plan_id),
            world.id,
            {"world_id": world.id, "execution_plan_id": plan_id},
        ),
    ]
    if root_step_state is not None:
        step = plan.steps[plan.root_plan_step_id or 1]
        step.state = root_step_state
        stmts.append(store.update_step_stmt(step))
    assert await store.write(plan_id, stmts)


def new_uuid() -> str:
    return str(uuid.uuid4())


def long_ago(seconds: float = 3600.0) -> float:
    return time.time() - seconds


# ---- actions ---------------------------------------------------------------------------------
class Waiting(Action):
    """Suspends until ``{"finish": true}`` arrives (Dynflow's DeprecatedEventedAction)."""

    def run(self, event: Any = None) -> None:
        if isinstance(event, dict) and event.get("finish"):
            self.output["finished"] = True
            return
        self.suspend()


class Blocking(Action):
    """Its run never ends by itself: running at the moment its world is killed."""

    async def run(self) -> None:
        await asyncio.Event().wait()


class SkippableBlocking(Action):
    """Dynflow's SkippableDummy: rescue strategy skip; running when its world is killed."""

    async def run(self) -> None:
        await asyncio.Event().wait()

    def rescue_strategy_for_self(self) -> str:
        return "skip"


class Counted(Action):
    """Counts how often its run executed (per plan id)."""

    runs: dict[str, int] = {}

    def run(self) -> None:
        runs = type(self).runs
        runs[self.execution_plan_id] = runs.get(self.execution_plan_id, 0) + 1
        self.output["ran"] = True


class Gated(Action):
    """Counts its runs and waits for ``Gated.gate`` before it finishes."""

    runs: dict[str, int] = {}
    gate: asyncio.Event | None = None

    async def run(self) -> None:
        runs = type(self).runs
        runs[self.execution_plan_id] = runs.get(self.execution_plan_id, 0) + 1
        gate = type(self).gate
        if gate is not None:
            await gate.wait()


class Failing(Action):
    def run(self) -> None:
        raise RuntimeError("Trolling detected")


class Simple(Action):
    """Dynflow's cleaner test action: plans nothing, so its plan ends at once."""

    def plan(self) -> None:
        pass


class Quick(Action):
    def run(self) -> None:
        self.output["ok"] = True
