"""Conformance: Dynflow's test/concurrency_control_test.rb ("Concurrency Control").

The Ruby file tests V1 sub-plans throttled by the in-memory ``ThrottleLimiter``
(``limit_concurrency_level`` and ``distribute_over_time``; children are planned at once and
held by the limiter). Only V2 sub-plans exist here, with a concurrency limit
(``limit_concurrency_level(n)``: children beyond it are not spawned until others finish); the
scenarios about the concurrency level are ported to that and assert what Dynflow's V2 does.
Where V1 and V2 differ, V2 is followed: held-back children are never planned (V1 plans them and
holds them), and cancelling counts them in ``cancelled_count`` (V1: ``failed_count``).

Skipped (V1 ``distribute_over_time`` / ThrottleLimiter time windows, which V2 — Dynflow's and
ours — does not have):

* "Concurrency Control" / "calculates time interval correctly" — the interval of the time
  distribution stored in ``input[:concurrency_control][:time]``.
* "Concurrency Control" / "cancels tasks which could not be started within the time window" —
  the maintenance-window expiry of the time distribution.

The LoggingThrottleLimiter's running log is replaced by the sub-plans' stored start/end times
and counts of unfinished sub-plans.
"""

from __future__ import annotations

import asyncio

from dynflow import World
from tests.dynflow.conformance.support_sub_plans import (
    PLANNING,
    SHORT_POLL,
    Parent,
    children,
    parent_action,
    peak_concurrency,
    ping,
    release,
    unfinished_children,
    wait_parent,
)


async def _run_to_end(world: World, plan_id: str) -> object:
    future = await world.execute(plan_id)
    return await asyncio.wait_for(future, 20)


async def test_can_be_disabled(world: World) -> None:
    """concurrency_control_test.rb: "Concurrency Control" / "can be disabled"."""
    plan = await world.plan(Parent, 10, batch=100, poll=SHORT_POLL, child="ok")
    done = await _run_to_end(world, plan.id)
    assert (done.state, done.result) == ("stopped", "success")
    action = await parent_action(world, plan.id)
    assert action.concurrency_limit() is None
    # nothing throttled: all ten spawned in one go, all successful
    assert action.output["batches"] == [list(range(1, 11))]
    subs = await world.sub_plans(plan.id, 1)
    assert len(subs) == 10
    assert all((s.state, s.result) == ("stopped", "success") for s in subs)


async def test_limits_by_concurrency_level(world: World) -> None:
    """concurrency_control_test.rb: "Concurrency Control" / "limits by concurrency level"."""
    total, level = 10, 4
    plan = await world.plan(Parent, total, level, batch=100, poll=SHORT_POLL, child="ticking")
    done = await _run_to_end(world, plan.id)
    assert (done.state, done.result) == ("stopped", "success")
    action = await parent_action(world, plan.id)
    assert action.output["success_count"] == total
    assert all(len(batch) <= level for batch in action.output["batches"])
    subs = await world.sub_plans(plan.id, 1)
    assert len(subs) == total
    assert all((s.state, s.result) == ("stopped", "success") for s in subs)
    assert peak_concurrency(subs) <= level


async def test_allows_to_cancel(world: World) -> None:
    """concurrency_control_test.rb: "Concurrency Control" / "allows to cancel"."""
    total = 5
    plan = await world.plan(Parent, total, 0, poll=SHORT_POLL, child="ok")
    future = await world.execute(plan.id)
    # level 0: nothing may start; the parent waits
    action = await wait_parent(world, plan.id)
    assert action.output["planned_count"] == 0
    assert await world.count_plans({"caller_execution_plan_id": plan.id}) == 0

    assert await world.cancel(plan.id) == 1
    done = await asyncio.wait_for(future, 10)
    assert (done.state, done.result) == ("paused", "error")
    action = await parent_action(world, plan.id)
    assert done.steps[action.run_step_id].error["message"] == "A sub task failed"
    # every child was held back and is now cancelled; none ever ran
    assert action.output["cancelled_count"] == total
    assert action.output["failed_count"] + action.output["cancelled_count"] == total
    assert action.output["success_count"] == 0
    assert await world.count_plans({"caller_execution_plan_id": plan.id}) == 0


async def test_uses_the_concurrency_limit_to_handle_the_plans(world: World) -> None:
    """concurrency_control_test.rb: "Concurrency Control" / "uses the throttle limiter to handle
    the plans" (the concurrency level part; the time span is V1-only)."""
    total, level = 10, 2
    triggered = await world.trigger(Parent, total, level, batch=100)
    plan_id = triggered.id
    action = await wait_parent(world, plan_id)

    async def check_step(finished: int) -> None:
        subs = await children(world, plan_id)
        successful = [s for s in subs.values() if (s.state, s.result) == ("stopped", "success")]
        assert len(successful) == finished
        # the rest waits: at most `level` of them started, the others are not planned yet
        assert await unfinished_children(world, plan_id) == min(level, total - finished)
        assert len(subs) == finished + min(level, total - finished)

    await check_step(0)
    for finished in range(1, total + 1):
        subs = await children(world, plan_id)
        running = sorted(i for i, s in subs.items() if s.state != "stopped")
        runs = len(action.output["trace"])
        await release(world, subs[running[0]])
        await ping(world, plan_id)
        if finished == total:
            break
        action = await wait_parent(world, plan_id, lambda a, n=runs: len(a.output["trace"]) > n)
        await check_step(finished)

    plan = await triggered.wait(10)
    assert (plan.state, plan.result) == ("stopped", "success")
    action = await parent_action(world, plan_id)
    assert all(len(batch) <= level for batch in action.output["batches"])
    assert peak_concurrency(await world.sub_plans(plan_id, 1)) <= level


async def test_fails_tasks_which_failed_to_plan_immediately(world: World) -> None:
    """concurrency_control_test.rb: "Concurrency Control" / "fails tasks which failed to plan
    immediately"."""
    PLANNING["fail"] = True
    try:
        total, level = 5, 1
        plan = await world.plan(Parent, total, level, poll=SHORT_POLL, child="unplannable")
        done = await _run_to_end(world, plan.id)
    finally:
        PLANNING["fail"] = False
    assert (done.state, done.result) == ("paused", "error")
    subs = await world.sub_plans(plan.id, 1)
    assert len(subs) == total
    assert all(s.result == "error" for s in subs)
    assert all(s.state == "stopped" for s in subs)
    action = await parent_action(world, plan.id)
    assert action.output["failed_count"] == total
