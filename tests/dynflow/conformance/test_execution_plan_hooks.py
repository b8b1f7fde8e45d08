"""Conformance: Ruby Dynflow's ``test/execution_plan_hooks_test.rb`` against our engine.

Execution-plan hooks: methods of an action class run with the plan when it enters a state
(``pending`` … ``stopped``) or ends ``success`` / ``failure``. Ruby registers them with
``execution_plan_hooks.use :method, on: kinds`` (default: every plan state) and removes them
with ``do_not_use``; ours declares ``execution_plan_hooks = {kind: [method names]}`` on the
class (inherited like any class attribute; a subclass overrides it to drop a hook). Every test
runs on SQLite and on PostgreSQL (``db_url``).

All the Ruby tests apply; none is skipped. The two tests named "runs the pending hooks when
execution plan is created" (one triggers, one delays) are ported as ``..._on_trigger`` and
``..._on_delay``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest

from dynflow import Action, DelayOptions, World
from dynflow.states import PLAN_STATES

FILE = "execution_plan_hooks_test.rb"


class Flag:
    """Counts how often a hook raised it (the original's ``Flag``)."""

    raised_count = 0

    @classmethod
    def raise_(cls) -> None:
        cls.raised_count += 1

    @classmethod
    def raised(cls) -> bool:
        return cls.raised_count > 0

    @classmethod
    def lower(cls) -> None:
        cls.raised_count = 0


class FlagHook:
    """The hook methods (the original's ``FlagHook`` module)."""

    def raise_flag(self, execution_plan: Any) -> None:
        Flag.raise_()

    def controlled_failure(self, execution_plan: Any) -> None:
        Flag.raise_()
        raise RuntimeError("A controlled failure")

    def raise_flag_root_only(self, execution_plan: Any) -> None:
        if self.is_root:  # type: ignore[attr-defined]
            Flag.raise_()


def on(*kinds: str, method: str = "raise_flag") -> dict[str, list[str]]:
    """``execution_plan_hooks.use method, on: kinds`` (no kinds: every plan state)."""
    return {kind: [method] for kind in (kinds or PLAN_STATES)}


class ActionWithHooks(FlagHook, Action):
    execution_plan_hooks = on("success")


class ActionOnStop(FlagHook, Action):
    execution_plan_hooks = on("stopped", method="controlled_failure")


class RootOnlyAction(FlagHook, Action):
    execution_plan_hooks = on("stopped", method="raise_flag_root_only")


class PendingAction(FlagHook, Action):
    execution_plan_hooks = on("pending")


class AllTransitionsAction(FlagHook, Action):
    execution_plan_hooks = on()


class ComposedAction(RootOnlyAction):
    def plan(self) -> None:
        self.plan_action(RootOnlyAction)
        self.plan_action(RootOnlyAction)


class ActionOnFailure(FlagHook, Action):
    execution_plan_hooks = on("failure")


class ActionOnPause(FlagHook, Action):
    execution_plan_hooks = on("paused")

    def run(self) -> None:
        self.fail("pause")

    def rescue_strategy_for_self(self) -> str:
        return "pause"


class Inherited(ActionWithHooks):
    pass


class Overriden(ActionWithHooks):
    # ``execution_plan_hooks.do_not_use :raise_flag``
    execution_plan_hooks = {
        kind: [m for m in methods if m != "raise_flag"]
        for kind, methods in ActionWithHooks.execution_plan_hooks.items()
    }


def options(**extra: Any) -> dict[str, Any]:
    """Like the original's WorldFactory: no auto-rescue, no auto-execute, nothing polling."""
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


@pytest.fixture(autouse=True)
def lower_the_flag() -> None:
    Flag.lower()


async def trigger_and_wait(world: World, action_class: type[Action]) -> Any:
    triggered = await world.trigger(action_class)
    assert triggered.triggered, triggered
    return await triggered.wait(10)


async def test_runs_the_on_success_hook(world: World) -> None:
    """execution_plan_hooks_test.rb: "Dynflow::ExecutionPlan::Hooks" /
    "runs the on_success hook"."""
    assert not Flag.raised()
    await trigger_and_wait(world, ActionWithHooks)
    assert Flag.raised()


async def test_runs_the_on_pause_hook(world: World) -> None:
    """execution_plan_hooks_test.rb: "Dynflow::ExecutionPlan::Hooks" / "runs the on_pause hook"."""
    assert not Flag.raised()
    plan = await trigger_and_wait(world, ActionOnPause)
    assert plan.state == "paused"
    assert Flag.raised()


async def test_with_auto_rescue_runs_the_on_pause_hook(db_url: str) -> None:
    """execution_plan_hooks_test.rb: "Dynflow::ExecutionPlan::Hooks" / "with auto_rescue" /
    "runs the on_pause hook"."""
    async with World(db_url, **options(auto_rescue=True)) as world:
        assert not Flag.raised()
        plan = await trigger_and_wait(world, ActionOnPause)
        assert plan.state == "paused"
        assert Flag.raised()


async def test_runs_the_on_failure_hook_on_cancel(world: World) -> None:
    """execution_plan_hooks_test.rb: "Dynflow::ExecutionPlan::Hooks" /
    "runs the on_failure hook on cancel"."""
    assert not Flag.raised()
    scheduled = await world.delay(ActionOnFailure, DelayOptions(start_at=timedelta(seconds=180)))
    assert await world.cancel(scheduled.id) == 1
    assert Flag.raised()


async def test_exception_in_the_hook_does_not_alter_the_plan(world: World) -> None:
    """execution_plan_hooks_test.rb: "Dynflow::ExecutionPlan::Hooks" /
    "does not alter the execution plan when exception happens in the hook"."""
    assert not Flag.raised()
    planned = await world.plan(ActionOnStop)
    plan = await (await world.execute(planned.id))
    assert Flag.raised()
    assert plan.result == "success"
    stored = await world.load_plan(planned.id)
    assert (stored.state, stored.result) == ("stopped", "success")


async def test_inherits_the_hooks_when_subclassing(world: World) -> None:
    """execution_plan_hooks_test.rb: "Dynflow::ExecutionPlan::Hooks" /
    "inherits the hooks when subclassing"."""
    assert not Flag.raised()
    await trigger_and_wait(world, Inherited)
    assert Flag.raised()


async def test_can_override_the_hooks_from_the_child(world: World) -> None:
    """execution_plan_hooks_test.rb: "Dynflow::ExecutionPlan::Hooks" /
    "can override the hooks from the child"."""
    assert not Flag.raised()
    await trigger_and_wait(world, Overriden)
    assert not Flag.raised()
    await trigger_and_wait(world, ActionWithHooks)  # the parent keeps its hook
    assert Flag.raised_count == 1


async def test_hook_can_tell_root_action_from_sub_action(world: World) -> None:
    """execution_plan_hooks_test.rb: "Dynflow::ExecutionPlan::Hooks" /
    "can determine in side the hook, whether the hook is running for root action or
    sub-action"."""
    assert not Flag.raised()
    plan = await trigger_and_wait(world, ComposedAction)
    assert len(plan.actions) == 3
    assert Flag.raised_count == 1


async def test_runs_the_pending_hooks_when_execution_plan_is_created_on_trigger(
    world: World,
) -> None:
    """execution_plan_hooks_test.rb: "Dynflow::ExecutionPlan::Hooks" /
    "runs the pending hooks when execution plan is created" (the ``trigger`` one)."""
    assert not Flag.raised()
    await trigger_and_wait(world, PendingAction)
    assert Flag.raised_count == 1


async def test_runs_the_pending_hooks_when_execution_plan_is_created_on_delay(
    world: World,
) -> None:
    """execution_plan_hooks_test.rb: "Dynflow::ExecutionPlan::Hooks" /
    "runs the pending hooks when execution plan is created" (the ``delay`` one)."""
    assert not Flag.raised()
    scheduled = await world.delay(PendingAction, DelayOptions(start_at=timedelta(seconds=180)))
    assert await world.cancel(scheduled.id) == 1
    assert Flag.raised_count == 1


async def test_runs_the_hook_on_every_state_transition(world: World) -> None:
    """execution_plan_hooks_test.rb: "Dynflow::ExecutionPlan::Hooks" /
    "runs the hook on every state transition"."""
    assert not Flag.raised()
    await trigger_and_wait(world, AllTransitionsAction)
    # nothing -> pending -> planning -> planned -> running -> stopped
    assert Flag.raised_count == 5
