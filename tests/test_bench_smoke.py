"""Smoke run of ``bench/engine.py``: every figure comes out as a JSON line with a value."""

from __future__ import annotations

from tests.support.bench import run_quick

FIGURES = {
    "trivial_plans_per_s",
    "transactions_per_trivial_plan",
    "transactions_per_trivial_plan_sequential",
    "trivial_plan_latency_ms_sequential",
    "event_round_trips_per_s",
    "peak_rss_mb_10k_suspended",
}


def test_bench_quick_sqlite() -> None:
    lines = run_quick("engine.py", timeout=15)
    assert {line["figure"] for line in lines} == FIGURES
