"""The SQLite database file, its WAL and the directory the store makes are owner-only, whatever
the umask; a directory that exists already is left as the admin made it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynflow import World
from tests.support import dummy


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o000], ids=["umask-022", "umask-000"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


async def run_a_plan(database: Path) -> dict[str, int]:
    """Start a world on ``database``, run a plan; the modes of its files while it runs."""
    world = World(f"sqlite+aiosqlite:///{database}", cleaner_interval=None, auto_execute=False)
    await world.start()
    try:
        triggered = await world.trigger(dummy.Dummy)
        assert (await triggered.wait(10)).result == "success"
        return {path.name: mode(path) for path in database.parent.glob(database.name + "*")}
    finally:
        await world.stop()


async def test_a_new_database_and_its_directory_are_owner_only(tmp_path: Path, umask: int) -> None:
    database = tmp_path / "state" / "dynflow" / "dynflow.sqlite"
    files = await run_a_plan(database)
    assert files == {
        "dynflow.sqlite": 0o600,
        "dynflow.sqlite-wal": 0o600,
        "dynflow.sqlite-shm": 0o600,
    }
    assert mode(database.parent) == 0o700
    # Only the directory of the file is ours; its missing parents get the usual mode.
    assert mode(database.parent.parent) == 0o777 & ~umask


async def test_an_existing_directory_is_kept_and_old_files_are_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "var-lib"
    directory.mkdir()
    directory.chmod(0o750)  # the admin's choice
    database = directory / "dynflow.sqlite"
    await run_a_plan(database)
    # A file left readable by an older version (0644) is made owner-only at the next start.
    database.chmod(0o644)
    files = await run_a_plan(database)
    assert files == {
        "dynflow.sqlite": 0o600,
        "dynflow.sqlite-wal": 0o600,
        "dynflow.sqlite-shm": 0o600,
    }
    assert mode(directory) == 0o750
