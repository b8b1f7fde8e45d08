"""The uvicorn listeners: client certificates reach the app, TLS policy, lifecycle."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from smart_proxy import server, tls
from smart_proxy.server import Listener, ServerStartupError
from tests.support.certs import Pki, make_pki

HTTP_IMPLEMENTATIONS = ["httptools", "h11"]


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path)


def _server_ctx(pki: Pki, **kwargs: Any) -> ssl.SSLContext:
    return tls.server_context(pki.server_cert, pki.server_key, pki.ca_cert, **kwargs)


class EchoApp:
    """Answers with what the connection told the app; counts calls and lifespan events."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls = 0
        self.delay = delay
        self.startups = 0
        self.shutdowns = 0
        self.request_started = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    self.startups += 1
                    scope["state"]["greeting"] = "hello"
                    await send({"type": "lifespan.startup.complete"})
                else:
                    self.shutdowns += 1
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        self.calls += 1
        self.request_started.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        cert = server.client_certificate(scope)
        tls_info = server.connection_tls(scope)
        payload = {
            "https": server.is_https(scope),
            "scheme": scope["scheme"],
            "cn": cert.subject_cn if cert else None,
            "serial": cert.serial if cert else None,
            "tls_version": tls_info["tls_version_name"] if tls_info else None,
            "state": scope.get("state", {}).get("greeting"),
        }
        body = httpx.Response(200, json=payload).content
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def running(
    app: Any, listeners: list[Listener], **kwargs: Any
) -> AsyncIterator[asyncio.Task[None]]:
    ready = asyncio.Event()
    stop = asyncio.Event()
    task = asyncio.create_task(
        server.serve(app, listeners, on_ready=ready.set, shutdown=stop, **kwargs)
    )
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED, timeout=10)
    if task.done():
        waiter.cancel()
        task.result()
    assert ready.is_set()
    try:
        yield task
    finally:
        stop.set()
        if not task.done():
            await asyncio.wait_for(task, 10)


def _client(pki: Pki, cert: str | None = None, key: str | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=pki.client_ssl_context(cert=cert, key=key), timeout=5)


def _port_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
async def test_client_certificate_reaches_the_app(pki: Pki, http: str) -> None:
    app = EchoApp()
    listener = Listener("127.0.0.1", 0, _server_ctx(pki))
    async with running(app, [listener], http=http):
        assert listener.bound_port
        async with _client(pki, pki.client_cert, pki.client_key) as client:
            data = (await client.get(f"{listener.url}/x")).json()
            assert data["https"] is True
            assert data["scheme"] == "https"
            assert data["cn"] == "proxy.example.com"
            assert data["serial"] == pki.client_serial
            assert data["tls_version"] == "TLSv1.3"
            # keep-alive: the second request on the same connection sees the same cert
            data = (await client.get(f"{listener.url}/y")).json()
            assert data["serial"] == pki.client_serial
        async with _client(pki, pki.other_client_cert, pki.other_client_key) as client:
            data = (await client.get(f"{listener.url}/x")).json()
            assert (data["cn"], data["serial"]) == ("other.example.com", pki.other_client_serial)


@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
async def test_no_client_certificate_is_allowed_at_tls_level(pki: Pki, http: str) -> None:
    app = EchoApp()
    listener = Listener("127.0.0.1", 0, _server_ctx(pki))
    async with running(app, [listener], http=http), _client(pki) as client:
        response = await client.get(f"{listener.url}/x")
    assert response.status_code == 200
    assert response.json()["https"] is True
    assert response.json()["cn"] is None
    assert response.json()["serial"] is None


async def test_foreign_ca_client_certificate_fails_the_handshake(pki: Pki) -> None:
    app = EchoApp()
    listener = Listener("127.0.0.1", 0, _server_ctx(pki))
    async with running(app, [listener]):
        async with _client(pki, pki.foreign_client_cert, pki.foreign_client_key) as client:
            with pytest.raises(httpx.TransportError):
                await client.get(f"{listener.url}/x")
        # the listener is still healthy
        async with _client(pki, pki.client_cert, pki.client_key) as client:
            assert (await client.get(f"{listener.url}/x")).status_code == 200
    assert app.calls == 1


async def _handshake(port: int, ctx: ssl.SSLContext) -> str:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost"), 5
    )
    try:
        return writer.get_extra_info("ssl_object").version()
    finally:
        writer.close()


