"""Bench-only core plugin for ``bench/api.py`` (entry point in ``bench/plugin_dist``).

Enabled by ``settings.d/bench.yml`` (``enabled: true``) when ``bench/plugin_dist`` and ``bench/``
are on the service's ``PYTHONPATH``. Registers:

* ``Bench::Trivial``: one action whose run sets an output key;
* ``Bench::FewSteps``: a plan of four actions (three ``BenchStep`` children, then itself);
* the batch operation ``bench-batch`` (:class:`~smart_proxy_dynflow.launcher.BatchLauncher`).
"""

from __future__ import annotations

from typing import Any

from dynflow import Action
from smart_proxy_dynflow.launcher import BatchLauncher

TRIVIAL = "Bench::Trivial"
FEW_STEPS = "Bench::FewSteps"
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


class BenchPlugin:
    name = "bench"
    settings_names = ("bench",)

    def register(self, core: Any, settings: dict[str, Any]) -> None:
        core.actions.register(BenchTrivial, TRIVIAL)
        core.actions.register(BenchFewSteps, FEW_STEPS)
        core.launchers.register(BATCH_OPERATION, BatchLauncher)


core_plugin = BenchPlugin()
