"""Smoke run of ``bench/engine.py``: every figure comes out as a JSON line with a value."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "engine.py"
FIGURES = {
    "trivial_plans_per_s",
    "transactions_per_trivial_plan",
    "transactions_per_trivial_plan_sequential",
    "trivial_plan_latency_ms_sequential",
    "event_round_trips_per_s",
    "peak_rss_mb_10k_suspended",
}


def test_bench_quick_sqlite() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--store", "sqlite-file", "--timeout", "15"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(raw) for raw in proc.stdout.splitlines() if raw.strip()]
    assert lines, proc.stderr
    for line in lines:
        assert "error" not in line, line
        assert isinstance(line["figure"], str), line
        assert isinstance(line["value"], int | float) and line["value"] > 0, line
        assert isinstance(line["unit"], str) and line["unit"], line
        assert line["store"] == "sqlite-file", line
    assert {line["figure"] for line in lines} == FIGURES
