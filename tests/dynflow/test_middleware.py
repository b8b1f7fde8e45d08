"""Middleware stacks: wrapping order, inheritance, world rules, before/after/replace/do_not_use,
phase middleware, access to the action and present filtering (spec §1.7; the original's
middleware_test and MiddlewareExample)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from dynflow import Action, World
from dynflow.middleware import (
    Middleware,
    MiddlewareCycle,
    MiddlewareRules,
    class_middleware,
    do_not_use,
    use,
)

LOG: list[str] = []


class LogMiddleware(Middleware):
    """Logs around every phase it wraps."""

    def log(self, message: str) -> None:
        LOG.append(f"{type(self).__name__}::{message}")

    def delay(self, action, next_, *args, **kwargs):
        self.log("before_delay")
        result = next_(*args, **kwargs)
        self.log("after_delay")
        return result

    def plan(self, action, next_, *args, **kwargs):
        self.log("before_plan")
        next_(*args, **kwargs)
        self.log("after_plan")

    def plan_phase(self, action, next_, plan):
        self.log("before_plan_phase")
        next_()
        self.log("after_plan_phase")

    async def run(self, action, next_, event):
        self.log("before_run")
        try:
            await next_(event)
        finally:
            self.log("after_run")

    async def finalize(self, action, next_):
        self.log("before_finalize")
        await next_()
        self.log("after_finalize")

    async def finalize_phase(self, action, next_, plan):
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


class ObservingMiddleware(Middleware):
    async def run(self, action, next_, event):
        LOG.append(f"input#message:{action.input.get('message')}")
        try:
            await next_(event)
        finally:
            LOG.append(f"output#message:{action.output.get('message')}")


class LoggingAction(Action):
    middleware = [LogMiddleware]

    def plan(self, input: dict[str, Any]) -> None:
        LOG.append("plan")
        self.plan_self(input)

    def run(self) -> None:
        LOG.append("run")

    def finalize(self) -> None:
        LOG.append("finalize")


class RunLogged(Action):
    middleware = [LogRunMiddleware]

    def run(self) -> None:
        LOG.append("run")
        self.output["message"] = "finished"


class SubAction(RunLogged):
    middleware = [AnotherLogRunMiddleware]


class SubActionBeforeRule(RunLogged):
    middleware = [use(AnotherLogRunMiddleware, before=LogRunMiddleware)]


class SubActionReplaceRule(RunLogged):
    middleware = [use(AnotherLogRunMiddleware, replace=LogRunMiddleware)]


class SubActionDoNotUseRule(RunLogged):
    middleware = [
        AnotherLogRunMiddleware,
        do_not_use(AnotherLogRunMiddleware),
        do_not_use(LogRunMiddleware),
    ]


class SubActionAfterRule(RunLogged):
    middleware = [use(AnotherLogRunMiddleware, after=LogRunMiddleware)]


# the original's resolver cases: a hierarchy of "devops" actions
class NoopMiddleware(Middleware):
    pass


class AsUserMiddleware(Middleware):
    pass


class RetryMiddleware(Middleware):
    pass


class CloseConnectionsMiddleware(Middleware):
    pass


class NotUsedMiddleware(Middleware):
    pass


class DevopsAction(Action, abstract=True):
    middleware = [NoopMiddleware, RetryMiddleware]


class BuildImage(DevopsAction):
    middleware = [use(AsUserMiddleware, before=RetryMiddleware)]

    def run(self) -> None:
        pass


class ProvisionHost(DevopsAction):
    middleware = [use(NoopMiddleware, replace=RetryMiddleware)]


class ConfigureHost(DevopsAction):
    middleware = [use(AsUserMiddleware, after=NotUsedMiddleware)]


# added after the subclasses were defined, as the original does with ``middleware.use``
DevopsAction.middleware.use(CloseConnectionsMiddleware)


class FirstMiddleware(Middleware):
    pass


class SecondMiddleware(Middleware):
    pass


class Contradicting(Action):
    middleware = [
        use(FirstMiddleware, before=SecondMiddleware),
        use(SecondMiddleware, before=FirstMiddleware),
    ]

    def run(self) -> None:
        pass


class Masking(Middleware):
    def present(self, action: Action, data: dict[str, Any]) -> dict[str, Any]:
        masked = dict(data)
        masked["input"] = {
            k: ("***" if k == "password" else v) for k, v in (data.get("input") or {}).items()
        }
        if "output" in data:
            masked["output"] = {**data["output"], "spell": "***"}
        return masked


class SecretAction(Action):
    middleware = [Masking]

    def run(self) -> None:
        self.output["spell"] = "Wingardium Leviosa"


@pytest.fixture(autouse=True)
def clear_log() -> None:
    LOG.clear()


async def run_plan(world: World, action_class: type[Action], *args: Any, **kwargs: Any) -> Any:
    triggered = await world.trigger(action_class, *args, **kwargs)
    assert triggered.triggered, triggered
    return await triggered.wait(10)


# ---- invocation --------------------------------------------------------------------------------
async def test_wraps_every_phase(world: World) -> None:
    plan = await run_plan(world, LoggingAction, {})
    assert (plan.state, plan.result) == ("stopped", "success")
    assert LOG == [
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


async def test_wraps_delay(world: World) -> None:
    scheduled = await world.delay(LoggingAction, {"frozen": True}, {})
    assert LOG == ["LogMiddleware::before_delay", "LogMiddleware::after_delay"]
    plan = await world.load_plan(scheduled.id)
    assert plan is not None and plan.state == "scheduled"


async def test_inherits_the_middleware(world: World) -> None:
    await run_plan(world, SubAction)
    assert LOG == [
        "LogRunMiddleware::before_run",
        "AnotherLogRunMiddleware::before_run",
        "run",
        "AnotherLogRunMiddleware::after_run",
        "LogRunMiddleware::after_run",
    ]


async def test_world_middleware_comes_first(db_url: str) -> None:
    async with World(db_url, cleaner_interval=None, auto_execute=False) as world:
        world.middleware.use(AnotherLogRunMiddleware)
        await run_plan(world, RunLogged)
    assert LOG == [
        "AnotherLogRunMiddleware::before_run",
        "LogRunMiddleware::before_run",
        "run",
        "LogRunMiddleware::after_run",
        "AnotherLogRunMiddleware::after_run",
    ]


async def test_before_rule(world: World) -> None:
    await run_plan(world, SubActionBeforeRule)
    assert LOG == [
        "AnotherLogRunMiddleware::before_run",
        "LogRunMiddleware::before_run",
        "run",
        "LogRunMiddleware::after_run",
        "AnotherLogRunMiddleware::after_run",
    ]


async def test_after_rule_from_the_world(db_url: str) -> None:
    world = World(db_url, cleaner_interval=None, auto_execute=False)
    world.middleware.use(AnotherLogRunMiddleware, after=LogRunMiddleware)
    async with world:
        await run_plan(world, RunLogged)
        await run_plan(world, SubActionAfterRule)
    once = [
        "LogRunMiddleware::before_run",
        "AnotherLogRunMiddleware::before_run",
        "run",
        "AnotherLogRunMiddleware::after_run",
        "LogRunMiddleware::after_run",
    ]
    assert LOG == once + once


async def test_replace_rule(world: World) -> None:
    await run_plan(world, SubActionReplaceRule)
    assert LOG == [
        "AnotherLogRunMiddleware::before_run",
        "run",
        "AnotherLogRunMiddleware::after_run",
    ]


async def test_do_not_use_rule(world: World) -> None:
    await run_plan(world, SubActionDoNotUseRule)
    assert LOG == ["run"]


async def test_access_to_the_running_action(db_url: str) -> None:
    async with World(db_url, cleaner_interval=None, auto_execute=False) as world:
        world.middleware.use(ObservingMiddleware, replace=LogRunMiddleware)
        await run_plan(world, RunLogged, message="hello")
    assert LOG == ["input#message:hello", "run", "output#message:finished"]


async def test_rules_added_later_change_the_stack(world: World) -> None:
    class Late(Action):
        def run(self) -> None:
            LOG.append("run")

    await run_plan(world, Late)
    Late.middleware.use(LogRunMiddleware)
    await run_plan(world, Late)
    assert LOG == ["run", "LogRunMiddleware::before_run", "run", "LogRunMiddleware::after_run"]
    assert class_middleware(RunLogged) == [LogRunMiddleware]  # the base class is untouched


# ---- resolution ---------------------------------------------------------------------------------
def test_sorts_by_the_rules() -> None:
    assert class_middleware(BuildImage) == [
        NoopMiddleware,
        AsUserMiddleware,
        RetryMiddleware,
        CloseConnectionsMiddleware,
    ]


def test_replaces_by_the_rules() -> None:
    assert class_middleware(ProvisionHost) == [NoopMiddleware, CloseConnectionsMiddleware]


def test_ignores_rules_naming_middleware_not_in_the_stack() -> None:
    assert class_middleware(ConfigureHost) == [
        NoopMiddleware,
        RetryMiddleware,
        CloseConnectionsMiddleware,
        AsUserMiddleware,
    ]


def test_rules_objects() -> None:
    rules = MiddlewareRules().use(SecondMiddleware).use(FirstMiddleware, before=SecondMiddleware)
    assert rules.resolve() == [FirstMiddleware, SecondMiddleware]
    with pytest.raises(TypeError):
        MiddlewareRules().use(object)


async def test_contradicting_rules_fail_planning_with_a_clear_error(world: World) -> None:
    with pytest.raises(MiddlewareCycle, match="cycle: (First|Second)Middleware"):
        class_middleware(Contradicting)
    result = await world.trigger(Contradicting)
    assert not result.planned
    assert "middleware rules form a cycle" in result.error["message"]
    plan = await world.load_plan(result.id)
    assert (plan.state, plan.result) == ("stopped", "error")


# ---- present -------------------------------------------------------------------------------
async def test_present_filters_without_touching_storage(world: World) -> None:
    plan = await run_plan(world, SecretAction, password="Lord Voldemort", user="harry")
    loaded = await world.load_plan(plan.id)
    shown = world.present_action(loaded, 1)
    assert shown["input"] == {"password": "***", "user": "harry"}
    assert shown["output"] == {"spell": "***"}
    # stored as it was
    again = await world.load_plan(plan.id)
    assert again.actions[1].input == {"password": "Lord Voldemort", "user": "harry"}
    assert again.actions[1].output == {"spell": "Wingardium Leviosa"}


async def test_present_from_world_middleware(db_url: str) -> None:
    async with World(
        db_url, cleaner_interval=None, auto_execute=False, middleware=[Masking()]
    ) as world:
        plan = await run_plan(world, RunLogged, password="secret")
        shown = world.present_action(plan, 1)
    assert shown["input"]["password"] == "***"
