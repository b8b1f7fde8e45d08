"""Runner base class and the update it sends to its suspended action (spec §4.2).

A runner does the actual work of a runner action (a local process, an SSH
session, ...). The :class:`~smart_proxy_dynflow.dispatcher.Dispatcher` drives
it through async hooks and delivers the :class:`Update` objects it generates
to suspended action steps, addressed by :class:`SuspendedAction`.

Two facts make a runner's job safe across a crash of the service:

* ``started``: a runner that knows its job now runs on the target (the script was launched)
  says so with :meth:`Runner.publish_started`; the next update carries ``started`` and the
  runner action stores it. After a restart, a job whose start was never stored may be
  started (once); one whose start was stored is only ever re-attached to.
* :meth:`Runner.result_stored`: the dispatcher calls it once the update carrying the exit
  status was stored by the engine. Only then may the runner remove what the target keeps of
  the job (the SSH runner's job directory): before, a crash would lose the only copy.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from smart_proxy_dynflow.continuous_output import ContinuousOutput, format_exception

EXCEPTION_STATUS = "EXCEPTION"
"""Exit status of a runner that failed with an exception."""

TIMEOUT_MESSAGE = "Timeout for execution passed, trying to stop the job"

RUNNER_UPDATE_KEY = "runner_update"
"""Key of the JSON event an :class:`Update` is carried in."""

ExitStatus = int | str | None


@dataclass(frozen=True)
class SuspendedAction:
    """Address of a suspended runner action step; updates are delivered to it."""

    execution_plan_id: str
    step_id: int


@dataclass
class Update:
    """Output records (and possibly the exit status) for one suspended action."""

    output: list[dict[str, Any]] = field(default_factory=list)
    exit_status: ExitStatus = None
    exit_status_timestamp: float | None = None
    started: bool = False
    """The job runs on its target now (see the module doc)."""

    def __post_init__(self) -> None:
        if self.exit_status is not None and self.exit_status_timestamp is None:
            self.exit_status_timestamp = time.time()

    def to_event(self) -> dict[str, Any]:
        """The JSON-serialisable event delivered to the engine."""
        payload: dict[str, Any] = {
            "output": [dict(record) for record in self.output],
            "exit_status": self.exit_status,
            "exit_status_timestamp": self.exit_status_timestamp,
        }
        if self.started:
            payload["started"] = True
        return {RUNNER_UPDATE_KEY: payload}

    @classmethod
    def from_event(cls, event: Any) -> Update | None:
        """Decode an event made by :meth:`to_event`; None when it is not a runner update."""
        if not isinstance(event, dict):
            return None
        payload = event.get(RUNNER_UPDATE_KEY)
        if not isinstance(payload, dict):
            return None
        return cls(
            output=list(payload.get("output") or []),
            exit_status=payload.get("exit_status"),
            exit_status_timestamp=payload.get("exit_status_timestamp"),
            started=bool(payload.get("started")),
        )

    @classmethod
    def encode_exception(cls, context: str, exc: BaseException, fatal: bool = True) -> Update:
        """One debug record describing ``exc``; exit status "EXCEPTION" when fatal."""
        output = ContinuousOutput()
        output.add_output(format_exception(context, exc), "debug")
        return cls(output.raw_outputs, EXCEPTION_STATUS if fatal else None)


class Runner:
    """Base class of runners; subclasses implement :meth:`start` and :meth:`refresh`.

    Output is buffered with :meth:`publish_data` and handed out by
    :meth:`generate_updates`, which the dispatcher calls after every hook.
    """

    recoverable: ClassVar[bool] = False
    """True when :meth:`reattach` can pick the job up again after a service restart."""

    def __init__(
        self, *, suspended_action: SuspendedAction | None = None, id: str | None = None
    ) -> None:
        self.id: str = id if id is not None else str(uuid.uuid4())
        self.suspended_action = suspended_action
        self.exit_status: ExitStatus = None
        self.exit_status_timestamp: float | None = None
        self.logger = logging.getLogger("smart_proxy_dynflow.runner")
        self._output = ContinuousOutput()
        self._exit_status_sent = False
        self._started_pending = False
        self._result_stored = False
        self.on_news: Callable[[], Any] | None = None
        """Set by the dispatcher: call :meth:`news` to be refreshed now, not at the next tick."""

    def news(self) -> None:
        """Something worth reporting happened (e.g. the job ended): ask for a refresh now."""
        if self.on_news is not None:
            self.on_news()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id}>"

    # -- hooks ---------------------------------------------------------------

    async def start(self) -> None:
        """Start the job."""
        raise NotImplementedError(f"{type(self).__name__} must implement start()")

    async def refresh(self) -> None:
        """Collect new output and the exit status, if any."""
        raise NotImplementedError(f"{type(self).__name__} must implement refresh()")

    async def kill(self) -> None:
        """Stop the job; the runner still has to report an exit status."""

    async def close(self) -> None:
        """Release resources; called once when the runner is finished or stopped."""

    async def reattach(self) -> None:
        """Pick up a job started before a service restart (recoverable runners only)."""
        raise NotImplementedError(f"{type(self).__name__} cannot reattach to its job")

    async def timeout(self) -> None:
        """Called when :meth:`timeout_interval` passed: log it and kill the job."""
        self.publish_data(TIMEOUT_MESSAGE, "debug")
        await self.kill()

    def timeout_interval(self) -> float | None:
        """Seconds after start when :meth:`timeout` is called; None for no timeout."""
        return None

    async def external_event(self, event: Any) -> dict[SuspendedAction | None, Update]:
        """Handle an event sent to the runner; by default just refresh."""
        await self.refresh()
        return self.generate_updates()

    async def run_refresh(self) -> dict[SuspendedAction | None, Update]:
        """Refresh and return the updates (periodic refresh)."""
        await self.refresh()
        return self.generate_updates()

    async def run_refresh_output(self) -> dict[SuspendedAction | None, Update]:
        """Refresh and return the updates (on-demand refresh)."""
        await self.refresh()
        return self.generate_updates()

    # -- publishing ----------------------------------------------------------

    def publish_data(
        self,
        data: str,
        type: str = "debug",
        timestamp: float | None = None,
        id: Any = None,
    ) -> None:
        """Buffer one output record."""
        self._output.add_output(data, type, timestamp, id)

    def publish_exception(self, context: str, exc: BaseException, fatal: bool = True) -> None:
        """Log ``exc``, buffer a debug record and, when fatal, exit with "EXCEPTION"."""
        message = format_exception(context, exc)
        self.logger.error("%s (runner %s)", message, self.id, exc_info=exc)
        self.publish_data(message, "debug")
        if fatal:
            self.publish_exit_status(EXCEPTION_STATUS)

    def publish_exit_status(self, status: int | str) -> None:
        """Record the exit status and the time it was set.

        Publishing the status that was already sent again is ignored, so one exit
        status is never delivered twice.
        """
        if self._exit_status_sent and status == self.exit_status:
            return
        self.exit_status = status
        self.exit_status_timestamp = time.time()
        self._exit_status_sent = False

    def publish_started(self) -> None:
        """The job runs on its target now; the next update says so (see the module doc)."""
        self._started_pending = True

    def result_stored(self) -> None:
        """Called by the dispatcher once the engine stored the update with the exit status."""
        self._result_stored = True

    @property
    def is_result_stored(self) -> bool:
        """True once :meth:`result_stored` was called: the target's copy may be removed."""
        return self._result_stored

    @property
    def finished(self) -> bool:
        """True once an exit status is set."""
        return self.exit_status is not None

    def generate_updates(self) -> dict[SuspendedAction | None, Update]:
        """Hand out the buffered output (and a not yet sent exit status) and reset the buffer."""
        pending_status = self.exit_status is not None and not self._exit_status_sent
        started, self._started_pending = self._started_pending, False
        if self._output.empty and not pending_status and not started:
            return {}
        output, self._output = self._output, ContinuousOutput()
        if pending_status:
            self._exit_status_sent = True
            update = Update(
                output.raw_outputs, self.exit_status, self.exit_status_timestamp, started=started
            )
        else:
            update = Update(output.raw_outputs, started=started)
        return {self.suspended_action: update}
