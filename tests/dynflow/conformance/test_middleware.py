"""Conformance: Ruby Dynflow's ``test/middleware_test.rb`` (with
``test/support/middleware_example.rb``) against our engine.

Middleware wraps an action's phases (``delay``, ``plan``, ``run``, ``finalize``) and the
plan-wide ``plan_phase`` / ``finalize_phase``; ``present`` filters what is shown of a loaded
action. Ours passes the action and the continuation explicitly
(``run(self, action, next_, event)``) where Ruby's middleware calls ``pass`` and reads
``action``; the stack rules (world first, then ancestors, then the class; ``before`` /
``after`` / ``replace`` / ``do_not_use``) are the same. Our ``present`` returns a filtered copy
of the action's hash (``world.present_action(plan, action_id)``) instead of mutating the loaded
action in place. Every test runs on SQLite and on PostgreSQL (``db_url``).

The Ruby test that plans and executes a delayed plan by hand (``DelayedPlan#plan`` then
``#execute``) runs one round of our delayed executor, which plans and starts a due plan in one
go. All the Ruby tests apply; none is skipped.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

from dynflow import Action, ArgsSerializer, DelayOptions, JsonArgs, Middleware, World
from dynflow.middleware import do_not_use, use
from tests.support.waiting import wait_plan_state

FILE = "middleware_test.rb"

LOG: list[str] = []


# ---- the original's MiddlewareExample -----------------------------------------------------------
class LogMiddleware(Middleware):
    """Logs before and after every phase it wraps."""

    def log(self, message: str) -> None:
        LOG.append(f"{type(self).__name__}::{message}")

    def delay(self, action: Action, next_: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.log("before_delay")
        result = next_(*args, **kwargs)
        self.log("after_delay")
        return result

    def plan(self, action: Action, next_: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        self.log("before_plan")
        next_(*args, **kwargs)
        self.log("after_plan")

    def plan_phase(self, action: Action, next_: Callable[[], None], plan: Any) -> None:
        self.log("before_plan_phase")
        next_()
        self.log("after_plan_phase")

    async def run(
        self, action: Action, next_: Callable[[Any], Awaitable[None]], event: Any
    ) -> None:
        self.log("before_run")
        try:
            await next_(event)
        finally:
            self.log("after_run")

    async def finalize(self, action: Action, next_: Callable[[], Awaitable[None]]) -> None:
        self.log("before_finalize")
        await next_()
        self.log("after_finalize")

    async def finalize_phase(
        self, action: Action, next_: Callable[[], Awaitable[None]], plan: Any
    ) -> None:
        self.log("before_finalize_phase")
        await next_()
        self.log("after_finalize_phase")


class LogRunMiddleware(Middleware):
    async def run(
        self, action: Action, next_: Callable[[Any], Awaitable[None]], event: Any
    ) -> None:
        LOG.append(f"{type(self).__name__}::before_run")
        try:
            await next_(event)
        finally:
            LOG.append(f"{type(self).__name__}::after_run")


class AnotherLogRunMiddleware(LogRunMiddleware):
    pass


def _replace_names(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _replace_names(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_names(v) for v in value]
    if isinstance(value, str):
        return value.replace("Lord Voldemort", "You-Know-Who")
    return value


class FilterSensitiveData(Middleware):
    def present(self, action: Action, data: dict[str, Any]) -> dict[str, Any]:
        data = copy.deepcopy(data)
        filter_own = getattr(action, "filter_sensitive_data", None)
        if filter_own is not None:
            filter_own(data)
        for key in ("input", "output"):
            if key in data:
                data[key] = _replace_names(data[key])
        return data


class SecretAction(Action):
    middleware = [FilterSensitiveData]

    def run(self) -> None:
        self.output["spell"] = "Wingardium Leviosa"

    def filter_sensitive_data(self, data: dict[str, Any]) -> None:
        data.setdefault("output", {})["spell"] = "***"


class LoggingAction(Action):
    middleware = [LogMiddleware]

    def delay(self, delay_options: DelayOptions, *args: Any, **kwargs: Any) -> ArgsSerializer:
        LOG.append("delay")
        return JsonArgs(args, kwargs)

    def plan(self, input: dict[str, Any]) -> None:
        LOG.append("plan")
        self.plan_self(input)

    def run(self) -> None:
        LOG.append("run")

    def finalize(self) -> None:
        LOG.append("finalize")


class ObservingMiddleware(Middleware):
    async def run(
        self, action: Action, next_: Callable[[Any], Awaitable[None]], event: Any
    ) -> None:
        LOG.append(f"input#message:{action.input.get('message')}")
        try:
            await next_(event)
        finally:
            LOG.append(f"output#message:{action.output.get('message')}")


class AnotherObservingMiddleware(ObservingMiddleware):
    def delay(self, action: Action, next_: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        result = next_(*args, **kwargs)
        assert action.world is not None
        LOG.append(f"delay#set-input:{action.world.id}")
        action.input["message"] = action.world.id
        return result

    def plan(self, action: Action, next_: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        LOG.append(f"plan#input:{action.input.get('message')}")
        next_(*args, **kwargs)


class MiddlewareAction(Action):
    """The original's ``MiddlewareExample::Action``."""

    middleware = [LogRunMiddleware]

    def run(self) -> None:
        LOG.append("run")
        self.output["message"] = "finished"


