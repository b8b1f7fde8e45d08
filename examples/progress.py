"""Progress: steps report how far they are; the plan's progress is their weighted mean.

    .venv/bin/python examples/progress.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from dynflow import Action, World


class Copy(Action):
    """Copies ``files`` one event at a time; weighs as much as the files it copies."""

    def run(self, event: Any = None) -> None:
        self.output.setdefault("copied", 0)
        if event == "copied one":
            self.output["copied"] += 1
        if self.output["copied"] < self.input["files"]:
            self.suspend()

    def run_progress(self) -> float:
        return self.output.get("copied", 0) / self.input["files"]

    def run_progress_weight(self) -> float:
        return float(self.input["files"])


class Notify(Action):
    def run(self) -> None:
        self.output["sent"] = True


class Backup(Action):
    def plan(self, files: int) -> None:
        with self.sequence():
            self.plan_action(Notify)
            self.plan_action(Copy, files=files)


async def main() -> None:
    async with World("sqlite+aiosqlite://") as world:
        triggered = await world.trigger(Backup, 3)
        plan = await world.load_plan(triggered.id)
        copy = max(s.id for s in plan.run_steps())  # Copy's run step comes last
        for _ in range(3):
            while (await world.load_plan(triggered.id)).steps[copy].state != "suspended":
                await asyncio.sleep(0.01)
            plan = await world.load_plan(triggered.id)
            print(f"progress {plan.progress():.2f}")  # (copied/3 · 3 + Notify 1 · 1) / 4
            await world.event(triggered.id, copy, "copied one")
        done = await triggered.wait()
        stored = await world.load_plan(done.id)
        print(f"progress {stored.to_hash()['progress']:.2f}", done.result)


if __name__ == "__main__":
    asyncio.run(main())
