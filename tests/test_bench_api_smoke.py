"""Smoke run of ``bench/api.py``: the real service answers every stage, one JSON line each."""

from __future__ import annotations

from tests.support.bench import run_quick

FIGURES = {
    "status_latency_p50_ms",
    "status_latency_p99_ms",
    "status_running_latency_p50_ms",
    "status_running_latency_p99_ms",
    "batch_1000_planned_s",
    "bulk_status_1000_ms",
    "status_uncached_p50_ms",
    "status_in_process_p50_ms",
    "status_relay_p50_ms",
    "relay_added_p50_ms",
}


def test_bench_api_quick_sqlite() -> None:
    lines = run_quick("api.py", timeout=30)
    assert {line["figure"] for line in lines} == FIGURES
    by_figure = {line["figure"]: line for line in lines}
    status = by_figure["status_latency_p99_ms"]
    assert status["requests"] > 0 and status["actions_per_plan"] == 4, status
    assert status["value"] >= by_figure["status_latency_p50_ms"]["value"]
    batch = by_figure["batch_1000_planned_s"]
    assert batch["parent_state"] == "stopped/success", batch
    assert by_figure["bulk_status_1000_ms"]["n"] == batch["n"]
