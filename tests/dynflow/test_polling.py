"""The Polling mixin (spec §1.4), after the original action_test's Polling cases."""

from __future__ import annotations

import time

import pytest

from dynflow import POLL, TIMEOUT, Action, Polling, World
from tests.support import mixins
from tests.support.mixins import ExternalService, wait_for, wait_for_state

RUN_STEP = 2  # the run step of a plan made of one action


async def finish(world: World, action_class: type[Action], **input):
    triggered = await world.trigger(action_class, **input)
    plan = await triggered.wait(10)
    return await world.load_plan(plan.id)


async def restart(world: World, db_url: str) -> World:
    """Stop ``world`` (its running plans pause) and start a fresh one on the same database."""
    await world.stop()
    fresh = World(db_url, cleaner_interval=None, auto_execute=False, termination_timeout=5)
    await fresh.start()
    return fresh


@pytest.mark.parametrize("job", [mixins.PollingJob, mixins.AsyncPollingJob])
async def test_invokes_the_external_task(world, job):
    service = ExternalService(goal=0)  # done as soon as it is invoked
    plan = await finish(world, job, service=service.register())
    assert (plan.state, plan.result) == ("stopped", "success")
    assert plan.actions[1].output == {"task": {"task_id": 101, "progress": 0}, "finished": True}
    assert (service.invocations, service.polls) == (1, 0)


async def test_suspends_between_polls_with_a_stored_poll_event(world):
    service = ExternalService(goal=10)
    triggered = await world.trigger(mixins.SlowPollingJob, service=service.register())
    await wait_for_state(world, triggered.id, RUN_STEP, "suspended")
    plan = await world.load_plan(triggered.id)
    assert plan.actions[1].output == {
        "task": {"task_id": 101, "progress": 0},
        "poll_attempts": {"total": 0, "failed": 0},
    }
    events = await world.store.planned_events_of(triggered.id)
    assert [(e["step_id"], e["event"]) for e in events] == [(RUN_STEP, POLL)]
    assert 25 < events[0]["deliver_at"] - time.time() <= 30
    # the poll is due in 30 s; deliver it now
    await world.event(triggered.id, RUN_STEP, POLL)
    plan = await world.load_plan((await triggered.wait(5)).id)
    assert (plan.state, plan.result) == ("stopped", "success")
    assert plan.actions[1].output["task"] == {"task_id": 101, "progress": 10}
    assert (service.invocations, service.polls) == (1, 1)


@pytest.mark.parametrize("job", [mixins.PollingJob, mixins.AsyncPollingJob])
async def test_polls_until_done(world, job):
    service = ExternalService(goal=100)
    plan = await finish(world, job, service=service.register())
    assert (plan.state, plan.result) == ("stopped", "success")
    output = plan.actions[1].output
    assert output["task"] == {"task_id": 101, "progress": 100}
    assert output["poll_attempts"] == {"total": 10, "failed": 0}
    assert output["finished"] is True
    assert (service.invocations, service.polls) == (1, 10)
    # plain methods may block: they run in the queue's thread pool, async ones on the loop
    in_pool = {name.startswith("dynflow-default") for name in service.threads}
    assert in_pool == {job is mixins.PollingJob}


async def test_resume_polls_the_old_task(world, db_url):
    service = ExternalService(goal=10)
    triggered = await world.trigger(mixins.SlowPollingJob, service=service.register())
    await wait_for_state(world, triggered.id, RUN_STEP, "suspended")
    fresh = await restart(world, db_url)
    try:
        paused = await fresh.load_plan(triggered.id)
        assert paused.state == "paused" and paused.steps[RUN_STEP].state == "suspended"
        # the step runs again with no event: it polls the task it has, not a new one
        done = await (await fresh.resume(triggered.id))
        plan = await fresh.load_plan(done.id)
    finally:
        await fresh.stop()
    assert (plan.state, plan.result) == ("stopped", "success")
    assert plan.actions[1].output["task"] == {"task_id": 101, "progress": 10}
    assert plan.actions[1].output["poll_attempts"] == {"total": 1, "failed": 0}
    assert (service.invocations, service.polls) == (1, 1)


async def test_resume_invokes_again_when_polling_the_old_task_fails(world, db_url):
    service = ExternalService(goal=10)
    triggered = await world.trigger(mixins.StrictSlowPollingJob, service=service.register())
    await wait_for_state(world, triggered.id, RUN_STEP, "suspended")
    fresh = await restart(world, db_url)
    service.failing = True  # the old task is gone
    service.goal = 0  # a new task is done at once
    try:
        done = await (await fresh.resume(triggered.id))
        plan = await fresh.load_plan(done.id)
    finally:
        await fresh.stop()
    assert (plan.state, plan.result) == ("stopped", "success")
    assert plan.actions[1].output["task"] == {"task_id": 102, "progress": 0}
    assert plan.actions[1].output["poll_attempts"] == {"total": 1, "failed": 1}
    assert (service.invocations, service.polls) == (2, 1)


