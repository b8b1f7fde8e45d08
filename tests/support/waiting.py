"""Polling helpers for tests: wait until a condition on the store holds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


async def wait_for(predicate: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
    """Await ``predicate()`` until it returns something truthy; return that."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await predicate()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def wait_step_state(world: Any, plan_id: str, step_id: int, state: str) -> Any:
    """Wait until a stored step reaches ``state``; returns the loaded plan."""

    async def reached() -> Any:
        plan = await world.load_plan(plan_id)
        return plan if plan.steps[step_id].state == state else None

    return await wait_for(reached)


async def wait_plan_state(world: Any, plan_id: str, state: str = "stopped") -> Any:
    """Wait until a stored plan reaches ``state``; returns the loaded plan (a plan not stored
    yet, e.g. the child a batch parent is about to plan, has not reached it)."""

    async def reached() -> Any:
        plan = await world.load_plan(plan_id)
        return plan if plan is not None and plan.state == state else None

    return await wait_for(reached)
