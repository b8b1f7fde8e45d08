"""Throw-away PostgreSQL databases for the benchmarks (127.0.0.1:5432, user postgres, trust).

``DYNFLOW_BENCH_PG_HOST``, ``_PORT`` and ``_USER`` override the server.
"""

from __future__ import annotations

import asyncio
import os
import secrets

PG_HOST = os.environ.get("DYNFLOW_BENCH_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("DYNFLOW_BENCH_PG_PORT", "5432"))
PG_USER = os.environ.get("DYNFLOW_BENCH_PG_USER", "postgres")


async def _admin(sql: str, database: str = "postgres") -> None:
    import asyncpg

    conn = await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database=database, timeout=5
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def create(prefix: str) -> str:
    """A new empty database named ``<prefix><random hex>``."""
    name = prefix + secrets.token_hex(6)
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    return name


def drop(name: str) -> None:
    asyncio.run(
        _admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )
    )
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}"'))


def truncate_dynflow_tables(name: str) -> None:
    """Empty every ``dynflow_*`` table but the migration version."""
    sql = """
    DO $$ DECLARE names text; BEGIN
      SELECT string_agg(format('%I', tablename), ', ') INTO names FROM pg_tables
       WHERE schemaname = 'public' AND tablename LIKE 'dynflow\\_%'
         AND tablename <> 'dynflow_schema_version';
      IF names IS NOT NULL THEN EXECUTE 'TRUNCATE TABLE ' || names || ' CASCADE'; END IF;
    END $$;
    """
    asyncio.run(_admin(sql, name))


def url(name: str, driver: str = "postgresql+asyncpg") -> str:
    return f"{driver}://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
