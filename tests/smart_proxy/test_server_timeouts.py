"""Slow and vanishing clients at the listeners: header and body read timeouts (h11, httptools,
plain and TLS), many slow connections at once, and a client gone mid-upload (one INFO line).

The timeouts are short here (``HEADER``, ``BODY``); every wait is for a condition (the server
closing the connection), bounded by a generous timeout.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from smart_proxy import tls
from smart_proxy.log import RequestLogMiddleware
from smart_proxy.server import Listener, serve
from smart_proxy.settings import ProxySettings
from smart_proxy_dynflow.settings import CoreSettings
from tests.support.certs import Pki, make_pki
from tests.support.services import core_service, make_config
from tests.support.waiting import wait_for

HTTP_IMPLEMENTATIONS = ["httptools", "h11"]
HEADER = 0.5
BODY = 1.0
CLOSED_WITHIN = 10.0  # generous bound for "the server closed it"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class Uploads:
    """An app that reads the whole body and says how long it was; records disconnects."""

    def __init__(self) -> None:
        self.disconnects = 0
        self.completed = 0

    def app(self) -> Starlette:
        async def upload(request: Request) -> JSONResponse:
            try:
                body = await request.body()
            except ClientDisconnect:
                self.disconnects += 1
                raise
            self.completed += 1
            return JSONResponse({"length": len(body)})

        return Starlette(routes=[Route("/upload", upload, methods=["GET", "POST"])])


@asynccontextmanager
async def listening(
    app: Any, http: str, ssl_context: ssl.SSLContext | None = None, **timeouts: Any
) -> AsyncIterator[Listener]:
    listener = Listener("127.0.0.1", 0, ssl_context)
    ready = asyncio.Event()
    stop = asyncio.Event()
    options = {"header_timeout": HEADER, "body_timeout": BODY, **timeouts}
    task = asyncio.create_task(
        serve(app, [listener], on_ready=ready.set, shutdown=stop, http=http, **options)  # type: ignore[arg-type]
    )
    try:
        await asyncio.wait_for(ready.wait(), 15)
        yield listener
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def connect(
    listener: Listener, client_context: ssl.SSLContext | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert listener.bound_port is not None
    return await asyncio.open_connection(
        "127.0.0.1",
        listener.bound_port,
        ssl=client_context,
        server_hostname="localhost" if client_context else None,
    )


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = bytearray()
    while True:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), CLOSED_WITHIN)
        except (ConnectionResetError, ssl.SSLError):
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


@pytest.fixture(params=["plain", "tls"])
def transport(request: pytest.FixtureRequest, pki: Pki) -> tuple[Any, Any]:
    if request.param == "plain":
        return None, None
    server_context = tls.server_context(pki.server_cert, pki.server_key, pki.ca_cert)
    client_context = pki.client_ssl_context(cert=pki.client_cert, key=pki.client_key)
    return server_context, client_context


@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
async def test_a_slow_request_head_gets_408_and_the_connection_closed(http, transport, caplog):
    caplog.set_level(logging.INFO, logger="smart_proxy.server")
    server_context, client_context = transport
    async with listening(Uploads().app(), http, server_context) as listener:
        reader, writer = await connect(listener, client_context)
        started = time.monotonic()
        writer.write(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Le")  # and nothing more
        await writer.drain()
        answer = await read_until_closed(reader)
        elapsed = time.monotonic() - started
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert b'{"error": "the request head did not arrive within 0.5 s"}' in answer
    assert HEADER * 0.8 <= elapsed < CLOSED_WITHIN
    lines = [r for r in caplog.records if "no complete request head" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and lines[0].exc_info is None


@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
async def test_a_connection_that_sends_nothing_is_closed(http, transport):
    server_context, client_context = transport
    async with listening(Uploads().app(), http, server_context) as listener:
        reader, writer = await connect(listener, client_context)
        answer = await read_until_closed(reader)
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")


@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
async def test_a_tls_handshake_that_never_comes_is_cut(http, pki):
    server_context = tls.server_context(pki.server_cert, pki.server_key, pki.ca_cert)
    async with listening(Uploads().app(), http, server_context) as listener:
        started = time.monotonic()
        reader, writer = await connect(listener, None)  # TCP only: no ClientHello
        assert await read_until_closed(reader) == b""
        writer.close()
    assert time.monotonic() - started < CLOSED_WITHIN


@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
async def test_a_slow_body_gets_408_and_the_app_sees_a_disconnect(http, transport, caplog):
    caplog.set_level(logging.INFO, logger="smart_proxy")
    server_context, client_context = transport
    uploads = Uploads()
    app = RequestLogMiddleware(uploads.app())
    async with listening(app, http, server_context) as listener:
        reader, writer = await connect(listener, client_context)
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b"x" * 10
        )
        await writer.drain()
        answer = await read_until_closed(reader)
        writer.close()
        await wait_for(lambda: _true(uploads.disconnects == 1))
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer
    assert b"the request body did not arrive within 1 s" in answer
    assert uploads.completed == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("the body of POST /upload did not arrive within 1 s" in m for m in messages)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert any("Finished POST /upload with client disconnected" in m for m in messages)


@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
async def test_requests_in_time_are_served_and_kept_alive(http, transport):
    server_context, client_context = transport
    async with listening(Uploads().app(), http, server_context) as listener:
        reader, writer = await connect(listener, client_context)
        for _ in range(3):  # keep-alive: each request gets its own deadlines
            writer.write(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 6\r\n\r\n")
            writer.write(b"abc")
            await writer.drain()
            writer.write(b"def")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLOSED_WITHIN)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            assert await reader.readexactly(length) == b'{"length":6}'
        writer.close()


@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
async def test_hundreds_of_slow_connections_are_all_closed(http):
    """400 slowloris connections, half dripping a head, half a body: all closed in time."""
    async with listening(Uploads().app(), http, None) as listener:
        connections = [await connect(listener, None) for _ in range(400)]
        started = time.monotonic()
        for number, (_reader, writer) in enumerate(connections):
            if number % 2:
                writer.write(b"GET /upload HTTP/1.1\r\nHost: localhost\r\n")
            else:
                writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 99\r\n\r\nx")
        answers = await asyncio.gather(*(read_until_closed(r) for r, _ in connections))
        elapsed = time.monotonic() - started
        for _reader, writer in connections:
            writer.close()
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers)
    assert elapsed < (HEADER + BODY) * 10


async def test_a_client_gone_mid_upload_is_one_info_line(tmp_path: Path, caplog):
    """Through the task API: the client sends half a launch and hangs up."""
    caplog.set_level(logging.DEBUG)
    config = make_config(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    async with core_service(config) as svc:
        port = svc.served.listener.bound_port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /tasks/launch HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 5000\r\n\r\n" + b'{"operation": "single", "input": {'
        )
        await writer.drain()

        def finished() -> list[str]:
            return [m for m in messages() if "Finished POST /tasks/launch" in m]

        def messages() -> list[str]:
            return [r.getMessage() for r in caplog.records]

        await wait_for(lambda: _true(any("Started POST /tasks/launch" in m for m in messages())))
        writer.close()
        await wait_for(lambda: _true(finished()))
        assert await svc.world.count_plans() == 0
    assert finished() == [finished()[0]]
    assert "with client disconnected" in finished()[0]
    gone = [r for r in caplog.records if "went away during POST /tasks/launch" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.INFO and gone[0].exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [
        r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR
    ]
    assert not [r for r in caplog.records if r.exc_info and r.name.startswith(("smart", "uvicorn"))]


async def _true(value: Any) -> Any:
    return value


def test_the_timeouts_are_settings_of_both_services(tmp_path: Path):
    proxy = ProxySettings()
    assert (proxy.http_header_timeout, proxy.http_body_timeout) == (10, 30)
    core = CoreSettings()
    assert (core.http_header_timeout, core.http_body_timeout) == (10, 30)
    assert ProxySettings(http_header_timeout=2.5).http_header_timeout == 2.5
    with pytest.raises(ValueError):
        CoreSettings(http_body_timeout=0)
