"""Smoke run of ``bench/rex.py``: real sshd instances, the real service, one JSON line each."""

from __future__ import annotations

import pytest

from tests.support import sshd as sshd_support
from tests.support.bench import run_quick

FIGURES = {
    "openssh_floor_hosts_per_s",
    "rex_hosts_per_s",
    "rex_vs_floor_ratio",
    "service_peak_rss_mb",
    "service_kb_per_concurrent_host",
}


def test_bench_rex_quick_sqlite() -> None:
    reason = sshd_support.missing_requirement()
    if reason is not None:
        pytest.fail(reason)
    lines = run_quick("rex.py", timeout=60)
    assert {line["figure"] for line in lines} == FIGURES
    by_figure = {line["figure"]: line for line in lines}
    floor, rex = by_figure["openssh_floor_hosts_per_s"], by_figure["rex_hosts_per_s"]
    assert floor["failures"] == 0 and rex["failures"] == 0, (floor, rex)
    assert rex["callbacks"] == rex["hosts"] == floor["hosts"], rex
    assert rex["kex"] == floor["kex"], (rex, floor)
    ratio = by_figure["rex_vs_floor_ratio"]
    assert ratio["value"] == pytest.approx(rex["value"] / floor["value"], rel=0.01)
    memory = by_figure["service_kb_per_concurrent_host"]
    assert memory["peak_running_plans"] >= 1, memory
