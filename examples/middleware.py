"""Middleware: ordering rules (world and class level) and ``present`` filtering.

    .venv/bin/python examples/middleware.py
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from dynflow import Action, World
from dynflow.middleware import Middleware, do_not_use, use

CALLS: list[str] = []


class Logged(Middleware):
    async def run(
        self, action: Action, next_: Callable[[Any], Awaitable[None]], event: Any
    ) -> None:
        CALLS.append(f"{type(self).__name__} before")
        await next_(event)
        CALLS.append(f"{type(self).__name__} after")


class Audit(Logged):
    pass


class AsUser(Logged):
    pass


class Retry(Logged):
    pass


class Metrics(Logged):
    pass


class HideSecrets(Middleware):
    def present(self, action: Action, data: dict[str, Any]) -> dict[str, Any]:
        hidden = {k: "*****" for k in data["input"] if "password" in k}
        return {**data, "input": {**data["input"], **hidden}}


class HostAction(Action, abstract=True):
    middleware = [Retry, Metrics, HideSecrets]


class Provision(HostAction):
    # AsUser goes outside Retry; Metrics is not wanted here
    middleware = [use(AsUser, before=Retry), do_not_use(Metrics)]

    def run(self) -> None:
        CALLS.append("run")
        self.output["host"] = self.input["name"]


async def main() -> None:
    async with World("sqlite+aiosqlite://") as world:
        world.middleware.use(Audit)  # world rules come first
        stack = [type(m).__name__ for m in world.middleware_for(Provision)]
        print("stack:", " > ".join(stack))
        plan = await (await world.trigger(Provision, name="web1", root_password="s3cr3t")).wait()
        print("calls:", ", ".join(CALLS))
        print("shown input:", world.present_action(plan, 1)["input"])
        stored = await world.load_plan(plan.id)
        print("stored input:", stored.actions[1].input)


if __name__ == "__main__":
    asyncio.run(main())
