"""Execution-plan hooks, middleware and the cleaner (spec §1.7, §4.4)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from dynflow import Action, World
from dynflow.middleware import Middleware
from dynflow.serialization import utcnow
from tests.support import dummy

HOOK_CALLS: list[tuple[str, str]] = []
MIDDLEWARE_CALLS: list[str] = []


class Hooked(Action):
    execution_plan_hooks = {
        "running": ["on_running"],
        "stopped": ["on_stopped"],
        "success": ["on_success"],
        "failure": ["on_failure"],
    }

    def run(self) -> None:
        if self.input.get("fail"):
            raise RuntimeError("boom")

    def on_running(self, plan: Any) -> None:
        HOOK_CALLS.append(("running", plan.id))

    async def on_stopped(self, plan: Any) -> None:
        HOOK_CALLS.append(("stopped", plan.id))

    def on_success(self, plan: Any) -> None:
        HOOK_CALLS.append(("success", plan.id))

    def on_failure(self, plan: Any) -> None:
        raise RuntimeError("a broken hook must not change the plan")

    def rescue_strategy_for_self(self) -> str:
        return "fail"


class Recording(Middleware):
    def plan(self, action, next_, *args, **kwargs):
        MIDDLEWARE_CALLS.append(f"plan {type(action).__name__}")
        next_(*args, **kwargs)

    async def run(self, action, next_, event):
        MIDDLEWARE_CALLS.append(f"run {type(action).__name__}")
        await next_(event)


class Doubling(Middleware):
    async def run(self, action, next_, event):
        await next_(event)
        action.output["doubled"] = True


class WithMiddleware(Action):
    middleware = [Doubling]

    def run(self) -> None:
        self.output["ran"] = True


async def test_hooks_by_state(world):
    HOOK_CALLS.clear()
    done = await (await world.trigger(Hooked)).wait(5)
    assert ("running", done.id) in HOOK_CALLS
    assert ("stopped", done.id) in HOOK_CALLS
    assert ("success", done.id) in HOOK_CALLS
    failed = await (await world.trigger(Hooked, fail=True)).wait(5)
    plan = await world.load_plan(failed.id)
    assert (plan.state, plan.result) == ("stopped", "error")
    assert ("stopped", failed.id) in HOOK_CALLS


async def test_world_and_class_middleware(db_url):
    MIDDLEWARE_CALLS.clear()
    async with World(db_url, cleaner_interval=None, middleware=[Recording]) as world:
        done = await (await world.trigger(WithMiddleware)).wait(5)
        plan = await world.load_plan(done.id)
    assert plan.actions[1].output == {"ran": True, "doubled": True}
    assert MIDDLEWARE_CALLS == ["plan WithMiddleware", "run WithMiddleware"]


async def test_cleaner_deletes_old_plans(db_url):
    async with World(
        db_url, cleaner_interval=None, stopped_max_age=3600, paused_max_age=7200
    ) as world:
        old = await (await world.trigger(dummy.Dummy)).wait(5)
        recent = await (await world.trigger(dummy.Dummy)).wait(5)
        paused = await (await world.trigger(dummy.FailingDummy)).wait(5)
        old_paused = await (await world.trigger(dummy.FailingDummy)).wait(5)
        from sqlalchemy import update

        from dynflow.persistence.schema import execution_plans

        async with world.store.engine.begin() as conn:
            long_ago = utcnow() - timedelta(hours=3)
            await conn.execute(
                update(execution_plans)
                .where(execution_plans.c.uuid.in_([old.id, old_paused.id]))
                .values(started_at=long_ago, ended_at=long_ago)
            )
        assert await world.cleaner.clean() == 2
        remaining = {p.id for p in await world.find_plans()}
        assert remaining == {recent.id, paused.id}
        assert await world.store.load_actions(old.id) == []


async def test_step_and_action_hashes(world):
    done = await (await world.trigger(dummy.Dummy)).wait(5)
    plan = await world.load_plan(done.id)
    step = plan.steps[2].to_hash()
    assert set(step) == {
        "execution_plan_uuid", "id", "state", "class", "action_class", "action_id", "error",
        "started_at", "ended_at", "execution_time", "real_time", "progress_done",
        "progress_weight", "queue",
    }
    plan_step = plan.steps[1].to_hash()
    assert plan_step["class"] == "Dynflow::ExecutionPlan::Steps::PlanStep"
    assert plan_step["children"] == []
    action = plan.actions[1].to_hash()
    assert action["class"] == "tests.support.dummy.Dummy"
    assert action["output"] == {"ok": True}
    assert plan.to_hash()["run_flow"] == 2
    await asyncio.sleep(0)
