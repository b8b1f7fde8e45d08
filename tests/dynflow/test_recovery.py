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
from tests.support.waiting import wait_for, wait_plan_state, wait_step_state


class Blocking(Action):
    async def run(self) -> None:
        await asyncio.Event().wait()


class SkipOnCrash(Action):
    async def run(self) -> None:
        await asyncio.Event().wait()

    def rescue_strategy_for_self(self) -> str:
        return "skip"




def options(**extra: Any) -> dict[str, Any]:
    return {"cleaner_interval": None, "termination_timeout": 2, **extra}


async def test_recovery_after_crash(db_url):
    first = World(db_url, **options())
    await first.start()
    triggered_at = asyncio.get_running_loop().time()
    running = await first.trigger(Blocking)
    waiting = await first.trigger(dummy.Waiting)
    ticking = await first.trigger(dummy.Ticking, delay=3.0)  # still waiting at the crash
    skipped = await first.trigger(SkipOnCrash)
    done = await first.trigger(dummy.Dummy)
    await done.wait(5)
    await wait_step_state(first, running.id, 2, "running")
    await wait_step_state(first, skipped.id, 2, "running")
    await wait_step_state(first, waiting.id, 2, "suspended")
    await wait_step_state(first, ticking.id, 2, "suspended")
    await first.abandon()
    # the tick falls due while no world runs
    await asyncio.sleep(max(0.0, 3.1 - (asyncio.get_running_loop().time() - triggered_at)))

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
    await first.abandon()
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


class WaitsForLongTimer(Action):
    """Suspends on a stored planned event due in an hour."""

    def run(self, event: Any = None) -> None:
        if event is None:
            self.plan_event("tick", 3600)
            self.suspend()


class FailsOnCrash(Action):
    async def run(self) -> None:
        await asyncio.Event().wait()

    def rescue_strategy_for_self(self) -> str:
        return "fail"


class TimerAndFailOnCrash(Action):
    def plan(self) -> None:
        with self.concurrence():
            self.plan_action(WaitsForLongTimer)
            self.plan_action(FailsOnCrash)


async def test_plan_stopped_by_recovery_keeps_no_planned_events(db_url):
    """Found by the engine property tests: a plan the recovery stopped (rescue strategy
    "fail") kept its stored planned events for good; every other way of stopping a plan deletes
    them."""
    first = World(db_url, **options())
    await first.start()
    triggered = await first.trigger(TimerAndFailOnCrash)
    await wait_step_state(first, triggered.id, 3, "suspended")
    await wait_step_state(first, triggered.id, 5, "running")
    assert len(await first.store.planned_events_of(triggered.id)) == 1
    await first.abandon()

    second = World(db_url, **options())
    await second.start()
    try:
        plan = await second.load_plan(triggered.id)
        assert (plan.state, plan.result) == ("stopped", "error")
        assert await second.store.planned_events_of(triggered.id) == []
    finally:
        await second.stop()


class FinalizeFailsThenCrash(Action):
    """Its finalize fails at the first attempt; the world dies right then, before the rescue
    (skip) is stored: to hit that moment for sure, the rescue strategy abandons the world."""

    attempts: list[int] = []
    crashes: list[asyncio.Task[None]] = []

    def run(self) -> None:
        self.output["ran"] = True

    def finalize(self) -> None:
        type(self).attempts.append(1)
        if len(type(self).attempts) == 1:
            raise RuntimeError("finalize failed")

    def rescue_strategy_for_self(self) -> str:
        if not type(self).crashes and self.world is not None:
            type(self).crashes.append(asyncio.get_running_loop().create_task(self.world.abandon()))
        return "skip"


async def test_recovery_skip_rescue_skips_a_failed_finalize_step(db_url):
    """Found by the engine property tests: the skip rescue applied by the recovery only skipped
    failed run steps; a failed finalize step ran again although the strategy said skip. Like
    the executor's rescue (spec §1.6: failed steps are marked for skipping; a finalize step
    becomes skipped), it is skipped and the plan ends warning."""
    FinalizeFailsThenCrash.attempts.clear()
    FinalizeFailsThenCrash.crashes.clear()
    first = World(db_url, **options())
    await first.start()
    triggered = await first.trigger(FinalizeFailsThenCrash)
    await wait_for(lambda: _done(FinalizeFailsThenCrash.crashes))

    second = World(db_url, **options())
    await second.start()
    try:
        plan = await wait_plan_state(second, triggered.id)
        assert (plan.state, plan.result) == ("stopped", "warning")
        assert plan.steps[3].state == "skipped"
        assert FinalizeFailsThenCrash.attempts == [1]
    finally:
        await second.stop()


async def _done(tasks: list[asyncio.Task[None]]) -> bool:
    return bool(tasks) and all(t.done() for t in tasks)


class SpawnsWhenLetGo(Action):
    """Triggers a child once let go (as a batch plans its children)."""

    gate: asyncio.Event

    async def run(self) -> None:
        await type(self).gate.wait()
        child = await self.world.trigger_with_options(dummy.Dummy, caller_action=self)
        self.output["child"] = child.execution_plan_id


async def test_a_plan_triggered_by_a_step_while_the_world_stops_runs_at_the_next_start(db_url):
    """A graceful stop while a step is triggering plans (a batch planning its hosts' tasks):
    the plans are stored and run at the next start. They were refused ("the world is not
    running") and lost: the batch ended as if it had planned them (found by the SIGTERM run
    with real hosts: 100 of 200 jobs never ran)."""
    SpawnsWhenLetGo.gate = asyncio.Event()
    first = World(db_url, **options())
    await first.start()
    parent = await first.trigger(SpawnsWhenLetGo)
    await wait_step_state(first, parent.id, 2, "running")
    stopping = asyncio.ensure_future(first.stop())
    await asyncio.sleep(0)  # stop() has begun: the world is terminating
    assert first.terminating
    SpawnsWhenLetGo.gate.set()
    await stopping

    second = World(db_url, **options())
    await second.start()
    try:
        plan = await second.load_plan(parent.id)
        assert (plan.state, plan.result) == ("stopped", "success")
        child = await wait_plan_state(second, plan.actions[1].output["child"])
        assert (child.state, child.result) == ("stopped", "success")
    finally:
        await second.stop()
