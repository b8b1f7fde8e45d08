"""Subscriptions: planning an action plans its subscribers too, in the same plan.

    .venv/bin/python examples/subscriptions.py
"""

from __future__ import annotations

import asyncio

from dynflow import Action, World


class CreateUser(Action):
    def run(self) -> None:
        self.output["uid"] = 1000


class SendWelcomeMail(Action):
    subscribe = [CreateUser]  # planned whenever CreateUser is, with CreateUser's input

    def run(self) -> None:
        self.output["mailed"] = f"welcome {self.input['login']}"


class AuditLog(Action):
    subscribe = [CreateUser]

    def plan(self, login: str) -> None:
        # the trigger's output: this action runs after CreateUser's run
        self.plan_self(login=login, uid=self.triggering_action.output["uid"])

    def run(self) -> None:
        self.output["line"] = f"user {self.input['login']} has uid {self.input['uid']}"


async def main() -> None:
    async with World("sqlite+aiosqlite://") as world:
        print("subscribers:", [c.__name__ for c in world.subscribed_actions(CreateUser)])
        plan = await (await world.trigger(CreateUser, login="alice")).wait()
        plan = await world.load_plan(plan.id)
        print("run flow:", plan.to_hash()["run_flow"])
        for action in plan.actions.values():
            print(f"{type(action).__name__}: {action.output}")


if __name__ == "__main__":
    asyncio.run(main())