class SubAction(MiddlewareAction):
    middleware = [AnotherLogRunMiddleware]


class SubActionBeforeRule(MiddlewareAction):
    middleware = [use(AnotherLogRunMiddleware, before=LogRunMiddleware)]


class SubActionReplaceRule(MiddlewareAction):
    middleware = [use(AnotherLogRunMiddleware, replace=LogRunMiddleware)]


class SubActionDoNotUseRule(MiddlewareAction):
    middleware = [
        AnotherLogRunMiddleware,
        do_not_use(AnotherLogRunMiddleware),
        do_not_use(LogRunMiddleware),
    ]


# ---- the original's CodeWorkflowExample::IncomingIssue (what the present test needs) -----------
class Triage(Action):
    def plan(self, issue: dict[str, Any]) -> None:
        self.plan_self(issue)

    def run(self) -> None:
        self.output["classification"] = {"assignee": "John Doe", "severity": "medium"}


class IncomingIssue(Action):
    def plan(self, issue: dict[str, Any]) -> None:
        self.plan_self(issue)
        self.plan_action(Triage, issue)


# ---- worlds -------------------------------------------------------------------------------------
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
def reset_log() -> None:
    LOG.clear()


async def run_plan(world: World, action_class: type[Action], *args: Any, **kwargs: Any) -> Any:
    triggered = await world.trigger(action_class, *args, **kwargs)
    assert triggered.triggered, triggered
    plan = await triggered.wait(10)
    assert plan.state == "stopped", plan
    return plan


async def run_delayed(world: World, scheduled: Any) -> Any:
    """Plan and execute a due delayed plan (one round of the delayed executor)."""
    await world.delayed_executor.tick()
    return await wait_plan_state(world, scheduled.id, "stopped")


RUN_ONCE = [
    "LogRunMiddleware::before_run",
    "AnotherLogRunMiddleware::before_run",
    "run",
    "AnotherLogRunMiddleware::after_run",
    "LogRunMiddleware::after_run",
]
ANOTHER_FIRST = [
    "AnotherLogRunMiddleware::before_run",
    "LogRunMiddleware::before_run",
    "run",
    "LogRunMiddleware::after_run",
    "AnotherLogRunMiddleware::after_run",
]


# ---- tests --------------------------------------------------------------------------------------
async def test_wraps_the_action_method_calls(world: World) -> None:
    """middleware_test.rb: "Middleware" / "wraps the action method calls"."""
    scheduled = await world.delay(LoggingAction, DelayOptions(start_at=timedelta(seconds=-60)), {})
    plan = await run_delayed(world, scheduled)
    assert (plan.state, plan.result) == ("stopped", "success")
    assert LOG == [
        "LogMiddleware::before_delay",
        "delay",
        "LogMiddleware::after_delay",
        "LogMiddleware::before_plan_phase",
        "LogMiddleware::before_plan",
        "plan",
        "LogMiddleware::after_plan",
        "LogMiddleware::after_plan_phase",
        "LogMiddleware::before_run",
        "run",
        "LogMiddleware::after_run",
        "LogMiddleware::before_finalize_phase",
        "LogMiddleware::before_finalize",
        "finalize",
        "LogMiddleware::after_finalize",
        "LogMiddleware::after_finalize_phase",
    ]


async def test_inherits_the_middleware(world: World) -> None:
    """middleware_test.rb: "Middleware" / "inherits the middleware"."""
    await run_plan(world, SubAction, {})
    assert LOG == RUN_ONCE


async def test_world_middleware_goes_to_the_beginning_of_the_stack(db_url: str) -> None:
    """middleware_test.rb: "Middleware" / "world.middleware" /
    "puts the middleware to the beginning of the stack"."""
    world_with_middleware = World(db_url, **options())
    world_with_middleware.middleware.use(AnotherLogRunMiddleware)
    async with world_with_middleware:
        await run_plan(world_with_middleware, MiddlewareAction, {})
    assert LOG == ANOTHER_FIRST


