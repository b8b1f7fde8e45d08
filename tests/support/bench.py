"""Run a bench script with ``--quick`` and check the JSON lines every bench prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def run_quick(script: str, *, store: str = "sqlite-file", timeout: float = 30) -> list[dict]:
    """Every line has a figure, a positive value, a unit and the store; none is an error."""
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH_DIR / script),
            "--quick",
            "--store",
            store,
            "--timeout",
            str(timeout),
        ],
        capture_output=True,
        text=True,
        timeout=timeout * 4,
    )
    assert proc.returncode == 0, proc.stderr
    lines: list[dict[str, Any]] = [
        json.loads(raw) for raw in proc.stdout.splitlines() if raw.strip()
    ]
    assert lines, proc.stderr
    for line in lines:
        assert "error" not in line, line
        assert isinstance(line["figure"], str), line
        assert isinstance(line["value"], int | float) and line["value"] > 0, line
        assert isinstance(line["unit"], str) and line["unit"], line
        assert line["store"] == store, line
    return lines
