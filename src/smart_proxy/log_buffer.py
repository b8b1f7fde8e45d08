"""The in-memory log buffer behind ``GET /logs`` (§9).

:class:`LogBuffer` is a :class:`logging.Handler` (attach it to the root logger). It keeps:

* a main ring of the last ``size`` records (``log_buffer``) at or above its level;
* a tail ring of ``tail_size`` records (``log_buffer_errors``): records of ERROR or worse that
  were evicted from the main ring, so errors survive a burst of ordinary lines.

Each entry is ``{"timestamp": <UTC epoch float, set on insert>, "level": "INFO", "message": ...,
"request_id": <first 8 characters>, "backtrace": ...}`` (``request_id`` and ``backtrace`` only
when present). Messages are masked by :class:`smart_proxy.log.RedactingFilter` and made valid
UTF-8 (invalid characters become ``?``).

:meth:`LogBuffer.report` builds the ``/logs`` document; the ``failed_modules`` map comes from the
host (plugin initialization), not from the log records.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from smart_proxy.log import RedactingFilter, parse_level, request_id, ruby_level_name

TAIL_LEVEL = logging.ERROR
RUBY_SEVERITY_ERROR = 3  # Ruby Logger::ERROR, reported as ``level_tail``


def _utf8(text: str) -> str:
    return text.encode("utf-8", "replace").decode("utf-8")


class LogBuffer(logging.Handler):
    """Bounded ring of recent log records plus a tail ring of evicted errors."""

    def __init__(
        self, size: int = 2000, tail_size: int = 1000, level: int | str = logging.INFO
    ) -> None:
        super().__init__(parse_level(level))
        if size < 0 or tail_size < 0:
            raise ValueError("log buffer sizes must not be negative")
        self.size = size
        self.tail_size = tail_size
        self._main: deque[dict[str, Any]] = deque()
        self._tail: deque[dict[str, Any]] = deque(maxlen=tail_size)
        self._entries_lock = threading.Lock()
        self.addFilter(RedactingFilter())

    # ---- recording ------------------------------------------------------------------------------

    def entry(self, record: logging.LogRecord) -> dict[str, Any]:
        """The buffer entry of ``record`` (timestamped now)."""
        try:
            message = record.getMessage()
        except Exception as exc:  # noqa: BLE001 - a broken format string: whatever % or str raise
            message = f"{record.msg!r} (unformattable: {exc})"
        entry: dict[str, Any] = {
            "timestamp": time.time(),
            "level": ruby_level_name(record.levelno),
            "message": _utf8(message),
        }
        rid = getattr(record, "request_id", None) or request_id.get()
        if rid:
            entry["request_id"] = str(rid)[:8]
        backtrace = record.exc_text
        if not backtrace and record.exc_info and record.exc_info[0] is not None:
            backtrace = logging.Formatter().formatException(record.exc_info)
        if backtrace:
            entry["backtrace"] = _utf8(backtrace)
        entry["_levelno"] = record.levelno
        return entry

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.push(self.entry(record))
        except Exception:  # noqa: BLE001 - logging's contract: emit() never raises
            self.handleError(record)

    def push(self, entry: dict[str, Any]) -> None:
        """Add an entry, evicting the oldest one (into the tail ring if it is an error)."""
        with self._entries_lock:
            self._main.append(entry)
            while len(self._main) > self.size:
                evicted = self._main.popleft()
                if evicted.get("_levelno", 0) >= TAIL_LEVEL and self.tail_size > 0:
                    self._tail.append(evicted)

    def clear(self) -> None:
        with self._entries_lock:
            self._main.clear()
            self._tail.clear()

    # ---- reading --------------------------------------------------------------------------------

    def entries(self, from_timestamp: float = 0.0) -> list[dict[str, Any]]:
        """Entries with ``timestamp >= from_timestamp`` (0: all), tail ring first, oldest first."""
        with self._entries_lock:
            records = [*self._tail, *self._main]
        return [
            {key: value for key, value in entry.items() if not key.startswith("_")}
            for entry in records
            if not from_timestamp or entry["timestamp"] >= from_timestamp
        ]

    def info(self, failed_modules: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The ``info`` part of ``/logs`` (``level`` is always null, as in the original)."""
        return {
            "size": self.size,
            "tail_size": self.tail_size,
            "level": None,
            "level_tail": RUBY_SEVERITY_ERROR,
            "failed_modules": dict(failed_modules or {}),
        }

    def report(
        self, from_timestamp: float = 0.0, failed_modules: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """The whole ``GET /logs`` document."""
        return {"info": self.info(failed_modules), "logs": self.entries(from_timestamp)}
