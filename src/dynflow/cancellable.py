"""The ``Cancellable`` mixin: let ``world.cancel(plan_id)`` reach a running or suspended step.

A step is *cancellable* when its action class sets ``cancellable = True``, which this mixin does;
``world.cancel(plan_id)`` then sends it ``CANCEL`` (``ABORT`` with ``force=True``). The mixin
maps those events to two methods the user writes:

* ``cancel_action()``: required; what cancelling means (stop the external work, then usually
  ``self.fail(...)`` or just return to finish the step, or ``self.suspend()`` to keep waiting);
* ``abort_action()``: optional; defaults to ``cancel_action()``.

Cancellation does not change states by itself: the step ends the way these methods leave it.
Both may be plain or ``async def``. The mixin does not define ``run``; the action's own ``run``
hands events over first (``Polling`` does this by itself when combined with this mixin)::

    class Deploy(Cancellable):
        def run(self, event=None):
            if self.handle_cancel_event(event):
                return
            ...  # normal work, may suspend

        def cancel_action(self):
            stop_deploy(self.input["id"])
            self.fail("cancelled by the user")

    class AsyncDeploy(Cancellable):
        async def run(self, event=None):
            if await self.handle_cancel_event_async(event):
                return
            ...

A plain ``run`` executes in a worker thread, so it cannot wait for an ``async def``
``cancel_action``; ``handle_cancel_event`` raises ``TypeError`` then.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar

from .action import ABORT, CANCEL, Action
from .user_calls import call_user


class Cancellable(Action, abstract=True):
    """Mixin for actions that react to ``CANCEL``/``ABORT``; list it before other bases."""

    cancellable: ClassVar[bool] = True

    def cancel_action(self) -> Any:
        """Cancel the work of this step (on ``CANCEL``). May be ``async def``."""
        raise NotImplementedError(f"{self.name()} must implement cancel_action()")

    def abort_action(self) -> Any:
        """Abort the work of this step (on ``ABORT``, a forced cancel); defaults to cancelling."""
        return self.cancel_action()

    def cancel_method_for(self, event: Any) -> Callable[[], Any] | None:
        """The method handling ``event``, or None if it is not a cancellation event."""
        if event == CANCEL:
            return self.cancel_action
        if event == ABORT:
            return self.abort_action
        return None

    def handle_cancel_event(self, event: Any) -> bool:
        """For a plain ``run``: handle ``CANCEL``/``ABORT`` and return True, else return False."""
        method = self.cancel_method_for(event)
        if method is None:
            return False
        result = method()
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError(
                f"{self.name()}: an async cancel/abort method needs an async run "
                "(use `await self.handle_cancel_event_async(event)`)"
            )
        return True

    async def handle_cancel_event_async(self, event: Any) -> bool:
        """For an ``async def run``: like ``handle_cancel_event``, awaiting async methods."""
        method = self.cancel_method_for(event)
        if method is None:
            return False
        await call_user(self, method)
        return True
