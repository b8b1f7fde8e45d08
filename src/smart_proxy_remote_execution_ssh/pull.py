"""``PullScript``: a job the host fetches itself (``mode: pull`` and ``pull-mqtt``, §4.3).

Planned by ``RunScript`` instead of the SSH runner when the plugin's mode is a pull mode. It
shares the lifecycle of :class:`~smart_proxy_dynflow.runner_action.RunnerAction` (the callback
to Foreman, output records stored as output chunks, ``result``/``exit_status``/
``exit_status_timestamp`` when it finishes, "Script execution failed" for a non-zero exit), so
the task status and Foreman's callback have exactly the shape of an SSH job's; there is just
no runner: the host's own reports are the updates.

``output.state`` says how far the job got: ``ready_for_pickup`` (stored), ``notified`` (an MQTT
start message handed to the dispatcher), ``delivered`` (the host fetched it), ``running`` (the
host reported something).

Run step, by event:

=====================  =========================================================================
no event, first run    planned ``Timeout`` (``execution_timeout_interval``) and ``PickupTimeout``
                       (``time_to_pickup``) events; the job is stored in the plugin's
                       :class:`~.jobs.JobIndex`; with MQTT the start message is handed to the
                       dispatcher; suspend
no event, again        the service restarted: the job goes back into the index (and, with MQTT,
                       to the dispatcher: notified again if not fetched yet); suspend
``JobDelivered``       ``GET /ssh/jobs/:uuid``: ``delivered``; suspend
runner update          ``POST /ssh/jobs/:uuid/update`` (already parsed by the endpoint):
                       ``running``, stored as one output chunk; an exit code finishes
``PickupTimeout``      kill with "The job was not picked up in time" unless the host fetched it
``Timeout``            kill with "Execution timeout exceeded"
``Cancel``/``Abort``   kill with "The job was cancelled by the user"
``Poll``               nothing (there is no runner to refresh)
=====================  =========================================================================

Killing a job the host has not fetched drops it and finishes with ``EXCEPTION``; a fetched job
gets an MQTT cancel message ("…, notifying the host over MQTT") or, without MQTT, the line
"…, however the job was triggered without MQTT and cannot be stopped", and waits for the host's
exit report (``Abort`` finishes at once instead). The job leaves the index when the action
finishes and when its plan stops.

The input's passwords (``secrets``) are not stored: the host runs the job itself, so they are
erased when the action is planned (the batch parent keeps its sealed copy only until its
children are planned).
"""

from __future__ import annotations

import logging
import time
import uuid as uuidlib
from typing import Any, ClassVar

from dynflow import World
from dynflow.action import ABORT, CANCEL, POLL, TIMEOUT
from smart_proxy_dynflow.runner import EXCEPTION_STATUS, Update
from smart_proxy_dynflow.runner_action import RunnerAction, external_event_data
from smart_proxy_dynflow.secret_box import erase_secrets

from .jobs import PullJob, host_identity
from .mqtt import cancel_message, start_message, topic_for
from .state import RexState, require_state, state_of

log = logging.getLogger("smart_proxy_remote_execution_ssh.pull")

PULL_SCRIPT_NAMES = ("Proxy::RemoteExecution::Ssh::Actions::PullScript",)
JOB_DELIVERED = "Proxy::RemoteExecution::Ssh::Actions::PullScript::JobDelivered"
PICKUP_TIMEOUT = "Proxy::RemoteExecution::Ssh::Actions::PullScript::PickupTimeout"

READY_FOR_PICKUP = "ready_for_pickup"
NOTIFIED = "notified"
DELIVERED = "delivered"
RUNNING = "running"
NOT_PICKED_UP = (READY_FOR_PICKUP, NOTIFIED)

PICKUP_TIMEOUT_MESSAGE = "The job was not picked up in time"
EXECUTION_TIMEOUT_MESSAGE = "Execution timeout exceeded"
CANCEL_MESSAGE = "The job was cancelled by the user"


def _positive(value: Any) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


