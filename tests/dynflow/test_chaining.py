"""Chaining: a delayed plan that waits for other plans (spec §1.8; the chaining part of the
original's future_execution_test and the dependency lookups of persistence_test)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import update

from dynflow import PlanNotFound, World
from dynflow.persistence.schema import execution_plans
from dynflow.persistence.writer import Stmt
from tests.support import delayed_actions as acts
from tests.support import dummy
from tests.support.waiting import wait_for, wait_plan_state

FINISH = {"finish": True}


def options(**extra: Any) -> dict[str, Any]:
    return {
        "cleaner_interval": None,
        "auto_execute": False,
        "termination_timeout": 5,
        "delayed_executor_interval": None,
        **extra,
    }


@pytest.fixture
async def world(db_url: str) -> AsyncIterator[World]:
    w = World(db_url, **options())
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


async def finish(world: World, plan_id: str) -> None:
    """Let a ``dummy.Waiting`` plan end (its run step is step 2) and wait for it."""
    await world.event(plan_id, 2, FINISH)
    await wait_plan_state(world, plan_id, "stopped")


async def test_chain_waits_for_its_prerequisite(world: World) -> None:
    first = await world.trigger(dummy.Waiting)
    chained = await world.chain(first.id, acts.Greet, name="second")
    assert chained.scheduled
    assert await world.dependencies(chained.id) == [first.id]
    assert await world.blocks(first.id) == [chained.id]
    assert await world.dependencies(first.id) == []
    await world.delayed_executor.tick()
    assert (await world.load_plan(chained.id)).state == "scheduled"

    await finish(world, first.id)
    await world.delayed_executor.tick()
    plan = await wait_plan_state(world, chained.id, "stopped")
    assert (plan.state, plan.result) == ("stopped", "success")
    assert plan.actions[1].output == {"greeting": "hello, second"}
    # the dependency is kept: what a plan waited for stays visible
    assert await world.dependencies(chained.id) == [first.id]


async def test_chain_waits_for_every_prerequisite(world: World) -> None:
    first = await world.trigger(dummy.Waiting)
    second = await world.trigger(dummy.Waiting)
    chained = await world.chain([first.id, second.id, first.id], acts.Greet, name="both")
    assert await world.dependencies(chained.id) == sorted([first.id, second.id])
    await finish(world, first.id)
    await world.delayed_executor.tick()
    assert (await world.load_plan(chained.id)).state == "scheduled"
    await finish(world, second.id)
    await world.delayed_executor.tick()
    assert (await wait_plan_state(world, chained.id)).result == "success"


async def test_failed_prerequisite_fails_the_chained_plan(world: World) -> None:
    ok = await world.trigger(dummy.Dummy)
    failed = await world.trigger(acts.FailAndStop)
    assert (await failed.wait(5)).result == "error"
    await ok.wait(5)
    chained = await world.chain([ok.id, failed.id], acts.Counted)
    await world.delayed_executor.tick()
    plan = await wait_plan_state(world, chained.id, "stopped")
    assert (plan.state, plan.result) == ("stopped", "error")
    message = plan.steps[1].error["message"]
    assert message == (
        "Execution plan could not be started because some of its prerequisite execution plans "
        f"failed:\n- {failed.id}"
    )
    assert [h["name"] for h in plan.execution_history] == ["delay", "failed-dependency"]
    assert chained.id not in acts.RUNS
    assert await world.delayed_plan(chained.id) is None


async def test_paused_prerequisite_keeps_the_chained_plan_waiting(world: World) -> None:
    paused = await world.trigger(dummy.FailingDummy)  # default rescue: paused with an error
    assert (await paused.wait(5)).state == "paused"
    chained = await world.chain(paused.id, acts.Greet, name="later")
    await world.delayed_executor.tick()
    assert (await world.load_plan(chained.id)).state == "scheduled"


async def test_halted_prerequisite_counts_as_finished(world: World) -> None:
    """A halted plan is ``stopped`` with whatever result its steps give (here ``pending``)."""
    halted = await world.plan(dummy.Dummy)
    chained = await world.chain(halted.id, acts.Greet, name="after halt")
    stmt = (
        update(execution_plans).where(execution_plans.c.uuid == halted.id).values(state="stopped")
    )
    await world.store.write(halted.id, [Stmt(stmt, {})])
    assert (await world.load_plan(halted.id)).result == "pending"
    await world.delayed_executor.tick()
    assert (await wait_plan_state(world, chained.id)).result == "success"


async def test_prerequisite_already_stopped(world: World) -> None:
    done = await world.trigger(dummy.Dummy)
    await done.wait(5)
    chained = await world.chain(done.id, acts.Greet, name="right away")
    await world.delayed_executor.tick()
    assert (await wait_plan_state(world, chained.id)).result == "success"


async def test_chain_to_an_unknown_plan_is_refused(world: World) -> None:
    with pytest.raises(PlanNotFound):
        await world.chain("0b5e7b5e-0000-4000-8000-00000000beef", acts.Greet, name="x")
    assert await world.find_plans(filters={"delayed": True}) == []


async def test_cancel_a_chained_plan(world: World) -> None:
    first = await world.trigger(dummy.Waiting)
    chained = await world.chain(first.id, acts.Greet, name="never")
    assert await world.cancel(chained.id) == 1
    plan = await world.load_plan(chained.id)
    assert (plan.state, plan.result) == ("stopped", "cancelled")
    await finish(world, first.id)
    await world.delayed_executor.tick()
    assert (await world.load_plan(chained.id)).result == "cancelled"


async def test_stopping_prerequisite_wakes_the_delayed_executor(db_url: str) -> None:
    """The holder of the delayed executor starts a chained plan as soon as a prerequisite it
    runs stops, not at its next poll (here 30 s away)."""
    async with World(db_url, **options(delayed_executor_interval=30)) as w:

        async def holding() -> bool:
            return w.delayed_executor.holding

        await wait_for(holding)  # its first tick, at start
        first = await w.trigger(dummy.Waiting)
        chained = await w.chain(first.id, acts.Greet, name="woken")
        started = time.monotonic()
        await w.event(first.id, 2, FINISH)
        plan = await chained.wait(10)
        assert plan.result == "success"
        assert time.monotonic() - started < 10


async def test_chain_across_worlds(db_url: str) -> None:
    """The prerequisite runs in one world, the chained plan is planned by the other (the
    holder of the delayed executor), which polls."""
    async with World(db_url, **options(delayed_executor_interval=0.05)) as holder:
        async with World(db_url, **options(auto_recover=False)) as other:
            first = await other.trigger(dummy.Waiting)
            chained = await other.chain(first.id, acts.Greet, name="across")
            await other.event(first.id, 2, FINISH)
            plan = await wait_plan_state(other, chained.id)
            assert plan.result == "success"
            assert holder.delayed_executor.holding and not other.delayed_executor.holding
            assert any(h["world_id"] == holder.id for h in plan.execution_history)
