"""Logging: destinations, the Foreman-style line format, secret masking, request logging.

* :func:`setup_logging` sends every record of the root logger to one destination: a file
  (appended), ``STDOUT``, ``SYSLOG`` (facility LOCAL5) or ``JOURNAL``/``JOURNALD`` (native
  journal protocol). A file that cannot be opened and a missing syslog/journal socket fall back
  to stdout with a warning. It may be called again (e.g. once the settings are known); the
  previous destination is replaced.
* Lines follow the smart-proxy patterns, ``%d %.8X{request} [%.1l] %m`` for files::

      2026-11-26T10:00:00 1a2b3c4d [I] Started GET /dynflow/tasks/count

  (Ruby level names: DEBUG, INFO, WARN, ERROR, FATAL; the request id column is blank outside
  a request.)
* Every line goes through :func:`smart_proxy.redact.redact_text` before it is written.
* :func:`reopen_logs` / :func:`install_sigusr1`: reopen log files after logrotate moved them.
* :class:`RequestLogMiddleware`: request ids, "Started"/"Finished" lines, 500 on crashes.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import json
import logging
import logging.handlers
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from smart_proxy.redact import redact, redact_text
from smart_proxy.server import raw_connection_taken

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
remote_ip: contextvars.ContextVar[str | None] = contextvars.ContextVar("remote_ip", default=None)

DEFAULT_FILE_PATTERN = "%d %.8X{request} [%.1l] %m"
DEFAULT_SYSTEM_PATTERN = "%.8X{request} [%.1l] %m"
DEFAULT_NAME = "smart-proxy-dynflow-core"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_SOCKET = "/dev/log"
STDOUT = "STDOUT"
SYSLOG = "SYSLOG"
JOURNAL_NAMES = ("JOURNAL", "JOURNALD")

UNKNOWN = logging.CRITICAL + 10  # Ruby's UNKNOWN: above FATAL
LEVELS: dict[str, int] = {
    "DEBUG": logging.DEBUG,
    "INFO": logging.INFO,
    "WARN": logging.WARNING,
    "WARNING": logging.WARNING,
    "ERROR": logging.ERROR,
    "FATAL": logging.CRITICAL,
    "UNKNOWN": UNKNOWN,
}

_internal = logging.getLogger(__name__)


def parse_level(level: str | int) -> int:
    """Python level for a Ruby level name (``UNKNOWN``, ``FATAL``, ``ERROR``, ``WARN``, ``INFO``,
    ``DEBUG``; case-insensitive; ``WARNING`` accepted). Raises ValueError otherwise."""
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    name = str(level).strip().upper()
    if name not in LEVELS:
        raise ValueError(
            f"invalid log_level {level!r}: expected one of UNKNOWN, FATAL, ERROR, WARN, INFO, DEBUG"
        )
    return LEVELS[name]


def ruby_level_name(levelno: int) -> str:
    if levelno >= UNKNOWN:
        return "UNKNOWN"
    if levelno >= logging.CRITICAL:
        return "FATAL"
    if levelno >= logging.ERROR:
        return "ERROR"
    if levelno >= logging.WARNING:
        return "WARN"
    if levelno >= logging.INFO:
        return "INFO"
    return "DEBUG"


def current_request_id() -> str | None:
    return request_id.get()


# ---- formatting ---------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"%(?P<left>-)?(?P<width>\d+)?(?:\.(?P<precision>\d+))?(?P<conv>[a-zA-Z%])(?:\{(?P<arg>[^}]*)\})?"
)
_CONTEXT_ALIASES = {"request": "request_id", "remote_ip": "remote_ip", "session": "session_id"}


class PatternFormatter(logging.Formatter):
    """Formats records with a Ruby ``logging`` style pattern.

    Supported: ``%d`` (date, ``%d{strftime}`` for another format), ``%l`` (level name),
    ``%m`` (message), ``%c`` (logger), ``%p`` (pid), ``%t``/``%T`` (thread), ``%F``/``%L``/``%M``
    (file, line, function), ``%X{key}`` (``request``, ``remote_ip``), ``%%``; with printf-like
    width and precision (``%.8X{request}``, ``%-5l``). A ``%X`` with a precision and no width is
    padded to the precision, so the column stays aligned when there is no request id.
    Tracebacks follow the line.
    """

    def __init__(self, pattern: str = DEFAULT_FILE_PATTERN) -> None:
        super().__init__()
        self.pattern = pattern
        self._parts: list[str | tuple[str, str | None, bool, int | None, int | None]] = []
        position = 0
        for match in _TOKEN.finditer(pattern):
            if match.start() > position:
                self._parts.append(pattern[position : match.start()])
            conv = match.group("conv")
            if conv == "%":
                self._parts.append("%")
            else:
                width = int(match.group("width")) if match.group("width") else None
                precision = int(match.group("precision")) if match.group("precision") else None
                self._parts.append(
                    (conv, match.group("arg"), bool(match.group("left")), width, precision)
                )
            position = match.end()
        if position < len(pattern):
            self._parts.append(pattern[position:])

    def _value(self, conv: str, arg: str | None, record: logging.LogRecord) -> str:
        if conv == "d":
            stamp = dt.datetime.fromtimestamp(record.created)
            return stamp.strftime(arg or "%Y-%m-%dT%H:%M:%S")
        if conv == "l":
            return ruby_level_name(record.levelno)
        if conv == "m":
            return record.getMessage()
        if conv == "X":
            key = _CONTEXT_ALIASES.get(arg or "", arg or "")
            value = getattr(record, key, None)
            if value is None and key == "request_id":
                value = request_id.get()
            elif value is None and key == "remote_ip":
                value = remote_ip.get()
            return "" if value is None else str(value)
        if conv == "c":
            return record.name
        if conv == "p":
            return str(record.process)
        if conv in ("t", "T"):
            return str(record.threadName)
        if conv == "F":
            return record.pathname
        if conv == "L":
            return str(record.lineno)
        if conv == "M":
            return record.funcName
        return "%" + conv

    def format(self, record: logging.LogRecord) -> str:
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
                continue
            conv, arg, left, width, precision = part
            value = self._value(conv, arg, record)
            if precision is not None:
                value = value[:precision]
            if width is None and precision is not None and conv == "X":
                width, left = precision, True
            if width is not None:
                value = value.ljust(width) if left else value.rjust(width)
            out.append(value)
        line = "".join(out)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class RedactingFilter(logging.Filter):
    """Masks secrets in the message (and traceback) of every record; adds ``request_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "redacted", False):
            return True
        try:
            message = record.getMessage()
        # A filter must not raise (the caller's log call would); a broken format string is
        # the handler's to report.
        except Exception:  # noqa: BLE001 - whatever str(msg) or the % formatting raise
            return True
        record.msg = redact_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        if not hasattr(record, "remote_ip"):
            record.remote_ip = remote_ip.get()
        record.redacted = True  # a second filter on the way (logger and handler) leaves it
        return True


