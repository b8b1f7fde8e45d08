"""The Cockpit web-console session, ``POST /ssh/session`` (§9).

Foreman's ``foreman-cockpit-session`` opens a connection to the proxy (TLS with Foreman's client
certificate) and writes an HTTP/1.1 ``POST /ssh/session`` with ``Connection: upgrade``,
``Upgrade: raw`` and a JSON body (``hostname``, ``ssh_user``, ``ssh_port``, ``ssh_password``,
``ssh_key_passphrase``, ``command``; ``effective_user_password`` is ignored). Then:

1. authorization as for every protected endpoint (trusted hosts + client certificate): a 403;
2. ``Connection`` must equal ``upgrade`` and ``Upgrade`` list ``raw``, else a 400
   "Invalid request: /ssh/session requires connection upgrade to 'raw'";
3. the connection is taken over (the raw takeover of :mod:`smart_proxy.server`): from here on
   nothing is HTTP any more;
4. asyncssh connects to the host as a job would (:func:`.connection.connect`, with
   :class:`.options.ScriptOptions` built from the body and the plugin settings: the proxy key,
   known hosts, the password and key passphrase of the body) and runs ``command`` without a TTY;
5. ``Status: 101``, ``Connection: upgrade``, ``Upgrade: raw`` and an empty line are written
   (no HTTP status line: the client reads them as headers), then bytes are relayed both ways
   (socket → the command's stdin, its stdout → socket) until the command closes its output or
   the client goes away. An end of input from the client becomes the command's end of input.
   The command's stderr and "Process exited with code N." are logged when the session ends.

Errors before the 101: a system or socket error (the host cannot be reached, a bad body) is
``Status: 400`` + ``Connection: close`` + the message; any other (authentication, host key,
...) is ``Status: 500`` with the body "Internal error", the details going to the log (never the
password). Unlike the original, these answers carry a ``Content-Length``, which the client uses
to read the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import asyncssh
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response

from smart_proxy.json_body import JsonBodyError, parse_json
from smart_proxy.server import Receive, Scope, Send, raw_takeover

from .connection import HostUnreachable, connect
from .known_hosts import KnownHosts
from .options import ScriptOptions

log = logging.getLogger("smart_proxy_remote_execution_ssh.cockpit")

INVALID_REQUEST = "Invalid request: /ssh/session requires connection upgrade to 'raw'"
SWITCHING = b"Status: 101\r\nConnection: upgrade\r\nUpgrade: raw\r\n\r\n"
INTERNAL_ERROR = "Internal error"
MAX_BODY = 64 * 1024
"""The largest request body accepted (Foreman's is a few hundred bytes)."""
CHUNK = 64 * 1024
MAX_STDERR = 64 * 1024
"""How much of the command's stderr is kept for the log."""
EXIT_TIMEOUT = 5.0
"""Seconds to wait for the exit status once the command's output is closed (or the client is
gone) before the channel is closed."""
CLOSE_TIMEOUT = 5.0

Authorize = Callable[[Request], Awaitable[Response | None]]
_Streams = tuple[asyncssh.SSHWriter[bytes], asyncssh.SSHReader[bytes], asyncssh.SSHReader[bytes]]


def valid_upgrade(headers: Headers) -> bool:
    """``Connection`` equals ``upgrade`` exactly and ``Upgrade`` lists ``raw`` (§9)."""
    upgrade = headers.get("upgrade", "")
    return headers.get("connection") == "upgrade" and any(
        part.strip() == "raw" for part in upgrade.split(",")
    )


class InvalidSession(ValueError):
    """The body does not describe a session (answered with ``Status: 400``)."""


@dataclass
class SessionRequest:
    """What the body asks for: where to connect and what to run."""

    options: ScriptOptions
    command: str

    @property
    def target(self) -> str:
        options = self.options
        return f"{options.ssh_user}@{options.hostname}:{options.ssh_port}"

    @classmethod
    def parse(cls, body: bytes, settings: Mapping[str, Any]) -> SessionRequest:
        """The body (JSON, as foreman-cockpit-session sends it) merged with the plugin settings."""
        try:
            params = parse_json(body, "body")  # the limits of every JSON body we parse
        except JsonBodyError as exc:
            raise InvalidSession(f"Invalid request: {exc.message}") from None
        if not isinstance(params, dict):
            raise InvalidSession("Invalid request: the body must be a JSON object")
        command = params.get("command")
        if not isinstance(command, str) or not command.strip():
            raise InvalidSession("Invalid request: 'command' is missing")
        job = {
            "hostname": params.get("hostname"),
            "script": "",
            "ssh_user": params.get("ssh_user"),
            "ssh_port": params.get("ssh_port"),
            "secrets": {
                "ssh_password": params.get("ssh_password"),
                "key_passphrase": params.get("ssh_key_passphrase"),
            },
        }
        try:
            options = ScriptOptions.from_input(job, settings)
        except ValueError as exc:
            raise InvalidSession(f"Invalid request: {exc}") from None
        return cls(options, command)


class CockpitSession:
    """The ASGI endpoint of ``POST /ssh/session``.

    ``settings`` gives the plugin's effective settings, ``known_hosts`` the host-key store and
    ``handshakes`` the bound on SSH handshakes under way (shared with the jobs of an in-process
    core), each when a session starts.
    """

    def __init__(
        self,
        authorize: Authorize,
        settings: Callable[[], Mapping[str, Any]],
        known_hosts: Callable[[], KnownHosts],
        handshakes: Callable[[], asyncio.Semaphore | None] = lambda: None,
    ) -> None:
        self.authorize = authorize
        self.settings = settings
        self.known_hosts = known_hosts
        self.handshakes = handshakes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        refusal = await self._refusal(request)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        body = await _read_body(request)
        if body is None:
            await PlainTextResponse("Request body too large", 413)(scope, receive, send)
            return
        takeover = raw_takeover(scope)
        assert takeover is not None  # checked by _refusal
        try:
            reader, writer = takeover.take()
        except ConnectionError:
            log.info("Cockpit session: the client went away before the session started")
            return
        session = _Session(reader, writer, self.handshakes())
        await session.run(body, self.settings(), self.known_hosts())

    async def _refusal(self, request: Request) -> Response | None:
        denied = await self.authorize(request)
        if denied is not None:
            return denied
        if not valid_upgrade(request.headers):
            return PlainTextResponse(INVALID_REQUEST, 400)
        if raw_takeover(request.scope) is None:
            log.error("Cockpit session: this server cannot hand the connection over")
            return PlainTextResponse(f"{INTERNAL_ERROR}: request hijacking not available", 500)
        return None


async def _read_body(request: Request) -> bytes | None:
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return None
    except ClientDisconnect:
        return b""
    return bytes(body)


class _Session:
    """One session on a taken-over connection."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        handshakes: asyncio.Semaphore | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.handshakes = handshakes
        self.target = "?"
        self.conn: asyncssh.SSHClientConnection | None = None
        # Done once the client's connection is closed (not at a mere end of its input). Never
        # cancelled: that would cancel the stream's own close waiter.
        self.client_gone = asyncio.ensure_future(writer.wait_closed())
        self.client_gone.add_done_callback(_retrieve)

    async def run(self, body: bytes, settings: Mapping[str, Any], known_hosts: KnownHosts) -> None:
        try:
            try:
                request = SessionRequest.parse(body, settings)
                self.target = request.target
                log.info("Cockpit session: running %r on %s", request.command, self.target)
                streams = await self._unless_client_gone(self._start(request, known_hosts))
            except Exception as exc:  # noqa: BLE001 - every failure is answered (_fail: 400/500)
                self._fail(exc)
                return
            if streams is None:
                log.info("Cockpit session on %s: the client went away", self.target)
                return
            self.writer.write(SWITCHING)
            ending = await self._relay(*streams)
            lines = [line.strip() for line in ending.splitlines() if line.strip()]
            log.info("Cockpit session on %s ended: %s", self.target, " | ".join(lines))
        finally:
            self.writer.close()
            if self.conn is not None:
                self.conn.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.conn.wait_closed(), CLOSE_TIMEOUT)

    async def _start(self, request: SessionRequest, known_hosts: KnownHosts) -> _Streams:
        """Connect and run the command (no TTY)."""
        self.conn = await connect(
            request.options, known_hosts, logger=log, handshakes=self.handshakes
        )
        return await self.conn.open_session(request.command, encoding=None, request_pty=False)

    async def _unless_client_gone(self, work: Coroutine[Any, Any, _Streams]) -> _Streams | None:
        """``work``'s result, or None when the client went away first (``work`` is cancelled):
        a client giving up, or the proxy stopping, does not wait for a connection timeout."""
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait([task, self.client_gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return None if task.cancelled() else task.result()

    def _fail(self, exc: Exception) -> None:
        """Answer an error before the session started (§9)."""
        if isinstance(exc, InvalidSession):
            log.error("Cockpit session refused: %s", exc)
            self._status(400, str(exc))
        elif isinstance(exc, HostUnreachable | OSError):
            message = str(exc) or type(exc).__name__
            log.error("Cockpit session on %s failed: %s", self.target, message)
            self._status(400, message)
        else:
            log.error(
                "Cockpit session on %s failed: %s",
                self.target,
                str(exc) or type(exc).__name__,
                exc_info=exc if log.isEnabledFor(logging.DEBUG) else None,
            )
            self._status(500, INTERNAL_ERROR)

    def _status(self, code: int, message: str) -> None:
        payload = message.encode()
        self.writer.write(
            b"Status: %d\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
            % (code, len(payload), payload)
        )

    async def _relay(
        self,
        stdin: asyncssh.SSHWriter[bytes],
        stdout: asyncssh.SSHReader[bytes],
        stderr: asyncssh.SSHReader[bytes],
    ) -> str:
        """Relay until the command closes its output or the client goes away; returns the
        collected stderr and how the command ended."""
        channel = stdin.channel
        if not isinstance(channel, asyncssh.SSHClientChannel):  # open_session's streams
            raise TypeError(f"expected a client session's channel, got {type(channel).__name__}")
        errors = bytearray()

        async def upstream() -> None:  # client → command
            try:
                while data := await self.reader.read(CHUNK):
                    stdin.write(data)
                    await stdin.drain()
                stdin.write_eof()
            except (OSError, asyncssh.Error):
                pass  # the client's connection broke, or the channel is closed

        async def downstream() -> None:  # command → client
            while data := await stdout.read(CHUNK):
                self.writer.write(data)
                await self.writer.drain()

        async def collect() -> None:
            while data := await stderr.read(CHUNK):
                errors.extend(data[: MAX_STDERR - len(errors)])

        tasks = [
            asyncio.ensure_future(upstream()),
            asyncio.ensure_future(downstream()),
            asyncio.ensure_future(collect()),
        ]
        down, gone = tasks[1], self.client_gone
        failure: BaseException | None = None
        try:
            await asyncio.wait([down, gone], return_when=asyncio.FIRST_COMPLETED)
            failure = down.exception() if down.done() else None
            if gone.done() or failure is not None:
                channel.close()  # the client went away, or the output could not be relayed
            try:
                await asyncio.wait_for(channel.wait_closed(), EXIT_TIMEOUT)
            except TimeoutError:  # the output is closed, but the command goes on
                channel.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(channel.wait_closed(), CLOSE_TIMEOUT)
            # What the command wrote last may still be on its way to the client.
            await asyncio.wait([down, gone], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        text = errors.decode(errors="replace") + _exit_text(channel)
        if failure is not None:
            text += f"Relay stopped: {failure or type(failure).__name__}\r\n"
        return text


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _exit_text(channel: asyncssh.SSHClientChannel[bytes]) -> str:
    status = channel.get_exit_status()
    if status is not None and status >= 0:
        return f"Process exited with code {status}.\r\n"
    signal = channel.get_exit_signal()
    if signal is not None:
        return f"Process was terminated with signal {signal[0]}.\r\n"
    return "the connection closed before the command ended.\r\n"
