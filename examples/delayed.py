"""Delayed plans, chaining and plan_elsewhere on the dynflow engine, in one file.

    .venv/bin/python examples/delayed.py

1. A report is delayed by half a second. Its argument is a ``Server`` object: a custom args
   serializer stores the server's name and looks the server up again when the plan is planned.
2. A backup is chained to the report: it starts once the report has stopped.
3. A cleanup is delayed by an hour, then cancelled.
4. ``plan_elsewhere``: the caller gets ``Scheduled`` at once; the executor plans and runs it.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from dynflow import Action, ArgsSerializer, DelayOptions, World

# Plans store action and serializer class names (here ``__main__.Report``). A real plugin keeps
# them in an importable module so any process can plan the delayed plans later.


@dataclass
class Server:
    name: str
    address: str


SERVERS = {"db-1": Server("db-1", "10.0.0.5")}


class ServerArgs(ArgsSerializer):
    """Stores a ``Server`` argument as ``{"server": name}`` and finds it again at planning."""

    def serialize(self, value: Any) -> Any:
        return {"server": value.name} if isinstance(value, Server) else value

    def deserialize(self, value: Any) -> Any:
        if isinstance(value, dict) and set(value) == {"server"}:
            return SERVERS[value["server"]]
        return value


class Report(Action):
    def delay(self, delay_options: DelayOptions, *args: Any, **kwargs: Any) -> ArgsSerializer:
        return ServerArgs(args, kwargs)  # the default, JsonArgs, takes JSON values only

    def plan(self, server: Server) -> None:  # called when the plan is due, with a Server again
        self.plan_self(server=server.name, address=server.address)

    def run(self) -> None:
        self.output["report"] = f"report of {self.input['server']} ({self.input['address']})"


class Backup(Action):
    def run(self) -> None:
        self.output["backup"] = f"backed up {self.input['server']}"


class Cleanup(Action):
    def run(self) -> None:
        raise AssertionError("cancelled: never runs")


class Greet(Action):
    def run(self) -> None:
        self.output["greeting"] = f"hello, {self.input['name']}"


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'dynflow.db'}"
        # The delayed executor looks for due plans every 15 s by default; also at the next
        # known start time, and when a prerequisite of a chained plan stops in this world.
        async with World(url, delayed_executor_interval=1.0) as world:
            # 1. Delay: stored now (state "scheduled"), planned and executed in 0.5 s.
            report = await world.delay(
                Report, DelayOptions(start_at=timedelta(seconds=0.5)), SERVERS["db-1"]
            )
            plan = await world.load_plan(report.id)
            assert plan is not None
            stored = await world.delayed_plan(report.id)
            assert stored is not None
            print(f"report: {plan.state}, arguments stored as {stored['serialized_args']}")

            # 2. Chain: waits until every prerequisite is stopped (fails if one failed).
            backup = await world.chain([report.id], Backup, server="db-1")
            waits_for = await world.dependencies(backup.id)
            print(f"backup: scheduled, waits for the report: {waits_for == [report.id]}")

            # 3. Cancel a delayed plan before it starts.
            cleanup = await world.delay(Cleanup, DelayOptions(start_at=timedelta(hours=1)))
            await world.cancel(cleanup.id)
            plan = await world.load_plan(cleanup.id)
            assert plan is not None
            print(f"cleanup: {plan.state}/{plan.result}: {plan.execution_history[-1]['name']}")

            # 4. plan_elsewhere: returns at once; planning happens in the executor.
            greeting = await world.plan_elsewhere(Greet, name="elsewhere")
            plan = await greeting.wait(10)
            print(f"greet: {plan.state}/{plan.result}: {plan.actions[1].output['greeting']}")

            plan = await report.wait(10)  # Scheduled.wait: until the plan stopped (or paused)
            print(f"report: {plan.state}/{plan.result}: {plan.actions[1].output['report']}")
            plan = await backup.wait(10)
            print(f"backup: {plan.state}/{plan.result}: {plan.actions[1].output['backup']}")
            print("history of the backup:", ", ".join(h["name"] for h in plan.execution_history))


if __name__ == "__main__":
    asyncio.run(main())