# ---- handlers -----------------------------------------------------------------------------------


def _reopen(handler: logging.FileHandler) -> None:
    """Open the handler's file anew (after logrotate renamed it) and close the old stream."""
    handler.acquire()
    try:
        # The file as FileHandler opens it (its private _open), always appending: a reopen
        # (SIGUSR1 without a rotation too) never truncates.
        new_stream = open(
            handler.baseFilename, "a", encoding=handler.encoding, errors=handler.errors
        )
        old_stream, handler.stream = handler.stream, new_stream
        if old_stream is not None:
            try:
                old_stream.flush()
            finally:
                old_stream.close()
    finally:
        handler.release()


class ReopenableFileHandler(logging.FileHandler):
    """A file handler whose file can be reopened after logrotate renamed it."""

    def reopen(self) -> None:
        _reopen(self)


ROLLING_AGES = ("daily", "weekly", "monthly")


def rolling_age_seconds(age: str | int | None) -> int | None:
    """``file_rolling_age`` as seconds for a count, or None for a calendar period / nothing.

    Raises ValueError for anything but a positive number of seconds or daily/weekly/monthly.
    """
    if age is None or (isinstance(age, str) and age.strip().lower() in ROLLING_AGES):
        return None
    if isinstance(age, bool):
        raise ValueError(f"file_rolling_age must be seconds or {'/'.join(ROLLING_AGES)}")
    try:
        seconds = int(str(age).strip())
    except ValueError:
        raise ValueError(
            f"file_rolling_age must be a number of seconds or one of {', '.join(ROLLING_AGES)}, "
            f"got {age!r}"
        ) from None
    if seconds <= 0:
        raise ValueError(f"file_rolling_age must be positive, got {age!r}")
    return seconds


