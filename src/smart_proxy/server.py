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

:func:`serve` runs one uvicorn server per :class:`Listener` in the running event loop. uvicorn's
signal handlers, logging configuration, access log and proxy-header rewriting are all off: the
caller owns signals and logging, and our middleware logs requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from uvicorn.lifespan.on import LifespanOn

from smart_proxy.tls import ClientCertificate, peer_certificate

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HttpImplementation = Literal["auto", "httptools", "h11"]

TLS_EXTENSION = "tls"
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
    """uvicorn's HTTP protocol class (as uvicorn would pick it) passing TLS details on."""
    base = _base_protocol(http)
    protocol = _PROTOCOLS.get(base)
    if protocol is None:

        def connection_made(self: Any, transport: asyncio.BaseTransport) -> None:
            base.connection_made(self, transport)  # type: ignore[arg-type]
            tls = _transport_tls(transport)
            if tls is not None:
                self.app = _WithTLS(self.app, tls)

        protocol = type(f"TLSAware{base.__name__}", (base,), {"connection_made": connection_made})
        _PROTOCOLS[base] = protocol
    return protocol


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
        await super().startup(sockets=sockets)
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
        await asyncio.wait([ready, *tasks], return_when=asyncio.FIRST_COMPLETED)
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
