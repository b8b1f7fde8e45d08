"""The ``Polling`` mixin: start an external task, then poll it until it is done (spec §1.4).

The user writes three methods (plain or ``async def``) and optionally a fourth:

* ``invoke_external_task()``: start the task; returns its data (JSON), stored in
  ``output["task"]``;
* ``poll_external_task()``: ask about the task (``self.external_task``); returns fresh data,
  stored in ``output["task"]``;
* ``done()``: is the task finished (usually judged from ``self.external_task``)?
* ``on_finish()``: called once when ``done()``; does nothing by default.

The mixin's ``run`` is ``async def`` and runs on the event loop: ``async def`` methods are awaited
there, plain ones run in the bounded thread pool of the action's queue, so they may block.

Between polls the step is suspended (holding no thread) and wakes on a stored ``POLL`` event. The
wait grows from ``poll_intervals[0]`` one level every ``poll_attempts_before_next_interval``
polls, staying at the last interval. A failing poll is logged and retried; the
``poll_max_retries``-th failure in a row fails the step (as in Dynflow: with 3, two failures are
tolerated). ``fail()`` inside ``poll_external_task`` fails the step at once. Counters
live in ``output["poll_attempts"] = {"total": n, "failed": m}`` (``failed`` is consecutive).

After a restart the step runs again with no event: if ``output["task"]`` is set the old task is
polled, and if that poll fails beyond the tolerance the task is invoked again. ``TIMEOUT``
(see ``schedule_timeout``, from ``Timeouts``) goes to ``process_timeout()``, which fails the step.
Combined with ``Cancellable`` (listed first: ``class Job(Cancellable, Polling)``), ``CANCEL`` and
``ABORT`` go to ``cancel_action()``/``abort_action()``; the step then finishes unless those fail
or suspend it (a ``POLL`` is still pending, so suspending keeps polling).

All of these are class attributes or methods a subclass may override, e.g. tests use tiny
``poll_intervals``; ``poll_interval()`` itself is a plain, quick computation.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from .action import ABORT, CANCEL, POLL, SKIP, TIMEOUT
from .cancellable import Cancellable
from .errors import ActionFailed
from .timeouts import Timeouts
from .user_calls import call_user

log = logging.getLogger("dynflow.action")


class Polling(Timeouts, abstract=True):
    """Mixin for actions that wait on an external task by polling it."""

    poll_intervals: ClassVar[tuple[float, ...]] = (0.5, 1, 2, 4, 8, 16)
    poll_attempts_before_next_interval: ClassVar[int] = 5
    poll_max_retries: ClassVar[int] = 3

    # ---- what the user implements -----------------------------------------------------------
    def invoke_external_task(self) -> Any:
        raise NotImplementedError(f"{self.name()} must implement invoke_external_task()")

    def poll_external_task(self) -> Any:
        raise NotImplementedError(f"{self.name()} must implement poll_external_task()")

    def done(self) -> bool:
        raise NotImplementedError(f"{self.name()} must implement done()")

    def on_finish(self) -> None:
        """Called once the task is done; the step then finishes."""

    # ---- state kept in the output --------------------------------------------------------------
    @property
    def external_task(self) -> Any:
        """The task data, or None when the task has not been invoked yet."""
        return self.output.get("task")

    @external_task.setter
    def external_task(self, data: Any) -> None:
        self.output["task"] = data

    @property
    def poll_attempts(self) -> dict[str, int]:
        attempts: dict[str, int] = self.output.setdefault("poll_attempts", {})
        attempts.setdefault("total", 0)
        attempts.setdefault("failed", 0)
        return attempts

    def poll_interval(self) -> float:
        """Seconds until the next poll: one interval level per N attempts, capped at the last."""
        level = self.poll_attempts["total"] // self.poll_attempts_before_next_interval
        return self.poll_intervals[min(level, len(self.poll_intervals) - 1)]

    # ---- the run phase ---------------------------------------------------------------------------
    async def run(self, event: Any = None) -> None:
        if event == SKIP:
            return  # skipped: nothing to poll (Dynflow's raises "unrecognized event")
        if event is None:
            if self.external_task is not None:
                await self._resume_external_task()
            else:
                await self._invoke_external_task()
        elif event == POLL:
            await self._poll_with_rescue()
        elif event == TIMEOUT:
            await call_user(self, self.process_timeout)
            self.suspend()  # a POLL is already planned
        elif event in (CANCEL, ABORT) and isinstance(self, Cancellable):
            await self.handle_cancel_event_async(event)
            return
        else:
            raise ValueError(f"{self.name()}: unrecognized event {event!r}")
        if await call_user(self, self.done):
            await call_user(self, self.on_finish)
        else:
            self.plan_event(POLL, self.poll_interval())
            self.suspend()

    async def _invoke_external_task(self) -> None:
        self.external_task = await call_user(self, self.invoke_external_task)

    async def _resume_external_task(self) -> None:
        try:
            await self._poll_with_rescue()
        except ActionFailed:
            raise  # fail() says the step failed, not that the old task is gone
        except Exception:  # noqa: BLE001 - the old task is gone: start a new one
            self._logger().warning(
                "%s: polling the old task failed, invoking it again", self.name(), exc_info=True
            )
            await self._invoke_external_task()

    async def _poll_with_rescue(self) -> None:
        attempts = self.poll_attempts
        attempts["total"] += 1
        try:
            self.external_task = await call_user(self, self.poll_external_task)
        except ActionFailed:
            raise  # fail() fails the step at once; it is not a poll that went wrong
        except Exception as exc:
            attempts["failed"] += 1
            if attempts["failed"] >= self.poll_max_retries:  # the Nth failure in a row fails
                raise
            self._logger().warning(
                "%s: polling failed (%s consecutive), retrying in %ss: %s",
                self.name(), attempts["failed"], self.poll_interval(), exc,
            )
        else:
            attempts["failed"] = 0

    def _logger(self) -> logging.Logger:
        return self.world.action_logger if self.world is not None else log
