"""Middleware: a chain of objects wrapped around an action's phases (spec §1.7).

A middleware subclasses ``Middleware`` and overrides the phases it cares about, calling
``next_`` to continue the chain (not calling it short-circuits). World middleware comes first,
then the middleware listed on the action's classes from the base class down.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .action import Action
    from .execution_plan import ExecutionPlan


class Middleware:
    def plan(self, action: Action, next_: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        next_(*args, **kwargs)

    async def run(
        self, action: Action, next_: Callable[[Any], Awaitable[None]], event: Any
    ) -> None:
        await next_(event)

    async def finalize(self, action: Action, next_: Callable[[], Awaitable[None]]) -> None:
        await next_()

    async def hook(
        self,
        action: Action,
        next_: Callable[[ExecutionPlan, str], Awaitable[None]],
        plan: ExecutionPlan,
        kind: str,
    ) -> None:
        await next_(plan, kind)

    def present(self, action: Action, data: dict[str, Any]) -> dict[str, Any]:
        """Filter what the console and status API show of an action; storage is untouched."""
        return data


def class_middleware(cls: type[Action]) -> list[type[Middleware]]:
    seen: list[type[Middleware]] = []
    for klass in reversed(cls.__mro__):
        for m in klass.__dict__.get("middleware", ()):
            if m not in seen:
                seen.append(m)
    return seen


async def run_chain(
    chain: list[Middleware], action: Action, final: Callable[[Any], Awaitable[None]], event: Any
) -> None:
    async def call(index: int, ev: Any) -> None:
        if index == len(chain):
            await final(ev)
        else:
            await chain[index].run(action, lambda e: call(index + 1, e), ev)

    await call(0, event)


async def finalize_chain(
    chain: list[Middleware], action: Action, final: Callable[[], Awaitable[None]]
) -> None:
    async def call(index: int) -> None:
        if index == len(chain):
            await final()
        else:
            await chain[index].finalize(action, lambda: call(index + 1))

    await call(0)


async def hook_chain(
    chain: list[Middleware],
    action: Action,
    final: Callable[[ExecutionPlan, str], Awaitable[None]],
    plan: ExecutionPlan,
    kind: str,
) -> None:
    async def call(index: int, p: ExecutionPlan, k: str) -> None:
        if index == len(chain):
            await final(p, k)
        else:
            await chain[index].hook(action, lambda p2, k2: call(index + 1, p2, k2), p, k)

    await call(0, plan, kind)
