"""Conformance: Dynflow's test/v2_sub_plans_test.rb (V2 ``WithSubPlans``: batches, Pings,
the concurrency limit).

The Ruby tests run the parent with ``Dynflow::Testing`` (a managed clock, mocked ``trigger``
and stubbed persistence counts). Here the parent runs for real on both stores: its polling
interval is long, the test delivers the Pings itself (the clock's ``progress``), and the
children are gated plans the test lets finish, so the counts the parent reads from the database
are the ones the Ruby test stubs. See ``support_sub_plans``.

Every Ruby test of the file applies; none is skipped.
"""

from __future__ import annotations

from dynflow import World
from tests.dynflow.conformance.support_sub_plans import (
    LONG_POLL,
    Parent,
    children,
    counts,
    latest_ping_due,
    parent_action,
    ping,
    release,
    wait_parent,
)

DUE_DELTA = 5.0  # the Ruby tests allow 1 s; a loaded machine needs more


async def test_spawns_all_sub_plans_in_one_go_with_high_enough_batch_size(world: World) -> None:
    """v2_sub_plans_test.rb: "V2 sub-plans" / "normal operation" / "spawns all sub-plans in one
    go with high-enough batch size and polls until they are done"."""
    triggered = await world.trigger(Parent, 3)
    action = await wait_parent(world, triggered.id)
    out = action.output
    assert (out["total_count"], out["planned_count"], out["pending_count"]) == (3, 3, 3)
    # trigger was called three times, in one batch
    assert out["batches"] == [[1, 2, 3]]
    assert sorted(await children(world, triggered.id)) == [1, 2, 3]
    # nothing left to spawn: the next Ping comes after the polling interval
    assert out["pings"] == [LONG_POLL]
    assert abs(await latest_ping_due(world, triggered.id) - LONG_POLL) < DUE_DELTA

    # a Ping while no sub-plan finished yet: the parent keeps waiting and polls again later
    await ping(world, triggered.id)
    action = await wait_parent(world, triggered.id, lambda a: len(a.output["trace"]) == 2)
    assert action.output["pings"] == [LONG_POLL, LONG_POLL]
    assert abs(await latest_ping_due(world, triggered.id) - LONG_POLL) < DUE_DELTA
    assert not action.is_done()
    assert counts(action.output)["success_count"] == 0

    # all three finish: the next Ping ends the parent successfully
    for child in (await children(world, triggered.id)).values():
        await release(world, child)
    await ping(world, triggered.id)
    plan = await triggered.wait(10)
    assert (plan.state, plan.result) == ("stopped", "success")
    action = await parent_action(world, triggered.id)
    assert plan.steps[action.run_step_id].state == "success"
    assert action.is_done()
    assert action.output["success_count"] == 3
    assert len(action.output["batches"]) == 1


async def test_spawns_sub_plans_in_multiple_batches_and_polls_until_done(world: World) -> None:
    """v2_sub_plans_test.rb: "V2 sub-plans" / "normal operation" / "spawns sub-plans in multiple
    batches and polls until they are done"."""
    triggered = await world.trigger(Parent, 7)
    action = await wait_parent(world, triggered.id, lambda a: a.output["planned_count"] == 7)
    out = action.output
    # the first run planned a batch of 5 ...
    first = out["trace"][0]
    assert (first["total_count"], first["planned_count"], first["pending_count"]) == (7, 5, 5)
    # ... and, with more to spawn, a Ping at once (not on the clock): the next batch of 2
    assert out["pings"][0] is None
    assert out["batches"] == [[1, 2, 3, 4, 5], [6, 7]]
    assert sorted(await children(world, triggered.id)) == [1, 2, 3, 4, 5, 6, 7]
    # everything spawned: the next Ping comes after the polling interval
    assert out["pings"][1] == LONG_POLL
    assert abs(await latest_ping_due(world, triggered.id) - LONG_POLL) < DUE_DELTA

    subs = await children(world, triggered.id)
    for item in (1, 2, 3):
        await release(world, subs[item])
    await ping(world, triggered.id)
    action = await wait_parent(world, triggered.id, lambda a: a.output["success_count"] == 3)
    assert not action.is_done()
    assert action.output["planned_count"] == 7
    assert abs(await latest_ping_due(world, triggered.id) - LONG_POLL) < DUE_DELTA

    for item in (4, 5, 6, 7):
        await release(world, subs[item])
    await ping(world, triggered.id)
    plan = await triggered.wait(10)
    assert (plan.state, plan.result) == ("stopped", "success")
    action = await parent_action(world, triggered.id)
    assert action.is_done()
    assert counts(action.output)["success_count"] == 7
    assert len(action.output["batches"]) == 2  # trigger was called 5 + 2 times, no more


