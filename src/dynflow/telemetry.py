"""Telemetry: the engine's metrics as Prometheus metrics (spec §7).

The metrics are registered once per process, in this module's own registry (``registry()``),
the first time the engine reports something; ``exposition()`` renders them in the Prometheus
text format (or OpenMetrics when asked for), which is all an HTTP layer needs to serve
``/metrics``. Every function here is safe to call always: it does nothing when
``prometheus_client`` is not installed or telemetry was switched off with ``set_enabled(False)``.

| metric | type | labels | updated when |
|---|---|---|---|
| ``dynflow_active_workers`` | gauge | queue, world | steps running (read when scraped) |
| ``dynflow_worker_events`` | counter | queue, world, worker | a step execution ends |
| ``dynflow_queue_size`` | gauge | queue, world | ``def`` steps waiting for a thread (scraped) |
| ``dynflow_active_execution_plans`` | gauge | action, world, state | a plan changes state |
| ``dynflow_finished_execution_plans`` | counter | action, world, result | a plan stops |
| ``dynflow_step_execution_time`` | histogram, seconds | action, phase | every step execution |
| ``dynflow_step_real_time`` | histogram, seconds | action, phase | a step ends success/skipped |

Times are in **seconds** (the original reported milliseconds through StatsD), with the original's
18 buckets read as seconds: 5 ms … 20 min. ``dynflow_active_execution_plans`` counts each plan
once, in the state and under the world of the last state change this process made to it
(``pending``, ``planning`` and ``stopped`` are not counted): exact for one process; with several
processes sharing a database, a plan another process moved on stays counted here until this
process touches it again. ``worker`` is the thread's name, or ``event-loop`` for ``async def``
steps. ``action`` is the plan's label (its root action class).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Protocol

try:
    import prometheus_client
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import choose_encoder
except ImportError:  # pragma: no cover - prometheus_client is a dependency, but optional here
    prometheus_client = None  # type: ignore[assignment]

BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200,
)
# pending and planning are left within one synchronous planning call: never seen by a scrape
UNCOUNTED_STATES = ("pending", "planning", "stopped")
ASYNC_WORKER = "event-loop"

_enabled = True
_lock = threading.Lock()
_metrics: _Metrics | None = None


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


class PlanStats(Protocol):
    """What an execution plan tells when it changes state (``ExecutionPlan`` is one)."""

    @property
    def id(self) -> str: ...
    @property
    def label(self) -> str | None: ...
    @property
    def result(self) -> str: ...
    @property
    def world(self) -> _HasId | None: ...


class QueueStats(Protocol):
    """What the executor's queues keep; read only when the metrics are scraped."""

    name: str
    world_id: str
    busy_threads: int
    async_running: int
    waiting: int
    events: dict[str, int]


class _QueueCollector:
    """Worker and queue metrics read from the tracked queues at scrape time (no cost per step)."""

    def __init__(self) -> None:
        self.queues: dict[tuple[str, str], QueueStats] = {}

    def collect(self) -> Iterator[Any]:
        active = GaugeMetricFamily(
            "dynflow_active_workers", "The number of currently busy workers",
            labels=["queue", "world"],
        )
        size = GaugeMetricFamily(
            "dynflow_queue_size", "The number of steps waiting for a worker thread",
            labels=["queue", "world"],
        )
        events = CounterMetricFamily(
            "dynflow_worker_events", "The number of processed events (step executions)",
            labels=["queue", "world", "worker"],
        )
        for (name, world_id), queue in list(self.queues.items()):
            active.add_metric([name, world_id], queue.busy_threads + queue.async_running)
            size.add_metric([name, world_id], queue.waiting)
            for worker, count in list(queue.events.items()):
                events.add_metric([name, world_id, worker], count)
        yield active
        yield size
        yield events


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        for collector in ("ProcessCollector", "PlatformCollector", "GCCollector"):
            factory = getattr(prometheus_client, collector, None)
            if factory is not None:
                try:
                    factory(registry=self.registry)
                except Exception:  # noqa: BLE001 - process metrics are a bonus
                    pass
        r = self.registry
        self.queues = _QueueCollector()
        r.register(self.queues)
        # labelled children, cached: ``labels()`` costs more than the update itself
        self.children: dict[tuple[Any, ...], Any] = {}
        # plan id -> the (label, world, state) it is counted in by dynflow_active_execution_plans
        self.counted: dict[str, tuple[str, str, str]] = {}
        self.active_plans = Gauge(
            "dynflow_active_execution_plans", "The number of active execution plans",
            ["action", "world", "state"], registry=r,
        )
        self.finished_plans = Counter(
            "dynflow_finished_execution_plans", "The number of finished execution plans",
            ["action", "world", "result"], registry=r,
        )
        self.step_real_time = Histogram(
            "dynflow_step_real_time", "The real time of a step, start to end, in seconds",
            ["action", "phase"], buckets=BUCKETS, registry=r,
        )
        self.step_execution_time = Histogram(
            "dynflow_step_execution_time", "The time spent executing a step, in seconds",
            ["action", "phase"], buckets=BUCKETS, registry=r,
        )


