"""The Cancellable mixin (spec §1.4): cancel and abort reach the action, which decides."""

from __future__ import annotations

import pytest

from dynflow import POLL, Action, Cancellable, Polling, World
from tests.support import mixins
from tests.support.mixins import ExternalService, wait_for_state

RUN_STEP = 2


async def suspended(world: World, action_class: type[Action], **input):
    triggered = await world.trigger(action_class, **input)
    await wait_for_state(world, triggered.id, RUN_STEP, "suspended")
    return triggered


async def ended(world: World, triggered):
    plan = await triggered.wait(5)
    return await world.load_plan(plan.id)


async def test_cancel_calls_cancel_action(world):
    triggered = await suspended(world, mixins.CancellableWaiting)
    assert await world.cancel(triggered.id) == 1
    plan = await ended(world, triggered)
    assert (plan.state, plan.result) == ("paused", "error")
    assert plan.steps[RUN_STEP].error["message"] == "cancelled by the user"
    assert plan.actions[1].output == {"events": [None], "cancelled": True}


async def test_force_cancel_calls_abort_action(world):
    triggered = await suspended(world, mixins.CancellableWaiting)
    assert await world.cancel(triggered.id, force=True) == 1
    plan = await ended(world, triggered)
    # this action's abort_action just returns, so the step finishes
    assert (plan.state, plan.result) == ("stopped", "success")
    assert plan.actions[1].output == {"events": [None], "aborted": True}


async def test_abort_defaults_to_cancel(world):
    triggered = await suspended(world, mixins.CancelOnlyWaiting)
    assert await world.cancel(triggered.id, force=True) == 1
    plan = await ended(world, triggered)
    assert (plan.state, plan.result) == ("paused", "error")
    assert plan.actions[1].output == {"cancelled": True}


@pytest.mark.parametrize("force", [False, True])
async def test_async_run_awaits_async_cancel_action(world, force):
    triggered = await suspended(world, mixins.AsyncCancellableWaiting)
    assert await world.cancel(triggered.id, force=force) == 1
    plan = await ended(world, triggered)
    assert (plan.state, plan.result) == ("stopped", "success")
    assert plan.actions[1].output == {"cancelled_with": "async"}


async def test_plain_run_cannot_wait_for_async_cancel_action(world):
    triggered = await suspended(world, mixins.SyncRunAsyncCancel)
    assert await world.cancel(triggered.id) == 1
    plan = await ended(world, triggered)
    assert (plan.state, plan.result) == ("paused", "error")
    error = plan.steps[RUN_STEP].error
    assert error["exception_class"] == "TypeError"
    assert "handle_cancel_event_async" in error["message"]
    assert plan.actions[1].output == {}


async def test_cancel_reaches_a_cancellable_polling_action(world):
    service = ExternalService(goal=10)
    triggered = await suspended(world, mixins.CancellablePollingJob, service=service.register())
    assert await world.cancel(triggered.id) == 1
    plan = await ended(world, triggered)
    assert (plan.state, plan.result) == ("stopped", "success")
    assert plan.actions[1].output["cancelled"] is True
    assert service.cancelled == [101]
    assert service.polls == 0


async def test_steps_without_the_mixin_are_not_cancelled(world):
    service = ExternalService(goal=10)
    triggered = await suspended(world, mixins.SlowPollingJob, service=service.register())
    assert await world.cancel(triggered.id) == 0
    assert await world.cancel(triggered.id, force=True) == 0
    await world.event(triggered.id, RUN_STEP, POLL)
    plan = await ended(world, triggered)
    assert (plan.state, plan.result) == ("stopped", "success")
    assert "cancelled" not in plan.actions[1].output


def test_the_mixin_marks_classes_cancellable():
    assert mixins.CancellableWaiting.cancellable is True
    assert mixins.CancellablePollingJob.cancellable is True
    assert Polling.cancellable is False and Action.cancellable is False
    assert Cancellable.abstract and not mixins.CancellableWaiting.abstract


def test_handle_cancel_event_ignores_other_events():
    action = mixins.CancellableWaiting(
        world=None, execution_plan_id="plan", id=1, plan_step_id=1, run_step_id=2, phase="run"
    )
    assert action.handle_cancel_event(None) is False
    assert action.handle_cancel_event(POLL) is False
    assert action.output == {}
