"""Conformance: Dynflow's test/semaphores_test.rb (``Dynflow::Semaphores``).

Dynflow's semaphores are the counters of its V1 throttle limiter: ``Stateful`` (n tickets;
``get``/``drain``/``release``; callers ``wait`` when none is free and are let in first come,
first served), ``Dummy`` (no limit: always free, nobody waits) and ``Aggregating`` (the minimum
of several semaphores). Our engine has no semaphore objects; the same counting is the
concurrency limit of V2 sub-plans: ``limit_concurrency_level(n)`` gives a parent n tickets,
each unfinished child holds one, a finished child releases it, ``concurrency_limit_capacity()``
is the number free, and children beyond it wait (are not spawned) until a ticket is released.
The ``Stateful`` and ``Dummy`` tests are ported to that.

Skipped:

* ``Dynflow::Semaphores::Aggregating`` / "can be used as counter" — a V1 throttle-limiter
  internal (it combines the concurrency-level and time-distribution semaphores); V2 has one
  limit only and no time distribution, so there is nothing to aggregate.
"""

from __future__ import annotations

from dynflow import World
from tests.dynflow.conformance.support_sub_plans import (
    Parent,
    children,
    parent_action,
    ping,
    release,
    unfinished_children,
    wait_parent,
)

TICKETS = 5


def _set_counts(action: Parent, *, planned: int, finished: int, total: int = 20) -> None:
    action.output.update(
        total_count=total,
        planned_count=planned,
        success_count=finished,
        failed_count=0,
        pending_count=planned - finished,
        cancelled_count=0,
    )


async def test_stateful_can_be_used_as_counter(world: World) -> None:
    """semaphores_test.rb: "Dynflow::Semaphores::Stateful" / "can be used as counter"."""
    planned = await world.plan(Parent, 20, TICKETS, batch=100)
    action = await parent_action(world, planned.id)
    # tickets: the limit, stored with the plan (the semaphore's to_hash)
    assert action.input["dynflow"] == {"concurrency_limit": TICKETS}
    assert action.concurrency_limit() == TICKETS

    # nothing spawned yet: all tickets are free, a batch takes them all
    _set_counts(action, planned=0, finished=0)
    assert action.concurrency_limit_capacity() == TICKETS
    assert len(action.current_batch()) == TICKETS
    # get: one child spawned holds one ticket
    _set_counts(action, planned=1, finished=0)
    assert action.concurrency_limit_capacity() == TICKETS - 1
    # get(3): three more
    _set_counts(action, planned=4, finished=0)
    assert action.concurrency_limit_capacity() == TICKETS - (3 + 1)
    # drain: the next batch takes what is left (1), then nothing is free
    assert len(action.current_batch()) == 1
    _set_counts(action, planned=5, finished=0)
    assert action.concurrency_limit_capacity() == 0
    assert list(action.current_batch()) == []
    # release: a child finished
    _set_counts(action, planned=5, finished=1)
    assert action.concurrency_limit_capacity() == TICKETS - (3 + 1)
    # release 3
    _set_counts(action, planned=5, finished=4)
    assert action.concurrency_limit_capacity() == TICKETS - 1
    assert len(action.current_batch()) == TICKETS - 1
    # never below zero, whatever the counts say
    _set_counts(action, planned=7, finished=0)
    assert action.concurrency_limit_capacity() == 0


async def test_stateful_can_have_things_waiting_on_it(world: World) -> None:
    """semaphores_test.rb: "Dynflow::Semaphores::Stateful" / "can have things waiting on it"."""
    triggered = await world.trigger(Parent, 3, 1)
    plan_id = triggered.id
    # wait(1): allowed, and no ticket is left
    action = await wait_parent(world, plan_id)
    assert action.output["batches"] == [[1]]
    assert action.concurrency_limit_capacity() == 0
    # wait(2), wait(3): not allowed, they wait (not spawned)
    assert sorted(await children(world, plan_id)) == [1]
    assert await unfinished_children(world, plan_id) == 1

    # get_waiting: when the ticket is released, the first waiting (2), then the next (3)
    for holder, next_item in ((1, 2), (2, 3)):
        runs = len(action.output["trace"])
        await release(world, (await children(world, plan_id))[holder])
        await ping(world, plan_id)
        action = await wait_parent(world, plan_id, lambda a, n=runs: len(a.output["trace"]) > n)
        assert action.output["batches"][-1] == [next_item]
        assert sorted(await children(world, plan_id)) == list(range(1, next_item + 1))
        assert await unfinished_children(world, plan_id) == 1

    await release(world, (await children(world, plan_id))[3])
    await ping(world, plan_id)
    plan = await triggered.wait(10)
    assert (plan.state, plan.result) == ("stopped", "success")
    assert (await parent_action(world, plan_id)).output["batches"] == [[1], [2], [3]]


async def test_dummy_always_has_free(world: World) -> None:
    """semaphores_test.rb: "Dynflow::Semaphores::Dummy" / "always has free"."""
    planned = await world.plan(Parent, 20, batch=5)
    action = await parent_action(world, planned.id)
    assert action.concurrency_limit() is None
    # however many children are running, there is room for a full batch
    for running in (0, 5, 10):
        _set_counts(action, planned=running, finished=0)
        assert action.concurrency_limit_capacity() is None
        assert len(action.current_batch()) == 5


async def test_dummy_cannot_have_things_waiting_on_it(world: World) -> None:
    """semaphores_test.rb: "Dynflow::Semaphores::Dummy" / "cannot have things waiting on
    it"."""
    triggered = await world.trigger(Parent, 4)
    plan_id = triggered.id
    # without a limit every child is let in at once: none waits
    action = await wait_parent(world, plan_id)
    assert action.output["batches"] == [[1, 2, 3, 4]]
    assert action.concurrency_limit_capacity() is None
    assert await unfinished_children(world, plan_id) == 4

    for child in (await children(world, plan_id)).values():
        await release(world, child)
    await ping(world, plan_id)
    plan = await triggered.wait(10)
    assert (plan.state, plan.result) == ("stopped", "success")
