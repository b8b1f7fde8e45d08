"""Test-only actions for the task API: a local-command runner and a few simple actions.

A default installation registers no action that runs commands on the proxy itself; the tests
register these explicitly (in-process) or through the ``local_command`` test plugin (for the
service started as a command).
"""

from __future__ import annotations

from typing import Any, ClassVar

from dynflow import Action
from dynflow.action import CANCEL
from smart_proxy.plugin import Plugin
from smart_proxy_dynflow.launcher import BatchLauncher, GroupLauncher
from smart_proxy_dynflow.parent_runner import ParentRunner
from smart_proxy_dynflow.process_runner import ProcessRunner
from smart_proxy_dynflow.runner import Runner
from smart_proxy_dynflow.runner_action import RunnerAction, external_event_data

RUN_SCRIPT_NAMES = (
    "ForemanRemoteExecutionCore::Actions::RunScript",
    "Proxy::RemoteExecution::Ssh::Actions::RunScript",
)


class LocalCommand(RunnerAction):
    """Runs ``input["script"]`` with /bin/sh on the proxy (tests only)."""

    def initiate_runner(self) -> Runner:
        return ProcessRunner(
            ["/bin/sh", "-c", self.input["script"]],
            suspended_action=self.suspended_action,
            timeout=self.input.get("execution_timeout_interval"),
        )


class HelloWorld(Action):
    """Outputs ``{"result": "Hello World"}``; with a ``callback`` it reports to Foreman."""

    def plan(self, input: dict[str, Any]) -> None:
        data = dict(input)
        callback = data.pop("callback", None)
        self.plan_self(data)
        if callback is not None:
            from smart_proxy_dynflow.callback import CallbackAction

            self.plan_action(CallbackAction, callback=callback, data=self.output)

    def run(self) -> None:
        self.output["result"] = "Hello World"


class WaitForEvent(Action):
    """Suspends until an external event (``/done``) arrives; stores what it received."""

    cancellable: ClassVar[bool] = True

    def run(self, event: Any = None) -> None:
        if event is None:
            self.suspend()
        if event == CANCEL:
            self.output["cancelled"] = True
            return
        data = external_event_data(event)
        self.output.setdefault("events", []).append(data)
        if not (data or {}).get("finish", True):
            self.suspend()


def register_test_actions(core: Any) -> None:
    core.actions.register(LocalCommand, *RUN_SCRIPT_NAMES)
    core.actions.register(HelloWorld, "Test::HelloWorld")
    core.actions.register(WaitForEvent, "Test::WaitForEvent")
    core.launchers.register("local-batch", BatchLauncher)
    core.launchers.register("local-group", EchoGroupLauncher)


class LocalCommandPlugin:
    """The ``local_command`` plugin of ``tests/support/plugin_dist`` (an entry point)."""

    name = "local_command"
    settings_names = ("local_command",)

    def register(self, core: Any, settings: dict[str, Any]) -> None:
        register_test_actions(core)


core_plugin = LocalCommandPlugin()


class EchoGroupRunner(ParentRunner):
    """One runner for many hosts: greets each host; a host named ``fail`` exits 1."""

    async def start(self) -> None:
        for identifier, target in self.targets.items():
            host = target["input"].get("hostname", "?")
            self.publish_data_for(identifier, f"hello {host}\n", "stdout")
            if host == "fail":
                self.publish_exit_status_for(identifier, 1)
        self.publish_exit_status(0)

    async def refresh(self) -> None:
        pass


class EchoGroupLauncher(GroupLauncher):
    """``options: {"fail_parent": true}`` makes the group's parent fail before it plans
    anything (as a database error would), so the bulk callback has no results."""

    runner_class = EchoGroupRunner

    async def spawn_children(self, parent: Any, input_hash: dict[str, Any]) -> dict[str, int]:
        if self.options.get("fail_parent"):
            raise RuntimeError("the group's parent fails on purpose (test option fail_parent)")
        return await super().spawn_children(parent, input_hash)


class LocalCommandProxyPlugin(Plugin):
    """A Smart Proxy plugin giving the in-process dynflow core the test actions (tests only)."""

    name = "local_command"
    version = "0.1.0"
    requires = {"dynflow": ">= 0.1"}

    async def start(self) -> None:
        core = self.host.plugin("dynflow").core
        if core is None:
            raise RuntimeError("the dynflow plugin does not run a core here (relay?)")
        register_test_actions(core)
