"""Foreman away while jobs finish: unreachable (connections refused), or answering 500.

The service keeps its shipped callback settings (``callback_retry_interval`` 2 s doubling up to
``callback_retry_max_interval`` 300 s). Every callback must arrive exactly once after Foreman is
back, within ``scenarios.backoff_bound`` of its return (plus a minute to send them all). The
figures say how long after Foreman's return the first and the last callback came: with the
shipped back-off, after 5 minutes away that is minutes, not seconds (see docs/reliability.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from . import scenarios

reliability = pytest.mark.reliability


@pytest.mark.parametrize(
    ("kind", "store", "mode", "seconds", "tasks", "seed"),
    [
        pytest.param("proxy", "sqlite", "down", 10.0, 100, 41, id="down-10s-fast"),
        pytest.param("core", "postgresql", "error", 8.0, 100, 42, id="error-8s-fast"),
        pytest.param(
            "proxy", "sqlite", "down", 300.0, 500, 701, id="down-5min", marks=reliability
        ),
        pytest.param(
            "core", "postgresql", "error", 60.0, 500, 702, id="error-1min", marks=reliability
        ),
    ],
)
async def test_callbacks_arrive_once_foreman_is_back(
    tmp_path: Path, kind: str, store: str, mode: str, seconds: float, tasks: int, seed: int
) -> None:
    run, observed = await scenarios.foreman_outage_run(
        tmp_path, kind=kind, backend=store, tasks=tasks, mode=mode, seconds=seconds, seed=seed
    )
    run.tally.assert_promise(run.figures)
    assert run.figures["callbacks_doubled"] == 0, run.figures
    assert run.figures["tracebacks_in_log"] == 0, run.service.tail(40)
    assert observed["last_callback_after_back_s"] is not None, observed
    assert observed["last_callback_after_back_s"] <= observed["bound_s"] + 60, observed
    if mode == "error":
        assert observed["answered_500_max_per_task"] >= 2, observed  # it did retry
