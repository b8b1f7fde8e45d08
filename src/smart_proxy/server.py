"""HTTP/HTTPS listeners (uvicorn) that hand the TLS client certificate to the ASGI app.

uvicorn verifies client certificates but does not pass them on. Our protocol subclass reads the
peer certificate of each TLS connection once, when the connection is made, and every request
scope of that connection then carries it::

    scope["extensions"]["tls"] = {
        "client_cert": ClientCertificate | None,   # verified by the TLS layer
        "client_cert_chain": [PEM, ...],           # ASGI TLS extension fields
        "tls_version": 0x0304,                     # ASGI: int
        "tls_version_name": "TLSv1.3",
        "cipher": "TLS_AES_256_GCM_SHA384",
        "server_cert": None,
    }

A plain-HTTP connection has no ``tls`` extension. Use :func:`client_certificate` and
:func:`is_https`; both look only at the connection, never at request headers.

**Raw takeover.** An upgrade request (``Connection: upgrade`` and an ``Upgrade`` header; the
listeners serve no WebSockets) also gets ``scope["extensions"][RAW_EXTENSION]``, a
:class:`RawTakeover` (see :func:`raw_takeover`). Once the handler has read the request body it
may call ``take()``: the connection leaves uvicorn's HTTP protocol and the handler gets an asyncio
``(StreamReader, StreamWriter)`` over the raw bytes (those the client sent after the body come
first). uvicorn then writes nothing more on it; the connection stays in uvicorn's bookkeeping,
so a graceful shutdown closes it (the reader sees its end at once) instead of waiting for it. An
upgrade request answered normally gets ``Connection: close``, and with httptools its body now
reaches the app (llhttp stops at the head of an upgrade request). This relies on the internals
of uvicorn's ``HttpToolsProtocol`` and ``H11Protocol`` as of uvicorn 0.54.0
(``requirements.lock``); requests that are not upgrades are served exactly as by uvicorn.

:func:`serve` runs one uvicorn server per :class:`Listener` in the running event loop. uvicorn's
signal handlers, logging configuration, access log and proxy-header rewriting are all off: the
caller owns signals and logging, and our middleware logs requests.

**Read timeouts** (``header_timeout``, ``body_timeout`` of :func:`serve`; the settings
``http_header_timeout`` and ``http_body_timeout``): a client must send the head of a request
(request line and headers) within ``header_timeout`` seconds of connecting or of its first byte
(a TLS handshake must also end within ``header_timeout``), and the whole body within
``body_timeout`` seconds of the head; time during which the server does not read (the
application is busy, ``Expect: 100-continue`` not answered yet) does not count. A late head gets
``408 Request Timeout`` and the connection is closed; a late body gets 408 (or only the close,
once a response has begun) and the application sees the client disconnect. One INFO line each.
Idle keep-alive connections are closed by uvicorn after ``timeout_keep_alive`` (5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import h11
import uvicorn
from uvicorn.lifespan.on import LifespanOn
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT

try:
    import httptools
except ImportError:  # pragma: no cover - httptools is a dependency
    # A module-typed name cannot hold None; without httptools, _HttpToolsRaw (its only
    # user) is never chosen, as _base_protocol falls back to h11.
    httptools = None  # type: ignore[assignment]

from smart_proxy.tls import ClientCertificate, peer_certificate

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HttpImplementation = Literal["auto", "httptools", "h11"]

TLS_EXTENSION = "tls"
RAW_EXTENSION = "smart_proxy.raw_connection"
UVICORN_VERSION = "0.54.0"
"""The uvicorn whose protocol internals the raw takeover was written and tested for."""
DEFAULT_HEADER_TIMEOUT = 10.0
"""Seconds a client has to send a request head (``http_header_timeout``)."""
DEFAULT_BODY_TIMEOUT = 30.0
"""Seconds a client has to send a request body after its head (``http_body_timeout``)."""
RAW_SHUTDOWN_GRACE = 1.0
"""Seconds a taken-over connection may take to close (TLS close_notify) when the server shuts
down; then it is aborted."""
_TLS_VERSION_CODES = {
    "TLSv1": 0x0301,
    "TLSv1.1": 0x0302,
    "TLSv1.2": 0x0303,
    "TLSv1.3": 0x0304,
}


class ServerStartupError(RuntimeError):
    """A listener could not be started (address in use, application startup failed, ...)."""


@dataclass
class Listener:
    """One listening socket. ``port=0`` binds an ephemeral port, see ``bound_port``."""

    host: str
    port: int
    ssl_context: ssl.SSLContext | None = None
    name: str = ""
    bound_port: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not self.name:
            self.name = "https" if self.ssl_context is not None else "http"

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    @property
    def url(self) -> str:
        """Base URL of the bound listener (``bound_port`` once started, else ``port``)."""
        host = self.host
        if host in ("", "*", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        port = self.bound_port if self.bound_port is not None else self.port
        return f"{self.scheme}://{host}:{port}"


# ---- scope helpers ------------------------------------------------------------------------------


def connection_tls(scope: Scope) -> dict[str, Any] | None:
    """The TLS details of the request's connection, None for plain HTTP."""
    extensions = scope.get("extensions") or {}
    tls = extensions.get(TLS_EXTENSION)
    return tls if isinstance(tls, dict) else None


