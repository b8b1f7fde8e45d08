"""Conformance: Dynflow's test/coordinator_test.rb ("Dynflow::Coordinator").

Dynflow's coordinator stores locks and world records in ``dynflow_coordinator_records``
(unique by class and id) through an adapter. Ours keeps the same table and semantics in the
store (``store.acquire_lock`` — an ``INSERT ... ON CONFLICT DO NOTHING`` guard, False when the
record exists — ``find_records(cls=, owner=, record_id=)``, ``release_lock``,
``release_locks_of_owner_stmt``, ``update_record_stmt``), and the engine takes its own locks
with them: the world record, the ``delayed-executor`` lock (held while the world runs), the
``execution-plan-cleaner`` lock (held for one cleaning round), the execution lock of a running
plan. The Ruby tests' ``AutoExecuteLock`` (our auto-execute takes no lock) is replaced by those
engine locks, or by a plain record where the Ruby test is about the adapter alone; the
lock-logging adapter is replaced by looking at the stored records.

Every Ruby test of the file applies; none is skipped (the Sequel adapter is the only one, so
``it_supports_global_records`` runs once, under "Dynflow::CoordinatorAdapters::Sequel").
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from dynflow import Action, ExecutionRejected, World
from dynflow.cleaner import CLEANER_LOCK
from dynflow.delayed_executor import DELAYED_EXECUTOR_ID, DELAYED_EXECUTOR_LOCK
from dynflow.executor import EXECUTION_LOCK
from dynflow.world import WORLD_RECORD
from tests.support.dummy import Dummy, Waiting
from tests.support.waiting import wait_for, wait_step_state

AUTO_EXECUTE = ("AutoExecuteLock", "auto-execute")


def _world(db_url: str, name: str, **options: Any) -> World:
    settings: dict[str, Any] = {
        "cleaner_interval": None,
        "auto_execute": False,
        "termination_timeout": 5,
        "delayed_executor_interval": None,  # tests take the delayed-executor lock themselves
        "meta": {"hostname": f"coordinator-test-{name}"},
    }
    settings.update(options)
    return World(db_url, **settings)


@asynccontextmanager
async def _worlds(db_url: str, *names: str) -> AsyncIterator[list[World]]:
    worlds = [_world(db_url, name) for name in names]
    started: list[World] = []
    try:
        for w in worlds:
            await w.start()
            started.append(w)
        yield worlds
    finally:
        for w in reversed(started):
            await w.stop()


def _auto_execute_data(world: World) -> dict[str, Any]:
    return {
        "class": AUTO_EXECUTE[0],
        "id": AUTO_EXECUTE[1],
        "owner_id": f"world:{world.id}",
        "world_id": world.id,
    }


async def _acquire_auto_execute(world: World, by: World | None = None) -> bool:
    owner = by or world
    return await world.store.acquire_lock(
        AUTO_EXECUTE[0], AUTO_EXECUTE[1], f"world:{owner.id}", _auto_execute_data(owner)
    )


# ---- locks ---------------------------------------------------------------------------------------
async def test_unlocks_the_lock_when_the_block_is_passed(db_url: str, monkeypatch: Any) -> None:
    """coordinator_test.rb: "Dynflow::Coordinator" / "locks" / "unlocks the lock, when the block
    is passed": a lock taken for one round of work (the cleaner's) is released after it."""
    async with _worlds(db_url, "one") as (world,):
        store = world.store
        lock_log: list[str] = []
        original = store.find_old_plans

        async def find_old_plans(*args: Any, **kwargs: Any) -> list[str]:
            held = await store.find_records(cls=CLEANER_LOCK)
            lock_log.append("locked" if [r["owner_id"] for r in held] == [world.id] else "free")
            return await original(*args, **kwargs)

        monkeypatch.setattr(store, "find_old_plans", find_old_plans)
        assert await world.cleaner.clean() == 0
        assert lock_log and set(lock_log) == {"locked"}  # held during the round
        assert await store.find_records(cls=CLEANER_LOCK) == []  # released after it


async def test_does_not_unlock_when_the_block_is_not_passed(db_url: str) -> None:
    """coordinator_test.rb: "Dynflow::Coordinator" / "locks" / "doesn't unlock, when the block
    is not passed": a lock taken for good (the delayed-executor lock) stays taken."""
    async with _worlds(db_url, "one") as (world,):
        store = world.store
        assert await world.delayed_executor.hold()
        for _ in range(3):
            await world.delayed_executor.tick()
            held = await store.find_records(cls=DELAYED_EXECUTOR_LOCK)
            assert [(r["id"], r["owner_id"]) for r in held] == [(DELAYED_EXECUTOR_ID, world.id)]
        # and a plain acquire without a release: still there
        assert await _acquire_auto_execute(world)
        await (await world.trigger(Dummy)).wait(10)
        assert len(await store.find_records(cls=AUTO_EXECUTE[0])) == 1