async def test_rules_before(world: World) -> None:
    """middleware_test.rb: "Middleware" / "rules" / "before" (the ``specify``)."""
    await run_plan(world, SubActionBeforeRule, {})
    assert LOG == ANOTHER_FIRST


async def test_rules_after(db_url: str) -> None:
    """middleware_test.rb: "Middleware" / "rules" / "after" (the ``specify``)."""
    world_with_middleware = World(db_url, **options())
    world_with_middleware.middleware.use(AnotherLogRunMiddleware, after=LogRunMiddleware)
    async with world_with_middleware:
        await run_plan(world_with_middleware, MiddlewareAction, {})
    assert LOG == RUN_ONCE


async def test_rules_replace(world: World) -> None:
    """middleware_test.rb: "Middleware" / "rules" / "replace" (the ``specify``)."""
    await run_plan(world, SubActionReplaceRule, {})
    assert LOG == [
        "AnotherLogRunMiddleware::before_run",
        "run",
        "AnotherLogRunMiddleware::after_run",
    ]


async def test_rules_remove(world: World) -> None:
    """middleware_test.rb: "Middleware" / "rules" / "remove" (the ``specify``)."""
    await run_plan(world, SubActionDoNotUseRule, {})
    assert LOG == ["run"]


async def test_allows_access_to_the_running_action(db_url: str) -> None:
    """middleware_test.rb: "Middleware" / "allows access the running action"."""
    async with World(db_url, **options()) as world:
        world.middleware.use(ObservingMiddleware, replace=LogRunMiddleware)
        await run_plan(world, MiddlewareAction, message="hello")
    assert LOG == ["input#message:hello", "run", "output#message:finished"]


async def test_allows_modification_of_the_action_when_delaying(db_url: str) -> None:
    """middleware_test.rb: "Middleware" /
    "allows modification of the running action when delaying execution"."""
    async with World(db_url, **options()) as world:
        world.middleware.use(AnotherObservingMiddleware, replace=LogRunMiddleware)
        scheduled = await world.delay(
            MiddlewareAction, DelayOptions(start_at=timedelta(seconds=-60))
        )
        plan = await run_delayed(world, scheduled)
        assert plan.result == "success"
        assert LOG == [
            f"delay#set-input:{world.id}",
            f"plan#input:{world.id}",
            f"input#message:{world.id}",
            "run",
            "output#message:finished",
        ]


# ---- "Presnet middleware" ----------------------------------------------------------------------
ISSUE_DATA = {"author": "Harry Potter", "text": "Lord Voldemort is comming"}


@pytest.fixture
async def world_with_middleware(db_url: str, world: World) -> AsyncIterator[World]:
    """A second world on the same database, with ``FilterSensitiveData`` as world middleware."""
    async with World(db_url, **options(auto_recover=False)) as w:
        w.middleware.use(FilterSensitiveData)
        yield w


async def test_present_middleware_filters_the_data(
    world: World, world_with_middleware: World
) -> None:
    """middleware_test.rb: "Middleware" / "Presnet middleware" / "filters the data ===".

    (The original's description really ends in ``===``.)"""
    execution_plan = await run_plan(world, IncomingIssue, ISSUE_DATA)
    execution_plan_2 = await run_plan(world, SecretAction)
    filtered_execution_plan = await world_with_middleware.load_plan(execution_plan.id)
    root = filtered_execution_plan.root_action()
    presenter = world_with_middleware.present_action(filtered_execution_plan, root.id)
    assert presenter["input"]["text"] == "You-Know-Who is comming"
    plan_2 = await world.load_plan(execution_plan_2.id)
    presenter_2 = world.present_action(plan_2, plan_2.root_action().id)
    assert presenter_2["output"]["spell"] == "***"


async def test_present_middleware_does_not_affect_stored_data(
    world: World, world_with_middleware: World
) -> None:
    """middleware_test.rb: "Middleware" / "Presnet middleware" / "doesn't affect stored data"."""
    execution_plan = await run_plan(world, IncomingIssue, ISSUE_DATA)
    filtered_execution_plan = await world_with_middleware.load_plan(execution_plan.id)
    root = filtered_execution_plan.root_action()
    presenter = world_with_middleware.present_action(filtered_execution_plan, root.id)
    assert presenter["input"]["text"] == "You-Know-Who is comming"
    stored = await world.load_plan(execution_plan.id)
    presenter_without_middleware = world.present_action(stored, stored.root_action().id)
    assert presenter_without_middleware["input"]["text"] == "Lord Voldemort is comming"
    assert stored.root_action().input["text"] == "Lord Voldemort is comming"