def rolling_age_setting(age: Any) -> Any:
    """``file_rolling_age`` checked (ValueError) and normalised (``Daily`` → ``daily``)."""
    rolling_age_seconds(age)
    return age.strip().lower() if isinstance(age, str) else age


def next_rollover(opened: float, age: str | int | None) -> float | None:
    """When a log file opened at ``opened`` is due for rotation by age (local calendar)."""
    seconds = rolling_age_seconds(age)
    if seconds is not None:
        return opened + seconds
    if age is None:
        return None
    start = dt.datetime.fromtimestamp(opened).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    period = str(age).strip().lower()
    if period == "daily":
        due = start + dt.timedelta(days=1)
    elif period == "weekly":  # the next Monday
        due = start + dt.timedelta(days=7 - start.weekday())
    else:
        due = (start.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
    return due.timestamp()


class ReopenableRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """Rotating variant (``file_rolling_size`` > 0): by size, and by age (``file_rolling_age``:
    seconds or daily/weekly/monthly, counted from when the file was opened); reopenable."""

    def reopen(self) -> None:
        _reopen(self)

    def __init__(self, *args: Any, age: str | int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.age = age
        self.rollover_at = next_rollover(self._opened_at(), age)

    def _opened_at(self) -> float:
        try:
            # An existing log file counts from its last write: it was started back then.
            st = os.stat(self.baseFilename)
            return st.st_mtime if st.st_size else time.time()
        except OSError:
            return time.time()

    def shouldRollover(self, record: logging.LogRecord) -> bool:  # stdlib name
        if self.rollover_at is not None and time.time() >= self.rollover_at:
            return True
        return bool(super().shouldRollover(record))

    def doRollover(self) -> None:  # stdlib name
        super().doRollover()
        self.rollover_at = next_rollover(time.time(), self.age)


_PRIORITIES = ((UNKNOWN, 2), (logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4))


class JournalHandler(logging.Handler):
    """Writes records to systemd-journald with its native datagram protocol."""

    def __init__(self, identifier: str = DEFAULT_NAME, socket_path: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.identifier = identifier
        self.socket_path = socket_path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.connect(socket_path)
        except OSError:
            self._sock.close()
            raise

    @staticmethod
    def _field(name: str, value: str) -> bytes:
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        return name.encode() + b"=" + data + b"\n"

    def _priority(self, levelno: int) -> int:
        for threshold, priority in _PRIORITIES:
            if levelno >= threshold:
                return priority
        return 6 if levelno >= logging.INFO else 7

    def _payload(self, record: logging.LogRecord, message: str) -> bytes:
        fields = {
            "MESSAGE": message,
            "PRIORITY": str(self._priority(record.levelno)),
            "SYSLOG_IDENTIFIER": self.identifier,
            "SYSLOG_FACILITY": str(logging.handlers.SysLogHandler.LOG_LOCAL5),
            "LOGGER": record.name,
            "CODE_FILE": record.pathname,
            "CODE_LINE": str(record.lineno),
            "CODE_FUNC": record.funcName,
        }
        rid = getattr(record, "request_id", None)
        if rid:
            fields["REQUEST_ID"] = str(rid)
        return b"".join(self._field(name, value) for name, value in fields.items())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            try:
                self._sock.send(self._payload(record, message))
            except OSError as exc:
                if exc.errno != 90:  # EMSGSIZE: retry once with a shortened message
                    raise
                short = message[:32000] + " [truncated]"
                self._sock.send(self._payload(record, short))
        except Exception:  # noqa: BLE001 - logging's contract: emit() never raises
            self.handleError(record)

    def close(self) -> None:
        self.acquire()
        try:
            self._sock.close()
        finally:
            self.release()
        super().close()


# ---- setup --------------------------------------------------------------------------------------

_lock = threading.Lock()
_installed: logging.Handler | None = None
_destination = STDOUT


def _probe_unix_socket(path: str) -> None:
    """Raise OSError unless a datagram or stream unix socket listens at ``path``."""
    error: OSError | None = None
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(path)
            except OSError as exc:
                error = exc
            else:
                return
    assert error is not None
    raise error


def _stdout_handler(pattern: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(PatternFormatter(pattern))
    return handler


def setup_logging(
    log_file: str = STDOUT,
    level: str | int = "ERROR",
    *,
    file_pattern: str = DEFAULT_FILE_PATTERN,
    system_pattern: str = DEFAULT_SYSTEM_PATTERN,
    name: str = DEFAULT_NAME,
    rolling_size: int = 0,
    rolling_keep: int = 6,
    rolling_age: str | int | None = None,
    journal_socket: str = JOURNAL_SOCKET,
    syslog_socket: str = SYSLOG_SOCKET,
) -> logging.Handler:
    """Send the root logger to ``log_file`` at ``level``; returns the installed handler.

    ``log_file``: a path (appended; rotated when ``rolling_size`` MiB > 0, by size and by
    ``rolling_age``, keeping ``rolling_keep`` files), ``STDOUT``, ``SYSLOG`` or
    ``JOURNAL``/``JOURNALD``.
    Raises ValueError for an unknown ``level``.
    """
    global _installed, _destination
    python_level = parse_level(level)
    destination = (log_file or STDOUT).strip()
    kind = destination.upper()
    warnings: list[str] = []
    handler: logging.Handler

    if kind == STDOUT:
        handler = _stdout_handler(file_pattern)
    elif kind == SYSLOG:
        try:
            _probe_unix_socket(syslog_socket)
            syslog = logging.handlers.SysLogHandler(
                address=syslog_socket, facility=logging.handlers.SysLogHandler.LOG_LOCAL5
            )
        except OSError as exc:
            warnings.append(f"Syslog socket {syslog_socket} is not available ({exc}); using STDOUT")
            handler = _stdout_handler(file_pattern)
        else:
            syslog.ident = f"{name}[{os.getpid()}]: "
            syslog.setFormatter(PatternFormatter(system_pattern))
            handler = syslog
    elif kind in JOURNAL_NAMES:
        try:
            handler = JournalHandler(name, journal_socket)
        except OSError as exc:
            warnings.append(
                f"Journal socket {journal_socket} is not available ({exc}); using STDOUT"
            )
            handler = _stdout_handler(file_pattern)
        else:
            handler.setFormatter(PatternFormatter(system_pattern))
    else:
        path = os.path.expanduser(destination)
        try:
            if rolling_size > 0:
                handler = ReopenableRotatingFileHandler(
                    path,
                    mode="a",
                    maxBytes=rolling_size * 1024 * 1024,
                    backupCount=rolling_keep,
                    encoding="utf-8",
                    age=rolling_age,
                )
            else:
                handler = ReopenableFileHandler(path, mode="a", encoding="utf-8")
        except OSError as exc:
            reason = exc.strerror or str(exc)
            warnings.append(f"Log file {path} cannot be opened ({reason}); using STDOUT")
            handler = _stdout_handler(file_pattern)
        else:
            handler.setFormatter(PatternFormatter(file_pattern))

    handler.addFilter(RedactingFilter())
    handler.setLevel(logging.NOTSET)
    root = logging.getLogger()
    with _lock:
        previous = _installed
        root.addHandler(handler)
        if previous is not None:
            root.removeHandler(previous)
            previous.close()
        _installed = handler
        _destination = destination
    root.setLevel(python_level)
    for warning in warnings:
        _internal.warning("%s", warning)
    return handler


def reset_logging() -> None:
    """Remove the handler installed by :func:`setup_logging` (tests, shutdown)."""
    global _installed
    with _lock:
        if _installed is not None:
            logging.getLogger().removeHandler(_installed)
            _installed.close()
            _installed = None


def reopen_logs() -> int:
    """Reopen the log file (after logrotate); returns how many files were reopened.

    Nothing to do for STDOUT, SYSLOG and JOURNAL.
    """
    handler = _installed
    if not isinstance(handler, ReopenableFileHandler | ReopenableRotatingFileHandler):
        return 0
    try:
        handler.reopen()
    except OSError as exc:
        _internal.error("Could not reopen log file %s: %s", handler.baseFilename, exc)
        return 0
    _internal.info("Reopened log file %s", handler.baseFilename)
    return 1


def install_sigusr1(loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Reopen the log file on SIGUSR1 (``systemctl reload``, logrotate's postrotate)."""
    loop = loop or asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, reopen_logs)


# ---- request logging middleware -----------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REQUEST_ID_OK = re.compile(r"[^A-Za-z0-9._:\-]")
_MAX_REQUEST_ID = 128
_LOGGED_BODY_TYPES = ("application/json", "text/plain", "application/x-www-form-urlencoded")


def _incoming_request_id(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name.lower() == b"x-request-id":
            cleaned = _REQUEST_ID_OK.sub("", value.decode("latin-1"))[:_MAX_REQUEST_ID]
            if cleaned:
                return cleaned
    return uuid.uuid4().hex


def _body_for_log(body: bytes, content_type: str, limit: int) -> str:
    if not body:
        return ""
    if not any(kind in content_type for kind in _LOGGED_BODY_TYPES):
        return "[filtered out]"
    text = body.decode("utf-8", "replace")
    if "json" in content_type:
        try:
            text = json.dumps(redact(json.loads(text)))
        except (ValueError, RecursionError):  # not JSON, or nested too deeply to walk
            text = redact_text(text)
    else:
        text = redact_text(text)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(body)} bytes)"
    return text


class RequestLogMiddleware:
    """Pure ASGI middleware: request id, request/response log lines, 500 instead of a crash.

    A client that goes away before the answer (it disconnected mid-upload, or the listener
    closed it for sending its body too slowly) is one INFO line, without a traceback, and the
    request is logged as finished with "client disconnected", never as a 500.

    The request id comes from ``X-Request-Id`` (sanitised) or is a fresh uuid4 hex; it is set in
    :data:`request_id` for the whole request (so every log line of the request carries it),
    stored in ``scope["state"]["request_id"]`` and returned as the ``X-Request-Id`` response
    header.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        logger: logging.Logger | None = None,
        max_body_log: int = 2000,
    ) -> None:
        self.app = app
        self.logger = logger or logging.getLogger("smart_proxy.request")
        self.max_body_log = max_body_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or [])
        rid = _incoming_request_id(headers)
        client = scope.get("client")
        rid_token = request_id.set(rid)
        ip_token = remote_ip.set(client[0] if client else None)
        state = scope.get("state")
        if state is None:
            state = scope["state"] = {}
        state["request_id"] = rid

        method = scope.get("method", "")
        path = scope.get("path", "")
        query = (scope.get("query_string") or b"").decode("latin-1")
        logger = self.logger
        logger.info("Started %s %s%s", method, path, f" {query}" if query else "")
        debug = logger.isEnabledFor(logging.DEBUG)
        content_type = ""
        if debug:
            shown = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers]
            content_type = dict(shown).get("content-type", "")
            logger.debug("Headers: %s", redact(shown))

        started = time.perf_counter()
        status: int | None = None
        gone = False  # the client disconnected before the response started
        body_parts: list[bytes] = []
        body_size = 0
        rid_header = rid.encode("latin-1")

        async def watching_receive() -> Message:
            nonlocal gone
            message = await receive()
            if message["type"] == "http.disconnect" and status is None:
                gone = True
            return message

        async def logging_receive() -> Message:
            nonlocal body_size
            message = await watching_receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                if chunk and body_size <= self.max_body_log * 4:
                    body_parts.append(chunk)
                body_size += len(chunk)
                if not message.get("more_body", False) and body_size:
                    logger.debug(
                        "Body: %s",
                        _body_for_log(b"".join(body_parts), content_type, self.max_body_log),
                    )
            return message

        async def id_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start" and not gone:
                status = int(message["status"])
                response_headers = list(message.get("headers") or [])
                if not any(k.lower() == b"x-request-id" for k, _ in response_headers):
                    response_headers.append((b"x-request-id", rid_header))
                message["headers"] = response_headers
            await send(message)

        try:
            await self.app(scope, logging_receive if debug else watching_receive, id_send)
        except Exception as exc:
            if gone or type(exc).__name__ == "ClientDisconnect":
                gone = True
                logger.info(
                    "The client went away during %s %s (request %s): nothing was answered",
                    method,
                    path,
                    rid,
                )
                return
            logger.exception("Error processing %s %s (request %s)", method, path, rid)
            if status is None:
                body = json.dumps({"error": f"Internal error, see the log (request {rid})"})
                await id_send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body.encode()})
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            if status is not None:
                outcome: int | str = status
            elif raw_connection_taken(scope):
                outcome = "a raw connection"
            else:
                outcome = "client disconnected" if gone else "no response"
            logger.info("Finished %s %s with %s (%.2f ms)", method, path, outcome, elapsed)
            request_id.reset(rid_token)
            remote_ip.reset(ip_token)