async def test_resume_keeps_the_old_task_when_the_poll_failure_is_tolerated(world, db_url):
    service = ExternalService(goal=10)
    triggered = await world.trigger(mixins.SlowPollingJob, service=service.register())
    await wait_for_state(world, triggered.id, RUN_STEP, "suspended")
    fresh = await restart(world, db_url)
    service.failing = True
    try:
        future = await fresh.resume(triggered.id)

        async def polled_once():
            plan = await fresh.load_plan(triggered.id)
            step_done = plan.steps[RUN_STEP].state == "suspended"
            return step_done and plan.actions[1].output["poll_attempts"]["total"] == 1 and plan

        plan = await wait_for(polled_once)
        assert plan.actions[1].output["poll_attempts"] == {"total": 1, "failed": 1}
        assert plan.actions[1].output["task"] == {"task_id": 101, "progress": 0}
        assert service.invocations == 1
        service.failing = False
        await fresh.event(triggered.id, RUN_STEP, POLL)
        plan = await fresh.load_plan((await future).id)
    finally:
        await fresh.stop()
    assert (plan.state, plan.result) == ("stopped", "success")
    assert plan.actions[1].output["task"] == {"task_id": 101, "progress": 10}
    assert plan.actions[1].output["poll_attempts"] == {"total": 2, "failed": 0}
    assert (service.invocations, service.polls) == (1, 2)


async def test_tolerates_up_to_two_consecutive_poll_failures(world):
    """With ``poll_max_retries = 3`` (the default) two failures in a row are tolerated."""
    service = ExternalService(goal=30)
    service.failing_polls = {2, 3}
    plan = await finish(world, mixins.PollingJob, service=service.register())
    assert (plan.state, plan.result) == ("stopped", "success")
    # polls 1, 4 and 5 made progress; a success resets the failure count
    assert plan.actions[1].output["task"] == {"task_id": 101, "progress": 30}
    assert plan.actions[1].output["poll_attempts"] == {"total": 5, "failed": 0}
    assert (service.invocations, service.polls) == (1, 5)


@pytest.mark.parametrize("job", [mixins.PollingJob, mixins.AsyncPollingJob])
async def test_third_consecutive_poll_failure_fails_the_step(world, job):
    """As Dynflow's ``rescue_external_task``: the ``poll_max_retries``-th failure in a row
    fails the step (it was the one after it)."""
    service = ExternalService(goal=100)
    # two failures, a success (resets the count), then three failures in a row
    service.failing_polls = {2, 3, 5, 6, 7}
    plan = await finish(world, job, service=service.register())
    assert (plan.state, plan.result) == ("paused", "error")
    step = plan.steps[RUN_STEP]
    assert step.state == "error"
    assert step.error["exception_class"] == "RuntimeError"
    assert step.error["message"] == "service unavailable"
    assert plan.actions[1].output["task"] == {"task_id": 101, "progress": 20}
    assert plan.actions[1].output["poll_attempts"] == {"total": 7, "failed": 3}
    assert (service.invocations, service.polls) == (1, 7)
    assert await world.store.planned_events_of(plan.id) == []


class DefaultIntervals(Polling, abstract=True):
    pass


@pytest.mark.parametrize(
    ("total", "interval"),
    [(0, 0.5), (4, 0.5), (5, 1), (9, 1), (10, 2), (15, 4), (20, 8), (25, 16), (29, 16), (500, 16)],
)
def test_poll_interval_grows_one_level_every_five_attempts(total, interval):
    action = DefaultIntervals(
        world=None, execution_plan_id="plan", id=1, plan_step_id=1, run_step_id=2, phase="run",
        output={"poll_attempts": {"total": total, "failed": 0}},
    )
    assert action.poll_interval() == interval


def test_poll_interval_before_any_poll_starts_the_counters():
    action = DefaultIntervals(
        world=None, execution_plan_id="plan", id=1, plan_step_id=1, run_step_id=2, phase="run"
    )
    assert action.poll_interval() == 0.5
    assert action.output == {"poll_attempts": {"total": 0, "failed": 0}}


async def test_intervals_grow_while_polling(world):
    service = ExternalService(goal=50)
    plan = await finish(world, mixins.GrowingIntervalsJob, service=service.register())
    assert (plan.state, plan.result) == ("stopped", "success")
    # intervals (0.01, 0.02, 0.03), next level every 2 polls; no wait after the 5th (done)
    assert plan.actions[1].output["intervals"] == [0.01, 0.01, 0.02, 0.02, 0.03]
    assert plan.actions[1].output["poll_attempts"] == {"total": 5, "failed": 0}


async def test_timeout_fails_the_step_after_three_iterations(world):
    service = ExternalService()
    service.stuck = True
    plan = await finish(world, mixins.TimingOutJob, service=service.register())
    assert (plan.state, plan.result) == ("paused", "error")
    step = plan.steps[RUN_STEP]
    assert step.error["message"] == "Timeout exceeded."
    # polls at 0.3 s and 0.6 s, then the timeout at 0.75 s
    assert plan.actions[1].output["events"] == [None, POLL, POLL, TIMEOUT]
    assert plan.actions[1].output["poll_attempts"] == {"total": 2, "failed": 0}
    assert service.polls == 2


async def test_unrecognized_event_fails_the_step(world):
    service = ExternalService(goal=10)
    triggered = await world.trigger(mixins.SlowPollingJob, service=service.register())
    await wait_for_state(world, triggered.id, RUN_STEP, "suspended")
    await world.event(triggered.id, RUN_STEP, "bogus")
    plan = await world.load_plan((await triggered.wait(5)).id)
    assert (plan.state, plan.result) == ("paused", "error")
    assert plan.steps[RUN_STEP].error["exception_class"] == "ValueError"
    assert "unrecognized event 'bogus'" in plan.steps[RUN_STEP].error["message"]
