"""The Timeouts mixin (spec §1.4): a TIMEOUT event fails the step with "Timeout exceeded."."""

from __future__ import annotations

import asyncio

from dynflow import TIMEOUT
from tests.support import mixins
from tests.support.mixins import wait_for_state

RUN_STEP = 2


async def test_timeout_fails_the_step(world):
    triggered = await world.trigger(mixins.WaitingWithTimeout, timeout=0.05)
    plan = await world.load_plan((await triggered.wait(5)).id)
    assert (plan.state, plan.result) == ("paused", "error")
    step = plan.steps[RUN_STEP]
    assert step.state == "error"
    assert step.error["message"] == "Timeout exceeded."
    assert step.error["exception_class"] == "ActionFailed"
    assert plan.actions[1].output == {"timed_out": True}


async def test_timeout_event_is_stored(world):
    triggered = await world.trigger(mixins.WaitingWithTimeout, timeout=30)
    await wait_for_state(world, triggered.id, RUN_STEP, "suspended")
    events = await world.store.planned_events_of(triggered.id)
    assert [(e["step_id"], e["event"], e["optional"]) for e in events] == [
        (RUN_STEP, TIMEOUT, False)
    ]
    # a timeout delivered early has the same effect
    await world.event(triggered.id, RUN_STEP, TIMEOUT)
    plan = await world.load_plan((await triggered.wait(5)).id)
    assert plan.steps[RUN_STEP].error["message"] == "Timeout exceeded."


async def test_step_finishing_in_time_is_not_failed(world):
    triggered = await world.trigger(mixins.WaitingWithTimeout, timeout=0.2, optional=True)
    await wait_for_state(world, triggered.id, RUN_STEP, "suspended")
    events = await world.store.planned_events_of(triggered.id)
    assert [(e["event"], e["optional"]) for e in events] == [(TIMEOUT, True)]
    await world.event(triggered.id, RUN_STEP, {"finish": True})
    done = await triggered.wait(5)
    await asyncio.sleep(0.3)  # past the timeout
    plan = await world.load_plan(done.id)
    assert (plan.state, plan.result) == ("stopped", "success")
    assert plan.actions[1].output == {"finished_by": {"finish": True}}


async def test_async_process_timeout_override(world):
    triggered = await world.trigger(mixins.AsyncCleanupOnTimeout)
    plan = await world.load_plan((await triggered.wait(5)).id)
    assert (plan.state, plan.result) == ("paused", "error")
    assert plan.steps[RUN_STEP].error["message"] == "Timeout exceeded."
    assert plan.actions[1].output == {"cleaned_up": True}
