"""Delayed plans (spec §1.8, §1.10, §4.1; the original's future_execution_test and the delayed
parts of persistence_test, execution_plan_hooks_test and middleware_test).

Most tests drive the delayed executor by hand (``delayed_executor_interval=None`` and
``world.delayed_executor.tick()``); those about polling use a 50 ms interval. The crash test
kills a real engine process with SIGKILL while it plans a delayed plan.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, inspect, select, update

from dynflow import World
from dynflow.delayed import PLANNING_LOCK, DelayOptions, JsonArgs, Scheduled, planning_lock_id
from dynflow.delayed_executor import DELAYED_EXECUTOR_ID, DELAYED_EXECUTOR_LOCK
from dynflow.locks import INHIBITION_LOCK, SINGLETON_LOCK, plan_owner
from dynflow.middleware import Middleware
from dynflow.persistence.schema import delayed_plans, execution_plans
from dynflow.persistence.store import Store
from dynflow.persistence.writer import Stmt
from dynflow.serialization import dumps, utcnow
from dynflow.world import WORLD_RECORD
from tests import conftest
from tests.support import delayed_actions as acts
from tests.support import delayed_crash_worker, dummy
from tests.support.waiting import wait_for, wait_plan_state

WORKER = Path(delayed_crash_worker.__file__).resolve()
ROOT = Path(__file__).resolve().parents[2]


def options(**extra: Any) -> dict[str, Any]:
    return {
        "cleaner_interval": None,
        "auto_execute": False,
        "termination_timeout": 5,
        "delayed_executor_interval": None,  # ticks by hand unless a test says otherwise
        **extra,
    }


def same_process(**extra: Any) -> dict[str, Any]:
    """Options of a second world in this process: its start must not take the first world
    (same pid) for a dead earlier incarnation of this process and invalidate it."""
    return options(auto_recover=False, **extra)


@pytest.fixture
async def world(db_url: str) -> AsyncIterator[World]:
    w = World(db_url, **options())
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


async def set_plan_state(world: World, plan_id: str, state: str) -> None:
    stmt = update(execution_plans).where(execution_plans.c.uuid == plan_id).values(state=state)
    await world.store.write(plan_id, [Stmt(stmt, {})])


async def tick_until_stopped(world: World, plan_id: str) -> Any:
    assert await world.delayed_executor.tick() is False
    return await wait_plan_state(world, plan_id, "stopped")


# ---- delay: what is stored --------------------------------------------------------------------
async def test_delay_stores_a_scheduled_plan(world: World) -> None:
    acts.EVENTS.clear()
    start_at = datetime.now(UTC) + timedelta(hours=1)
    scheduled = await world.delay(
        acts.HookRecorder, DelayOptions(start_at=start_at, start_before=timedelta(hours=2))
    )
    assert isinstance(scheduled, Scheduled)
    assert (scheduled.scheduled, scheduled.triggered, scheduled.planned) == (True, False, False)
    plan = await world.load_plan(scheduled.id)
    assert plan is not None
    assert (plan.state, plan.result) == ("scheduled", "pending")
    assert plan.progress() == 0.0
    assert plan.step_ids == [1] and plan.root_plan_step_id == 1
    assert plan.steps[1].kind == "PlanStep" and plan.steps[1].state == "pending"
    assert [h["name"] for h in plan.execution_history] == ["delay"]
    assert plan.label == acts.HookRecorder.name()
    info = plan.to_hash()["delayed_plan"]
    assert info["frozen"] is False
    assert info["start_at"] == start_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.") + (
        f"{start_at.microsecond // 1000:03d}"
    )
    assert info["start_before"] > info["start_at"]
    record = await world.delayed_plan(scheduled.id)
    assert record is not None
    assert record["args_serializer"] == JsonArgs.name()
    assert record["serialized_args"] == {"args": [], "kwargs": {}}
    # the "delayed" filter (spec §4.3) and the pending + scheduled hooks (execution_plan_hooks)
    assert [p.id for p in await world.find_plans(filters={"delayed": True})] == [scheduled.id]
    [listed] = await world.find_plans(filters={"state": "scheduled"})
    assert listed.to_hash()["delayed_plan"] == info
    assert acts.EVENTS == [(scheduled.id, "pending"), (scheduled.id, "scheduled")]
    # not due: nothing happens
    assert await world.delayed_executor.tick() is False
    assert (await world.load_plan(scheduled.id)).state == "scheduled"
    triggered = await world.trigger(dummy.Dummy)
    await triggered.wait(5)
    assert [p.id for p in await world.find_plans(filters={"delayed": True})] == [scheduled.id]


async def test_arguments_round_trip_as_json(world: World) -> None:
    scheduled = await world.delay(acts.Greet, {"start_at": 0}, name="delayed world")
    record = await world.delayed_plan(scheduled.id)
    assert record["serialized_args"] == {"args": [], "kwargs": {"name": "delayed world"}}
    plan = await tick_until_stopped(world, scheduled.id)
    assert (plan.state, plan.result) == ("stopped", "success")
    assert plan.actions[1].output == {"greeting": "hello, delayed world"}
    assert [h["name"] for h in plan.execution_history] == [
        "delay",
        "start execution",
        "finish execution",
    ]
    assert plan.steps[1].state == "success" and plan.started_at is not None
    assert await world.delayed_plan(scheduled.id) is None
    assert "delayed_plan" not in plan.to_hash()
    assert await world.find_plans(filters={"delayed": True}) == []


async def test_custom_serializer_turns_objects_into_ids_and_back(world: World) -> None:
    host = acts.Host(7, "web-7.example.com")
    scheduled = await world.delay(acts.RebootHost, None, host, reason="kernel")
    record = await world.delayed_plan(scheduled.id)
    assert record["args_serializer"] == acts.HostSerializer.name()
    assert record["serialized_args"] == {"args": [{"host_id": 7}], "kwargs": {"reason": "kernel"}}
    plan = await tick_until_stopped(world, scheduled.id)
    assert (plan.state, plan.result) == ("stopped", "success")
    assert plan.actions[1].input == {"host_name": "web-7.example.com", "reason": "kernel"}
    assert plan.actions[1].output == {"rebooted": "web-7.example.com"}


@pytest.mark.parametrize(
    ("action", "args", "message"),
    [
        (acts.Greet, (object(),), "not serialisable"),
        (acts.BrokenDelay, ("x",), "cannot serialize that"),
    ],
    ids=["not-json", "serializer-raises"],
)
async def test_serialization_failure_stops_the_plan(
    world: World, action: Any, args: tuple[Any, ...], message: str
) -> None:
    """As Dynflow: the plan is stored stopped/error and the caller gets the error."""
    acts.EVENTS.clear()
    with pytest.raises(Exception):  # noqa: B017 - whatever the serializer raised
        await world.delay(action, None, *args)
    [stored] = await world.find_plans()
    plan = await world.load_plan(stored.id)
    assert (plan.state, plan.result) == ("stopped", "error")
    assert plan.steps[1].state == "error"
    assert message in plan.steps[1].error["message"]
    assert [h["name"] for h in plan.execution_history] == ["finish execution"]
    assert await world.delayed_plan(plan.id) is None
    assert await world.find_plans(filters={"delayed": True}) == []


class SwapSerializer(Middleware):
    seen: list[tuple[Any, ...]] = []

    def delay(self, action: Any, next_: Any, *args: Any, **kwargs: Any) -> Any:
        SwapSerializer.seen.append((action.name(), args, kwargs))
        return next_(args[0], *args[1:], name=kwargs["name"].upper())


async def test_delay_middleware_wraps_the_serializer_hook(db_url: str) -> None:
    SwapSerializer.seen.clear()
    async with World(db_url, **options(middleware=[SwapSerializer])) as w:
        scheduled = await w.delay(acts.Greet, None, name="quiet")
        assert SwapSerializer.seen == [(acts.Greet.name(), (DelayOptions(),), {"name": "quiet"})]
        assert (await w.delayed_plan(scheduled.id))["serialized_args"]["kwargs"] == {
            "name": "QUIET"
        }


async def test_hooks_of_a_delayed_plan(world: World) -> None:
    acts.EVENTS.clear()
    scheduled = await world.delay(acts.HookRecorder, None)
    await tick_until_stopped(world, scheduled.id)
    kinds = [k for pid, k in acts.EVENTS if pid == scheduled.id]
    assert kinds == ["pending", "scheduled", "planning", "planned", "running", "stopped", "success"]


# ---- the ready-plan lookup -----------------------------------------------------------------------
async def test_find_ready_delayed_plans(world: World) -> None:
    now = utcnow()
    asap = await world.delay(acts.Greet, None, name="a")
    past = await world.delay(acts.Greet, DelayOptions(start_at=now - timedelta(minutes=1)))
    future = await world.delay(acts.Greet, DelayOptions(start_at=now + timedelta(hours=1)))
    deadline = await world.delay(
        acts.Greet,
        DelayOptions(start_at=now + timedelta(hours=1), start_before=now - timedelta(seconds=1)),
    )
    frozen = await world.delay(acts.Greet, DelayOptions(frozen=True))
    running = await world.trigger(dummy.Waiting)
    blocked = await world.chain([running.id], acts.Greet, name="b")
    ready = await world.store.delayed.find_ready(utcnow())
    # not the future one, the frozen one or the one waiting for a running plan; nulls first
    assert [r["execution_plan_id"] for r in ready] == [asap.id, past.id, deadline.id]
    assert all(r["state"] == "scheduled" for r in ready)
    assert {future.id, frozen.id, blocked.id}.isdisjoint(r["execution_plan_id"] for r in ready)
    await world.cancel(running.id)


# ---- the delayed executor ------------------------------------------------------------------------
async def test_delayed_executor_polls_and_runs_due_plans(db_url: str) -> None:
    async with World(db_url, **options(delayed_executor_interval=0.05)) as w:
        started = time.monotonic()
        soon = await w.delay(acts.Greet, DelayOptions(start_at=0.3), name="soon")
        later = await w.delay(acts.Greet, DelayOptions(start_at=timedelta(hours=1)), name="x")
        plan = await soon.wait(10)
        assert time.monotonic() - started >= 0.25
        assert (plan.state, plan.result) == ("stopped", "success")
        assert (await w.load_plan(later.id)).state == "scheduled"
        assert w.delayed_executor.holding
        assert w._record()["meta"]["delayed_executor"] is True  # shown in the world record
    # a stopped world releases the lock
    store = Store(db_url)
    await store.start()
    try:
        assert await store.find_records(cls=DELAYED_EXECUTOR_LOCK) == []
    finally:
        await store.close()


async def test_a_start_at_wakes_the_executor_before_its_interval(db_url: str) -> None:
    async with World(db_url, **options(delayed_executor_interval=30)) as w:

        async def holding() -> bool:
            return w.delayed_executor.holding

        await wait_for(holding)
        started = time.monotonic()
        scheduled = await w.delay(acts.Greet, DelayOptions(start_at=0.2), name="early")
        plan = await scheduled.wait(15)
        assert plan.result == "success"
        assert time.monotonic() - started < 15  # well before the 30 s interval


async def test_start_before_passed_fails_the_plan(world: World) -> None:
    now = utcnow()
    scheduled = await world.delay(
        acts.Greet,
        DelayOptions(start_at=now - timedelta(minutes=2), start_before=now - timedelta(minutes=1)),
        name="late",
    )
    plan = await tick_until_stopped(world, scheduled.id)
    assert (plan.state, plan.result) == ("stopped", "error")
    error = plan.steps[1].error
    assert error["message"].startswith("Execution plan could not be started before set time (")
    assert [h["name"] for h in plan.execution_history] == ["delay", "timeout"]
    assert await world.delayed_plan(scheduled.id) is None


async def test_planning_error_stops_the_delayed_plan(world: World) -> None:
    scheduled = await world.delay(acts.PlanFails, None)
    plan = await tick_until_stopped(world, scheduled.id)
    assert (plan.state, plan.result) == ("stopped", "error")
    assert plan.steps[1].error["message"] == "cannot plan this"
    assert [h["name"] for h in plan.execution_history] == ["delay", "finish execution"]
    assert await world.delayed_plan(scheduled.id) is None


async def test_frozen_plan_waits_until_unfrozen(world: World) -> None:
    scheduled = await world.delay(acts.Greet, DelayOptions(frozen=True), name="ice")
    await world.delayed_executor.tick()
    assert (await world.load_plan(scheduled.id)).state == "scheduled"
    assert (await world.load_plan(scheduled.id)).to_hash()["delayed_plan"]["frozen"] is True
    assert await world.set_delayed_frozen(scheduled.id, False)
    plan = await tick_until_stopped(world, scheduled.id)
    assert plan.result == "success"
    assert not await world.set_delayed_frozen(scheduled.id, True)  # no record any more


async def test_unfreeze_with_a_new_start(world: World) -> None:
    scheduled = await world.delay(acts.Greet, DelayOptions(frozen=True), name="moved")
    assert await world.set_delayed_frozen(scheduled.id, False, start_at=timedelta(hours=1))
    await world.delayed_executor.tick()
    assert (await world.load_plan(scheduled.id)).state == "scheduled"
    assert await world.set_delayed_frozen(scheduled.id, False, start_at=None)
    assert (await tick_until_stopped(world, scheduled.id)).result == "success"


async def test_cancel_a_delayed_plan(world: World) -> None:
    acts.EVENTS.clear()
    scheduled = await world.delay(acts.HookRecorder, DelayOptions(start_at=timedelta(hours=1)))
    assert await world.cancel(scheduled.id) == 1
    plan = await world.load_plan(scheduled.id)
    assert (plan.state, plan.result) == ("stopped", "cancelled")
    assert plan.steps[1].state == "cancelled"
    assert [h["name"] for h in plan.execution_history] == ["delay", "Delayed task cancelled"]
    assert await world.delayed_plan(scheduled.id) is None
    assert await world.cancel(scheduled.id) == 0  # stopped: nothing to cancel
    assert acts.EVENTS[-2:] == [(scheduled.id, "stopped"), (scheduled.id, "failure")]


async def test_records_of_plans_no_longer_scheduled_are_dropped(world: World) -> None:
    triggered = await world.trigger(dummy.Dummy)
    await triggered.wait(5)
    row = {
        "execution_plan_uuid": triggered.id,
        "start_at": None,
        "start_before": None,
        "args_serializer": JsonArgs.name(),
        "serialized_args": dumps({"args": [], "kwargs": {}}),
        "frozen": False,
    }
    await world.store.write(triggered.id, [Stmt(insert(delayed_plans), row)])
    assert await world.delayed_plan(triggered.id) is not None
    await world.delayed_executor.tick()
    assert await world.delayed_plan(triggered.id) is None
    plan = await world.load_plan(triggered.id)
    assert (plan.state, plan.result) == ("stopped", "success")  # untouched


async def test_plan_left_in_planning_is_repaired(world: World) -> None:
    """A plan in ``planning`` whose planner is gone (its lock owner has no world record, or it
    has no lock at all) goes back to ``scheduled`` and is planned."""
    orphaned = await world.delay(acts.Counted, None)
    lockless = await world.delay(acts.Counted, None)
    for scheduled in (orphaned, lockless):
        await set_plan_state(world, scheduled.id, "planning")
    await world.store.acquire_lock(
        PLANNING_LOCK,
        planning_lock_id(orphaned.id),
        "dead-world",
        {"world_id": "dead-world", "execution_plan_id": orphaned.id},
    )
    await world.delayed_executor.tick()
    for scheduled in (orphaned, lockless):
        plan = await wait_plan_state(world, scheduled.id, "stopped")
        assert plan.result == "success"
        assert acts.RUNS[scheduled.id] == 1
    assert await world.store.find_records(cls=PLANNING_LOCK) == []


async def test_plan_being_planned_by_a_live_world_is_left_alone(db_url: str) -> None:
    async with World(db_url, **options()) as first, World(db_url, **same_process()) as second:
        scheduled = await first.delay(acts.Greet, None, name="busy")
        await set_plan_state(first, scheduled.id, "planning")
        await first.store.acquire_lock(
            PLANNING_LOCK,
            planning_lock_id(scheduled.id),
            first.id,
            {"world_id": first.id, "execution_plan_id": scheduled.id},
        )
        await second.delayed_executor.tick()
        assert second.delayed_executor.holding
        assert (await second.load_plan(scheduled.id)).state == "planning"


async def test_two_worlds_plan_a_delayed_plan_once(db_url: str) -> None:
    async with World(db_url, **options()) as first, World(db_url, **same_process()) as second:
        plans = [await first.delay(acts.Counted, None) for _ in range(10)]
        futures = await asyncio.gather(
            *(w.delayed_executor.plan(s.id) for s in plans for w in (first, second))
        )
        assert sum(f is not None for f in futures) == len(plans)
        for scheduled in plans:
            plan = await wait_plan_state(first, scheduled.id, "stopped")
            assert plan.result == "success"
            assert acts.RUNS[scheduled.id] == 1
            assert [h["name"] for h in plan.execution_history].count("start execution") == 1


async def test_plan_halted_while_being_planned_never_runs(world: World) -> None:
    """``world.halt`` of a plan in ``planning`` only takes its inhibition lock; the planner
    then stops the plan instead of starting it."""
    scheduled = await world.delay(acts.Counted, None)
    owner = plan_owner(scheduled.id)
    await world.store.acquire_lock(INHIBITION_LOCK, owner, owner, {"execution_plan_id": owner})
    plan = await tick_until_stopped(world, scheduled.id)
    assert plan.state == "stopped" and plan.result == "pending"
    assert scheduled.id not in acts.RUNS
    assert await world.store.find_records(cls=INHIBITION_LOCK) == []
    assert await world.delayed_plan(scheduled.id) is None


async def test_delayed_singleton_fails_while_another_plan_holds_it(world: World) -> None:
    first = await world.trigger(acts.OnlyOne)
    scheduled = await world.delay(acts.OnlyOne, None)
    plan = await tick_until_stopped(world, scheduled.id)
    assert (plan.state, plan.result) == ("stopped", "error")
    assert plan.steps[1].error["message"] == f"Action {acts.OnlyOne.name()} is already active"
    await world.event(first.id, 2, {"finish": True})
    await first.wait(5)
    again = await world.delay(acts.OnlyOne, None)
    await world.delayed_executor.tick()
    await wait_plan_state(world, again.id, "running")
    [lock] = await world.store.find_records(cls=SINGLETON_LOCK)
    assert lock["owner_id"] == plan_owner(again.id)
    await world.event(again.id, 2, {"finish": True})
    assert (await wait_plan_state(world, again.id)).result == "success"
    assert await world.store.find_records(cls=SINGLETON_LOCK) == []


async def test_plan_elsewhere(world: World) -> None:
    scheduled = await world.plan_elsewhere(acts.Greet, name="elsewhere")
    assert scheduled.scheduled and not scheduled.triggered
    plan = await scheduled.wait(5)
    assert (plan.state, plan.result) == ("stopped", "success")
    assert plan.actions[1].output == {"greeting": "hello, elsewhere"}
    assert await world.delayed_plan(scheduled.id) is None


# ---- the delayed-executor lock -------------------------------------------------------------------
async def test_only_one_world_holds_the_delayed_executor(db_url: str) -> None:
    async with World(db_url, **options()) as first, World(db_url, **same_process()) as second:
        assert await first.delayed_executor.hold()
        assert not await second.delayed_executor.hold()
        scheduled = await second.delay(acts.Greet, None, name="one")
        assert await second.delayed_executor.tick() is False  # not the holder: nothing planned
        assert (await second.load_plan(scheduled.id)).state == "scheduled"
        await first.delayed_executor.tick()
        assert (await wait_plan_state(first, scheduled.id)).result == "success"
        await first.stop()  # releases the lock; the other world takes it
        assert await second.delayed_executor.hold()


@pytest.mark.parametrize("how", ["no-world-record", "stale-heartbeat"])
async def test_lock_of_a_dead_world_is_taken_over(db_url: str, how: str) -> None:
    async with World(db_url, **options(world_timeout=5)) as w:
        dead = "0b5e7b5e-dead-4000-8000-000000000000"
        if how == "stale-heartbeat":
            record = {
                "class": WORLD_RECORD,
                "id": dead,
                "meta": {"hostname": "elsewhere.example.com", "pid": 1},
                "last_seen_epoch": time.time() - 60,
                "active": True,
            }
            await w.store.acquire_lock(WORLD_RECORD, dead, dead, record)
        await w.store.acquire_lock(
            DELAYED_EXECUTOR_LOCK, DELAYED_EXECUTOR_ID, dead, {"world_id": dead}
        )
        assert await w.delayed_executor.hold()
        [lock] = await w.store.find_records(cls=DELAYED_EXECUTOR_LOCK)
        assert lock["owner_id"] == w.id


async def test_lock_of_a_live_world_elsewhere_is_kept(db_url: str) -> None:
    async with World(db_url, **options()) as w:
        other = "0b5e7b5e-a11e-4000-8000-000000000000"
        record = {
            "class": WORLD_RECORD,
            "id": other,
            "meta": {"hostname": "elsewhere.example.com", "pid": 1},
            "last_seen_epoch": time.time(),
            "active": True,
        }
        await w.store.acquire_lock(WORLD_RECORD, other, other, record)
        await w.store.acquire_lock(
            DELAYED_EXECUTOR_LOCK, DELAYED_EXECUTOR_ID, other, {"world_id": other}
        )
        assert not await w.delayed_executor.hold()
        assert not w.delayed_executor.holding


# ---- a crash while a delayed plan is being planned -----------------------------------------------
def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no output)"


async def test_sigkill_while_planning_then_a_new_world_repairs_and_runs_it(
    db_url: str, tmp_path: Path
) -> None:
    (tmp_path / "block").write_text("hang while planning")
    output = tmp_path / "worker.out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]))
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), "--db", db_url, "--dir", str(tmp_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            env=env,
        )
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "planning").exists():
            assert proc.poll() is None, _tail(output)
            assert time.monotonic() < deadline, _tail(output)
            await asyncio.sleep(0.02)
        info = json.loads((tmp_path / "delayed.json").read_text())
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()  # reaped, so the pid check sees it gone
    assert proc.returncode == -signal.SIGKILL, _tail(output)
    plan_id = info["plan_id"]
    (tmp_path / "block").unlink()

    # auto_recover off: the dead world's record stays; its pid shows it is gone
    async with World(db_url, **options(auto_recover=False)) as w:
        stuck = await w.load_plan(plan_id)
        assert stuck.state == "planning"
        [planning_lock] = await w.store.find_records(cls=PLANNING_LOCK)
        assert planning_lock["owner_id"] == info["world_id"]
        [lock] = await w.store.find_records(cls=DELAYED_EXECUTOR_LOCK)
        assert lock["owner_id"] == info["world_id"]

        await w.delayed_executor.tick()
        [lock] = await w.store.find_records(cls=DELAYED_EXECUTOR_LOCK)
        assert lock["owner_id"] == w.id
        plan = await wait_plan_state(w, plan_id, "stopped")
        assert plan.result == "success", plan.steps
        assert plan.actions[1].output == {"ran": True}
        assert [h["name"] for h in plan.execution_history] == [
            "delay",
            "start execution",
            "finish execution",
        ]
        assert await w.store.find_records(cls=PLANNING_LOCK) == []
        assert await w.delayed_plan(plan_id) is None
    # planned once in each process: the hanging attempt and the repaired one
    assert (tmp_path / "plans.log").read_text().split() == [plan_id, plan_id]


# ---- the migration -------------------------------------------------------------------------------
@pytest.fixture(params=conftest.DB_BACKEND_PARAMS)
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database without any table (a fresh PostgreSQL database, dropped afterwards)."""
    if request.param == conftest.DB_BACKEND_SQLITE:
        yield f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
        return
    name = conftest.PG_TEST_DATABASE_PREFIX + "mig_" + os.urandom(4).hex()
    conftest._run_async(lambda: conftest._create_database(name))
    try:
        yield (
            f"postgresql+asyncpg://{conftest.PG_USER}@{conftest.PG_HOST}:{conftest.PG_PORT}/{name}"
        )
    finally:
        conftest._run_async(lambda: conftest._drop_database(name))