async def test_supports_unlocking_by_owner(db_url: str) -> None:
    """coordinator_test.rb: "Dynflow::Coordinator" / "locks" / "supports unlocking by
    owner"."""
    async with _worlds(db_url, "one") as (world,):
        store = world.store
        # taken by another task of the world, which goes on with other things
        assert await asyncio.create_task(_acquire_auto_execute(world))
        assert not await _acquire_auto_execute(world)  # held
        await store.write(
            "release", [store.release_locks_of_owner_stmt(AUTO_EXECUTE[0], f"world:{world.id}")]
        )
        assert await _acquire_auto_execute(world)  # expected no error raised


async def test_supports_checking_about_locks(db_url: str) -> None:
    """coordinator_test.rb: "Dynflow::Coordinator" / "locks" / "supports checking about
    locks"."""
    async with _worlds(db_url, "one") as (world,):
        assert await world.delayed_executor.hold()
        locks = await world.store.find_records(
            cls=DELAYED_EXECUTOR_LOCK, record_id=DELAYED_EXECUTOR_ID
        )
        assert [lock["data"]["world_id"] for lock in locks] == [world.id]


async def test_deserializes_the_data_when_searching_for_locks(db_url: str) -> None:
    """coordinator_test.rb: "Dynflow::Coordinator" / "locks" / "deserializes the data from the
    adapter when searching for locks" (with the execution lock of a running plan)."""
    async with _worlds(db_url, "one", "another") as (world, another):
        triggered = await world.trigger(Waiting)
        await wait_step_state(world, triggered.id, 2, "suspended")
        store = world.store
        expected = {"world_id": world.id, "execution_plan_id": triggered.id}

        found = await store.find_records(owner=world.id)
        assert len(found) == 1
        assert found[0]["data"] == expected

        found = await store.find_records(
            cls=EXECUTION_LOCK, record_id=f"execution-plan:{triggered.id}"
        )
        assert len(found) == 1
        assert found[0]["data"] == expected
        assert found[0]["owner_id"] == world.id

        assert await store.find_records(owner=another.id) == []
        await world.event(triggered.id, 2, {"finish": True})
        await triggered.wait(10)
        assert await store.find_records(owner=world.id) == []


# ---- records -------------------------------------------------------------------------------------
async def test_allows_crud_record_objects(db_url: str) -> None:
    """coordinator_test.rb: "Dynflow::Coordinator" / "records" / "allows CRUD record
    objects"."""
    async with _worlds(db_url, "one") as (world,):
        store = world.store
        cls = "DummyRecord"
        data = {"class": cls, "id": "Foo", "value": "Foo"}
        assert await store.acquire_lock(cls, "dummy", "dummy-owner", data)
        saved = await store.find_records(cls=cls)
        assert [(r["id"], r["class"], r["data"]) for r in saved] == [("dummy", cls, data)]

        data = {**data, "value": "Bar"}
        assert await store.write("dummy", [store.update_record_stmt(cls, "dummy", data)])
        saved = await store.find_records(cls=cls)
        assert [r["data"] for r in saved] == [data]

        await store.release_lock(cls, "dummy")
        assert await store.find_records(cls=cls) == []


# ---- on termination ------------------------------------------------------------------------------
async def test_removes_all_the_locks_assigned_to_the_given_world(db_url: str) -> None:
    """coordinator_test.rb: "Dynflow::Coordinator" / "on termination" / "removes all the locks
    assigned to the given world" (its world record, its delayed-executor lock, the execution
    lock of the plan it ran), and no other world's."""
    async with _worlds(db_url, "another") as (another,):
        world = _world(db_url, "terminating")
        await world.start()
        try:
            assert await world.delayed_executor.hold()
            triggered = await world.trigger(Waiting)
            await wait_step_state(world, triggered.id, 2, "suspended")
            invalidation = ("WorldInvalidationLock", f"world-invalidation:{another.id}")
            assert await another.store.acquire_lock(
                *invalidation, f"world:{another.id}", {"world_id": another.id}
            )
            owners = {r["owner_id"] for r in await another.store.find_records()}
            assert {world.id, f"world:{world.id}"} <= owners
        finally:
            await world.stop()

        records = await another.store.find_records()
        assert [r for r in records if r["owner_id"] in (world.id, f"world:{world.id}")] == []
        assert [r for r in records if r["id"] == world.id] == []
        # the other world's records stay
        assert {(r["class"], r["id"]) for r in records} == {
            invalidation,
            (WORLD_RECORD, another.id),
        }
        # the plan it was running is parked, without an execution lock
        parked = await another.load_plan(triggered.id)
        assert parked.state == "paused"
        assert parked.execution_history[-1]["name"] == "terminate execution"


GATE: dict[str, asyncio.Event] = {}


