"""Execution: states, results, flows at run time, events, rescue, resume and skip (spec §2)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from dynflow import Action, EventRejected, ExecutionRejected, World
from tests.support import dummy
from tests.support.code_workflow import ISSUES, IncomingIssues
from tests.support.waiting import wait_for


async def finish(world, action_class, *args, timeout=10, **kwargs):
    triggered = await world.trigger(action_class, *args, **kwargs)
    plan = await triggered.wait(timeout)
    return await world.load_plan(plan.id)


async def step_state(world, plan_id, step_id):
    plan = await world.load_plan(plan_id)
    return plan.steps[step_id].state


async def test_trivial_plan_ends_stopped_success(world):
    plan = await finish(world, dummy.Dummy)
    assert (plan.state, plan.result) == ("stopped", "success")
    assert plan.actions[1].output == {"ok": True}
    history = [h["name"] for h in plan.execution_history]
    assert history == ["start execution", "finish execution"]
    data = plan.to_hash()
    assert data["class"] == "Dynflow::ExecutionPlan"
    assert len(data["started_at"]) == len("2026-01-20 19:00:53.123")
    assert data["real_time"] >= 0 and data["execution_time"] >= 0


async def test_async_run_runs_on_the_loop(world):
    plan = await finish(world, dummy.AsyncDummy)
    assert plan.result == "success"


async def test_incoming_issues_resolve_references(world):
    plan = await finish(world, IncomingIssues, ISSUES)
    assert (plan.state, plan.result) == ("stopped", "success")
    assert plan.actions[4].output == {"updated": {"assignee": "John Doe"}}
    assert all(s.state == "success" for s in plan.steps.values())
    step = plan.steps[7].to_hash()
    assert step["class"] == "Dynflow::ExecutionPlan::Steps::RunStep"
    assert step["queue"] == "default" and step["progress_done"] == 1


async def test_failed_branch_stops_only_its_sequence(world):
    plan = await finish(world, dummy.Parallel, 3)
    assert (plan.state, plan.result) == ("paused", "error")
    # three concurrent dummies ran, the failing one errored, the one after it never ran
    states = {s.id: s.state for s in plan.run_steps()}
    assert sorted(states.values()) == ["error", "pending", "success", "success", "success"]
    failed = plan.failed_steps()[0]
    assert failed.error["message"] == "Trolling detected"
    assert failed.error["exception_class"] == "RuntimeError"
    assert failed.error["backtrace"]


async def test_resume_after_fix(world):
    dummy.FLAKY["fail"] = True
    plan = await finish(world, dummy.Flaky)
    assert (plan.state, plan.result) == ("paused", "error")
    dummy.FLAKY["fail"] = False
    try:
        done = await (await world.resume(plan.id))
    finally:
        dummy.FLAKY["fail"] = True
    plan = await world.load_plan(done.id)
    assert (plan.state, plan.result) == ("stopped", "success")
    assert [h["name"] for h in plan.execution_history] == [
        "start execution",
        "pause execution",
        "start execution",
        "finish execution",
    ]


async def test_resume_requires_paused(world):
    plan = await finish(world, dummy.Dummy)
    with pytest.raises(ExecutionRejected):
        await world.resume(plan.id)


async def test_skip_failed_step_then_resume(world):
    plan = await finish(world, dummy.Parallel, 1)
    failed = plan.failed_steps()[0]
    await world.skip_step(plan.id, failed.id)
    skipped = await world.load_plan(plan.id)
    assert skipped.steps[failed.id].state == "skipping"
    done = await (await world.resume(plan.id))
    plan = await world.load_plan(done.id)
    assert (plan.state, plan.result) == ("stopped", "warning")
    assert plan.steps[failed.id].state == "skipped"


async def test_auto_rescue_skip(world):
    plan = await finish(world, dummy.SkipRescue)
    assert (plan.state, plan.result) == ("stopped", "warning")


async def test_auto_rescue_fail(world):
    plan = await finish(world, dummy.FailRescue)
    assert (plan.state, plan.result) == ("stopped", "error")


async def test_not_serialisable_output_fails_step(world):
    plan = await finish(world, dummy.NotSerializableOutput)
    assert plan.result == "error"
    assert plan.actions[1].output == {"not_serializable": True}
    assert "not serialisable" in plan.failed_steps()[0].error["message"]


async def test_not_serialisable_input_fails_planning(world):
    result = await world.trigger(dummy.Dummy, when=object())
    assert not result.triggered
    plan = await world.load_plan(result.id)
    assert (plan.state, plan.result) == ("stopped", "error")
    assert plan.actions[1].input == {"not_serializable": True}


async def test_suspend_and_event(world):
    triggered = await world.trigger(dummy.Waiting)
    await wait_for(lambda: step_state(world, triggered.id, 2))
    assert await wait_for(lambda: _is(world, triggered.id, 2, "suspended"))
    await world.event(triggered.id, 2, "first")
    plan = await world.load_plan(triggered.id)
    assert plan.steps[2].state == "suspended"
    await world.event(triggered.id, 2, {"finish": True})
    done = await triggered.wait(5)
    plan = await world.load_plan(done.id)
    assert plan.result == "success"
    assert plan.actions[1].output["events"] == ["first", {"finish": True}]
    with pytest.raises(EventRejected):
        await world.event(triggered.id, 2, "late")


async def _is(world, plan_id, step_id, state):
    return await step_state(world, plan_id, step_id) == state


async def test_event_to_unknown_step_rejected(world):
    triggered = await world.trigger(dummy.Waiting)
    assert await wait_for(lambda: _is(world, triggered.id, 2, "suspended"))
    with pytest.raises(EventRejected):
        await world.event(triggered.id, 1, "nope")
    await world.event(triggered.id, 2, {"finish": True})
    await triggered.wait(5)


async def test_planned_event_wakes_step(world):
    plan = await finish(world, dummy.Ticking, delay=0.05)
    assert plan.result == "success"
    assert plan.actions[1].output == {"woken_by": "tick"}


async def test_cancel_sends_cancel_event(world):
    triggered = await world.trigger(dummy.Waiting)
    assert await wait_for(lambda: _is(world, triggered.id, 2, "suspended"))
    assert await world.cancel(triggered.id) == 1
    done = await triggered.wait(5)
    plan = await world.load_plan(done.id)
    assert plan.state == "paused" and plan.result == "error"
    assert plan.actions[1].output["cancelled"] is True


async def test_output_chunks_are_stored(world):
    plan = await finish(world, dummy.WithChunks)
    chunks = await world.output_chunks(plan.id, 1)
    assert [c["chunk"] for c in chunks] == ["hello ", "world"]
    assert all(c["kind"] == "stdout" and isinstance(c["timestamp"], float) for c in chunks)


async def test_queries(world):
    ok = await finish(world, dummy.Dummy)
    bad = await finish(world, dummy.FailingDummy)
    assert await world.count_plans() == 2
    assert await world.count_plans({"state": "paused"}) == 1
    assert await world.count_plans({"state": []}) == 0
    statuses = await world.plan_statuses({"uuid": [ok.id, bad.id, "missing"]})
    assert statuses == {
        ok.id: {"state": "stopped", "result": "success"},
        bad.id: {"state": "paused", "result": "error"},
    }
    ordered = await world.find_plans(order_by="state")
    assert [p.id for p in ordered] == [bad.id, ok.id]
    desc = await world.find_plans(order_by="state", desc=True, per_page=1, page=0)
    assert [p.id for p in desc] == [ok.id]
    with pytest.raises(ValueError):
        await world.find_plans(filters={"bogus": 1})
    with pytest.raises(ValueError):
        await world.find_plans(order_by="uuid")


async def test_events_sent_while_running_are_queued(world):
    triggered = await world.trigger(dummy.SlowSuspend)
    assert await wait_for(lambda: _is(world, triggered.id, 2, "running"))
    await asyncio.gather(world.event(triggered.id, 2, "one"), world.event(triggered.id, 2, "last"))
    done = await triggered.wait(5)
    plan = await world.load_plan(done.id)
    assert plan.actions[1].output["events"] == [None, "one", "last"]


async def test_queued_events_dropped_when_step_finishes(world):
    triggered = await world.trigger(dummy.SlowSuspend)
    assert await wait_for(lambda: _is(world, triggered.id, 2, "running"))
    results = await asyncio.gather(
        world.event(triggered.id, 2, "last"),
        world.event(triggered.id, 2, "too late"),
        return_exceptions=True,
    )
    assert results[0] is None
    assert isinstance(results[1], EventRejected) and "dropped" in str(results[1])
    await triggered.wait(5)


async def test_filters_by_label_and_time_range(world):
    first = await finish(world, dummy.Dummy)
    second = await finish(world, dummy.FailingDummy)
    assert [
        p.id for p in await world.find_plans(filters={"label": "tests.support.dummy.Dummy"})
    ] == [first.id]
    after = await world.find_plans(filters={"started_at_from": second.started_at})
    assert [p.id for p in after] == [second.id]
    before = await world.find_plans(filters={"ended_at_to": first.ended_at})
    assert first.id in [p.id for p in before] and second.id not in [p.id for p in before]
    assert await world.count_plans({"result": ["error", "warning"]}) == 1


async def test_in_memory_database_with_concurrent_reads():
    from dynflow import World

    async with World("sqlite+aiosqlite://", cleaner_interval=None) as world:
        triggered = [await world.trigger(dummy.Waiting) for _ in range(20)]
        for t in triggered:
            assert await wait_for(lambda t=t: _is(world, t.id, 2, "suspended"))

        async def reader():
            for _ in range(20):
                await world.find_plans()

        await asyncio.gather(
            reader(), *[world.event(t.id, 2, {"finish": True}) for t in triggered], reader()
        )
        for t in triggered:
            await t.wait(5)
        states = await world.plan_statuses({"uuid": [t.id for t in triggered]})
        assert {v["state"] for v in states.values()} == {"stopped"}
        assert {v["result"] for v in states.values()} == {"success"}


async def test_named_queue_with_its_own_pool(db_url):
    from dynflow import World

    dummy.SLOW_RUNNING.update(now=0, peak=0)
    async with World(db_url, cleaner_interval=None, queues={"slow": 1}) as world:
        triggered = [await world.trigger(dummy.OnSlowQueue) for _ in range(4)]
        plans = [await world.load_plan((await t.wait(10)).id) for t in triggered]
        assert world.execution_status()["slow"]["pool_size"] == 1
    assert dummy.SLOW_RUNNING["peak"] == 1
    assert all(p.result == "success" for p in plans)
    assert {p.steps[2].queue for p in plans} == {"slow"}
    assert all(p.actions[1].output["thread"].startswith("dynflow-slow") for p in plans)


# ---- found by the engine property tests (tests/reliability/test_engine_properties.py) --------
STORED_TIMER_DELAY = 1.0
HOLD = threading.Event()


class StoredTimer(Action):
    """Suspends on a stored planned event; re-entered after a restart it waits for that same
    event and does not plan another (as an action relying on the stored timer does)."""

    def run(self, event=None):
        if event is None:
            if "deliver_at" not in self.output:
                self.output["deliver_at"] = time.time() + STORED_TIMER_DELAY
                self.plan_event("tick", STORED_TIMER_DELAY)
            self.suspend()
        self.output["woken_by"] = event


class Held(Action):
    def run(self):
        HOLD.wait(30)  # released by the test


class TimerBesideHeld(Action):
    def plan(self):
        with self.concurrence():
            self.plan_action(StoredTimer)
            self.plan_action(Held)


async def test_planned_event_due_during_graceful_stop_survives_it(db_url):
    """A stored event falling due while the world stops (waiting for a busy step) was rejected
    and deleted: after the restart the step waited for good. It stays stored for the next
    world, which delivers it."""
    HOLD.clear()
    first = World(db_url, cleaner_interval=None, termination_timeout=30)
    await first.start()
    triggered = await first.trigger(TimerBesideHeld)
    plan = await wait_step_state_of(first, triggered.id, 3, "suspended")
    await wait_step_state_of(first, triggered.id, 5, "running")
    deliver_at = plan.actions[2].output["deliver_at"]
    stopping = asyncio.create_task(first.stop())
    run = first.executor.runs[triggered.id]
    assert await wait_for(lambda: _true(run.halting))
    assert time.time() < deliver_at, "the event fell due before the stop; raise the delay"
    assert await wait_for(lambda: _true(time.time() > deliver_at + 0.2))  # it fell due
    HOLD.set()
    await stopping
    async with World(db_url, cleaner_interval=None) as second:
        done = await wait_for(lambda: _stopped(second, triggered.id))
        assert (done.state, done.result) == ("stopped", "success")
        assert done.actions[2].output["woken_by"] == "tick"


class SkipWhileStopping(Action):
    """Fails; its rescue (skip) is applied while the world stops."""

    gate: dict = {}

    def run(self):
        raise RuntimeError("fails")

    def rescue_strategy_for_self(self):
        self.gate["plan"] = self.execution_plan_id  # the plan's next write waits
        return "skip"


async def test_graceful_stop_during_rescue_parks_the_plan(db_url):
    """A stop arriving while the skip rescue was being written left the plan ``running`` with
    its execution lock (halt_after_inflight only parked plans in the run phase; the rescue
    then restarted the cursor, which does nothing while halting). It is parked ``paused``.
    The rescue's write is held (a slow database) until the stop is under way."""
    SkipWhileStopping.gate.clear()
    released = asyncio.Event()
    first = World(db_url, cleaner_interval=None, termination_timeout=10)
    await first.start()
    write = first.store.write

    async def slow_write(resource, stmts):
        if resource == SkipWhileStopping.gate.get("plan") and not released.is_set():
            await released.wait()
        return await write(resource, stmts)

    first.store.write = slow_write
    triggered = await first.trigger(SkipWhileStopping)
    assert await wait_for(lambda: _true("plan" in SkipWhileStopping.gate))
    run = first.executor.runs[triggered.id]
    stopping = asyncio.create_task(first.stop())
    assert await wait_for(lambda: _true(run.halting))
    released.set()
    await stopping
    async with World(
        db_url, cleaner_interval=None, auto_recover=False, auto_execute=False
    ) as reader:
        parked = await reader.load_plan(triggered.id)
        assert parked.state == "paused", parked
        assert parked.execution_history[-1]["name"] == "terminate execution"
        assert parked.steps[2].state == "skipping"
    async with World(db_url, cleaner_interval=None) as second:
        done = await wait_for(lambda: _stopped(second, triggered.id))
        assert (done.state, done.result) == ("stopped", "warning")
        assert done.steps[2].state == "skipped"


async def _true(value):
    return value


async def _stopped(world, plan_id):
    plan = await world.load_plan(plan_id)
    return plan if plan is not None and plan.state == "stopped" else None


async def wait_step_state_of(world, plan_id, step_id, state):
    async def reached():
        plan = await world.load_plan(plan_id)
        return plan if plan.steps[step_id].state == state else None

    return await wait_for(reached)
