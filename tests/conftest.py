"""Shared pytest fixtures: database URLs for every supported backend.

* ``pg_url`` (session): creates a throw-away PostgreSQL database
  ``dynflow_test_<hex>`` on 127.0.0.1:5432 (user ``postgres``, trust auth) and
  drops it when the session ends. Yields an SQLAlchemy async URL.
* ``db_url`` (function): parametrized over the backends in ``DB_BACKENDS``;
  yields a fresh SQLite file URL, or ``pg_url`` after truncating every
  ``dynflow_*`` table so each test starts from empty tables (the schema and the
  ``dynflow_schema_version`` migration table are kept).

Use ``db_url`` in a test to run it once per backend; ``-m "not postgresql"``
deselects the PostgreSQL runs. ``scripts/test-deps.sh`` (run by ``make test``)
makes sure the PostgreSQL server is up.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest

PG_HOST = os.environ.get("DYNFLOW_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DYNFLOW_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("DYNFLOW_TEST_PG_USER", "postgres")
PG_ADMIN_DATABASE = "postgres"  # database to connect to for CREATE/DROP DATABASE
PG_TEST_DATABASE_PREFIX = "dynflow_test_"
DYNFLOW_TABLE_PREFIX = "dynflow_"  # tables truncated between PostgreSQL tests

SQLITE_FILENAME = "dynflow.db"

DB_BACKEND_SQLITE = "sqlite"
DB_BACKEND_POSTGRESQL = "postgresql"
DB_BACKENDS = [DB_BACKEND_SQLITE, DB_BACKEND_POSTGRESQL]
DB_BACKEND_IDS = ["sqlite-file", "postgresql"]
DB_BACKEND_PARAMS = [
    pytest.param(
        backend,
        id=backend_id,
        marks=[pytest.mark.postgresql] if backend == DB_BACKEND_POSTGRESQL else [],
    )
    for backend, backend_id in zip(DB_BACKENDS, DB_BACKEND_IDS, strict=True)
]

T = TypeVar("T")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgresql: test runs against the PostgreSQL server")


def _run_async(func: Callable[[], Awaitable[T]]) -> T:
    """Run ``func()`` to completion on a private event loop in a helper thread.

    Keeps fixture setup independent of whatever event loop pytest-asyncio has
    (or has not) installed in the main thread.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def runner() -> None:
        try:
            result.append(asyncio.run(func()))
        except BaseException as exc:  # re-raised in the calling thread
            error.append(exc)

    thread = threading.Thread(target=runner, name="conftest-async")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


async def _pg_connect(database: str) -> asyncpg.Connection:
    return await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database=database)


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _create_database(name: str) -> None:
    conn = await _pg_connect(PG_ADMIN_DATABASE)
    try:
        await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
    finally:
        await conn.close()


async def _drop_database(name: str) -> None:
    conn = await _pg_connect(PG_ADMIN_DATABASE)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)}")
    finally:
        await conn.close()


async def _truncate_dynflow_tables(database: str) -> None:
    conn = await _pg_connect(database)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables"
            " WHERE schemaname = 'public' AND starts_with(tablename, $1)"
            " AND tablename <> 'dynflow_schema_version'",
            DYNFLOW_TABLE_PREFIX,
        )
        if tables:
            names = ", ".join("public." + _quote_ident(row["tablename"]) for row in tables)
            await conn.execute(f"TRUNCATE TABLE {names} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """Name of a fresh PostgreSQL database, dropped at the end of the session."""
    name = PG_TEST_DATABASE_PREFIX + secrets.token_hex(6)
    try:
        _run_async(lambda: _create_database(name))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"cannot create test database on {PG_USER}@{PG_HOST}:{PG_PORT}: {exc!r}"
            " (run scripts/test-deps.sh)",
            pytrace=False,
        )
    try:
        yield name
    finally:
        _run_async(lambda: _drop_database(name))


@pytest.fixture(scope="session")
def pg_url(pg_database: str) -> str:
    """SQLAlchemy async URL of the session's PostgreSQL test database."""
    return f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{pg_database}"


@pytest.fixture(params=DB_BACKEND_PARAMS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLAlchemy async URL of an empty database, once per backend in DB_BACKENDS."""
    backend = request.param
    if backend == DB_BACKEND_SQLITE:
        return f"sqlite+aiosqlite:///{tmp_path / SQLITE_FILENAME}"
    if backend == DB_BACKEND_POSTGRESQL:
        database = request.getfixturevalue("pg_database")
        _run_async(lambda: _truncate_dynflow_tables(database))
        return request.getfixturevalue("pg_url")
    raise AssertionError(f"unknown database backend {backend!r}")


@pytest.fixture
async def world(db_url: str):
    """A started engine world on the backend under test (auto-execute and cleaner off)."""
    from dynflow import World

    w = World(db_url, cleaner_interval=None, auto_execute=False, termination_timeout=5)
    await w.start()
    try:
        yield w
    finally:
        await w.stop()


@pytest.fixture
async def foreman():
    """A fake Foreman (plain HTTP) that records callbacks, started on a free port."""
    from tests.support.services import FakeForeman

    f = FakeForeman()
    await f.start()
    try:
        yield f
    finally:
        await f.stop()