async def test_tls11_client_is_refused(pki: Pki) -> None:
    app = EchoApp()
    listener = Listener("127.0.0.1", 0, _server_ctx(pki))
    async with running(app, [listener]):
        assert listener.bound_port is not None
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _handshake(listener.bound_port, pki.legacy_client_context(ssl.TLSVersion.TLSv1_1))
        version = await _handshake(
            listener.bound_port, pki.legacy_client_context(ssl.TLSVersion.TLSv1_2)
        )
        assert version == "TLSv1.2"


async def test_listener_with_tls12_disabled_refuses_a_tls12_only_client(pki: Pki) -> None:
    app = EchoApp()
    listener = Listener("127.0.0.1", 0, _server_ctx(pki, disabled_versions=["1.2"]))
    async with running(app, [listener]):
        assert listener.bound_port is not None
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await _handshake(listener.bound_port, pki.legacy_client_context(ssl.TLSVersion.TLSv1_2))
        assert await _handshake(listener.bound_port, pki.client_ssl_context()) == "TLSv1.3"


async def test_http_and_https_listeners_in_one_process(pki: Pki) -> None:
    app = EchoApp()
    https = Listener("127.0.0.1", 0, _server_ctx(pki), name="https")
    http = Listener("127.0.0.1", 0, name="http")
    async with running(app, [https, http]):
        assert https.bound_port != http.bound_port
        assert http.url.startswith("http://") and https.url.startswith("https://")
        async with httpx.AsyncClient() as client:
            # Forwarding headers must not make a plain connection look like TLS.
            response = await client.get(
                f"{http.url}/x", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "h"}
            )
            plain = response.json()
        async with _client(pki, pki.client_cert, pki.client_key) as client:
            secure = (await client.get(f"{https.url}/x")).json()
    assert plain["https"] is False
    assert plain["scheme"] == "http"
    assert plain["cn"] is None
    assert secure["https"] is True
    assert secure["serial"] == pki.client_serial
    # The application lifespan ran once and its state is shared by both listeners.
    assert app.startups == 1
    assert app.shutdowns == 1
    assert plain["state"] == secure["state"] == "hello"


async def test_graceful_shutdown_finishes_running_requests(pki: Pki) -> None:
    app = EchoApp(delay=0.3)
    listener = Listener("127.0.0.1", 0)
    async with httpx.AsyncClient(timeout=5) as client:
        async with running(app, [listener]) as task:
            request = asyncio.create_task(client.get(f"{listener.url}/slow"))
            await asyncio.wait_for(app.request_started.wait(), 5)
        # `running` set the shutdown event and awaited serve(): the request still completed.
        assert task.done() and task.exception() is None
        assert request.done()
        response = await request
    assert response.status_code == 200
    assert listener.bound_port is not None and _port_closed(listener.bound_port)
    assert app.shutdowns == 1


async def test_cancelling_serve_stops_the_listeners() -> None:
    app = EchoApp()
    listener = Listener("127.0.0.1", 0)
    ready = asyncio.Event()
    task = asyncio.create_task(server.serve(app, [listener], on_ready=ready.set))
    await asyncio.wait_for(ready.wait(), 5)
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{listener.url}/x")).status_code == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert listener.bound_port is not None and _port_closed(listener.bound_port)
    assert app.shutdowns == 1


async def test_port_in_use_raises_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        other = Listener("127.0.0.1", 0)
        with pytest.raises(ServerStartupError, match=f"cannot listen on 127.0.0.1:{port}"):
            await asyncio.wait_for(server.serve(EchoApp(), [other, Listener("127.0.0.1", port)]), 5)
    # the socket bound before the failure was released
    assert other.bound_port is not None and _port_closed(other.bound_port)


async def test_async_on_ready_is_called_once_after_every_listener_is_bound(pki: Pki) -> None:
    seen: list[list[int | None]] = []
    listeners = [Listener("127.0.0.1", 0), Listener("127.0.0.1", 0, _server_ctx(pki))]
    stop = asyncio.Event()

    async def on_ready() -> None:
        seen.append([listener.bound_port for listener in listeners])
        for listener in listeners:
            assert listener.bound_port is not None
            # really accepting connections
            _, writer = await asyncio.open_connection("127.0.0.1", listener.bound_port)
            writer.close()
        stop.set()

    await asyncio.wait_for(server.serve(EchoApp(), listeners, on_ready=on_ready, shutdown=stop), 10)
    assert len(seen) == 1 and all(seen[0])


