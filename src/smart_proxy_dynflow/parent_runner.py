"""Runner that works for several hosts at once (spec §4.3).

Each host (target) is a suspended OutputCollector step somewhere else; the
parent buffers output per host and addresses the host updates to
``SuspendedAction(target["execution_plan_id"], target["run_step_id"])``.
"""

from __future__ import annotations

import time
from typing import Any

from smart_proxy_dynflow.continuous_output import ContinuousOutput, format_exception
from smart_proxy_dynflow.runner import EXCEPTION_STATUS, Runner, SuspendedAction, Update


class ParentRunner(Runner):
    """Runner with one output buffer and an optional exit status override per host.

    ``targets`` maps an identifier to ``{"execution_plan_id", "run_step_id", "input"}``.
    """

    def __init__(
        self,
        targets: dict[str, dict[str, Any]],
        *,
        suspended_action: SuspendedAction | None = None,
        id: str | None = None,
    ) -> None:
        super().__init__(suspended_action=suspended_action, id=id)
        self.targets = targets
        self.outputs: dict[str, ContinuousOutput] = {
            identifier: ContinuousOutput() for identifier in targets
        }
        self.exit_status_overrides: dict[str, int | str] = {}

    def host_action(self, identifier: str) -> SuspendedAction:
        """The suspended action that receives the updates of host ``identifier``."""
        target = self.targets[identifier]
        return SuspendedAction(target["execution_plan_id"], target["run_step_id"])

    def publish_data(
        self,
        data: str,
        type: str = "debug",
        timestamp: float | None = None,
        id: Any = None,
    ) -> None:
        """Ignored: output belongs to a host, use publish_data_for or broadcast_data."""
        self.logger.debug(
            "%s: publish_data is a no-op, use publish_data_for or broadcast_data", self
        )

    def publish_data_for(
        self,
        identifier: str,
        data: str,
        type: str = "debug",
        timestamp: float | None = None,
        id: Any = None,
    ) -> None:
        """Buffer one output record for host ``identifier``."""
        self.outputs[identifier].add_output(data, type, timestamp, id)

    def broadcast_data(
        self,
        data: str,
        type: str = "debug",
        timestamp: float | None = None,
        id: Any = None,
    ) -> None:
        """Buffer the same output record for every host."""
        if timestamp is None:
            timestamp = time.time()
        for output in self.outputs.values():
            output.add_output(data, type, timestamp, id)

    def publish_exception(self, context: str, exc: BaseException, fatal: bool = True) -> None:
        """Log ``exc``, broadcast a debug record and, when fatal, exit with "EXCEPTION"."""
        message = format_exception(context, exc)
        self.logger.error("%s (runner %s)", message, self.id, exc_info=exc)
        self.broadcast_data(message, "debug")
        if fatal:
            self.publish_exit_status(EXCEPTION_STATUS)

    def publish_exit_status_for(self, identifier: str, status: int | str) -> None:
        """Override the exit status of one host (delivered with the overall status)."""
        if identifier not in self.targets:
            raise KeyError(identifier)
        self.exit_status_overrides[identifier] = status

    def generate_updates(self) -> dict[SuspendedAction | None, Update]:
        """Updates for this round.

        When the overall exit status is (newly) set: an empty update with that status
        for every host plus, last, one for the parent's own suspended action (status = host
        override or overall), all sharing one timestamp. Otherwise: updates without
        exit status for the hosts with buffered output.
        """
        updates: dict[SuspendedAction | None, Update] = {}
        timestamp: float | None = None
        final = self.exit_status is not None and not self._exit_status_sent
        if final:
            self._exit_status_sent = True
            timestamp = self.exit_status_timestamp or time.time()
        for identifier, output in self.outputs.items():
            if not final and output.empty:
                continue
            self.outputs[identifier] = ContinuousOutput()
            if final:
                status = self.exit_status_overrides.get(identifier, self.exit_status)
                updates[self.host_action(identifier)] = Update(
                    output.raw_outputs, status, timestamp
                )
            else:
                updates[self.host_action(identifier)] = Update(output.raw_outputs)
        if final:
            # Last, so every host has its result before the parent's own action finishes.
            updates[self.suspended_action] = Update([], self.exit_status, timestamp)
        return updates
