"""A deploy pipeline on the dynflow engine, in one file.

    .venv/bin/python examples/deploy.py

Deploy = sequence( concurrence(Build, RunTests), WaitForApproval, Release ).
The first deploy is approved by an event; the second is cancelled while it waits.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from dynflow import CANCEL, Action, ExecutionPlan, World

# Plans store action class names (here ``__main__.Build``). A real plugin keeps its actions in
# an importable module so any process can load the plans later.


class Build(Action):
    # ``async def run`` runs on the event loop: never block in it.
    async def run(self) -> None:
        await asyncio.sleep(0.05)
        self.output["artifact"] = f"{self.input['app']}-{self.input['version']}.tar.gz"


class RunTests(Action):
    # A plain ``def run`` runs in a worker thread: blocking calls are fine.
    def run(self) -> None:
        time.sleep(0.05)
        self.output["passed"] = True


class WaitForApproval(Action):
    cancellable = True  # world.cancel(plan_id) sends dynflow.CANCEL to this step

    # ``run(event)`` is called again for every event sent to the suspended step.
    def run(self, event: Any = None) -> None:
        if event is None:
            self.suspend()  # leave run(); the step waits, holding no thread
        if event == CANCEL:
            self.fail("cancelled while waiting for approval")
        self.output["approved_by"] = event["approved_by"]

    def rescue_strategy_for_self(self) -> str:
        return "fail"  # on error stop the plan (the default "pause" waits for an operator)


class Release(Action):
    def run(self) -> None:
        # The inputs were output references when planned; here they are plain values.
        if not self.input["tests_passed"]:
            self.fail("tests failed")
        self.output["released"] = f"{self.input['artifact']} (approved by {self.input['by']})"


class Deploy(Action):
    # plan() only builds the graph; nothing runs yet.
    def plan(self, app: str, version: str) -> None:
        with self.sequence():
            with self.concurrence():  # Build and RunTests run side by side
                build = self.plan_action(Build, app=app, version=version)
                tests = self.plan_action(RunTests)
            approval = self.plan_action(WaitForApproval)
            self.plan_action(
                Release,
                artifact=build.output["artifact"],  # output references: filled in at run time
                tests_passed=tests.output["passed"],
                by=approval.output["approved_by"],
            )


def action_of(plan: ExecutionPlan, cls: type[Action]) -> Action:
    return next(a for a in plan.actions.values() if isinstance(a, cls))


async def suspended_step(world: World, plan_id: str) -> int:
    """Poll the stored plan until the approval step is suspended; return its step id."""
    while True:
        plan = await world.load_plan(plan_id)
        assert plan is not None
        step_id = action_of(plan, WaitForApproval).run_step_id
        assert step_id is not None
        if plan.steps[step_id].state == "suspended":
            return step_id
        await asyncio.sleep(0.02)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        # A durable SQLite file (WAL mode); the default would be ./var/dynflow.db.
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'dynflow.db'}"
        async with World(url) as world:
            # 1. Trigger (plan + start), approve with an event, wait for the end.
            triggered = await world.trigger(Deploy, "shop", "1.0")
            step_id = await asyncio.wait_for(suspended_step(world, triggered.id), 10)
            print(f"deploy 1.0: waiting for approval (step {step_id} suspended)")
            await world.event(triggered.id, step_id, {"approved_by": "alice"})
            plan = await triggered.wait(10)
            print(f"deploy 1.0: {plan.state}/{plan.result}:",
                  action_of(plan, Release).output["released"])

            # 2. Same pipeline; cancel it while it waits. Release never runs.
            triggered = await world.trigger(Deploy, "shop", "1.1")
            await asyncio.wait_for(suspended_step(world, triggered.id), 10)
            cancelled = await world.cancel(triggered.id)  # how many steps got CANCEL
            plan = await triggered.wait(10)
            stored = await world.load_plan(plan.id)  # what the database says
            assert stored is not None
            release = stored.steps[action_of(stored, Release).run_step_id or 0]
            print(f"deploy 1.1: {stored.state}/{stored.result}: cancelled {cancelled} step(s),"
                  f" release step {release.state}")


if __name__ == "__main__":
    logging.basicConfig(format="[log %(name)s] %(message)s")  # the cancelled step logs a warning
    asyncio.run(main())