def client_certificate(scope: Scope) -> ClientCertificate | None:
    """The verified client certificate of the request's TLS connection, if one was presented."""
    tls = connection_tls(scope)
    if tls is None:
        return None
    cert = tls.get("client_cert")
    return cert if isinstance(cert, ClientCertificate) else None


def is_https(scope: Scope) -> bool:
    """True when the request arrived over TLS (decided by the connection, not by headers)."""
    return connection_tls(scope) is not None


def raw_takeover(scope: Scope) -> RawTakeover | None:
    """The raw takeover of the request's connection: only for upgrade requests served by
    :func:`serve` (None otherwise, e.g. in-process tests)."""
    extensions = scope.get("extensions") or {}
    takeover = extensions.get(RAW_EXTENSION)
    return takeover if isinstance(takeover, RawTakeover) else None


def raw_connection_taken(scope: Scope) -> bool:
    """True once the request's handler took the connection over."""
    takeover = raw_takeover(scope)
    return takeover is not None and takeover.taken


def tls_details(
    client_cert: ClientCertificate | None = None,
    *,
    tls_version: str = "TLSv1.3",
    cipher: str | None = None,
) -> dict[str, Any]:
    """The ``scope["extensions"]["tls"]`` mapping for a connection."""
    return {
        "client_cert": client_cert,
        "client_cert_chain": [client_cert.pem] if client_cert is not None else [],
        "client_cert_name": client_cert.subject if client_cert is not None else None,
        "client_cert_error": None,
        "tls_version": _TLS_VERSION_CODES.get(tls_version),
        "tls_version_name": tls_version,
        "cipher": cipher,
        "server_cert": None,
    }


