"""The actions Foreman triggers: ``RunScript`` and the ``ScriptRunner`` it plans (§4.1, §4.2).

``RunScript`` is registered under both wire names Foreman sends
(``Proxy::RemoteExecution::Ssh::Actions::RunScript`` and the older
``ForemanRemoteExecutionCore::Actions::RunScript``) and plans one :class:`ScriptRunnerAction`
with the same input (in the pull modes a :class:`~.pull.PullScriptAction` instead). That
runner action (the shared lifecycle of
:class:`~smart_proxy_dynflow.runner_action.RunnerAction`: output chunks, cancel, Foreman's
callback) runs the job with a :class:`ScriptRunner` over SSH, or with the simulation runner when
``REX_SIMULATE`` is set. After a restart of the service the same runner re-attaches to the job
on the host. The input's passwords are stored sealed (``RunScript`` seals them when it plans,
if the launcher has not) and erased once the exit status is stored.
"""

from __future__ import annotations

from typing import Any

from dynflow import Action, World
from smart_proxy_dynflow.context import context_of
from smart_proxy_dynflow.runner import Runner
from smart_proxy_dynflow.runner_action import RunnerAction
from smart_proxy_dynflow.secret_box import SecretBox, seal_secrets

from .fake_runner import FakeRunner, simulate
from .pull import PullScriptAction, plugin_mode
from .settings import PULL_MODES
from .state import require_state

RUN_SCRIPT_NAMES = (
    "Proxy::RemoteExecution::Ssh::Actions::RunScript",
    "ForemanRemoteExecutionCore::Actions::RunScript",
)


class ScriptRunnerAction(RunnerAction):
    """Runs one script on one host (§4.2)."""

    wire_names = (
        "Proxy::RemoteExecution::Ssh::Actions::ScriptRunner",
        "ForemanRemoteExecutionCore::Actions::ScriptRunner",
    )

    async def initiate_runner(self) -> Runner:
        assert self.world is not None
        # After a restart (or a crash before the first save): what Foreman has seen already,
        # and whether the job is known to have started on the host.
        # Before the first save (no runner id stored yet) no chunk can be stored either.
        chunks = (
            await self.world.output_chunks(self.execution_plan_id, self.id)
            if self.runner_id
            else []
        )
        runner_id = self.runner_id or self.default_runner_id()
        if simulate():
            return FakeRunner(
                suspended_action=self.suspended_action,
                id=runner_id,
                published_lines=sum(
                    1
                    for c in chunks
                    for r in (c["chunk"] or [])
                    if r.get("output_type") == "stdout"
                ),
            )
        # asyncssh is not loaded with the plugin: a Smart Proxy relaying to an external core
        # imports this module but never runs a job.
        from .script_runner import ScriptRunner  # noqa: PLC0415 - defers asyncssh

        state = require_state(self.world)
        published = sum(
            len(r.get("output") or "")
            for c in chunks
            for r in (c["chunk"] or [])
            if r.get("output_type") == "stdout"
        )
        return ScriptRunner(
            state.options(self.input),
            known_hosts=state.known_hosts,
            start_slots=state.start_slots(),
            handshakes=state.handshake_slots(),
            suspended_action=self.suspended_action,
            id=runner_id,
            published_chars=published,
            started=self.job_started(chunks),
        )


class RunScript(Action):
    """The entry action Foreman names; plans the concrete action for the plugin's ``mode``
    (§4.1): :class:`ScriptRunnerAction` for ``ssh``, :class:`~.pull.PullScriptAction` for
    ``pull`` and ``pull-mqtt``."""

    wire_names = RUN_SCRIPT_NAMES

    def plan(self, input: dict[str, Any] | None = None, **values: Any) -> None:
        pull = plugin_mode(self.world) in PULL_MODES
        concrete = PullScriptAction if pull else ScriptRunnerAction
        # Sealed before the plan is stored (the launchers seal already; a direct trigger too).
        self.plan_action(concrete, seal_secrets({**(input or {}), **values}, _box(self.world)))


def _box(world: World | None) -> SecretBox | None:
    try:
        return context_of(world).secret_box
    except RuntimeError:  # planned by a bare world (engine tests): nothing to seal with
        return None
