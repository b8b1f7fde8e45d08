"""Conformance: Ruby Dynflow's ``test/future_execution_test.rb`` against our engine.

Delayed plans (``world.delay``), the delayed executor, the args serializers and chaining
(``world.chain``). Every test runs on SQLite and on PostgreSQL (``db_url``). Where the Ruby test
drives an internal object by hand (``DelayedPlan#plan``, ``DelayedExecutors::AbstractCore#process``,
``Director::PlanningWorkItem``) we drive the equivalent public path: one round of the delayed
executor (``world.delayed_executor.tick()``, the world started with its polling off) or, for the
polling test, a world polling every 50 ms.

Not ported (Ruby-only or no equivalent in our API):

* "serializers" / "args! raises if not deserialized" and "serialized_args! raises if not
  serialized": our ``ArgsSerializer`` is stateless (``serialize_args()`` /
  ``deserialize_args(data)`` return their result); there is no half-done serializer whose
  accessors could raise.
* "Future Execution" / "delayed plan" is ported as a round trip of the stored record through its
  serializer: our delayed record is a plain dict (``world.delayed_plan``), there is no
  ``DelayedPlan`` object with a lazy ``args`` accessor.
* The "polling delayed executor" test's managed clock (``Dynflow::Testing`` ``DummyWorld`` and a
  ``MiniTest::Mock`` persistence) is Ruby testing machinery; the behaviour (the executor looks
  for due plans again every interval) is ported against a real world polling every 50 ms.
* ``execution_plan.cancellable?`` has no equivalent (plans have no such predicate);
  "allows cancelling the delayed plan" checks ``world.cancel`` instead.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from dynflow import Action, ArgsSerializer, DelayOptions, ExecutionRejected, JsonArgs, World
from dynflow.delayed import serializer_class
from dynflow.persistence.schema import execution_plans
from dynflow.persistence.writer import Stmt
from dynflow.serialization import utcnow
from tests.support.waiting import wait_for, wait_plan_state

FILE = "future_execution_test.rb"


# ---- actions (after the original's DummyExample) -----------------------------------------------
class Dummy(Action):
    def run(self) -> None:
        pass


class FailingDummy(Action):
    """Fails its run step; its rescue strategy ``fail`` stops the plan (stopped/error)."""

    def run(self) -> None:
        raise RuntimeError("error")

    def rescue_strategy_for_self(self) -> str:
        return "fail"


class Echo(Action):
    """Plans its positional arguments into its input."""

    def plan(self, *args: Any) -> None:
        self.plan_self(args=list(args))

    def run(self) -> None:
        pass


class MySerializer(JsonArgs):
    def serialize(self, value: Any) -> Any:
        if value == "fail":
            raise RuntimeError("Enforced serializer failure")
        return super().serialize(value)


class DummyCustomDelaySerializer(Action):
    def delay(self, delay_options: DelayOptions, *args: Any, **kwargs: Any) -> ArgsSerializer:
        return MySerializer(args, kwargs)

    def run(self) -> None:
        pass


# ---- worlds -------------------------------------------------------------------------------------
def options(**extra: Any) -> dict[str, Any]:
    """Like the original's WorldFactory: no auto-rescue, no auto-execute; the delayed executor
    does not poll (tests run its rounds by hand) unless a test says otherwise."""
    return {
        "cleaner_interval": None,
        "auto_execute": False,
        "auto_rescue": False,
        "termination_timeout": 5,
        "delayed_executor_interval": None,
        **extra,
    }


@pytest.fixture
async def world(db_url: str) -> AsyncIterator[World]:
    async with World(db_url, **options()) as w:
        yield w


@pytest.fixture
async def rescuing_world(db_url: str) -> AsyncIterator[World]:
    """The world of "execution plan chaining": ``auto_rescue = true``."""
    async with World(db_url, **options(auto_rescue=True)) as w:
        yield w


def history_names(plan: Any) -> list[str]:
    return [entry["name"] for entry in plan.execution_history]


async def set_plan_state(world: World, plan_id: str, state: str) -> None:
    """Force the stored state of a plan (what a crashed world leaves behind)."""
    stmt = update(execution_plans).where(execution_plans.c.uuid == plan_id).values(state=state)
    await world.store.write(plan_id, [Stmt(stmt, {})])


async def ready_ids(world: World) -> list[str]:
    """Ids of the delayed plans ready now (the original's ``find_ready_delayed_plans``)."""
    return [r["execution_plan_id"] for r in await world.store.delayed.find_ready(utcnow())]


async def delay_dummy(world: World, start_at: Any = timedelta(seconds=180)) -> Any:
    scheduled = await world.delay(Dummy, DelayOptions(start_at=start_at))
    assert scheduled.scheduled
    return scheduled


# ==== "action scheduling" ========================================================================
async def test_abstract_executor_handles_plan_in_planning_state(world: World) -> None:
    """future_execution_test.rb: "Future Execution" / "action scheduling" / "abstract executor" /
    "handles plan in planning state"."""
    scheduled = await delay_dummy(world, start_at=timedelta(seconds=-1))
    await set_plan_state(world, scheduled.id, "planning")  # left there by a planner that died
    await world.delayed_executor.tick()
    # back to scheduled, then planned and executed like any due plan
    plan = await wait_plan_state(world, scheduled.id, "stopped")
    assert (plan.state, plan.result) == ("stopped", "success")
    assert history_names(plan) == ["delay", "start execution", "finish execution"]
    assert await world.delayed_plan(scheduled.id) is None


async def test_abstract_executor_handles_plan_in_running_state(world: World) -> None:
    """future_execution_test.rb: "Future Execution" / "action scheduling" / "abstract executor" /
    "handles plan in running state"."""
    scheduled = await delay_dummy(world, start_at=timedelta(seconds=-1))
    await set_plan_state(world, scheduled.id, "running")
    await world.delayed_executor.tick()
    plan = await world.load_plan(scheduled.id)
    assert plan.state == "running"
    assert await world.delayed_plan(scheduled.id) is None


async def test_returns_the_progress_as_0(world: World) -> None:
    """future_execution_test.rb: "Future Execution" / "action scheduling" /
    "returns the progress as 0"."""
    scheduled = await delay_dummy(world)
    plan = await world.load_plan(scheduled.id)
    assert plan.progress() == 0
    assert plan.to_hash()["progress"] == 0


async def test_marks_the_plan_as_failed_when_issues_in_serialized_phase(world: World) -> None:
    """future_execution_test.rb: "Future Execution" / "action scheduling" /
    "marks the plan as failed when issues in serialied phase"."""
    raised: BaseException | None = None
    try:
        await world.delay(
            DummyCustomDelaySerializer, DelayOptions(start_at=timedelta(seconds=180)), "fail"
        )
    except RuntimeError as exc:
        raised = exc
    [plan] = await world.find_plans(order_by="ended_at", desc=True, page=0, per_page=1)
    assert (plan.state, plan.result) == ("stopped", "error")
    # Dynflow lets the serializer's exception reach the caller of delay
    assert raised is not None and str(raised) == "Enforced serializer failure"


async def test_delays_the_action(world: World) -> None:
    """future_execution_test.rb: "Future Execution" / "action scheduling" / "delays the action"."""
    start_at = utcnow() + timedelta(seconds=180)
    scheduled = await delay_dummy(world, start_at=start_at)
    plan = await world.load_plan(scheduled.id)
    assert len(plan.steps) == 1
    record = await world.delayed_plan(scheduled.id)
    assert int(record["start_at"].timestamp()) == int(start_at.timestamp())
    assert history_names(plan) == ["delay"]


async def test_allows_cancelling_the_delayed_plan(world: World) -> None:
    """future_execution_test.rb: "Future Execution" / "action scheduling" /
    "allows cancelling the delayed plan"."""
    scheduled = await delay_dummy(world)
    assert (await world.load_plan(scheduled.id)).state == "scheduled"
    assert await world.cancel(scheduled.id) == 1
    plan = await world.load_plan(scheduled.id)
    assert (plan.state, plan.result) == ("stopped", "cancelled")
    assert await world.delayed_plan(scheduled.id) is None


async def test_finds_delayed_plans(world: World) -> None:
    """future_execution_test.rb: "Future Execution" / "action scheduling" /
    "finds delayed plans"."""
    start_at = utcnow() - timedelta(seconds=100)
    scheduled = await delay_dummy(world, start_at=start_at)
    await delay_dummy(world)  # not due yet
    ready = await world.store.delayed.find_ready(start_at + timedelta(seconds=10))
    assert [r["execution_plan_id"] for r in ready] == [scheduled.id]


async def test_delayed_plans_can_be_planned_and_executed(world: World) -> None:
    """future_execution_test.rb: "Future Execution" / "action scheduling" /
    "delayed plans can be planned and executed"."""
    scheduled = await delay_dummy(world, start_at=timedelta(seconds=-1))
    plan = await world.load_plan(scheduled.id)
    assert plan.state == "scheduled"
    assert history_names(plan) == ["delay"]
    # our delayed executor plans and starts a due plan in one go
    await world.delayed_executor.tick()
    executed = await wait_plan_state(world, scheduled.id, "stopped")
    assert (executed.state, executed.result) == ("stopped", "success")
    plan_steps = [s for s in executed.steps.values() if s.kind == "PlanStep"]
    assert plan_steps and all(s.state == "success" for s in plan_steps)
    assert len(executed.execution_history) == 3


async def test_expired_plans_can_be_failed(world: World) -> None:
    """future_execution_test.rb: "Future Execution" / "action scheduling" /
    "expired plans can be failed"."""
    now = utcnow()
    scheduled = await world.delay(
        Dummy,
        DelayOptions(start_at=now - timedelta(seconds=2), start_before=now - timedelta(seconds=1)),
    )
    await world.delayed_executor.tick()
    plan = await wait_plan_state(world, scheduled.id, "stopped")
    assert (plan.state, plan.result) == ("stopped", "error")
    [failed] = plan.failed_steps()
    assert "could not be started before set time" in failed.error["message"]
    assert history_names(plan) == ["delay", "timeout"]


# ==== "polling delayed executor" =================================================================
async def test_polling_delayed_executor_checks_in_regular_intervals(db_url: str) -> None:
    """future_execution_test.rb: "Future Execution" / "polling delayed executor" /
    "checks for delayed plans in regular intervals"."""
    async with World(db_url, **options(delayed_executor_interval=0.05)) as holder:

        async def holding() -> bool:
            return holder.delayed_executor.holding

        await wait_for(holding)
        # delayed by a world that does not run the delayed executor: nothing wakes the holder,
        # it finds the plans at its next rounds
        async with World(db_url, **options(auto_recover=False)) as other:
            first = await other.delay(Dummy, DelayOptions())
            plan = await wait_plan_state(other, first.id, "stopped")
            assert plan.result == "success"
            second = await other.delay(Dummy, DelayOptions())
            plan = await wait_plan_state(other, second.id, "stopped")
            assert plan.result == "success"
            assert any(h["world_id"] == holder.id for h in plan.execution_history)
            assert not other.delayed_executor.holding


# ==== "serializers" ==============================================================================
ARGS = ["arg1", "arg2"]


def save_and_load(value: Any) -> Any:
    return json.loads(json.dumps(value))


async def test_noop_serializer_round_trips_simple_types(world: World) -> None:
    """future_execution_test.rb: "Future Execution" / "serializers" /
    "noop serializer [de]serializes correctly for simple types"."""
    values = [1, 2.0, "three", ["four-1", "four-2"], {"five": 5}]
    stored = save_and_load(JsonArgs(values).serialize_args())
    args, kwargs = JsonArgs().deserialize_args(stored)
    assert list(args) == values and kwargs == {}
    # and through the store: delayed with these arguments, planned with the same
    scheduled = await world.delay(Echo, DelayOptions(), *values)
    await world.delayed_executor.tick()
    plan = await wait_plan_state(world, scheduled.id, "stopped")
    assert plan.root_action().input == {"args": values}


async def test_performs_serialization(world: World) -> None:
    """future_execution_test.rb: "Future Execution" / "serializers" / "performs_serialization!"."""
    assert JsonArgs(ARGS).serialize_args() == {"args": ARGS, "kwargs": {}}
    scheduled = await world.delay(Echo, DelayOptions(frozen=True), *ARGS)
    record = await world.delayed_plan(scheduled.id)
    assert record["args_serializer"] == JsonArgs.name()
    assert record["serialized_args"] == {"args": ARGS, "kwargs": {}}


async def test_performs_deserialization(world: World) -> None:
    """future_execution_test.rb: "Future Execution" / "serializers" /
    "performs_deserialization!"."""
    args, kwargs = JsonArgs().deserialize_args({"args": ARGS, "kwargs": {}})
    assert list(args) == ARGS and kwargs == {}
    scheduled = await world.delay(Echo, DelayOptions(), *ARGS)
    await world.delayed_executor.tick()
    plan = await wait_plan_state(world, scheduled.id, "stopped")
    assert plan.result == "success"
    assert plan.root_action().input == {"args": ARGS}


# ==== "delayed plan" =============================================================================
async def test_delayed_plan_allows_access_to_serializer_args(world: World) -> None:
    """future_execution_test.rb: "Future Execution" / "delayed plan" /
    "allows access to serializer's args"."""
    scheduled = await world.delay(Dummy, DelayOptions(frozen=True), *ARGS)
    record = await world.delayed_plan(scheduled.id)
    assert record["serialized_args"] == {"args": ARGS, "kwargs": {}}
    args, kwargs = serializer_class(record["args_serializer"])().deserialize_args(
        record["serialized_args"]
    )
    assert list(args) == ARGS and kwargs == {}


# ==== "execution plan chaining" ==================================================================
async def execute(world: World, plan_id: str) -> Any:
    """Run a planned plan to its end; returns the stored plan."""
    future = await world.execute(plan_id)
    await future
    return await world.load_plan(plan_id)


async def test_chains_two_execution_plans(rescuing_world: World) -> None:
    """future_execution_test.rb: "Future Execution" / "execution plan chaining" /
    "chains two execution plans"."""
    world = rescuing_world
    plan1 = await world.plan(Dummy)
    plan2 = await world.chain(plan1.id, Dummy)
    assert await ready_ids(world) == []
    plan1 = await execute(world, plan1.id)
    assert plan1.state == "stopped"
    assert await ready_ids(world) == [plan2.id]


async def test_chains_onto_multiple_plans_and_waits_for_all(rescuing_world: World) -> None:
    """future_execution_test.rb: "Future Execution" / "execution plan chaining" /
    "chains onto multiple execution plans and waits for all to finish"."""
    world = rescuing_world
    plan1 = await world.plan(Dummy)
    plan2 = await world.plan(Dummy)
    plan3 = await world.chain([plan2.id, plan1.id], Dummy)
    assert (await execute(world, plan1.id)).state == "stopped"
    assert await ready_ids(world) == []  # plan2 has not run yet
    assert (await execute(world, plan2.id)).state == "stopped"
    assert await ready_ids(world) == [plan3.id]


async def test_cancels_the_chained_plan_if_the_prerequisite_fails(rescuing_world: World) -> None:
    """future_execution_test.rb: "Future Execution" / "execution plan chaining" /
    "cancels the chained plan if the prerequisite fails"."""
    world = rescuing_world
    plan1 = await world.plan(FailingDummy)
    plan2 = await world.chain(plan1.id, Dummy)
    plan1 = await execute(world, plan1.id)
    assert (plan1.state, plan1.result) == ("stopped", "error")
    assert await ready_ids(world) == [plan2.id]
    await world.delayed_executor.tick()
    plan2 = await wait_plan_state(world, plan2.id, "stopped")
    assert (plan2.state, plan2.result) == ("stopped", "error")
    message = plan2.failed_steps()[0].error["message"]
    assert "prerequisite execution plans failed" in message
    assert plan1.id in message


async def test_cancels_the_chained_plan_if_one_prerequisite_fails(rescuing_world: World) -> None:
    """future_execution_test.rb: "Future Execution" / "execution plan chaining" /
    "cancels the chained plan if at least one prerequisite fails"."""
    world = rescuing_world
    plan1 = await world.plan(Dummy)
    plan2 = await world.plan(FailingDummy)
    plan3 = await world.chain([plan1.id, plan2.id], Dummy)
    plan1 = await execute(world, plan1.id)
    assert (plan1.state, plan1.result) == ("stopped", "success")
    assert await ready_ids(world) == []
    plan2 = await execute(world, plan2.id)
    assert (plan2.state, plan2.result) == ("stopped", "error")
    assert await ready_ids(world) == [plan3.id]
    await world.delayed_executor.tick()
    plan3 = await wait_plan_state(world, plan3.id, "stopped")
    assert (plan3.state, plan3.result) == ("stopped", "error")
    message = plan3.failed_steps()[0].error["message"]
    assert "prerequisite execution plans failed" in message
    assert plan2.id in message and plan1.id not in message


async def test_runs_the_chained_plan_if_the_prerequisite_was_halted(
    rescuing_world: World,
) -> None:
    """future_execution_test.rb: "Future Execution" / "execution plan chaining" /
    "chains runs the chained plan if the prerequisite was halted"."""
    world = rescuing_world
    plan1 = await world.plan(Dummy)
    plan2 = await world.chain(plan1.id, Dummy)
    await world.halt(plan1.id)
    with pytest.raises(ExecutionRejected):  # Dynflow: the execution future is rejected
        await world.execute(plan1.id)
    plan1 = await world.load_plan(plan1.id)
    assert (plan1.state, plan1.result) == ("stopped", "pending")
    assert await ready_ids(world) == [plan2.id]
