"""Callbacks to Foreman: tell it a task finished, durably (§5).

:class:`ForemanClient` POSTs to ``<foreman_url>/foreman_tasks/api/tasks/callback`` with the
proxy's client certificate; only HTTP 200 counts as delivered.

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
from urllib.parse import urlsplit, urlunsplit

import httpx

from dynflow import SKIP, Action
from smart_proxy.tls import client_context

log = logging.getLogger("smart_proxy_dynflow.callback")

CALLBACK_PATH = "/foreman_tasks/api/tasks/callback"
RETRY = "smart_proxy_dynflow.callback.retry"


TRANSIENT_CLIENT_ERRORS = frozenset({408, 429})
"""4xx answers that say "later" (request timeout, too many requests), not "never"."""


class CallbackFailed(Exception):
    """An attempt failed; ``status`` is Foreman's HTTP status (None: no answer at all)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def permanent(self) -> bool:
        """Foreman rejected the callback (4xx but 408/429): sending it again cannot help."""
        status = self.status
        return status is not None and 400 <= status < 500 and status not in TRANSIENT_CLIENT_ERRORS


def callback_url(foreman_url: str) -> str:
    """The callback endpoint on Foreman; a path prefix in ``foreman_url`` is dropped (§5.1)."""
    parts = urlsplit(foreman_url)
    return urlunsplit((parts.scheme, parts.netloc, CALLBACK_PATH, "", ""))


class ForemanClient:
    def __init__(
        self,
        foreman_url: str,
        *,
        cafile: str | None = None,
        certfile: str | None = None,
        keyfile: str | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.url = callback_url(foreman_url)
        self._cafile, self._certfile, self._keyfile = cafile, certfile, keyfile
        self._timeout = timeout
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            verify: Any = True
            if self.url.startswith("https:"):
                verify = client_context(
                    cafile=self._cafile, certfile=self._certfile, keyfile=self._keyfile
                )
            self._client = httpx.AsyncClient(verify=verify, timeout=self._timeout)
        return self._client

    async def send(self, payload: dict[str, Any]) -> None:
        """POST ``payload``; raises :class:`CallbackFailed` unless Foreman answers 200."""
        try:
            response = await self._http().post(
                self.url,
                json=payload,
                headers={"Accept": "application/json,version=2"},
            )
        except (httpx.HTTPError, OSError) as exc:
            raise CallbackFailed(
                f"Failed performing callback to Foreman server: {type(exc).__name__} {exc}"
            ) from exc
        if response.status_code != 200:
            raise CallbackFailed(
                "Failed performing callback to Foreman server: "
                f"{response.status_code} {response.text[:500]}",
                response.status_code,
            )

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


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
        from .core import core_of

        core = core_of(self.world)
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
