"""Smoke run of ``bench/api.py``: the real service answers every stage, one JSON line each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "api.py"
FIGURES = {
    "status_latency_p50_ms",
    "status_latency_p99_ms",
    "status_running_latency_p50_ms",
    "status_running_latency_p99_ms",
    "batch_1000_planned_s",
    "bulk_status_1000_ms",
    "status_uncached_p50_ms",
}


def test_bench_api_quick_sqlite() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--store", "sqlite-file", "--timeout", "30"],
        capture_output=True,
        text=True,
        timeout=120,
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
    by_figure = {line["figure"]: line for line in lines}
    status = by_figure["status_latency_p99_ms"]
    assert status["requests"] > 0 and status["actions_per_plan"] == 4, status
    assert status["value"] >= by_figure["status_latency_p50_ms"]["value"]
    batch = by_figure["batch_1000_planned_s"]
    assert batch["parent_state"] == "stopped/success", batch
    assert by_figure["bulk_status_1000_ms"]["n"] == batch["n"]
