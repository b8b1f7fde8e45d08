"""Singleton actions (spec §1.9; the original's action_test "Singleton" cases, the orphan lock
cleanup of abnormal_states_recovery_test, and a SIGKILL while a singleton plan runs)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dynflow import World
from dynflow.locks import SINGLETON_LOCK, lock_data, plan_owner
from tests.support import singleton_worker
from tests.support.singleton_actions import (
    FAIL,
    FailingSingleton,
    SingletonAction,
    SingletonActionWithFinalize,
    SingletonActionWithRun,
    SlowSingleton,
    SuspendedSingletonAction,
)
from tests.support.waiting import wait_for, wait_plan_state

WORKER = Path(singleton_worker.__file__).resolve()


async def singleton_locks(world: World, cls: Any) -> list[dict[str, Any]]:
    return await world.store.find_records(cls=SINGLETON_LOCK, record_id=cls.singleton_lock_id())


async def test_holds_the_lock_from_planning_until_it_stops(world: World) -> None:
    for cls in (SingletonAction, SingletonActionWithFinalize):
        plan = await world.plan(cls)
        assert plan.state == "planned"
        held = await singleton_locks(world, cls)
        assert [h["owner_id"] for h in held] == [f"execution-plan:{plan.id}"]
        assert held[0]["id"] == f"singleton-action:{cls.name()}"
        done = await (await world.execute(plan.id))
        assert (done.state, done.result) == ("stopped", "success")
        assert await singleton_locks(world, cls) == []


async def test_does_not_unlock_when_suspended(world: World) -> None:
    plan = await world.plan(SuspendedSingletonAction)
    future = await world.execute(plan.id)
    await wait_for(lambda: _step_state(world, plan.id, 2, "suspended"))
    assert len(await singleton_locks(world, SuspendedSingletonAction)) == 1
    await world.event(plan.id, 2, None)
    done = await asyncio.wait_for(future, 10)
    assert (done.state, done.result) == ("stopped", "success")
    assert await singleton_locks(world, SuspendedSingletonAction) == []


async def _step_state(world: World, plan_id: str, step_id: int, state: str) -> bool:
    plan = await world.load_plan(plan_id)
    return plan is not None and plan.steps[step_id].state == state


async def test_can_be_active_only_once(world: World) -> None:
    # plan1 takes the lock when it is planned
    plan1 = await world.plan(SingletonActionWithRun)
    assert (plan1.state, plan1.result) == ("planned", "pending")

    # plan2 cannot: planning fails
    plan2 = await world.plan(SingletonActionWithRun)
    assert (plan2.state, plan2.result) == ("stopped", "error")
    message = f"Action {SingletonActionWithRun.name()} is already active"
    assert plan2.failed_steps()[0].error["message"] == message
    stored = await world.load_plan(plan2.id)
    assert (stored.state, stored.result) == ("stopped", "error")
    triggered = await world.trigger(SingletonActionWithRun)
    assert not triggered.planned and triggered.error["message"] == message

    # something bad happens: plan1's lock is gone, plan3 takes it
    await plan1.actions[1].singleton_unlock()
    plan3 = await world.plan(SingletonActionWithRun)
    assert plan3.state == "planned"

    # plan1 tries to take it again when its run starts: fails
    done1 = await (await world.execute(plan1.id))
    assert (done1.state, done1.result) == ("paused", "error")
    assert done1.failed_steps()[0].error["message"] == message

    # plan3 holds it and finishes, releasing it
    done3 = await (await world.execute(plan3.id))
    assert (done3.state, done3.result) == ("stopped", "success")
    assert await singleton_locks(world, SingletonActionWithRun) == []


async def test_cannot_be_unlocked_by_another_plan(world: World) -> None:
    plan1 = await world.plan(SingletonActionWithRun)
    plan2 = await world.plan(SingletonActionWithRun)
    assert plan2.state == "stopped"
    await plan2.actions[1].singleton_unlock()  # not its lock: nothing happens
    held = await singleton_locks(world, SingletonActionWithRun)
    assert [h["owner_id"] for h in held] == [plan_owner(plan1.id)]
    assert await plan1.actions[1].holds_singleton_lock()
    assert not await plan2.actions[1].holds_singleton_lock()
    done = await (await world.execute(plan1.id))
    assert (done.state, done.result) == ("stopped", "success")


async def test_a_paused_plan_releases_and_retakes_the_lock(world: World) -> None:
    FAIL["fail"] = True
    try:
        done = await (await world.trigger(FailingSingleton)).wait(10)
        assert (done.state, done.result) == ("paused", "error")
        assert await singleton_locks(world, FailingSingleton) == []
        other = await world.plan(FailingSingleton)  # the paused plan is not active
        assert other.state == "planned"
        assert await world.halt(other.id) == "stopped"
        FAIL["fail"] = False
        resumed = await (await world.resume(done.id))
        assert (resumed.state, resumed.result) == ("stopped", "success")
        assert await singleton_locks(world, FailingSingleton) == []
    finally:
        FAIL["fail"] = False


async def test_atomic_across_worlds_sharing_a_database(db_url: str) -> None:
    options: dict[str, Any] = {"cleaner_interval": None, "auto_execute": False}
    async with World(db_url, **options) as w1, World(db_url, **options) as w2:
        for _ in range(3):
            results = await asyncio.gather(
                *(w.trigger(SuspendedSingletonAction) for w in (w1, w2, w1, w2))
            )
            winners = [r for r in results if r.triggered]
            assert len(winners) == 1, results
            losers = [r for r in results if not r.triggered]
            assert all("is already active" in r.error["message"] for r in losers)
            winner = winners[0]
            owner = w1 if w1.is_running(winner.id) else w2
            await wait_for(
                lambda o=owner, pid=winner.id: _step_state(o, pid, 2, "suspended")
            )
            await owner.event(winner.id, 2, None)
            done = await winner.wait(10)
            assert (done.state, done.result) == ("stopped", "success")
        assert await singleton_locks(w1, SuspendedSingletonAction) == []


async def test_orphaned_locks_are_released_at_start(db_url: str) -> None:
    options: dict[str, Any] = {"cleaner_interval": None, "auto_execute": False}
    async with World(db_url, **options) as world:
        stopped = await (await world.trigger(SingletonActionWithRun)).wait(10)
        planned = await world.plan(SingletonAction)
        store = world.store
        old = {**lock_data("0" * 36), "acquired_at": time.time() - 3600}
        for lock_id, plan_id, data in (
            ("missing", "0" * 36, old),
            ("fresh", "1" * 36, lock_data("1" * 36)),
            ("stopped", stopped.id, lock_data(stopped.id)),
        ):
            await store.acquire_lock(
                SINGLETON_LOCK, f"singleton-action:{lock_id}", plan_owner(plan_id), data
            )
    async with World(db_url, **options) as world:
        ids = {r["id"] for r in await world.store.find_records(cls=SINGLETON_LOCK)}
        # the planned plan keeps its lock; a lock younger than its plan's insert is left alone
        assert ids == {SingletonAction.singleton_lock_id(), "singleton-action:fresh"}
        assert (await world.load_plan(planned.id)).state == "planned"


# ---- a crash while a singleton plan runs --------------------------------------------------------
async def test_sigkill_while_a_singleton_runs(db_url: str, tmp_path: Path) -> None:
    output = tmp_path / "worker.out"
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(WORKER), "--db", db_url, "--dir", str(tmp_path)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    ready_file = tmp_path / singleton_worker.READY_FILE
    try:
        deadline = time.monotonic() + 30
        while not ready_file.exists():
            if proc.poll() is not None:
                pytest.fail(f"worker exited early:\n{output.read_text(errors='replace')}")
            if time.monotonic() > deadline:
                pytest.fail(f"worker not ready:\n{output.read_text(errors='replace')}")
            await asyncio.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()  # reaped, so the recovery sees the process is gone
    assert proc.returncode == -signal.SIGKILL
    ready = json.loads(ready_file.read_text())
    plan_id = ready["plan_id"]

    # the lock outlived the process
    async with World(db_url, auto_recover=False, auto_execute=False, cleaner_interval=None) as w:
        held = await singleton_locks(w, SlowSingleton)
        assert [h["owner_id"] for h in held] == [plan_owner(plan_id)]
        blocked = await w.plan(SlowSingleton, marker=str(tmp_path / "blocked"))
        assert (blocked.state, blocked.result) == ("stopped", "error")

    # a new world recovers the plan (paused: its step was running) and releases the lock
    async with World(db_url, cleaner_interval=None, termination_timeout=5) as world:
        plan = await wait_plan_state(world, plan_id, "paused")
        assert plan.result == "error"
        step = plan.failed_steps()[0]
        assert step.error["message"] == "Abnormal termination (previous state: running)"
        assert await singleton_locks(world, SlowSingleton) == []
        again = await world.trigger(
            SlowSingleton, marker=str(tmp_path / "again"), sleep=0
        )
        assert again.triggered, again
        done = await again.wait(10)
        assert (done.state, done.result) == ("stopped", "success")
        assert await singleton_locks(world, SlowSingleton) == []
        worlds = {r["id"] for r in await world.store.find_records(cls="ExecutorWorld")}
        assert ready["world_id"] not in worlds
