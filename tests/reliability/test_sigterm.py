"""SIGTERM while jobs run: the service stops in time (exit 0), nothing is lost, and the restart
resumes every job (re-attaching to the scripts still running on real hosts, which are never
started twice). Same tallies as test_crash.py; ``sigterm_stop_s`` is how long the stop took."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import scenarios
from .scenarios import SimulatedHosts

reliability = pytest.mark.reliability
STOP_BOUND_S = 30.0
"""A SIGTERMed service must exit within this (its listeners' graceful timeout is 10 s)."""


def _check(run: scenarios.Run) -> None:
    run.tally.assert_promise(run.figures)
    assert run.figures["callbacks_doubled"] == 0, run.figures  # a stop is not a crash
    assert run.figures["tracebacks_in_log"] == 0, run.service.tail(40)
    assert run.figures.get("job_dirs_left", 0) == 0, run.figures
    stops = run.tally.context["sigterm_stop_s"]
    assert max(stops) < STOP_BOUND_S, stops


@pytest.mark.parametrize(
    ("kind", "store", "seed", "tasks", "stops"),
    [
        pytest.param("proxy", "sqlite", 31, 200, 1, id="proxy-sqlite-fast"),
        pytest.param("core", "postgresql", 601, 500, 2, id="core-postgresql", marks=reliability),
        pytest.param("proxy", "postgresql", 602, 500, 2, id="proxy-postgresql", marks=reliability),
    ],
)
async def test_sigterm_with_simulated_hosts(
    tmp_path: Path, kind: str, store: str, seed: int, tasks: int, stops: int
) -> None:
    run = await scenarios.crash_run(
        tmp_path, SimulatedHosts(tmp_path), kind=kind, backend=store, seed=seed, tasks=tasks,
        points=("time",) * stops, signum="TERM", scenario="sigterm",
    )
    _check(run)


@pytest.mark.parametrize(
    ("kind", "store", "seed", "tasks", "sleeps"),
    [
        pytest.param("proxy", "sqlite", 32, 30, (3.0, 6.0), id="proxy-sqlite-fast"),
        pytest.param("core", "sqlite", 611, 200, (2.0, 8.0), id="core-sqlite", marks=reliability),
    ],
)
async def test_sigterm_with_real_sshd_hosts(
    tmp_path: Path, ssh_fleet, kind: str, store: str, seed: int, tasks: int, sleeps
) -> None:
    hosts = ssh_fleet(servers=4, sleeps=sleeps)
    run = await scenarios.crash_run(
        tmp_path, hosts, kind=kind, backend=store, seed=seed, tasks=tasks, points=("time",),
        signum="TERM", scenario="sigterm",
    )
    _check(run)