async def test_migration_upgrades_a_0001_database(empty_db_url: str) -> None:
    store = Store(empty_db_url)
    await store.migrate("0001")
    async with store.engine.connect() as conn:
        tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
        assert "dynflow_execution_plans" in tables
        assert "dynflow_delayed_plans" not in tables
        assert "dynflow_execution_plan_dependencies" not in tables
    old_id = "0b5e7b5e-0001-4000-8000-000000000000"
    async with store.engine.begin() as conn:
        await conn.execute(
            insert(execution_plans).values(
                uuid=old_id,
                state="stopped",
                result="success",
                label="from 0001",
                execution_history=dumps(
                    [{"time": 1, "name": "finish execution", "world_id": None}]
                ),
                step_ids="[]",
                run_flow='["C"]',
                finalize_flow='["S"]',
            )
        )
    await store.close()

    async with World(empty_db_url, **options()) as w:  # migrates to head at start
        async with w.store.engine.connect() as conn:
            tables = await conn.run_sync(lambda c: inspect(c).get_table_names())
            version = (await conn.execute(select(text_version()))).scalars().all()
        assert {"dynflow_delayed_plans", "dynflow_execution_plan_dependencies"} <= set(tables)
        assert version and "0001" not in version
        old = await w.load_plan(old_id)
        assert (old.state, old.result, old.label) == ("stopped", "success", "from 0001")
        chained = await w.chain(old_id, acts.Greet, name="after the upgrade")
        assert await w.dependencies(chained.id) == [old_id]
        plan = await tick_until_stopped(w, chained.id)
        assert plan.result == "success"


def text_version() -> Any:
    from sqlalchemy import column, table

    return table("dynflow_schema_version", column("version_num")).c.version_num
