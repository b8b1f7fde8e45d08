"""Bench-only core plugin for ``bench/api.py`` (entry point in ``bench/plugin_dist``).

Enabled by ``settings.d/bench.yml`` (``enabled: true``) when ``bench/plugin_dist`` and ``bench/``
are on the service's ``PYTHONPATH``. Registers:

* ``Bench::Trivial``: one action whose run sets an output key;
* ``Bench::FewSteps``: a plan of four actions (three ``BenchStep`` children, then itself);
* ``Bench::Running``: a runner action whose runner prints three lines and then runs until it
  is cancelled (the live-output case: its status is assembled from stored output chunks);
* the batch operation ``bench-batch`` (:class:`~smart_proxy_dynflow.launcher.BatchLauncher`).
"""

from __future__ import annotations

from typing import Any

from dynflow import Action
from smart_proxy_dynflow.launcher import BatchLauncher
from smart_proxy_dynflow.runner import Runner
from smart_proxy_dynflow.runner_action import RunnerAction

TRIVIAL = "Bench::Trivial"
FEW_STEPS = "Bench::FewSteps"
RUNNING = "Bench::Running"
BATCH_OPERATION = "bench-batch"
STEPS_PER_PLAN = 3


class BenchTrivial(Action):
    def run(self) -> None:
        self.output["ok"] = True


class BenchStep(Action):
    def run(self) -> None:
        self.output["value"] = self.input.get("value")
        self.output["message"] = f"step {self.input.get('value')} done"


class BenchFewSteps(Action):
    def plan(self, input: dict[str, Any] | None = None, **values: Any) -> None:
        for index in range(STEPS_PER_PLAN):
            self.plan_action(BenchStep, value=index)
        self.plan_self(input or {}, **values)

    def run(self) -> None:
        self.output["ok"] = True


class IdleRunner(Runner):
    """Prints three lines, then waits until it is killed."""

    async def start(self) -> None:
        for line in range(3):
            self.publish_data(f"line {line} of the job\n", "stdout")

    async def refresh(self) -> None:
        pass

    async def kill(self) -> None:
        self.publish_exit_status(0)
        self.news()


class BenchRunning(RunnerAction):
    def initiate_runner(self) -> Runner:
        return IdleRunner(suspended_action=self.suspended_action)


class BenchPlugin:
    name = "bench"
    settings_names = ("bench",)

    def register(self, core: Any, settings: dict[str, Any]) -> None:
        core.actions.register(BenchTrivial, TRIVIAL)
        core.actions.register(BenchFewSteps, FEW_STEPS)
        core.actions.register(BenchRunning, RUNNING)
        core.launchers.register(BATCH_OPERATION, BatchLauncher)


core_plugin = BenchPlugin()