async def test_failing_application_startup_is_reported() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    listener = Listener("127.0.0.1", 0)
    with pytest.raises(ServerStartupError, match="application startup failed"):
        await asyncio.wait_for(server.serve(app, [listener]), 5)
    assert listener.bound_port is not None and _port_closed(listener.bound_port)


async def test_with_tls_helper_for_in_process_tests(pki: Pki) -> None:
    app = EchoApp()
    cert = tls.load_certificate(pki.client_cert)
    transport = httpx.ASGITransport(app=server.with_tls(app, cert))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        data = (await client.get("/x")).json()
    assert data["https"] is True
    assert data["serial"] == pki.client_serial
    plain = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=plain, base_url="https://testserver") as client:
        # an https URL in-process is not a TLS connection
        assert (await client.get("/x")).json()["https"] is False


def test_protocol_class_follows_uvicorn_choice() -> None:
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    assert issubclass(server.tls_aware_protocol("auto"), HttpToolsProtocol)
    assert issubclass(server.tls_aware_protocol("h11"), H11Protocol)
    assert server.tls_aware_protocol("auto") is server.tls_aware_protocol("httptools")
    with pytest.raises(ValueError):
        server.tls_aware_protocol("zttp")  # type: ignore[arg-type]


# ---- raw takeover ---------------------------------------------------------------------------


class RawEchoApp:
    """``POST /raw`` (an upgrade request) is taken over: the app writes ``RAW <body> <cn>``,
    then echoes what it reads until it has seen ``bye``. Other requests get an ordinary
    answer with their body; ``/early`` tries the takeover before reading its body."""

    def __init__(self) -> None:
        self.offered: list[tuple[str, bool]] = []
        self.errors: list[BaseException] = []
        self.taken = asyncio.Event()
        self.ended = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        takeover = server.raw_takeover(scope)
        self.offered.append((scope["path"], takeover is not None))
        if takeover is not None and scope["path"] == "/early":
            try:
                takeover.take()
            except RuntimeError as exc:
                self.errors.append(exc)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if takeover is None or scope["path"] != "/raw":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        reader, writer = takeover.take()
        self.taken.set()
        cert = server.client_certificate(scope)
        cn = cert.subject_cn.encode() if cert is not None and cert.subject_cn else b"-"
        writer.write(b"RAW " + body + b" " + cn + b"\n")
        seen = b""
        try:
            while b"bye" not in seen:
                data = await reader.read(65536)
                if not data:
                    break
                seen += data
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
            self.ended.set()
        # uvicorn must ignore whatever the app sends once the connection is taken over
        await send({"type": "http.response.start", "status": 500, "headers": []})


