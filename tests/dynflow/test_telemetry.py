"""Telemetry: the §7 metrics as Prometheus metrics, scraped and parsed after running plans."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from dynflow import Action, World, telemetry
from tests.support import dummy
from tests.support.waiting import wait_for

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Quick(Action):
    def run(self) -> None:
        time.sleep(0.01)
        self.output["ok"] = True

    def finalize(self) -> None:
        pass


class QuickAsync(Action):
    async def run(self) -> None:
        self.output["ok"] = True


def scrape() -> Samples:
    body, content_type = telemetry.exposition()
    assert content_type.startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and wanted <= set(lbls))


async def test_metrics_after_running_plans(world: World) -> None:
    quick, quick_async = Quick.name(), QuickAsync.name()
    before = scrape()
    for _ in range(3):
        assert (await (await world.trigger(Quick)).wait(5)).result == "success"
    assert (await (await world.trigger(QuickAsync)).wait(5)).result == "success"
    paused = await (await world.trigger(dummy.FailingDummy)).wait(5)
    assert paused.state == "paused"
    after = scrape()
    w = world.id

    finished = "dynflow_finished_execution_plans_total"
    assert value(after, finished, action=quick, world=w, result="success") == 3
    assert value(after, finished, action=quick_async, world=w, result="success") == 1
    states = "dynflow_active_execution_plans"
    assert value(after, states, action=quick, world=w, state="running") == 0
    assert value(after, states, action=dummy.FailingDummy.name(), world=w, state="paused") == 1

    # one worker event per step execution: 3 sync runs and 3 finalizes in threads, 1 async
    events = "dynflow_worker_events_total"
    assert value(after, events, queue="default", world=w, worker=telemetry.ASYNC_WORKER) == 1
    assert total(after, events, queue="default", world=w) == 3 + 3 + 1 + 1
    assert value(after, "dynflow_active_workers", queue="default", world=w) == 0
    assert value(after, "dynflow_queue_size", queue="default", world=w) == 0

    for phase, count in (("plan", 3), ("run", 3), ("finalize", 3)):
        name = "dynflow_step_execution_time_count"
        grew = value(after, name, action=quick, phase=phase) - value(
            before, name, action=quick, phase=phase
        )
        assert grew == count, phase
    real = "dynflow_step_real_time_count"
    assert value(after, real, action=quick, phase="run") - value(
        before, real, action=quick, phase="run"
    ) == 3
    run_sum = "dynflow_step_execution_time_sum"
    assert value(after, run_sum, action=quick, phase="run") - value(
        before, run_sum, action=quick, phase="run"
    ) >= 0.03
    # the failed run counts as an execution, not as a finished step
    failing = dummy.FailingDummy.name()
    assert value(after, "dynflow_step_execution_time_count", action=failing, phase="run") >= 1
    buckets = sorted(
        float(dict(labels)["le"])
        for (name, labels) in after
        if name == "dynflow_step_real_time_bucket" and dict(labels)["action"] == quick
        and dict(labels)["phase"] == "run"
    )
    assert buckets[:-1] == [float(b) for b in telemetry.BUCKETS] and buckets[-1] == float("inf")


async def test_active_plans_follow_the_state(world: World) -> None:
    w, label = world.id, dummy.Waiting.name()
    triggered = await world.trigger(dummy.Waiting)

    async def suspended() -> Any:
        plan = await world.load_plan(triggered.id)
        return plan.steps[2].state == "suspended"

    await wait_for(suspended)
    active = "dynflow_active_execution_plans"
    running = scrape()
    assert value(running, active, action=label, world=w, state="running") == 1
    await world.event(triggered.id, 2, {"finish": True})
    await triggered.wait(5)
    done = scrape()
    assert value(done, active, action=label, world=w, state="running") == 0
    assert value(done, active, action=label, world=w, state="planned") == 0


async def test_registered_once_and_switchable(db_url: str) -> None:
    registry = telemetry.registry()
    async with World(db_url, cleaner_interval=None, auto_execute=False) as w1:
        async with World(db_url, cleaner_interval=None, auto_execute=False) as w2:
            assert telemetry.registry() is registry
            await (await w1.trigger(QuickAsync)).wait(5)
            telemetry.set_enabled(False)
            try:
                await (await w2.trigger(QuickAsync)).wait(5)
            finally:
                telemetry.set_enabled(True)
            samples = scrape()
    finished = "dynflow_finished_execution_plans_total"
    label = QuickAsync.name()
    assert value(samples, finished, action=label, world=w1.id, result="success") == 1
    assert value(samples, finished, action=label, world=w2.id, result="success") == 0
    body, content_type = telemetry.exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
