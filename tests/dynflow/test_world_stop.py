"""``World.stop()`` owns every task the world started: none is left running after it returns
(a halt waiting for a step, a plan's run, a timer of a planned event, the background loops)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dynflow import Action, World
from tests.support import dummy
from tests.support.waiting import wait_for


class Slow(Action):
    """A step still busy when the stop begins (longer than termination_timeout)."""

    async def run(self) -> None:
        await asyncio.sleep(30)


class Sleeping(Action):
    """A step that ends during the stop's grace period."""

    async def run(self) -> None:
        await asyncio.sleep(0.3)


def _others(before: set[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not current and t not in before and not t.done()]


async def test_no_task_survives_world_stop(tmp_path: Path) -> None:
    before = set(asyncio.all_tasks())
    world = World(
        f"sqlite+aiosqlite:///{tmp_path / 'stop.sqlite'}",
        termination_timeout=0.5,
        cleaner_interval=0.2,
    )
    await world.start()
    slow = await world.trigger(Slow)
    sleeping = await world.trigger(Sleeping)
    ticking = await world.trigger(dummy.Ticking, {"ticks": 1000, "delay": 0.05})
    waiting = await world.trigger(dummy.Waiting)

    async def all_started() -> bool:
        plans = [await world.load_plan(t.id) for t in (slow, sleeping, ticking, waiting)]
        return all(p.state == "running" for p in plans)

    await wait_for(all_started, timeout=10)
    await world.stop()
    left = _others(before)
    assert not left, [t.get_name() for t in left]
    await asyncio.sleep(0.1)  # nothing starts afterwards either (a poll, a timer)
    left = _others(before)
    assert not left, [t.get_name() for t in left]
