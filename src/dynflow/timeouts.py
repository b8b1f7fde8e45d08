"""The ``Timeouts`` mixin: fail a step that waits too long (spec §1.4).

``schedule_timeout(seconds)`` sends the step a ``TIMEOUT`` event later (stored, so it survives a
restart); the action's ``run`` hands that event to ``process_timeout()``, which by default fails
the step with "Timeout exceeded."::

    class WaitForApproval(Timeouts):
        def run(self, event=None):
            if event is None:
                self.schedule_timeout(3600)
                self.suspend()
            if event == TIMEOUT:
                self.process_timeout()
            self.output["approved_by"] = event

``Polling`` includes this mixin and routes ``TIMEOUT`` to ``process_timeout()`` itself. A timeout
arriving after the step has finished is rejected (logged unless ``optional=True``).
"""

from __future__ import annotations

from .action import TIMEOUT, Action

TIMEOUT_MESSAGE = "Timeout exceeded."


class Timeouts(Action, abstract=True):
    """Mixin for actions that give up after a while; combine it before ``Action`` (or alone)."""

    def schedule_timeout(self, seconds: float, optional: bool = False) -> None:
        """Send ``TIMEOUT`` to this step after ``seconds`` (run phase only)."""
        self.plan_event(TIMEOUT, seconds, optional=optional)

    def process_timeout(self) -> None:
        """Called on ``TIMEOUT``: fails the step. Override to e.g. clean up first (may be async)."""
        self.fail(TIMEOUT_MESSAGE)