async def test_concurrency_limit_allows_storage_and_retrieval(world: World) -> None:
    """v2_sub_plans_test.rb: "V2 sub-plans" / "with concurrency control" / "allows storage and
    retrieval"."""
    done = await (await world.trigger(Parent, 0)).wait(10)
    assert (done.state, done.result) == ("stopped", "success")
    action = await parent_action(world, done.id)
    assert action.concurrency_limit() is None
    assert action.concurrency_limit_capacity() is None

    done = await (await world.trigger(Parent, 0, 1)).wait(10)
    assert (done.state, done.result) == ("stopped", "success")
    action = await parent_action(world, done.id)
    assert action.input["dynflow"]["concurrency_limit"] == 1
    assert action.concurrency_limit() == 1
    assert action.concurrency_limit_capacity() == 1


async def test_reduces_the_batch_size_to_fit_within_the_concurrency_limit(world: World) -> None:
    """v2_sub_plans_test.rb: "V2 sub-plans" / "with concurrency control" / "reduces the batch
    size to fit within the concurrency limit"."""
    triggered = await world.trigger(Parent, 5, 2)
    plan_id = triggered.id

    # the first run plans only the 2 sub-plans the limit allows (batch size is 5)
    action = await wait_parent(world, plan_id)
    out = action.output
    assert (out["total_count"], out["planned_count"], out["pending_count"]) == (5, 2, 2)
    assert action.concurrency_limit_capacity() == 0
    assert out["batch_count"] == 1
    assert out["batches"] == [[1, 2]]
    # no capacity left: the Ping comes after the polling interval
    assert out["pings"] == [LONG_POLL]
    assert abs(await latest_ping_due(world, plan_id) - LONG_POLL) < DUE_DELTA

    async def step(finish: list[int]) -> Parent:
        subs = await children(world, plan_id)
        for item in finish:
            await release(world, subs[item])
        runs = len((await parent_action(world, plan_id)).output["trace"])
        await ping(world, plan_id)
        return await wait_parent(world, plan_id, lambda a: len(a.output["trace"]) > runs)

    # 1 sub-plan finished: only 1 more fits into the capacity
    action = await step([1])
    assert action.output["planned_count"] == 3
    assert action.output["batches"][-1] == [3]

    # 2 finished: one more
    action = await step([2])
    assert action.output["planned_count"] == 4
    assert action.output["batches"][-1] == [4]

    # 4 finished: room for 2, but only 1 is left
    action = await step([3, 4])
    assert action.output["planned_count"] == 5
    assert action.output["batches"][-1] == [5]
    assert action.concurrency_limit_capacity() == 1

    # all 5 finished: nothing more is triggered and the parent succeeds
    subs = await children(world, plan_id)
    await release(world, subs[5])
    await ping(world, plan_id)
    plan = await triggered.wait(10)
    assert (plan.state, plan.result) == ("stopped", "success")
    action = await parent_action(world, plan_id)
    assert action.is_done()
    assert action.concurrency_limit_capacity() == 2
    assert action.output["batches"] == [[1, 2], [3], [4], [5]]
    assert len(await children(world, plan_id)) == 5