def _upgrade_request(path: str, body: bytes, *, connection: bytes = b"upgrade") -> bytes:
    return (
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: localhost\r\n"
        b"Connection: " + connection + b"\r\nUpgrade: raw\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


async def _open(
    listener: Listener, pki: Pki | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert listener.bound_port is not None
    if listener.ssl_context is None:
        return await asyncio.open_connection("127.0.0.1", listener.bound_port)
    context = pki.client_ssl_context(cert=pki.client_cert, key=pki.client_key) if pki else None
    return await asyncio.open_connection(
        "127.0.0.1", listener.bound_port, ssl=context, server_hostname="localhost"
    )


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status, *lines = head[:-4].split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get(b"content-length", 0))), 5)
    return status, headers, body


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "split"])
@pytest.mark.parametrize("secure", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
async def test_raw_takeover_of_an_upgrade_request(
    pki: Pki, http: str, secure: bool, split: bool
) -> None:
    app = RawEchoApp()
    listener = Listener("127.0.0.1", 0, _server_ctx(pki) if secure else None)
    body = b'{"hostname": "h"}\r\n'
    request = _upgrade_request("/raw", body)
    async with running(app, [listener], http=http, lifespan="off", graceful_timeout=None):
        reader, writer = await _open(listener, pki)
        if split:  # the head and half the body, then the rest with the first raw bytes
            cut = request.index(b"\r\n\r\n") + 10
            writer.write(request[:cut])
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(request[cut:] + b"early|")
        else:  # everything at once: the raw bytes follow the body in the same packet
            writer.write(request + b"early|")
        await writer.drain()
        cn = pki.client_cn.encode() if secure else b"-"
        expected = b"RAW " + body + b" " + cn + b"\n"
        first = await asyncio.wait_for(reader.readexactly(len(expected)), 5)
        assert first == expected  # no HTTP status line, no headers
        writer.write(b"more|")
        await writer.drain()
        writer.write(b"bye")
        rest = await asyncio.wait_for(reader.read(), 5)  # until the app closes
        assert rest == b"early|more|bye"
        writer.close()
        await asyncio.wait_for(app.ended.wait(), 5)
        assert app.offered == [("/raw", True)]
        started = asyncio.get_running_loop().time()
    # no graceful timeout: a connection left in uvicorn's bookkeeping would hang the stop
    assert asyncio.get_running_loop().time() - started < 2


@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
async def test_requests_not_taken_over_are_served_as_usual(pki: Pki, http: str) -> None:
    app = RawEchoApp()
    listener = Listener("127.0.0.1", 0)
    async with running(app, [listener], http=http, lifespan="off"):
        reader, writer = await _open(listener, None)
        for payload in (b"one", b"two"):  # keep-alive, no takeover offered
            writer.write(b"POST /plain HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n" + payload)
            status, headers, answer = await _read_response(reader)
            assert status == b"HTTP/1.1 200 OK"
            assert answer == payload
            assert headers.get(b"connection") != b"close"
        # An upgrade request answered normally (body delivered) closes the connection.
        writer.write(_upgrade_request("/other", b'{"a": 1}') + b"raw bytes")
        status, headers, answer = await _read_response(reader)
        assert status == b"HTTP/1.1 200 OK"
        assert answer == b'{"a": 1}'
        assert headers[b"connection"] == b"close"
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        # A chunked upgrade request: h11 reads the body, llhttp cannot (refused).
        reader, writer = await _open(listener, None)
        writer.write(
            b"POST /other HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: raw\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        status, headers, answer = await _read_response(reader)
        if http == "h11":
            assert (status, answer) == (b"HTTP/1.1 200 OK", b"hello")
        else:
            assert status == b"HTTP/1.1 400 Bad Request"
        assert headers[b"connection"] == b"close"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # nothing more
        writer.close()
        # Taking over before the body was read is refused; the request is answered normally.
        reader, writer = await _open(listener, None)
        writer.write(_upgrade_request("/early", b"0123456789"))
        status, headers, answer = await _read_response(reader)
        assert (status, answer) == (b"HTTP/1.1 200 OK", b"0123456789")
        writer.close()
    assert app.offered == [
        ("/plain", False),
        ("/plain", False),
        ("/other", True),
        ("/other", True),  # with httptools the app sees a request whose client is gone
        ("/early", True),
    ]
    assert [type(error) for error in app.errors] == [RuntimeError]
    assert not app.taken.is_set()


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("http", HTTP_IMPLEMENTATIONS)
async def test_shutdown_ends_taken_over_connections(pki: Pki, http: str, secure: bool) -> None:
    app = RawEchoApp()
    listener = Listener("127.0.0.1", 0, _server_ctx(pki) if secure else None)
    loop = asyncio.get_running_loop()
    async with running(app, [listener], http=http, lifespan="off") as task:
        reader, writer = await _open(listener, pki)
        writer.write(_upgrade_request("/raw", b"{}") + b"hello")
        await writer.drain()
        assert await asyncio.wait_for(reader.readuntil(b"hello"), 5)
        started = loop.time()
    # `running` stopped the server (graceful timeout 10 s): the session did not hold it up.
    assert task.done() and task.exception() is None
    assert loop.time() - started < 3
    assert app.ended.is_set()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


def test_the_takeover_is_pinned_to_the_locked_uvicorn() -> None:
    import uvicorn

    lock = Path(__file__).parents[2] / "requirements.lock"
    pins = dict(line.split("==", 1) for line in lock.read_text().splitlines() if "==" in line)
    # The raw takeover relies on uvicorn's protocol internals: re-check it when bumping uvicorn.
    assert uvicorn.__version__ == pins["uvicorn"].strip() == server.UVICORN_VERSION
