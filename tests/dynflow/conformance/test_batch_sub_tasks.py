"""Conformance: Dynflow's test/batch_sub_tasks_test.rb ("Batch sub-tasks").

The Ruby file tests the V1 modules ``WithSubPlans`` + ``WithBulkSubPlans``, which do not exist
here: only V2 ``WithSubPlans`` does, and it has the same batching (``total_count``,
``batch(from, size)``, ``batch_size``, ``current_batch``, ``output[:planned_count]``). The
three scenarios are ported to a V2 parent (20 or 10 items, batches of 5, children that finish
at once) and assert what Dynflow's V2 does.

One V1-only detail is not carried over: V1 stops spawning after a batch whose children all
failed to plan (``batch_count`` 1, then 1 + 4 after the resume); V2 — Dynflow's and ours —
spawns every batch, counts those children as failed, and on resume starts over (``resumed_count``),
so "can resume tasks" asserts ``batch_count`` = batches of the first execution + 4.

Every Ruby test of the file applies; none is skipped.
"""

from __future__ import annotations

import asyncio

from dynflow import World
from tests.dynflow.conformance.support_sub_plans import (
    PLANNING,
    SHORT_POLL,
    parent_action,
)
from tests.dynflow.conformance.support_sub_plans import Parent as _Parent


class ParentAction(_Parent):
    """The Ruby ``ParentAction``: batches of 5, children that plan (unless the failure
    simulator says so) and run at once; polls quickly."""

    def plan(self, count: int) -> None:
        super().plan(count, batch=5, poll=SHORT_POLL, child="unplannable")


async def _execute(world: World, plan_id: str) -> object:
    future = await world.execute(plan_id)
    return await asyncio.wait_for(future, 20)


async def test_starts_tasks_in_batches(world: World) -> None:
    """batch_sub_tasks_test.rb: "Batch sub-tasks" / "starts tasks in batches"."""
    PLANNING["fail"] = False
    plan = await world.plan(ParentAction, 20)
    await _execute(world, plan.id)
    action = await parent_action(world, plan.id)
    assert action.output["batch_count"] == action.total_count() // action.batch_size() == 4
    assert action.output["batches"] == [list(range(i, i + 5)) for i in (1, 6, 11, 16)]
    assert action.output["success_count"] == 20
    stored = await world.load_plan(plan.id)
    assert (stored.state, stored.result) == ("stopped", "success")


async def test_can_resume_tasks(world: World) -> None:
    """batch_sub_tasks_test.rb: "Batch sub-tasks" / "can resume tasks"."""
    PLANNING["fail"] = True
    try:
        plan = await world.plan(ParentAction, 20)
        first = await _execute(world, plan.id)
        assert first.state == "paused"
        action = await parent_action(world, plan.id)
        first_batches = action.output["batch_count"]
        # V2 spawns every batch (V1 stopped after the first); all 20 failed to plan
        assert first_batches == 4
        assert action.output["failed_count"] == 20
    finally:
        PLANNING["fail"] = False

    done = await _execute(world, plan.id)
    assert done.state == "stopped"
    assert done.result == "success"
    action = await parent_action(world, plan.id)
    assert action.output["batch_count"] == first_batches + action.total_count() // 5
    assert action.output["total_count"] == action.total_count() == 20
    assert action.output["success_count"] == action.total_count()
    assert action.output["failed_count"] == 0


async def test_is_controlled_only_by_total_count_and_planned_count(world: World) -> None:
    """batch_sub_tasks_test.rb: "Batch sub-tasks" / "is controlled only by total_count and
    output[:planned_count]"."""
    PLANNING["fail"] = False
    plan = await world.plan(ParentAction, 10)
    await _execute(world, plan.id)
    action = await parent_action(world, plan.id)
    assert action.output["planned_count"] == 10
    assert action.can_spawn_next_batch() is False
    assert list(action.current_batch()) == []
    action.output["pending_count"] = 0
    action.output["success_count"] = 5
    assert action.can_spawn_next_batch() is False
    assert list(action.current_batch()) == []