def _child(metrics: _Metrics, metric: Any, *labels: str) -> Any:
    key = (id(metric), *labels)
    child = metrics.children.get(key)
    if child is None:
        child = metrics.children[key] = metric.labels(*labels)
    return child


def _get() -> _Metrics | None:
    global _metrics
    if not _enabled or prometheus_client is None:
        return None
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = _Metrics()
    return _metrics


def set_enabled(enabled: bool) -> None:
    """Switch reporting on or off for the whole process (on by default)."""
    global _enabled
    _enabled = enabled


def available() -> bool:
    return prometheus_client is not None


def registry() -> Any:
    """The ``CollectorRegistry`` of the engine's metrics (None without prometheus_client)."""
    metrics = _get()
    return metrics.registry if metrics is not None else None


def exposition(accept: str | None = None) -> tuple[bytes, str]:
    """``(body, content type)`` of every metric; OpenMetrics if ``accept`` asks for it."""
    if prometheus_client is None:
        return b"# prometheus_client is not installed\n", "text/plain; charset=utf-8"
    metrics = _get()
    encoder, content_type = choose_encoder(accept or "")
    if metrics is None:
        return b"", content_type
    return encoder(metrics.registry), content_type


# ---- what the engine reports ---------------------------------------------------------------------
def track_queue(queue: QueueStats) -> None:
    """Report a queue's workers, waiting steps and worker events (read when scraped)."""
    metrics = _get()
    if metrics is not None:
        metrics.queues.queues[(queue.name, queue.world_id)] = queue


def untrack_queue(queue: QueueStats) -> None:
    """Forget a queue (its world stopped); its series leave the exposition."""
    metrics = _metrics
    if metrics is not None:
        metrics.queues.queues.pop((queue.name, queue.world_id), None)


def plan_state_changed(plan: PlanStats, old: str, new: str) -> None:
    """A plan moved from ``old`` to ``new`` (``ExecutionPlan.set_state``)."""
    if old == "pending" and new == "planning":
        return  # nothing counted changes (the most frequent transition)
    metrics = _get()
    if metrics is None or plan.world is None:
        return
    world_id = plan.world.id
    label = plan.label or ""
    counted = metrics.counted.pop(plan.id, None)
    if counted is not None:
        _child(metrics, metrics.active_plans, *counted).dec()
    if new not in UNCOUNTED_STATES:
        key = (label, world_id, new)
        _child(metrics, metrics.active_plans, *key).inc()
        metrics.counted[plan.id] = key
    if new == "stopped":
        _child(metrics, metrics.finished_plans, label, world_id, plan.result).inc()


def step_executed(
    action: str, phase: str, execution_time: float, real_time: float | None = None
) -> None:
    """One execution of a step took ``execution_time``; ``real_time`` once it ended well."""
    metrics = _get()
    if metrics is None:
        return
    _child(metrics, metrics.step_execution_time, action, phase).observe(max(0.0, execution_time))
    if real_time is not None:
        _child(metrics, metrics.step_real_time, action, phase).observe(max(0.0, real_time))