class PullScriptAction(RunnerAction):
    """One job a host fetches from the proxy (§4.3)."""

    wire_names = PULL_SCRIPT_NAMES
    execution_plan_hooks: ClassVar[dict[str, list[str]]] = {"stopped": ["cleanup_job"]}

    def plan(self, input: dict[str, Any] | None = None, **values: Any) -> None:
        # The host runs the job itself: the passwords meant for an SSH login and sudo are of
        # no use here, so they are not stored at all.
        data = erase_secrets({**(input or {}), **values})
        # Chosen here, so it is stored with the input from the start: the job survives restarts.
        data["job_uuid"] = str(uuidlib.uuid4())
        data["mqtt"] = plugin_mode(self.world) == "pull-mqtt"
        super().plan(data)

    def initiate_runner(self) -> Any:  # pragma: no cover - a pull job has no runner
        raise NotImplementedError("PullScript jobs are run by the host, not by a runner")

    # ---- the job --------------------------------------------------------------------------------
    @property
    def job_uuid(self) -> str:
        return str(self.input["job_uuid"])

    @property
    def identity(self) -> str | None:
        return host_identity(self.input)

    @property
    def proxy_url(self) -> str:
        url = self.input.get("proxy_url") or self.input.get("callback_host") or ""
        return str(url).rstrip("/")

    @property
    def effective_user(self) -> str | None:
        user = self.input.get("effective_user")
        return str(user) if user else None

    def pull_job(self, created: float | None = None) -> PullJob | None:
        """The job as the index keeps it (None if the input cannot make one)."""
        identity = self.identity
        script = self.input.get("script")
        if identity is None or script is None or "job_uuid" not in self.input:
            return None
        assert self.run_step_id is not None
        return PullJob(
            uuid=self.job_uuid,
            owner=identity.lower(),
            execution_plan_id=self.execution_plan_id,
            run_step_id=self.run_step_id,
            script=str(script).replace("\r", ""),
            effective_user=self.effective_user,
            created=time.time() if created is None else created,
        )

    def _rex(self) -> RexState:
        return require_state(self.world)

    # ---- run ------------------------------------------------------------------------------------
    async def process_event(self, event: Any) -> None:
        if event is None:
            if "state" not in self.output:
                await self.store_job()
            else:
                await self.recover_job()
            return
        update = Update.from_event(event)
        if update is not None:
            self.output["state"] = RUNNING
            await self.process_update(update)
            return
        state = self.output.get("state")
        if event == JOB_DELIVERED:
            if state != RUNNING:
                self.output["state"] = DELIVERED
        elif event == PICKUP_TIMEOUT:
            if state in NOT_PICKED_UP:
                await self.kill(PICKUP_TIMEOUT_MESSAGE)
                return
        elif event == TIMEOUT:
            await self.kill(EXECUTION_TIMEOUT_MESSAGE)
            return
        elif event in (CANCEL, ABORT):
            await self.kill(CANCEL_MESSAGE, force=event == ABORT)
            return
        elif event == POLL or external_event_data(event) is not None:
            pass  # no runner to refresh; /dynflow/tasks/:id/update is not how hosts report
        else:
            raise ValueError(f"Unexpected event {event!r}")
        self.suspend()

    async def store_job(self) -> None:
        """The first run (§4.3): timers, the job in the index, the MQTT start message."""
        self.output["result"] = []
        execution_timeout = _positive(self.input.get("execution_timeout_interval"))
        if execution_timeout is not None:
            self.plan_event(TIMEOUT, execution_timeout, optional=True)
        pickup_timeout = _positive(self.input.get("time_to_pickup"))
        if pickup_timeout is not None:
            self.plan_event(PICKUP_TIMEOUT, pickup_timeout, optional=True)
        job = self.pull_job()
        if job is None:
            missing = "script" if self.input.get("script") is None else "hostname"
            raise ValueError(f"Missing required input '{missing}'")
        rex = self._rex()
        rex.jobs.add(job)
        self.output["state"] = READY_FOR_PICKUP
        if self.input.get("mqtt"):
            self._announce(rex)
            self.output["state"] = NOTIFIED
        self.suspend()

    async def recover_job(self) -> None:
        """Run again after a restart: the job is put back where the host can find it."""
        if self.output.get("exit_status") is not None:
            return  # it had finished; only the end of the step was not saved
        job = self.pull_job()
        if job is None:
            raise ValueError("the stored input cannot make a pull job")
        rex = self._rex()
        rex.jobs.add(job)
        if self.input.get("mqtt") and rex.mqtt is not None:
            if self.output.get("state") in NOT_PICKED_UP:
                self._announce(rex)
            else:
                message = start_message(self.job_uuid, self.proxy_url, self.effective_user)
                rex.mqtt.track_running(self.job_uuid, self._topic(), message)
        log.info("%s: pull job %s is waiting for its host again", self, self.job_uuid)
        self.suspend()

    def _topic(self) -> str:
        identity = self.identity
        assert identity is not None
        return topic_for(identity)

    def _announce(self, rex: RexState) -> None:
        if rex.mqtt is None:
            log.warning("%s: no MQTT dispatcher (mode is not pull-mqtt); not notifying", self)
            return
        message = start_message(self.job_uuid, self.proxy_url, self.effective_user)
        rex.mqtt.new(self.job_uuid, self._topic(), message)

    async def kill(self, message: str, *, force: bool = False) -> None:
        """End the job (§4.3 kill semantics): returns when the action finished, suspends while
        it waits for the host's exit report."""
        state = self.output.get("state")
        if state in NOT_PICKED_UP:
            await self.finish_with(f"{message}\n")
            return
        if self.input.get("mqtt"):
            rex = self._rex()
            if rex.mqtt is not None:
                rex.mqtt.cancel(self._topic(), cancel_message(self.job_uuid, self.proxy_url))
            text = f"{message}, notifying the host over MQTT\n"
        else:
            text = f"{message}, however the job was triggered without MQTT and cannot be stopped\n"
        if force:
            await self.finish_with(text)
            return
        await self.process_update(Update([_debug(text)]))

    async def finish_with(self, text: str) -> None:
        await self.process_update(Update([_debug(text)], exit_status=EXCEPTION_STATUS))

    async def process_update(self, update: Update) -> None:
        if update.exit_status is not None:
            self.drop_job()
        await super().process_update(update)

    def drop_job(self) -> None:
        """Take the job out of the index and the MQTT dispatcher (it ended)."""
        if "job_uuid" not in self.input:
            return
        try:
            rex = self._rex()
        except (RuntimeError, LookupError):  # a bare world, a core without the plugin
            return
        rex.jobs.forget(self.job_uuid)
        if rex.mqtt is not None:
            rex.mqtt.done(self.job_uuid)

    def cleanup_job(self, plan: Any) -> None:
        """Hook: the plan stopped, whatever happened to this step."""
        self.drop_job()

    # ---- presentation ---------------------------------------------------------------------------
    @classmethod
    def has_live_output(cls, output: dict[str, Any]) -> bool:
        return "state" in output


def _debug(text: str) -> dict[str, Any]:
    return {"output_type": "debug", "output": text, "timestamp": time.time()}


def plugin_mode(world: World | None) -> str:
    """The plugin's ``mode`` in the core running ``world`` (``ssh`` without the plugin)."""
    state = state_of(world)
    return state.mode if state is not None else "ssh"
