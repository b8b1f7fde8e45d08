"""Halt: execution inhibition (spec §1.9; the original's executor_test "halt" cases: suspended,
running, paused, planned, scheduled and pending plans, the inhibition lock)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from dynflow import Action, EventRejected, ExecutionRejected, PlanNotFound, World
from dynflow.execution_plan import ExecutionPlan
from dynflow.locks import INHIBITION_LOCK
from tests.support import dummy
from tests.support.waiting import wait_for, wait_plan_state

GATE = threading.Event()
STOPPED_HOOKS: list[str] = []


class Blocking(Action):
    """A plain step that waits for ``GATE`` (in a worker thread)."""

    def run(self) -> None:
        assert GATE.wait(10)
        self.output["finished"] = True


class BlockThenMore(Action):
    execution_plan_hooks = {"stopped": ["on_stopped"]}

    def plan(self) -> None:
        with self.sequence():
            self.plan_action(Blocking)
            self.plan_action(dummy.Dummy)

    def on_stopped(self, plan: ExecutionPlan) -> None:
        STOPPED_HOOKS.append(plan.id)


class FailAndWait(Action):
    def plan(self) -> None:
        with self.concurrence():
            self.plan_action(dummy.FailingDummy)
            self.plan_action(dummy.Waiting)


async def inhibition_locks(world: World) -> list[dict[str, Any]]:
    return await world.store.find_records(cls=INHIBITION_LOCK)


async def step_state(world: World, plan_id: str, step_id: int) -> str:
    plan = await world.load_plan(plan_id)
    assert plan is not None
    return plan.steps[step_id].state


async def test_halts_a_plan_with_a_suspended_step(world: World) -> None:
    triggered = await world.trigger(dummy.Waiting)
    await wait_for(lambda: _is(world, triggered.id, 2, "suspended"))
    assert await world.halt(triggered.id) == "stopped"
    plan = await triggered.wait(5)
    assert (plan.state, plan.result) == ("stopped", "pending")
    stored = await world.load_plan(triggered.id)
    assert (stored.state, stored.result) == ("stopped", "pending")
    assert stored.steps[2].state == "suspended"  # suspended steps stay suspended
    assert [h["name"] for h in stored.execution_history][-1] == "finish execution"
    assert await inhibition_locks(world) == []
    assert not world.is_running(triggered.id)
    with pytest.raises(EventRejected):
        await world.event(triggered.id, 2, {"finish": True})
    with pytest.raises(ExecutionRejected):
        await world.execute(triggered.id)


async def _is(world: World, plan_id: str, step_id: int, state: str) -> bool:
    return await step_state(world, plan_id, step_id) == state


async def test_lets_an_executing_step_finish_and_dispatches_nothing_more(world: World) -> None:
    GATE.clear()
    STOPPED_HOOKS.clear()
    triggered = await world.trigger(BlockThenMore)
    plan = await world.load_plan(triggered.id)
    blocking, after = (s.id for s in sorted(plan.run_steps(), key=lambda s: s.id))
    await wait_for(lambda: _is(world, triggered.id, blocking, "running"))
    halting = asyncio.create_task(world.halt(triggered.id))
    await asyncio.sleep(0.1)
    assert not halting.done()  # waits for the executing step
    assert not world.is_running(triggered.id)
    GATE.set()
    assert await asyncio.wait_for(halting, 10) == "stopped"
    stored = await world.load_plan(triggered.id)
    assert (stored.state, stored.result) == ("stopped", "pending")
    assert stored.steps[blocking].state == "success"
    assert stored.steps[after].state == "pending"  # never dispatched
    assert STOPPED_HOOKS == [triggered.id]
    assert await inhibition_locks(world) == []


@pytest.mark.parametrize("state", ["planned", "paused", "pending"])
async def test_halts_a_plan_nobody_runs(world: World, state: str) -> None:
    if state == "planned":
        plan = await world.plan(dummy.Dummy)
    elif state == "paused":
        plan = await (await world.trigger(dummy.FailingDummy)).wait(5)
    else:  # a plan stored before planning
        plan = ExecutionPlan.new(world)
        await world.store.write(plan.id, world.store.insert_plan_stmts(plan))
    assert plan.state == state
    assert await world.halt(plan.id) == "stopped"
    stored = await world.load_plan(plan.id)
    assert stored.state == "stopped"
    assert stored.result == ("error" if state == "paused" else "pending")
    assert await inhibition_locks(world) == []
    with pytest.raises(ExecutionRejected):
        await world.execute(plan.id)


async def test_halts_a_scheduled_plan(world: World) -> None:
    scheduled = await world.delay(dummy.Dummy, {"frozen": True})
    assert (await world.load_plan(scheduled.id)).state == "scheduled"
    assert await world.halt(scheduled.id) == "stopped"
    plan = await world.load_plan(scheduled.id)
    assert plan.state == "stopped"
    assert await world.delayed_plan(scheduled.id) is None  # the delayed record is gone
    assert await inhibition_locks(world) == []


async def test_a_plan_with_an_error_ends_paused_and_stops_at_the_next_execute(
    world: World,
) -> None:
    triggered = await world.trigger(FailAndWait)
    plan = await world.load_plan(triggered.id)
    waiting = next(
        s.id for s in plan.run_steps() if plan.actions[s.action_id].name().endswith("Waiting")
    )
    await wait_for(lambda: _is(world, triggered.id, waiting, "suspended"))
    await wait_for(lambda: _has_error(world, triggered.id))
    assert await world.halt(triggered.id) == "paused"
    assert len(await inhibition_locks(world)) == 1  # kept: the plan is not stopped yet
    with pytest.raises(ExecutionRejected, match="halted"):
        await world.resume(triggered.id)
    stored = await world.load_plan(triggered.id)
    assert (stored.state, stored.result) == ("stopped", "error")
    assert await inhibition_locks(world) == []


async def _has_error(world: World, plan_id: str) -> bool:
    plan = await world.load_plan(plan_id)
    return bool(plan is not None and plan.failed_steps())


async def test_halting_a_stopped_or_unknown_plan(world: World) -> None:
    done = await (await world.trigger(dummy.Dummy)).wait(5)
    assert await world.halt(done.id) == "stopped"
    assert (await world.load_plan(done.id)).result == "success"
    assert await inhibition_locks(world) == []
    with pytest.raises(PlanNotFound):
        await world.halt("00000000-0000-0000-0000-000000000000")


async def test_another_world_halts_the_plan_it_runs(db_url: str) -> None:
    options: dict[str, Any] = {"cleaner_interval": None, "auto_execute": False}
    async with (
        World(db_url, heartbeat_interval=0.05, **options) as runner,
        World(db_url, **options) as other,
    ):
        triggered = await runner.trigger(dummy.Waiting)
        await wait_for(lambda: _is(runner, triggered.id, 2, "suspended"))
        assert await other.halt(triggered.id) == "running"  # not here: its world halts it
        plan = await triggered.wait(5)
        assert (plan.state, plan.result) == ("stopped", "pending")
        await wait_plan_state(other, triggered.id, "stopped")
        assert await inhibition_locks(other) == []
