"""A database that cannot be written: 503 naming the cause, one ERROR line, ``/v2/features``
says so, and everything works again once the database is back, without a restart.

Through the Smart Proxy with the in-process core, over real sockets: an SQLite file on a small
tmpfs this test mounts and fills, and a PostgreSQL database of its own reached through a TCP
forwarder the test cuts (the shared server is never stopped) or whose connections it
terminates.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from smart_proxy_dynflow.proxy_plugin import DynflowPlugin
from tests.conftest import PG_PORT, _create_database, _drop_database, _pg_connect
from tests.support.local_command import LocalCommandProxyPlugin
from tests.support.proxy import ProxyService, smart_proxy
from tests.support.services import run_script
from tests.support.tcp_forward import TcpForwarder
from tests.support.waiting import wait_for

OUTAGE_LOG = "cannot be used ("


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted at the end."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(directory: Path) -> Path:
    """Write a file until the disk is full; returns it (delete it to free the space)."""
    filler = directory / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


@contextlib.asynccontextmanager
async def proxy_with(tmp_path: Path, database: str) -> AsyncIterator[ProxyService]:
    dynflow = {"enabled": True, "database": database, "runner_refresh_interval": 0.05}
    async with smart_proxy(
        tmp_path / "proxy",
        [DynflowPlugin, LocalCommandProxyPlugin],
        {"dynflow": dynflow, "local_command": {"enabled": True}},
    ) as proxy:
        yield proxy


async def launch(client: httpx.AsyncClient, script: str = "true") -> httpx.Response:
    return await client.post("/dynflow/tasks/launch", json=run_script({"script": script}))


async def dynflow_feature(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/v2/features")
    assert response.status_code == 200, response.text
    return dict(response.json()["dynflow"])


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if OUTAGE_LOG in r.getMessage()]


def assert_no_request_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [
        r
        for r in caplog.records
        if r.name.startswith(("smart_proxy", "uvicorn")) and (r.exc_info or r.levelno >= 40)
    ]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


def assert_503(response: httpx.Response, *causes: str) -> None:
    """503 naming one of ``causes`` (a cut connection fails the write in flight with
    "connection was closed", the next ones with "Connect call failed")."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["retry-after"] == "5"
    message = response.json()["error"]
    assert message.startswith("the database cannot be used now (")
    assert any(cause in message for cause in causes), message


async def test_a_full_sqlite_disk_is_503_and_reported_until_space_is_back(
    tmp_path, small_disk, caplog
):
    caplog.set_level(logging.INFO)
    async with proxy_with(tmp_path, str(small_disk / "dynflow.sqlite")) as proxy:
        async with httpx.AsyncClient(base_url=proxy.http_url, timeout=30) as client:
            waiting = await client.post(
                "/dynflow/tasks", json={"action_name": "Test::WaitForEvent", "action_input": {}}
            )
            waiting_id = waiting.json()["task_id"]
            assert (await launch(client)).status_code == 200
            assert "note" not in await dynflow_feature(client)

            filler = fill(small_disk)
            answers = [await launch(client) for _ in range(3)]
            answers.append(await client.post(f"/dynflow/tasks/{waiting_id}/cancel"))
            for answer in answers:
                assert_503(answer, "database or disk is full")
            feature = await dynflow_feature(client)
            assert feature["state"] == "running"
            assert "the database cannot be used since" in feature["note"]
            assert "database or disk is full" in feature["note"]
            assert len(outage_lines(caplog)) == 1
            assert outage_lines(caplog)[0].levelno == logging.ERROR
            status = await client.get(f"/dynflow/tasks/{waiting_id}/status")
            assert status.status_code == 200  # reading still works

            filler.unlink()
            again = await launch(client)
            assert again.status_code == 200, again.text
            assert "note" not in await dynflow_feature(client)
            cancel = await client.post(f"/dynflow/tasks/{waiting_id}/cancel")
            assert cancel.status_code == 200, cancel.text
    assert len(outage_lines(caplog)) == 1
    assert [r for r in caplog.records if "works again" in r.getMessage()]
    assert_no_request_tracebacks(caplog)


@pytest.fixture
async def own_pg_database() -> AsyncIterator[str]:
    name = "dynflow_test_outage_" + secrets.token_hex(4)
    await _create_database(name)
    try:
        yield name
    finally:
        await _drop_database(name)


@pytest.mark.postgresql
async def test_postgresql_unreachable_is_503_and_work_resumes_when_it_is_back(
    tmp_path, own_pg_database, caplog
):
    caplog.set_level(logging.INFO)
    forwarder = TcpForwarder(PG_PORT)
    await forwarder.restore()
    url = f"postgresql://postgres@127.0.0.1:{forwarder.port}/{own_pg_database}"
    try:
        async with proxy_with(tmp_path, url) as proxy:
            async with httpx.AsyncClient(base_url=proxy.http_url, timeout=30) as client:
                first = await launch(client)
                assert first.status_code == 200, first.text
                task_id = first.json()["task_id"]

                await forwarder.cut()
                answers = [await launch(client) for _ in range(3)]
                answers.append(await client.get(f"/dynflow/tasks/{uuid.uuid4()}/status"))
                answers.append(
                    await client.post("/dynflow/tasks/statuses", json={"task_ids": [task_id]})
                )
                for answer in answers:
                    assert_503(answer, "Connect call failed", "connection was closed")
                feature = await dynflow_feature(client)
                assert feature["state"] == "running" and "Connect call failed" in feature["note"]
                assert len([r for r in outage_lines(caplog) if r.levelno == logging.ERROR]) <= 2

                await forwarder.restore()
                again = await wait_for(lambda: launched(client), timeout=30)
                again_id = again.json()["task_id"]
                status = await client.get(f"/dynflow/tasks/{again_id}/status")
                assert status.status_code == 200
                assert "note" not in await dynflow_feature(client)
    finally:
        await forwarder.cut()
    assert [r for r in caplog.records if "works again" in r.getMessage()]
    assert_no_request_tracebacks(caplog)


async def launched(client: httpx.AsyncClient) -> httpx.Response | None:
    """A launch that worked (None while it gets 503; anything else fails the test)."""
    response = await launch(client)
    if response.status_code == 503:
        return None
    assert response.status_code == 200, response.text
    return response


@pytest.mark.postgresql
async def test_terminated_postgresql_connections_are_503_at_worst(
    tmp_path, own_pg_database, caplog
):
    """An admin terminating every session (as a restart does): never a 500, and requests
    succeed again by themselves."""
    caplog.set_level(logging.INFO)
    url = f"postgresql://postgres@127.0.0.1:{PG_PORT}/{own_pg_database}"
    async with proxy_with(tmp_path, url) as proxy:
        async with httpx.AsyncClient(base_url=proxy.http_url, timeout=30) as client:
            assert (await launch(client)).status_code == 200
            admin = await _pg_connect("postgres")
            try:
                terminated = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = $1 AND pid <> pg_backend_pid()",
                    own_pg_database,
                )
            finally:
                await admin.close()
            assert terminated >= 1
            again = await wait_for(lambda: launched(client), timeout=30)
            assert again.json()["result"] == "success"
    assert_no_request_tracebacks(caplog)