def _transport_tls(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cert: ClientCertificate | None = None
    error: str | None = None
    der = ssl_object.getpeercert(binary_form=True)
    if der:
        try:
            cert = peer_certificate(der)
        except ValueError as exc:  # OpenSSL accepted it, cryptography cannot parse it
            error = f"unparsable client certificate: {exc}"
            logger.warning("%s", error)
    cipher = ssl_object.cipher()
    details = tls_details(
        cert,
        tls_version=ssl_object.version() or "",
        cipher=cipher[0] if cipher else None,
    )
    details["client_cert_error"] = error
    return details


class _WithTLS:
    """ASGI wrapper adding the connection's TLS details to every scope."""

    def __init__(self, app: ASGIApp, tls: dict[str, Any]) -> None:
        self.app = app
        self.tls = tls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            extensions = scope.get("extensions")
            if extensions is None:
                extensions = scope["extensions"] = {}
            extensions[TLS_EXTENSION] = self.tls
            scope["scheme"] = "https" if scope["type"] == "http" else "wss"
        await self.app(scope, receive, send)


def with_tls(
    app: ASGIApp,
    client_cert: ClientCertificate | None = None,
    *,
    tls_version: str = "TLSv1.3",
) -> ASGIApp:
    """Make ``app`` see every request as arriving over TLS with ``client_cert``.

    For in-process tests (e.g. ``httpx.ASGITransport``) that need the HTTPS code paths without
    real sockets. The real listeners do this per connection.
    """
    return _WithTLS(app, tls_details(client_cert, tls_version=tls_version))


# ---- protocol -----------------------------------------------------------------------------------


def _base_protocol(http: HttpImplementation) -> type[asyncio.Protocol]:
    if http == "auto":
        try:
            import httptools  # noqa: F401
        except ImportError:  # pragma: no cover - httptools is a dependency
            http = "h11"
        else:
            http = "httptools"
    if http == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    if http == "h11":
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol
    raise ValueError(f"unknown HTTP implementation {http!r} (auto, httptools, h11)")


_PROTOCOLS: dict[type[asyncio.Protocol], type[asyncio.Protocol]] = {}


def tls_aware_protocol(http: HttpImplementation = "auto") -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (as uvicorn would pick it) passing TLS details on and
    offering the raw takeover of upgrade requests."""
    base = _base_protocol(http)
    protocol = _PROTOCOLS.get(base)
    if protocol is None:
        if uvicorn.__version__ != UVICORN_VERSION:
            logger.warning(
                "uvicorn %s is installed; the raw takeover of upgrade requests relies on the "
                "internals of uvicorn %s",
                uvicorn.__version__,
                UVICORN_VERSION,
            )
        mixin = _HttpToolsRaw if base.__name__ == "HttpToolsProtocol" else _H11Raw
        protocol = type(f"TLSAware{base.__name__}", (_ReadTimeouts, mixin, base), {})
        _PROTOCOLS[base] = protocol
    return protocol


# ---- raw takeover -------------------------------------------------------------------------------


def _upgrade_token(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The ``Upgrade`` value of a request whose ``Connection`` lists ``upgrade``, else None
    (decided as uvicorn does)."""
    connection: list[bytes] = []
    upgrade: bytes | None = None
    for name, value in headers:
        name = name.lower()
        if name == b"connection":
            connection = [token.strip().lower() for token in value.split(b",")]
        elif name == b"upgrade":
            upgrade = value.lower()
    return upgrade if b"upgrade" in connection else None


class RawTakeover:
    """The raw takeover of an upgrade request's connection (see the module docstring).

    :meth:`take` may be called once, after the request body has been read in full and before
    any response was started. A request that is not taken over is answered normally, with
    ``Connection: close`` (the client may already have sent bytes of another protocol).
    """

    def __init__(self, protocol: _RawUpgradeMixin, scope: Scope) -> None:
        self._protocol = protocol
        self._scope = scope
        self.taken = False

    def take(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Detach the connection from the HTTP server; returns its reader and writer.

        Raises ConnectionError when the client has already gone, RuntimeError when called
        too early (body not read) or too late (response started, already taken).
        """
        if self.taken:
            raise RuntimeError("the connection was already taken over")
        streams = self._protocol.take_raw_connection(self._scope)
        self.taken = True
        return streams


class _RawProtocol(asyncio.StreamReaderProtocol):
    """The protocol of a taken-over connection: feeds a StreamReader and stands in for the HTTP
    protocol in uvicorn's ``server_state.connections``, whose graceful shutdown calls
    :meth:`shutdown`."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        connections: set[Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(reader, loop=loop)
        self._raw_reader = reader
        self._raw_loop = loop
        self._connections = connections
        self._raw_transport: asyncio.Transport | None = None
        self._abort_handle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # uvloop's transports (the loop as shipped) are not asyncio.Transport subclasses.
        # uvloop's transports (the loop as shipped) are not asyncio.Transport subclasses.
        self._raw_transport = cast(asyncio.Transport, transport)
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._raw_transport = None
        if self._abort_handle is not None:
            self._abort_handle.cancel()
            self._abort_handle = None
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """The server stops: close the connection (the reader sees its end at once) and abort
        it if it is not closed within :data:`RAW_SHUTDOWN_GRACE` seconds."""
        transport = self._raw_transport
        if transport is None:
            return
        transport.close()
        self._raw_reader.feed_eof()
        if self._abort_handle is None:
            self._abort_handle = self._raw_loop.call_later(RAW_SHUTDOWN_GRACE, transport.abort)


class _RawOffer:
    """ASGI wrapper of one connection: puts a :class:`RawTakeover` into the scope of each
    upgrade request."""

    def __init__(self, app: ASGIApp, protocol: _RawUpgradeMixin) -> None:
        self.app = app
        self.protocol = protocol

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.protocol.is_raw_upgrade(scope.get("headers") or []):
            takeover = RawTakeover(self.protocol, scope)
            extensions = scope.get("extensions")
            if extensions is None:
                extensions = scope["extensions"] = {}
            extensions[RAW_EXTENSION] = takeover
            send = self._closing_send(takeover, send)
        await self.app(scope, receive, send)

    @staticmethod
    def _closing_send(takeover: RawTakeover, send: Send) -> Send:
        """``send`` adding ``Connection: close`` to a response of a request whose connection was
        not taken over (the client may already have sent bytes of another protocol)."""

        async def closing_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start" and not takeover.taken:
                headers = [
                    (name, value)
                    for name, value in message.get("headers") or []
                    if name.lower() != b"connection"
                ]
                headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        return closing_send


class _RawUpgradeMixin:
    """What our protocols add to uvicorn's (0.54.0): TLS details and the raw takeover.

    Uses these attributes of uvicorn's protocols: ``app``, ``cycle`` (``scope``, ``body``,
    ``more_body``, ``response_started``, ``disconnected``, ``message_event``), ``flow``,
    ``connections``, ``transport``, ``loop``, ``ws_protocol_class``, ``shutdown`` and
    ``_unset_keepalive_if_required``; each subclass also relies on its parser's state.
    """

    _raw_shutdown = False
    app: ASGIApp
    cycle: Any
    flow: Any
    connections: set[Any]
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    ws_protocol_class: Any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        app = self.app
        tls = _transport_tls(transport)
        if tls is not None:
            app = _WithTLS(app, tls)
        self.app = _RawOffer(app, self)

    def shutdown(self) -> None:
        self._raw_shutdown = True
        super().shutdown()  # type: ignore[misc]

    def is_raw_upgrade(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Is a request with these headers an upgrade left to the app?"""
        upgrade = _upgrade_token(headers)
        if upgrade is None:
            return False
        return not (upgrade == b"websocket" and self.ws_protocol_class is not None)

    def _raw_leftover(self) -> bytes:
        """The bytes received after the current request's body; RuntimeError when the parser
        has not stopped at the end of an upgrade request."""
        raise NotImplementedError

    def take_raw_connection(
        self, scope: Scope
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Detach the connection from uvicorn for the request of ``scope`` (what
        :meth:`RawTakeover.take` does); see there for the errors."""
        cycle = self.cycle
        if cycle is None or cycle.scope is not scope:
            raise RuntimeError("only the current request of a connection can take it over")
        if cycle.response_started:
            raise RuntimeError("a response was already started")
        if cycle.disconnected or self.transport.is_closing():
            raise ConnectionError("the client closed the connection")
        if cycle.more_body or cycle.body:
            raise RuntimeError("read the whole request body before taking the connection over")
        leftover = self._raw_leftover()
        cancel = getattr(self, "_cancel_read_timers", None)
        if cancel is not None:
            cancel()  # the connection is the handler's now
        # uvicorn is done with the request: send() becomes a no-op, receive() http.disconnect,
        # and nothing is written when the app returns without a response.
        cycle.disconnected = True
        cycle.message_event.set()
        self._unset_keepalive_if_required()  # type: ignore[attr-defined]
        self.connections.discard(self)
        transport = self.transport
        reader = asyncio.StreamReader(loop=self.loop)
        raw = _RawProtocol(reader, self.connections, self.loop)
        transport.set_protocol(raw)
        raw.connection_made(transport)
        if self.flow.write_paused:
            raw.pause_writing()
        if leftover:
            reader.feed_data(leftover)
        if self.flow.read_paused:
            transport.resume_reading()
        if self._raw_shutdown:
            raw.shutdown()
        return reader, asyncio.StreamWriter(transport, raw, reader, self.loop)


class _H11Raw(_RawUpgradeMixin):
    """h11 reads an upgrade request's body and then pauses, keeping what follows."""

    conn: h11.Connection

    def _raw_leftover(self) -> bytes:
        if self.conn.their_state is not h11.MIGHT_SWITCH_PROTOCOL:
            raise RuntimeError("the request has not been received in full")
        return bytes(self.conn.trailing_data[0])

    def _unsupported_upgrade_warning(self) -> None:
        # Upgrades other than WebSocket go to the app, which may take the connection over.
        if self._get_upgrade() == b"websocket":  # type: ignore[attr-defined]
            super()._unsupported_upgrade_warning()  # type: ignore[misc]


class _HttpToolsRaw(_RawUpgradeMixin):
    """llhttp ends an upgrade request at its head (the body is not parsed) and uvicorn then
    drops what follows. For an upgrade left to the app, this delivers the body
    (``Content-Length``; a chunked one is refused with a 400) to the app as usual and keeps the
    bytes after it for the takeover, reading paused."""

    _raw_pending: bytearray | None = None
    _raw_body_left = 0
    parser: Any
    headers: list[tuple[bytes, bytes]]
    logger: logging.Logger

    def data_received(self, data: bytes) -> None:
        # HttpToolsProtocol.data_received of uvicorn 0.54.0, with _raw_begin for upgrades.
        if self._raw_pending is not None:
            self._raw_data(data)
            return
        self._unset_keepalive_if_required()  # type: ignore[attr-defined]
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)  # type: ignore[attr-defined]
            return
        except httptools.HttpParserUpgrade as exc:
            if self.is_raw_upgrade(self.headers):
                self._raw_begin(data[exc.args[0] :])
            elif self._should_upgrade():  # type: ignore[attr-defined]
                self.handle_websocket_upgrade()  # type: ignore[attr-defined]
            else:
                self._unsupported_upgrade_warning()  # type: ignore[attr-defined]

    def _raw_begin(self, rest: bytes) -> None:
        self._raw_pending = bytearray()
        length = 0
        for name, value in self.headers:
            if name == b"content-length":
                length = int(value)  # checked by llhttp
            elif name == b"transfer-encoding":  # not parsed by llhttp either: refused
                msg = "Upgrade requests with a chunked body are not supported."
                self.logger.warning(msg)
                self.cycle.disconnected = True  # the app's answer must not follow this one
                self.cycle.message_event.set()
                self.send_400_response(msg)  # type: ignore[attr-defined]
                return
        if length and not self.cycle.response_complete:
            self._raw_body_left = length
            self.cycle.more_body = True  # llhttp said the message was complete
        self._raw_data(rest)

    def _raw_data(self, data: bytes) -> None:
        assert self._raw_pending is not None
        if self._raw_body_left:
            body, data = data[: self._raw_body_left], data[self._raw_body_left :]
            self._raw_body_left -= len(body)
            cycle = self.cycle
            if not cycle.response_complete:
                cycle.body += body
                if not self._raw_body_left:
                    cycle.more_body = False
                cycle.message_event.set()
                if len(cycle.body) > HIGH_WATER_LIMIT:
                    self.flow.pause_reading()
        if data:
            self._raw_pending += data
            self.flow.pause_reading()

    def _raw_leftover(self) -> bytes:
        if self._raw_pending is None or self._raw_body_left:
            raise RuntimeError("the request has not been received in full")
        return bytes(self._raw_pending)


# ---- read timeouts ------------------------------------------------------------------------------


def _timeout_response(message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class _ReadTimeouts:
    """Header and body read timeouts (see the module docstring) for uvicorn's protocols.

    Uses ``config`` (``http_header_timeout``, ``http_body_timeout`` set by :func:`_config`),
    ``cycle`` (``more_body``, ``response_started``, ``response_complete``, ``disconnected``,
    ``message_event``; h11's ``waiting_for_100_continue``, httptools' ``expect_100_continue``),
    ``flow.read_paused``, ``transport``, ``loop``, ``client`` and ``on_response_complete``.
    """

    config: Any
    cycle: Any
    flow: Any
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    client: Any
    _header_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _timed_cycle: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        self._track_reads(arriving=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._track_reads(arriving=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_timers()
        super().connection_lost(exc)  # type: ignore[misc]

    def _cancel_read_timers(self) -> None:
        for name in ("_header_timer", "_body_timer"):
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)

    def _track_reads(self, *, arriving: bool) -> None:
        cycle = self.cycle
        if cycle is not None and cycle is not self._timed_cycle:  # a new request head is in
            self._timed_cycle = cycle
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None
            if cycle.more_body and not cycle.response_complete:
                self._arm_body_timer()
        elif self._body_timer is not None:
            if cycle is None:  # the body timer is only ever armed for a request's cycle
                raise RuntimeError("a body read timer is armed without a request cycle")
            if not cycle.more_body or cycle.response_complete:
                self._body_timer.cancel()
                self._body_timer = None
        if arriving and self._header_timer is None and (cycle is None or cycle.response_complete):
            self._arm_header_timer()  # the first bytes of the next request

    def _arm_header_timer(self) -> None:
        timeout = getattr(self.config, "http_header_timeout", None)
        if timeout and self.transport is not None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(timeout, self._header_timed_out, timeout)

    def _arm_body_timer(self) -> None:
        timeout = getattr(self.config, "http_body_timeout", None)
        if timeout:
            self._body_timer = self.loop.call_later(timeout, self._body_timed_out, timeout)

    def _peer(self) -> str:
        client = self.client
        return f"{client[0]}:{client[1]}" if client else "a client"

    def _header_timed_out(self, timeout: float) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle is not self._timed_cycle:
            return  # raced with a head just parsed
        logger.info(
            "Closed the connection of %s: no complete request head within %g s",
            self._peer(),
            timeout,
        )
        message = f"the request head did not arrive within {timeout:g} s"
        self.transport.write(_timeout_response(message))
        self.transport.close()

    def _body_timed_out(self, timeout: float) -> None:
        self._body_timer = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or cycle is not self._timed_cycle:
            return
        if not cycle.more_body or cycle.response_complete:
            return
        waiting = getattr(cycle, "waiting_for_100_continue", False) or getattr(
            cycle, "expect_100_continue", False
        )
        if self.flow.read_paused or waiting:
            self._arm_body_timer()  # the server is not reading: the client is not late
            return
        method = cycle.scope.get("method", "")
        path = cycle.scope.get("path", "")
        logger.info(
            "Closed the connection of %s: the body of %s %s did not arrive within %g s",
            self._peer(),
            method,
            path,
            timeout,
        )
        started = cycle.response_started
        cycle.disconnected = True  # the application's receive() says so, its send() is a no-op
        cycle.message_event.set()
        if not started:
            message = f"the request body did not arrive within {timeout:g} s"
            self.transport.write(_timeout_response(message))
        self.transport.close()


# ---- server -------------------------------------------------------------------------------------


class _SharedLifespan:
    """uvicorn lifespan stand-in: the application lifespan runs once, in :func:`serve`."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.should_exit = False
        self.state = state

    async def startup(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, listener: Listener) -> None:
        super().__init__(config)
        self.listener = listener
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The caller owns the process signals.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn 0.54's ``Server.startup`` for the sockets :func:`serve` bound, with the TLS
        handshake bounded by the header timeout (asyncio's default is 60 s)."""
        assert sockets is not None
        await self.lifespan.startup()  # the shared lifespan: nothing to do
        config = self.config

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config,
                server_state=self.server_state,
                app_state=self.lifespan.state,
                _loop=_loop,
            )

        loop = asyncio.get_running_loop()
        options: dict[str, Any] = {}
        handshake_timeout = getattr(config, "http_header_timeout", None)
        if config.ssl is not None and handshake_timeout:
            options["ssl_handshake_timeout"] = handshake_timeout
        self.servers = []
        for sock in sockets:
            server = await loop.create_server(
                create_protocol, sock=sock, ssl=config.ssl, backlog=config.backlog, **options
            )
            self.servers.append(server)
        self.started = True
        self.ready.set()


def _bind(listener: Listener, backlog: int) -> socket.socket:
    host = listener.host
    port = listener.port
    if host in ("", "*"):
        family = socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET
        address: tuple[Any, ...] = ("::", port) if family == socket.AF_INET6 else ("0.0.0.0", port)
        candidates = [(family, address)]
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise ServerStartupError(
                f"cannot listen on {host}:{port} ({listener.name}): {exc.strerror}"
            ) from exc
        candidates = [(info[0], info[4]) for info in infos]
    error: OSError | None = None
    for family, address in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and host in ("", "*"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(address)
            sock.listen(backlog)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        listener.bound_port = sock.getsockname()[1]
        return sock
    reason = (error.strerror or str(error)) if error is not None else "no usable address"
    message = f"cannot listen on {host}:{port} ({listener.name}): {reason}"
    raise ServerStartupError(message) from error


def _config(
    app: ASGIApp,
    listener: Listener | None,
    *,
    protocol: type[asyncio.Protocol],
    lifespan: Literal["auto", "on", "off"],
    log_config: Any,
    graceful_timeout: float | None,
    server_header: str | None,
    backlog: int,
    header_timeout: float | None = None,
    body_timeout: float | None = None,
) -> uvicorn.Config:
    headers = [("server", server_header)] if server_header else []
    ssl_context = listener.ssl_context if listener is not None else None
    config = uvicorn.Config(
        app,
        host=listener.host if listener is not None else "127.0.0.1",
        port=(listener.bound_port or 0) if listener is not None else 0,
        http=protocol,
        ws="none",
        lifespan=lifespan,
        log_config=log_config,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        headers=headers,
        timeout_graceful_shutdown=graceful_timeout,  # type: ignore[arg-type]
        backlog=backlog,
        loop="none",
        ssl_context_factory=(lambda _config, _default: ssl_context) if ssl_context else None,
    )
    config.load()
    # Read by _ReadTimeouts and _Server.startup (uvicorn has no such settings).
    config.http_header_timeout = header_timeout  # type: ignore[attr-defined]
    config.http_body_timeout = body_timeout  # type: ignore[attr-defined]
    return config


async def _maybe_await(value: Any) -> None:
    if inspect.isawaitable(value):
        await value


async def serve(
    app: ASGIApp,
    listeners: list[Listener],
    *,
    on_ready: Callable[[], Any] | None = None,
    shutdown: asyncio.Event | None = None,
    log_config: Any = None,
    lifespan: Literal["auto", "on", "off"] = "auto",
    http: HttpImplementation = "auto",
    graceful_timeout: float | None = 10.0,
    server_header: str | None = None,
    backlog: int = 2048,
    header_timeout: float | None = DEFAULT_HEADER_TIMEOUT,
    body_timeout: float | None = DEFAULT_BODY_TIMEOUT,
) -> None:
    """Serve ``app`` on every listener until ``shutdown`` is set or the task is cancelled.

    * Every socket is bound first (a failure raises :class:`ServerStartupError` at once);
      ``listener.bound_port`` is then known (useful with ``port=0``).
    * The application's ASGI lifespan (``lifespan``) runs once, not once per listener, and its
      state is shared by all listeners.
    * ``on_ready`` (sync or async) is called once every listener accepts connections.
    * Stopping is graceful: stop accepting, let running requests finish (at most
      ``graceful_timeout`` seconds, None = no limit), then the lifespan shutdown.
    * ``log_config`` is passed to uvicorn (None: uvicorn leaves logging alone).
    * ``header_timeout`` / ``body_timeout``: the read timeouts in seconds (None: none).
    """
    if not listeners:
        raise ValueError("serve() needs at least one listener")
    protocol = tls_aware_protocol(http)
    options: dict[str, Any] = {
        "protocol": protocol,
        "log_config": log_config,
        "graceful_timeout": graceful_timeout,
        "server_header": server_header,
        "backlog": backlog,
        "header_timeout": header_timeout,
        "body_timeout": body_timeout,
    }

    sockets: list[socket.socket] = []
    try:
        for listener in listeners:
            sockets.append(_bind(listener, backlog))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise

    app_lifespan: LifespanOn | None = None
    try:
        state: dict[str, Any] = {}
        if lifespan != "off":
            app_lifespan = LifespanOn(_config(app, None, lifespan=lifespan, **options))
            await app_lifespan.startup()
            if app_lifespan.should_exit:
                raise ServerStartupError("application startup failed, see the log")
            state = app_lifespan.state

        servers: list[_Server] = []
        for listener in listeners:
            config = _config(app, listener, lifespan="off", **options)
            config.lifespan_class = lambda _config, state=state: _SharedLifespan(state)
            servers.append(_Server(config, listener))

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(
                        server.serve(sockets=[sock]), name=f"listener-{server.listener.name}"
                    )
                    for server, sock in zip(servers, sockets, strict=True)
                ]
                try:
                    await _run(servers, tasks, on_ready, shutdown)
                finally:
                    for server in servers:
                        server.should_exit = True
                    await asyncio.wait(tasks)
        except BaseExceptionGroup as group_error:
            distinct = {id(exc): exc for exc in group_error.exceptions}
            if len(distinct) == 1:
                raise next(iter(distinct.values())) from None
            raise
    finally:
        for sock in sockets:
            sock.close()
        if app_lifespan is not None and not app_lifespan.should_exit:
            await app_lifespan.shutdown()


def _stopped(servers: list[_Server], tasks: list[asyncio.Task[None]]) -> list[str]:
    return [s.listener.name for s, task in zip(servers, tasks, strict=True) if task.done()]


async def _run(
    servers: list[_Server],
    tasks: list[asyncio.Task[None]],
    on_ready: Callable[[], Any] | None,
    shutdown: asyncio.Event | None,
) -> None:
    ready = asyncio.ensure_future(asyncio.gather(*(server.ready.wait() for server in servers)))
    try:
        waited: list[asyncio.Future[Any]] = [ready, *tasks]
        await asyncio.wait(waited, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not ready.done():
            ready.cancel()
    if not ready.done() or ready.cancelled():
        if any(task.done() and not task.cancelled() and task.exception() for task in tasks):
            return  # the task group raises that error
        stopped = _stopped(servers, tasks)
        raise ServerStartupError(f"listener(s) {', '.join(stopped)} stopped during startup")
    for server in servers:
        logger.info("Listening on %s (%s)", server.listener.url, server.listener.name)
    if on_ready is not None:
        await _maybe_await(on_ready())

    stop = asyncio.ensure_future(shutdown.wait()) if shutdown is not None else None
    try:
        waiters: list[asyncio.Future[Any]] = [*tasks]
        if stop is not None:
            waiters.append(stop)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if stop is not None and not stop.done():
            stop.cancel()
    if shutdown is None or not shutdown.is_set():
        stopped = _stopped(servers, tasks)
        logger.warning("listener(s) %s stopped; stopping every listener", ", ".join(stopped))
