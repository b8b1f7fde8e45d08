"""Runner actions: a suspended, cancellable action that owns one runner (§4.1).

Planning copies the input, takes ``callback`` out of it, sets ``task_id`` (Foreman's task id,
from ``callback.task_id``) and, when there is a callback, plans a
:class:`~smart_proxy_dynflow.callback.CallbackAction` fed with this action's output, so Foreman
hears back as soon as the run phase finishes.

Running, by event:

==================  ==========================================================================
no event (first)    ``initiate_runner()`` is started by the dispatcher; suspend
runner update       its records are stored as one output chunk; with an exit status: finish
external event      forwarded to the runner (``/tasks/:id/update`` and ``/done``); suspend
``CANCEL/ABORT``    the runner is killed; the action finishes when the runner reports its exit
``POLL``            an immediate output refresh (status requests send it); suspend
==================  ==========================================================================

Finishing writes ``exit_status``, ``exit_status_timestamp`` and ``result`` (every record, in
order) and, in the same save, erases the passwords from the stored input
(:meth:`RunnerAction.runner_finished`). Finalize fails the plan with "Script execution
failed" for a non-zero exit status.

After a restart of the service the step runs again with no event, also when it was
``running`` at a crash (``rerun_on_recovery``: the original failed such a step with
"Abnormal termination" and Foreman never heard back). A runner class that is ``recoverable``
is re-attached to its job (the SSH runner reads the recorded output and exit code on the
host); any other runner's outcome is unknown, so the action finishes with the exit status
``EXCEPTION`` and a debug line saying why (the original failed such tasks too).

What makes the re-run safe: :meth:`RunnerAction.default_runner_id` is derived from the plan and
step, so a run cut short before its first save starts a runner with the same id, which finds
the job the first one may have launched; ``started`` (stored from the runner's first update
after the launch) tells a job that may be started from one that may only be re-attached to.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from dynflow import Action
from dynflow.action import ABORT, CANCEL, POLL, SKIP
from dynflow.user_calls import call_user

from .callback import CallbackAction
from .context import context_of
from .runner import Runner, SuspendedAction, Update
from .secret_box import erase_secrets, has_secrets

log = logging.getLogger("smart_proxy_dynflow.runner")

EXTERNAL_EVENT = "external_event"
STARTED_KIND = "runner_started"
RUNNER_ID_NAMESPACE = uuid.UUID("5b8f4a52-6f0e-4d3c-9a53-2f6b1d0c7e41")
FINISHED_STATES = ("success", "error", "skipped")


def external_event(data: dict[str, Any]) -> dict[str, Any]:
    """The engine event carrying the body of ``/tasks/:id/update`` or ``/done``."""
    return {EXTERNAL_EVENT: data}


def external_event_data(event: Any) -> dict[str, Any] | None:
    if isinstance(event, dict) and isinstance(event.get(EXTERNAL_EVENT), dict):
        return event[EXTERNAL_EVENT]
    return None


class RunnerAction(Action, abstract=True):
    """Base of actions whose run phase is a runner; subclasses write ``initiate_runner``."""

    cancellable = True
    rerun_on_recovery = True

    def plan(self, input: dict[str, Any] | None = None, **values: Any) -> None:
        data = {**(input or {}), **values}
        callback = data.pop("callback", None)
        if isinstance(callback, dict) and callback.get("task_id") is not None:
            data["task_id"] = callback["task_id"]
        data.setdefault("task_id", str(uuid.uuid4()))
        self.plan_self(data)
        if isinstance(callback, dict):
            self.plan_action(CallbackAction, callback=callback, data=self.output)

    def initiate_runner(self) -> Runner | Awaitable[Runner]:
        """The runner to start (may be ``async def``); it is addressed to ``suspended_action``.

        Called through :func:`~dynflow.user_calls.call_user`, which awaits what an
        ``async def`` (or a plain method returning an awaitable) gives."""
        raise NotImplementedError(f"{self.name()} must implement initiate_runner()")

    @property
    def suspended_action(self) -> SuspendedAction:
        assert self.run_step_id is not None
        return SuspendedAction(self.execution_plan_id, self.run_step_id)

    @property
    def runner_id(self) -> str | None:
        return self.output.get("runner_id")

    def default_runner_id(self) -> str:
        """The id of this step's runner: the same for every run of the step (see the module
        doc), unique across steps and plans."""
        return str(uuid.uuid5(RUNNER_ID_NAMESPACE, f"{self.execution_plan_id}/{self.run_step_id}"))

    @staticmethod
    def job_started(chunks: list[dict[str, Any]]) -> bool:
        """Whether the stored output ``chunks`` show that the job started on its target: the
        start is noted as an empty chunk of kind ``runner_started`` (so the output Foreman
        sees keeps its exact shape), and output at all proves it too."""
        return any(c.get("kind") == STARTED_KIND or c.get("chunk") for c in chunks)

    # ---- run ----------------------------------------------------------------------------------
    async def run(self, event: Any = None) -> None:
        if event == SKIP:
            return  # skipped (the console, a rescue): as the original, nothing is run or killed
        try:
            await self.process_event(event)
        except Exception as exc:  # any failure becomes the runner's outcome
            log.exception("%s: error handling event %s", self, _describe(event))
            if self.runner_id:
                context_of(self.world).dispatcher.kill(self.runner_id)
            await self.process_update(Update.encode_exception("Proxy error", exc, fatal=True))

    async def process_event(self, event: Any) -> None:
        dispatcher = context_of(self.world).dispatcher
        if event is None:
            if "runner_id" not in self.output:
                await self.start_runner(await call_user(self, self.initiate_runner), resume=False)
            else:
                await self.recover()
            return
        update = Update.from_event(event)
        if update is not None:
            await self.process_update(update)
            return
        data = external_event_data(event)
        if data is not None:
            if self.runner_id:
                dispatcher.external_event(self.runner_id, data)
        elif event in (CANCEL, ABORT):
            if self.runner_id:
                dispatcher.kill(self.runner_id)
        elif event == POLL:
            if self.runner_id:
                dispatcher.refresh_output(self.runner_id)
        else:
            raise ValueError(f"Unexpected event {_describe(event)}")
        self.suspend()

    async def start_runner(self, runner: Runner, *, resume: bool) -> None:
        if resume:
            runner.id = self.output["runner_id"]
        else:
            self.output["result"] = []
            self.output["runner_id"] = runner.id
        context_of(self.world).dispatcher.start(self.suspended_action, runner, resume=resume)
        self.suspend()

    async def recover(self) -> None:
        """The service restarted while this action waited on its runner."""
        if self.output.get("exit_status") is not None:
            return  # it had finished; only the end of the step was not saved
        runner = await call_user(self, self.initiate_runner)
        if runner.recoverable:
            log.info("%s: re-attaching runner %s after a restart", self, self.runner_id)
            await self.start_runner(runner, resume=True)
            return
        record = {
            "output_type": "debug",
            "output": "The smart proxy restarted while this job was running; "
            "its result is unknown.",
            "timestamp": time.time(),
        }
        await self.process_update(Update([record], exit_status="EXCEPTION"))

    async def process_update(self, update: Update) -> None:
        if update.started:
            self.output_chunk([], kind=STARTED_KIND)
        if update.exit_status is None:
            if update.output:
                self.output_chunk(update.output, kind="runner_update")
            self.suspend()
        # Finished: the whole output goes into ``result``; the chunks are not needed any more.
        assert self.world is not None
        chunks = await self.world.output_chunks(self.execution_plan_id, self.id)
        self.output["result"] = [r for c in chunks for r in (c["chunk"] or [])] + list(
            update.output
        )
        self.drop_output_chunks()
        self.output["exit_status"] = update.exit_status
        self.output["exit_status_timestamp"] = update.exit_status_timestamp or time.time()
        self.runner_finished()

    def runner_finished(self) -> None:
        """The exit status is set (it is stored with what this asks for): the passwords in
        the input (``secrets``) are erased from the stored input, the job needs them no more.
        Subclasses may forget more."""
        if has_secrets(self.input):
            self.change_stored_input(erase_secrets)

    def rescue_strategy_for_self(self) -> str:
        return "fail"

    # ---- finalize -----------------------------------------------------------------------------
    def finalize(self) -> None:
        status = self.output.get("exit_status")
        if status is not None and str(status) != "0":
            self.fail("Script execution failed")

    # ---- presentation (status API) ------------------------------------------------------------
    @classmethod
    def has_live_output(cls, output: dict[str, Any]) -> bool:
        """Whether the run started, so that ``result`` is assembled from the output chunks
        while it runs (a runner was started; subclasses without a runner say otherwise)."""
        return "runner_id" in output

    @classmethod
    def live_output(cls, output: dict[str, Any], chunks: list[dict[str, Any]]) -> dict[str, Any]:
        """The output as Foreman sees it while running: ``result`` assembled from the chunks."""
        return {**output, "result": [r for c in chunks for r in (c["chunk"] or [])]}


def _describe(event: Any) -> str:
    text = repr(event)
    return text if len(text) <= 200 else text[:200] + "..."


__all__ = [
    "EXTERNAL_EVENT",
    "FINISHED_STATES",
    "RunnerAction",
    "external_event",
    "external_event_data",
]
