"""Callbacks to Foreman: tell it a task finished, durably (§5).

The core's :class:`~.foreman.ForemanClient` POSTs to
``<foreman_url>/foreman_tasks/api/tasks/callback`` with the proxy's client certificate; only
HTTP 200 counts as delivered.

:class:`CallbackAction` (one task) and :class:`BatchCallbackAction` (a group launch, one
request for many tasks) are ordinary engine actions, which is what makes them durable: their
data is in the database before the first attempt; after a restart the step runs again and
sends at once, also when it was in flight at a crash. Once Foreman answered 200 and that was
stored, the callback is never sent again.

What a failed attempt does depends on the answer (:attr:`CallbackFailed.permanent`):

* Foreman **rejected** the callback (a 4xx other than 408 and 429: not authorised, unknown
  task, bad request): sending it again cannot help, so the step fails at once with "Failed
  performing callback to Foreman server: <code> <body>", as the original's
  ``Callback::Action`` does (it raises, the step errors, the plan pauses).
* Foreman could not be reached, or answered 5xx, 408 or 429: a stored retry event is planned
  with exponential back-off (``callback_retry_interval`` doubling up to
  ``callback_retry_max_interval``), for at most ``callback_retry_window`` seconds (default
  600) from the first attempt; then the step fails the same way.

Either way the plan is then ``paused`` with its full result: the runner action's output
(``result``, ``exit_status``) is in ``GET /tasks/:id/status``, and Foreman's own safety-net poll
(``POST /tasks/status`` every 600 s, which acts on ``stopped`` and ``paused`` plans) closes the
job from it. The cleaner keeps paused plans for 7 days (``stopped`` ones only
``execution_plan_cleaner_age``), far longer than the poll needs.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from dynflow import SKIP, Action

from .context import context_of
from .foreman import CallbackFailed

log = logging.getLogger("smart_proxy_dynflow.callback")

RETRY = "smart_proxy_dynflow.callback.retry"


class _DurableCallback(Action, abstract=True):
    """Sends ``payload()`` until Foreman takes it, surviving Foreman outages and restarts.

    A crash while a request is in flight re-runs the step (``rerun_on_recovery``), which
    sends the callback again. That repeats a callback only when the crash fell between
    Foreman's 200 and the proxy's record of it, and Foreman ignores the repeat: foreman-tasks'
    ``TasksController#callback`` hands each callback to the step it names with
    ``world.event`` and answers 200 ``{"message": "processing"}`` at once; Dynflow drops an
    event for a step that is no longer suspended (the step finished with the first one).
    """

    rerun_on_recovery = True

    def payload(self) -> dict[str, Any]:
        raise NotImplementedError

    async def run(self, event: Any = None) -> None:
        if event == SKIP:
            return  # a skipped callback is not sent
        core = context_of(self.world)
        attempts = int(self.output.get("attempts", 0)) + 1
        self.output["attempts"] = attempts
        self.output.setdefault("first_attempt_at", time.time())
        try:
            await core.foreman.send(self.payload())
        except CallbackFailed as exc:
            self.output["last_error"] = str(exc)
            if exc.permanent:
                log.error("%s: Foreman rejected the callback, not retrying: %s", self, exc)
                self.fail(str(exc))
            config = core.config
            # The retries end with the window (from the first attempt, across restarts): the
            # last one is pulled in to its end, and a failure then is final.
            left = float(self.output["first_attempt_at"]) + config.callback_retry_window
            left -= time.time()
            if left <= 0:
                log.error("%s: giving up after %d attempts: %s", self, attempts, exc)
                self.fail(str(exc))
            delay = min(
                config.callback_retry_interval * 2 ** (attempts - 1),
                config.callback_retry_max_interval,
                left,
            )
            log.warning("%s: attempt %d failed, retrying in %.1f s: %s", self, attempts, delay, exc)
            self.plan_event(RETRY, delay, optional=True)
            self.suspend()
        self.output.pop("last_error", None)
        self.output["delivered_at"] = time.time()
        log.info("%s: delivered to Foreman after %d attempt(s)", self, attempts)


class CallbackAction(_DurableCallback):
    """``{"callback": {"task_id", "step_id"}, "data": <runner action output>}`` (§5.1)."""

    wire_names = ("Proxy::Dynflow::Callback::Action", "ForemanTasksCore::Callback::Action")

    def plan(self, callback: dict[str, Any], data: Any) -> None:
        self.plan_self(callback=callback, data=data)

    def payload(self) -> dict[str, Any]:
        return {"callback": self.input["callback"], "data": self.input["data"]}


class BatchCallbackAction(_DurableCallback):
    """One ``{"callbacks": [...]}`` request for every task of a group launch (§5.1)."""

    wire_names = ("Proxy::Dynflow::Action::BatchCallback",)

    def plan(self, targets: dict[str, Any], results: Any) -> None:
        self.plan_self(targets=targets, results=results)

    def payload(self) -> dict[str, Any]:
        results = self.input.get("results")
        results = results if isinstance(results, dict) else {}  # the parent failed
        return {
            "callbacks": [
                {"callback": callback, "data": bulk_data(results.get(key))}
                for key, callback in self.input["targets"].items()
                if isinstance(callback, dict)  # a task Foreman gave no callback
            ]
        }


NO_RESULT = (
    "The smart proxy has no result of this task: it did not run, "
    "or its group failed before the results were collected."
)


def bulk_data(output: Any) -> dict[str, Any]:
    """The ``data`` of one task in a bulk callback: its output, never ``null``.

    foreman-tasks' ``TasksController#callback`` calls ``data.to_unsafe_h`` on every entry (one
    ``null`` fails the whole request with 500), and REX iterates ``data["result"]``. A task
    without such an output (its plan is missing, it never ran, or the group's parent failed
    before collecting) is reported as failed (``EXCEPTION``) with a debug line saying why."""
    if isinstance(output, dict) and isinstance(output.get("result"), list):
        return output
    now = time.time()
    return {
        **(output if isinstance(output, dict) else {}),
        "result": [{"output_type": "debug", "output": NO_RESULT, "timestamp": now}],
        "exit_status": "EXCEPTION",
        "exit_status_timestamp": now,
    }
