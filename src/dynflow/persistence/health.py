"""Can the database be used? Which errors say it cannot, and the state they are reported in.

:func:`store_failure_cause` recognises the errors that mean the database cannot be reached or
written (PostgreSQL down or restarting, a connection cut, the SQLite disk full or unwritable)
and turns them into a one-line cause; errors of the data (a constraint, a bad statement) are
not store failures.

:class:`StoreHealth` (one per :class:`~dynflow.persistence.store.Store`) records the current
failure. The writer reports every failed and every committed transaction to it, the HTTP layer
the store failures its requests ran into (``World.report_store_failure``). It logs one ERROR
line when the database stops working (or fails for another cause), nothing for the repeats, and
one INFO line at the first successful write afterwards, which clears the failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import sqlite3
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc as sa_exc

from ..errors import DynflowError

log = logging.getLogger("dynflow.persistence")

_DRIVER_MODULES = ("sqlalchemy", "asyncpg", "aiosqlite", "sqlite3", "dynflow.persistence")
_DATA_ERRORS = (sa_exc.IntegrityError, sa_exc.DataError, sa_exc.ProgrammingError)


@dataclass(frozen=True)
class StoreFailure:
    """The database's current failure: its cause (one line) and since when (epoch seconds)."""

    cause: str
    since: float


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _raised_by_driver(exc: BaseException) -> bool:
    for frame, _line in traceback.walk_tb(exc.__traceback__):
        name = str(frame.f_globals.get("__name__", ""))
        if name.startswith(_DRIVER_MODULES):
            return True
    return False


def store_failure_cause(exc: BaseException) -> str | None:
    """A one-line cause when ``exc`` says the database cannot be used, else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StoreUnavailable):
            return current.cause
        if isinstance(current, sa_exc.DBAPIError):
            if isinstance(current, _DATA_ERRORS) and not current.connection_invalidated:
                return None
            orig = current.orig if current.orig is not None else current
            return f"{type(orig).__name__}: {_first_line(orig)}"
        if isinstance(current, sa_exc.DisconnectionError | sa_exc.TimeoutError):
            return f"{type(current).__name__}: {_first_line(current)}"
        if isinstance(current, sqlite3.OperationalError | sqlite3.InterfaceError):
            return f"{type(current).__name__}: {_first_line(current)}"
        if isinstance(current, OSError | TimeoutError) and _raised_by_driver(current):
            return f"{type(current).__name__}: {_first_line(current)}"
        if type(current).__module__.startswith("asyncpg") and isinstance(current, Exception):
            if "Integrity" in type(current).__name__ or "Syntax" in type(current).__name__:
                return None
            return f"{type(current).__name__}: {_first_line(current)}"
        current = current.__cause__ or current.__context__
    return None


class StoreHealth:
    """The database's state as the last writes and requests saw it."""

    def __init__(self, name: str = "the database") -> None:
        self.name = name
        self.failure: StoreFailure | None = None
        self._reported: set[str] = set()  # the causes logged during this outage

    def failed(self, cause: str, where: str = "") -> None:
        """A write or a request failed for ``cause``: ERROR once per outage and cause (the
        connections of a pool cut at once alternate "connection was closed" with "Connect call
        failed": each is logged once, the latest is the one reported)."""
        previous = self.failure
        self.failure = StoreFailure(cause, previous.since if previous else time.time())
        if cause in self._reported:
            log.debug("%s still cannot be used%s: %s", self.name, where and f" ({where})", cause)
            return
        self._reported.add(cause)
        log.error(
            "%s cannot be used (%s); requests that must be stored are answered 503 until it "
            "works again",
            self.name,
            cause,
        )

    def ok(self) -> None:
        """A transaction was committed: the database works (INFO once after a failure)."""
        previous = self.failure
        if previous is None:
            return
        self.failure = None
        self._reported.clear()
        log.info(
            "%s works again (it failed for %.0f s: %s)",
            self.name,
            time.time() - previous.since,
            previous.cause,
        )


class StoreUnavailable(DynflowError):
    """A request's read or write was refused at once: the database cannot be used now
    (``cause``, one line). Only raised inside :func:`impatient`; the engine's own work waits
    for the database instead (see :mod:`dynflow.persistence.writer`)."""

    def __init__(self, cause: str) -> None:
        super().__init__(f"the database cannot be used now ({cause})")
        self.cause = cause


_IMPATIENT: contextvars.ContextVar[asyncio.Task[Any] | None] = contextvars.ContextVar(
    "dynflow_store_impatient", default=None
)


@contextlib.contextmanager
def impatient() -> Iterator[None]:
    """Inside the block, the current task's store operations do not wait out an outage of
    the database: they raise :class:`StoreUnavailable` (the HTTP layer answers 503). Tasks the
    block starts (a plan's run, spawned children) stay patient: only this task is marked."""
    token = _IMPATIENT.set(asyncio.current_task())
    try:
        yield
    finally:
        _IMPATIENT.reset(token)


def is_impatient() -> bool:
    """Whether the running task is inside :func:`impatient`."""
    task = _IMPATIENT.get()
    return task is not None and task is asyncio.current_task()
