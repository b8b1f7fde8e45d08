"""Carry the HTTP request id into the actions it planned (``current_request_id``, §4.8).

Planning stores the id of the request being served in each action's input; running and
finalizing restore it, so every log line of the action names the request that started it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from dynflow import Action
from dynflow.middleware import Middleware
from smart_proxy.log import request_id


class RequestIdMiddleware(Middleware):
    def plan(self, action: Action, next_: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        next_(*args, **kwargs)
        current = request_id.get()
        if current and "current_request_id" not in action.input:
            action.input["current_request_id"] = current

    async def run(
        self, action: Action, next_: Callable[[Any], Awaitable[None]], event: Any
    ) -> None:
        token = request_id.set(action.input.get("current_request_id") or request_id.get())
        try:
            await next_(event)
        finally:
            request_id.reset(token)

    async def finalize(self, action: Action, next_: Callable[[], Awaitable[None]]) -> None:
        token = request_id.set(action.input.get("current_request_id") or request_id.get())
        try:
            await next_()
        finally:
            request_id.reset(token)
