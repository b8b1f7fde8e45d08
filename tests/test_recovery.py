"""Recovery of plans left behind by a world that died (spec §5.4), in one process.

The crash is simulated by abandoning a world without any shutdown work: its tasks are cancelled,
its store is closed, its world record and execution locks stay in the database. The SIGKILL
test of a real process lives in test_crash_recovery.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from dynflow import Action, World
from tests.support import dummy
from tests.support.waiting import wait_plan_state, wait_step_state


class Blocking(Action):
    async def run(self) -> None:
        await asyncio.Event().wait()


class SkipOnCrash(Action):
    async def run(self) -> None:
        await asyncio.Event().wait()

    def rescue_strategy_for_self(self) -> str:
        return "skip"


async def abandon(world: World) -> None:
    """Drop a world as a SIGKILL would: nothing more reaches the database."""
    world.store.writer._task.cancel()
    for task in list(world.executor._tasks) + world._background:
        task.cancel()
    for run in world.executor.runs.values():
        for handle in run.timers.values():
            handle.cancel()
    await asyncio.sleep(0)
    if world.store.writer._conn is not None:
        await world.store.writer._conn.close()
    await world.store.engine.dispose()


def options(**extra: Any) -> dict[str, Any]:
    return {"cleaner_interval": None, "termination_timeout": 2, **extra}


async def test_recovery_after_crash(db_url):
    first = World(db_url, **options())
    await first.start()
    running = await first.trigger(Blocking)
    waiting = await first.trigger(dummy.Waiting)
    ticking = await first.trigger(dummy.Ticking, delay=0.5)
    skipped = await first.trigger(SkipOnCrash)
    done = await first.trigger(dummy.Dummy)
    await done.wait(5)
    await wait_step_state(first, running.id, 2, "running")
    await wait_step_state(first, skipped.id, 2, "running")
    await wait_step_state(first, waiting.id, 2, "suspended")
    await wait_step_state(first, ticking.id, 2, "suspended")
    await abandon(first)
    await asyncio.sleep(0.6)  # the tick falls due while no world runs

    second = World(db_url, **options())
    await second.start()
    try:
        plan = await second.load_plan(running.id)
        assert (plan.state, plan.result) == ("paused", "error")
        assert plan.steps[2].error["message"] == "Abnormal termination (previous state: running)"
        assert [h["name"] for h in plan.execution_history][-1] == "terminate execution"

        plan = await wait_plan_state(second, skipped.id)
        assert (plan.state, plan.result) == ("stopped", "warning")

        plan = await wait_plan_state(second, ticking.id)
        assert (plan.state, plan.result) == ("stopped", "success")
        assert plan.actions[1].output["woken_by"] == "tick"

        await wait_step_state(second, waiting.id, 2, "suspended")
        await second.event(waiting.id, 2, {"finish": True})
        plan = await wait_plan_state(second, waiting.id)
        assert (plan.state, plan.result) == ("stopped", "success")

        plan = await second.load_plan(done.id)
        assert (plan.state, plan.result) == ("stopped", "success")
        assert await second.count_plans() == 5
        assert await second.store.find_records(cls="ExecutionLock") == [] or all(
            r["owner_id"] == second.id for r in await second.store.find_records(cls="ExecutionLock")
        )
    finally:
        await second.stop()


async def test_graceful_stop_parks_and_resumes(db_url):
    first = World(db_url, **options())
    await first.start()
    waiting = await first.trigger(dummy.Waiting)
    await wait_step_state(first, waiting.id, 2, "suspended")
    await first.stop()
    second = World(db_url, **options())
    await second.start()
    try:
        plan = await second.load_plan(waiting.id)
        assert "terminate execution" in [h["name"] for h in plan.execution_history]
        await wait_step_state(second, waiting.id, 2, "suspended")
        assert second.is_running(waiting.id)
        await second.event(waiting.id, 2, {"finish": True})
        plan = await wait_plan_state(second, waiting.id)
        assert (plan.state, plan.result) == ("stopped", "success")
    finally:
        await second.stop()


async def test_auto_execute_runs_planned_plans(db_url):
    first = World(db_url, **options(auto_execute=False))
    await first.start()
    planned = await first.plan(dummy.Dummy)
    failed = await (await first.trigger(dummy.FailingDummy)).wait(5)
    await first.stop()
    assert planned.state == "planned"

    second = World(db_url, **options())
    await second.start()
    try:
        plan = await wait_plan_state(second, planned.id)
        assert plan.result == "success"
        untouched = await second.load_plan(failed.id)
        assert (untouched.state, untouched.result) == ("paused", "error")
    finally:
        await second.stop()



class RerunsAfterCrash(Action):
    """Blocks on its first run; run again (after the crash) it finishes."""

    rerun_on_recovery = True
    blocking = True

    async def run(self, event: Any = None) -> None:
        self.output["event"] = event
        if type(self).blocking:
            await asyncio.Event().wait()

    def rescue_strategy_for_self(self) -> str:
        return "fail"


async def test_rerun_on_recovery_runs_the_running_step_again(db_url):
    """A step running at the crash of an action with ``rerun_on_recovery`` is not failed
    ("Abnormal termination" and its rescue strategy "fail" would stop the plan with an error):
    it runs again with no event and the plan goes on. Plain actions keep Dynflow's way."""
    first = World(db_url, **options())
    await first.start()
    rerun = await first.trigger(RerunsAfterCrash)
    plain = await first.trigger(Blocking)
    await wait_step_state(first, rerun.id, 2, "running")
    await wait_step_state(first, plain.id, 2, "running")
    await abandon(first)
    RerunsAfterCrash.blocking = False

    second = World(db_url, **options())
    await second.start()
    try:
        done = await wait_plan_state(second, rerun.id)
        assert (done.state, done.result) == ("stopped", "success")
        assert done.steps[2].error is None
        assert done.actions[1].output["event"] is None
        assert "terminate execution" in [h["name"] for h in done.execution_history]
        plan = await second.load_plan(plain.id)
        assert (plan.state, plan.result) == ("paused", "error")
        assert plan.steps[2].error["message"] == "Abnormal termination (previous state: running)"
    finally:
        RerunsAfterCrash.blocking = True
        await second.stop()
