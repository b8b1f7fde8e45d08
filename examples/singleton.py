"""Singleton actions: at most one active execution plan per action class.

    .venv/bin/python examples/singleton.py
"""

from __future__ import annotations

import asyncio

from dynflow import Singleton, World


class Reindex(Singleton):
    """Only one reindex at a time, across every process sharing the database."""

    async def run(self) -> None:
        await asyncio.sleep(0.2)
        self.output["reindexed"] = True


async def main() -> None:
    async with World("sqlite+aiosqlite://") as world:
        first = await world.trigger(Reindex)
        second = await world.trigger(Reindex)  # while the first one is active
        print("first planned:", first.planned)
        print("second planned:", second.planned, "-", second.error["message"])
        done = await first.wait(10)
        print("first:", done.state, done.result)  # its lock is released when it stops
        third = await world.trigger(Reindex)
        print("third planned:", third.planned, "->", (await third.wait(10)).result)


if __name__ == "__main__":
    asyncio.run(main())
