"""Calling a user-written hook of an action from async engine code, whether it is sync or async.

The mixins (``Polling``, ``Cancellable``) run on the event loop and call methods the user
writes (``poll_external_task``, ``cancel_action``...). An ``async def`` hook is awaited on the
loop; a plain ``def`` hook may block (an HTTP call, say), so it runs in the bounded thread pool
of the action's queue, like a plain ``run`` does. Without a world (an action built by hand in a
unit test) a plain hook is simply called.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .action import Action


async def call_user(action: Action, method: Callable[..., Any], *args: Any) -> Any:
    """Call ``method(*args)`` for ``action``: await it if async, else run it in the queue's pool.

    A plain method that returns an awaitable (e.g. a sync ``abort_action`` delegating to an
    async ``cancel_action``) has that awaitable awaited on the loop.
    """
    if inspect.iscoroutinefunction(method):
        return await method(*args)
    if action.world is None:
        result = method(*args)
    else:
        queue = action.world.executor.queue(_queue_of(action))
        result = await queue.call(method, *args)
    if inspect.isawaitable(result):
        result = await result
    return result


def _queue_of(action: Action) -> str | None:
    """The queue of the action's run step (inherited from its caller when the class sets none)."""
    plan = action.execution_plan
    if plan is not None and action.run_step_id is not None:
        step = plan.steps.get(action.run_step_id)
        if step is not None:
            return step.queue
    return action.queue