class TriggersWhileStopping(Action):
    """Waits for ``GATE['go']`` (set once its world is terminating), then triggers a plan."""

    async def run(self) -> None:
        await asyncio.wait_for(GATE["go"].wait(), 10)
        assert self.world is not None
        triggered = await self.world.trigger(Dummy)
        self.output["child"] = triggered.id
        rejected = triggered.finished.done() and triggered.finished.exception() is not None
        self.output["child_rejected"] = rejected


async def test_prevents_new_locks_to_be_acquired_by_the_world_being_terminated(
    db_url: str,
) -> None:
    """coordinator_test.rb: "Dynflow::Coordinator" / "on termination" / "prevents new locks to
    be acquired by the world being terminated": a plan triggered while the world stops is
    stored for the next start without an execution lock; a stopped world refuses to execute."""
    GATE["go"] = asyncio.Event()
    async with _worlds(db_url, "observer") as (observer,):
        world = _world(db_url, "terminating")
        await world.start()
        try:
            triggered = await world.trigger(TriggersWhileStopping)
            await wait_step_state(world, triggered.id, 2, "running")
            stopping = asyncio.ensure_future(world.stop())

            async def terminating() -> bool:
                return world.terminating

            await wait_for(terminating)
            # while it terminates: no execution lock for another plan, no delayed-executor lock
            other = await observer.plan(Dummy)
            with pytest.raises(ExecutionRejected):
                await world.execute(other.id)
            assert await world.delayed_executor.tick() is False
            assert await observer.store.find_records(cls=DELAYED_EXECUTOR_LOCK) == []
            GATE["go"].set()
            await asyncio.wait_for(stopping, 15)
        finally:
            GATE["go"].set()
            await world.stop()

        parent = await observer.load_plan(triggered.id)
        output = parent.actions[1].output
        assert output["child_rejected"] is True
        child = await observer.load_plan(output["child"])
        assert child.state == "planned"
        assert (await observer.load_plan(other.id)).state == "planned"
        assert (
            await observer.store.find_records(
                cls=EXECUTION_LOCK, record_id=f"execution-plan:{child.id}"
            )
            == []
        )
        assert [r for r in await observer.store.find_records() if world.id in r["owner_id"]] == []

    with pytest.raises(ExecutionRejected):
        await world.trigger(Dummy)


# ---- CoordinatorAdapters::Sequel: records handling -----------------------------------------------
async def test_prevents_saving_the_same_record_twice(db_url: str) -> None:
    """coordinator_test.rb: "Dynflow::Coordinator" / "Dynflow::CoordinatorAdapters::Sequel" /
    "records handling" / "prevents saving the same record twice" (two worlds at once)."""
    async with _worlds(db_url, "one", "another") as (world, another):
        results = await asyncio.gather(
            _acquire_auto_execute(world), _acquire_auto_execute(another, by=another)
        )
        assert sorted(results) == [False, True]
        winner = world if results[0] else another
        held = await world.store.find_records(cls=AUTO_EXECUTE[0])
        assert [r["owner_id"] for r in held] == [f"world:{winner.id}"]
        # and once more, one after the other
        assert not await _acquire_auto_execute(another, by=another)
        assert not await _acquire_auto_execute(world)


async def test_allows_saving_different_records(db_url: str) -> None:
    """coordinator_test.rb: "Dynflow::Coordinator" / "Dynflow::CoordinatorAdapters::Sequel" /
    "records handling" / "allows saving different records"."""
    async with _worlds(db_url, "one", "another") as (world, another):
        assert await _acquire_auto_execute(world)
        invalidation = ("WorldInvalidationLock", f"world-invalidation:{another.id}")
        assert await another.store.acquire_lock(
            *invalidation, f"world:{world.id}", {"world_id": world.id}
        )  # expected no error raised
        # the same id under another class is a different record too
        assert await another.store.acquire_lock(
            "AnotherLock", AUTO_EXECUTE[1], f"world:{another.id}", {"world_id": another.id}
        )
        assert len(await world.store.find_records(record_id=AUTO_EXECUTE[1])) == 2


async def test_allows_searching_for_the_records_on_various_criteria(db_url: str) -> None:
    """coordinator_test.rb: "Dynflow::Coordinator" / "Dynflow::CoordinatorAdapters::Sequel" /
    "records handling" / "allows searching for the records on various criteria"."""
    async with _worlds(db_url, "one", "another") as (world, another):
        store = world.store
        assert await _acquire_auto_execute(world)
        data = _auto_execute_data(world)

        found = await store.find_records(owner=f"world:{world.id}", cls=AUTO_EXECUTE[0])
        assert [r["data"] for r in found] == [data]
        found = await store.find_records(cls=AUTO_EXECUTE[0], record_id=AUTO_EXECUTE[1])
        assert [r["data"] for r in found] == [data]
        found = await store.find_records(owner=f"world:{another.id}", cls=AUTO_EXECUTE[0])
        assert found == []
