"""Halt: stop an execution plan for good, whatever its steps are doing.

    .venv/bin/python examples/halt.py
"""

from __future__ import annotations

import asyncio
from typing import Any

from dynflow import Action, ExecutionRejected, World


class WaitForApproval(Action):
    def run(self, event: Any = None) -> None:
        if event is None:
            self.suspend()  # waits for an event that will never come
        self.output["approved_by"] = event


async def main() -> None:
    async with World("sqlite+aiosqlite://") as world:
        triggered = await world.trigger(WaitForApproval)
        while (await world.load_plan(triggered.id)).steps[2].state != "suspended":
            await asyncio.sleep(0.01)
        print("halt ->", await world.halt(triggered.id))
        plan = await world.load_plan(triggered.id)
        # the step stays suspended and the result is what the steps say
        print("plan:", plan.state, plan.result, "step:", plan.steps[2].state)
        try:
            await world.execute(triggered.id)
        except ExecutionRejected as exc:
            print("execute rejected:", exc)
        planned = await world.plan(WaitForApproval)  # not running: stopped at once
        print("planned plan halt ->", await world.halt(planned.id))


if __name__ == "__main__":
    asyncio.run(main())
