"""The database fails under the real proxy: PostgreSQL restarted (a cluster of the test's own,
never the shared server on 5432), the SQLite disk full (a small tmpfs the test mounts).

Required while it fails: one clear log line (no traceback), ``/v2/features`` reporting it for
``dynflow``, and a launch answered 503 with a JSON ``{"error"}``; once the database is back:
the features are back to normal, the batch refused meanwhile is accepted when Foreman sends it
again, and every task acknowledged before, during or after ends called back once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from . import faults, harness, scenarios

reliability = pytest.mark.reliability


def lines_for(seconds: float) -> int:
    """Jobs last a little longer than the outage (one line a second): they run through it."""
    return max(5, min(int(seconds), 20))


def _check(run: scenarios.Run, observed: dict) -> None:
    run.tally.assert_promise(run.figures)
    assert run.figures["callbacks_doubled"] == 0, run.figures
    assert run.figures["tracebacks_in_log"] == 0, run.service.tail(40)
    assert observed["fault_logged_after_s"] is not None, (
        f"no log line says the database cannot be used: {run.service.tail(20)}"
    )
    assert observed["features_during"]["reports_fault"], observed
    assert observed["launch_status_during"] == [503], observed
    assert '"error"' in observed["launch_body_during"], observed
    assert observed["features_back_after_s"] is not None, observed
    assert observed["relaunch_status"] == 200, observed


@pytest.mark.parametrize(
    ("tasks", "seconds", "stop_mode", "seed"),
    [
        pytest.param(100, 6.0, "fast", 51, id="restart-fast"),
        pytest.param(500, 60.0, "immediate", 801, id="crash-1min", marks=reliability),
    ],
)
async def test_postgresql_restarted_mid_run(
    tmp_path: Path, tasks: int, seconds: float, stop_mode: str, seed: int
) -> None:
    with faults.pg_cluster() as pg:
        async with harness.database("postgresql", tmp_path, port=pg.port) as database:
            outage = scenarios.StoreOutage(
                f"postgresql-{stop_mode}-stop", database, lambda: pg.stop(stop_mode), pg.start
            )
            run, observed = await scenarios.store_outage_run(
                tmp_path, outage, tasks=tasks, seconds=seconds, seed=seed, lines=lines_for(seconds)
            )
    _check(run, observed)


@pytest.mark.parametrize(
    ("tasks", "seconds", "seed", "disk"),
    [
        pytest.param(100, 6.0, 52, "8m", id="fast"),
        # 400 jobs of 20 lines need about 8 MB of database and WAL once the disk is back: a
        # disk of 8 MB stayed full with the proxy's own data (waiting, correctly, for space)
        pytest.param(400, 60.0, 802, "32m", id="1min", marks=reliability),
    ],
)
async def test_sqlite_disk_full_mid_run(
    tmp_path: Path, tasks: int, seconds: float, seed: int, disk: str
) -> None:
    with faults.small_tmpfs(disk) as disk_dir:
        fillers: list[Path] = []
        outage = scenarios.StoreOutage(
            "sqlite-disk-full",
            str(disk_dir / "dynflow.sqlite"),
            lambda: fillers.append(faults.fill_disk(disk_dir)),
            lambda: fillers.pop().unlink(),
        )
        run, observed = await scenarios.store_outage_run(
            tmp_path, outage, tasks=tasks, seconds=seconds, seed=seed, lines=lines_for(seconds)
        )
    _check(run, observed)
