"""Group commit: many small writes from concurrent plans share one transaction.

Every caller hands over a ``Write`` (statements touching one resource, usually one execution
plan) and awaits its commit. The writer takes whatever is queued, orders the statements so that
those of one resource keep their order, folds equal statements of different resources into one
``executemany``, and commits once. A *guard* statement (an optimistic ``UPDATE ... WHERE state
IN (...)`` or an ``INSERT ... ON CONFLICT DO NOTHING`` claim) must touch a row; if it does not,
its whole write is left out (what of it already ran is rolled back and the batch applied again
without it) and the caller learns it lost the race: a write is all or nothing.

Every commit and every failed write is reported to the store's
:class:`~dynflow.persistence.health.StoreHealth`: a database that cannot be written is logged
once (ERROR), not once per write.

**An outage is waited out.** When a batch fails because the database cannot be used (PostgreSQL
restarting, a connection cut, the SQLite disk full: ``store_failure_cause``), its writes are not
failed: the writer opens a new connection and retries the batch (back-off from
:data:`RETRY_FIRST` to :data:`RETRY_MAX` seconds) until it commits, and the writes queued behind
it follow in order. So the engine's plans pause during an outage and go on afterwards, their
memory and the database never parted (failing those writes used to fail the steps "in the
engine" and leave their plans stuck). Only a write made inside
:func:`~dynflow.persistence.health.impatient` (a request, which can be answered 503) is refused
with :class:`~dynflow.persistence.health.StoreUnavailable` instead, at once while a retried
batch is waiting. A stopping world bounds the wait (:meth:`Writer.stop_waiting_after`: after
its deadline every write is impatient, so a stop during an outage ends), and closing the writer
during an outage refuses what is still waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .health import StoreHealth, StoreUnavailable, is_impatient, store_failure_cause

log = logging.getLogger("dynflow.persistence")

RETRY_FIRST = 0.05
"""Seconds before the first retry of a batch the database could not take (doubling)."""
RETRY_MAX = 2.0
"""The longest wait between two retries: how late a database that is back is noticed."""


class Stmt:
    __slots__ = ("sql", "params", "guard")

    def __init__(self, sql: Any, params: dict[str, Any], guard: bool = False) -> None:
        self.sql = sql
        self.params = params
        self.guard = guard


class Write:
    __slots__ = ("resource", "stmts", "future", "failed", "patient")

    def __init__(self, resource: str, stmts: Sequence[Stmt]) -> None:
        self.resource = resource
        self.stmts = list(stmts)
        self.future: asyncio.Future[bool] | None = None
        self.failed = False
        self.patient = True  # waits out an outage of the database (see the module doc)


class _Group:
    __slots__ = ("sql", "guard", "items")

    def __init__(self, sql: Any, guard: bool) -> None:
        self.sql = sql
        self.guard = guard
        self.items: list[tuple[dict[str, Any], Write]] = []


def schedule(writes: Sequence[Write]) -> list[_Group]:
    """Order the statements of a batch into groups of equal statements (see module doc)."""
    groups: list[_Group] = []
    last_of_resource: dict[str, int] = {}
    last_of_key: dict[tuple[int, bool], int] = {}
    for write in writes:
        for stmt in write.stmts:
            key = (id(stmt.sql), stmt.guard)
            floor = last_of_resource.get(write.resource, -1)
            index = last_of_key.get(key, -1)
            if index < 0 or index < floor:
                groups.append(_Group(stmt.sql, stmt.guard))
                index = len(groups) - 1
                last_of_key[key] = index
            groups[index].items.append((stmt.params, write))
            last_of_resource[write.resource] = index
    return groups


class Writer:
    def __init__(
        self,
        engine: AsyncEngine,
        max_batch: int = 2000,
        lock: asyncio.Lock | None = None,
        health: StoreHealth | None = None,
    ) -> None:
        self.engine = engine
        self.health = health or StoreHealth()
        self.lock = lock
        self.max_batch = max_batch
        self.transactions = 0
        self.statements = 0
        self._queue: list[Write] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: AsyncConnection | None = None
        self._closing = False
        self._closed = asyncio.Event()  # set by close(): cuts a retry's wait short
        self._patience_until: float | None = None  # monotonic; see stop_waiting_after()
        self.stalled: str | None = None
        """The cause while a batch waits for the database to work again, else None."""

    async def start(self) -> None:
        self._conn = await self.engine.connect()
        self._task = asyncio.create_task(self._loop(), name="dynflow-writer")

    @property
    def closing(self) -> bool:
        return self._closing

    def stop_waiting_after(self, seconds: float) -> None:
        """Wait out an outage for ``seconds`` more at most: then every write (and every read
        of :meth:`~dynflow.persistence.store.Store.connect`) is refused as an impatient one. A
        stopping world calls it, so that a stop during an outage ends; what was not written is
        what a crash would have lost, and recovery at the next start deals with it."""
        deadline = time.monotonic() + seconds
        if self._patience_until is None or deadline < self._patience_until:
            self._patience_until = deadline
        self._wakeup.set()

    @property
    def patience_over(self) -> bool:
        """True when an outage is no longer waited out (closing, or past the deadline)."""
        if self._closing:
            return True
        return self._patience_until is not None and time.monotonic() >= self._patience_until

    def _retry_wait(self, delay: float) -> float:
        if self._patience_until is None:
            return delay
        return max(0.0, min(delay, self._patience_until - time.monotonic()))

    async def close(self) -> None:
        self._closing = True
        self._closed.set()
        self._wakeup.set()
        if self._task is not None and not self._task.done():
            await self._task
        if self._conn is not None:
            try:
                await self._conn.close()
            except Exception as exc:  # noqa: BLE001 - a connection the outage cut
                log.debug("closing the writer's connection failed: %s", exc)

    async def abandon(self) -> None:
        """Stop at once, committing nothing more (a crash, see ``World.abandon``)."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            with contextlib.suppress(Exception):  # the cancelled commit may have broken it
                await self._conn.close()

    async def write(self, write: Write) -> bool:
        """Queue ``write`` and wait until it is committed; False if one of its guards failed."""
        if self._closing:
            raise RuntimeError("the store is closed")
        write.patient = not is_impatient()
        if (not write.patient or self.patience_over) and self.stalled is not None:
            raise StoreUnavailable(self.stalled)
        write.future = asyncio.get_running_loop().create_future()
        self._queue.append(write)
        self._wakeup.set()
        return await write.future

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                await self._commit_patiently(batch)
            if self._closing and not self._queue:
                return

    async def _commit_patiently(self, batch: list[Write]) -> None:
        """Commit ``batch``; while the database cannot be used, refuse its impatient writes
        and retry the others (see the module doc)."""
        delay = RETRY_FIRST
        while True:
            cause = await self._commit(batch)
            if cause is None:
                self.stalled = None
                return
            waiting = []
            for write in batch:
                if write.future is None or write.future.done():
                    continue
                if write.patient and not self.patience_over:
                    write.failed = False
                    waiting.append(write)
                elif not write.future.done():
                    write.future.set_exception(StoreUnavailable(cause))
            if not waiting:
                self.stalled = None
                return
            self.stalled = cause
            self._refuse_impatient(cause)
            batch = waiting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), self._retry_wait(delay))
            delay = min(delay * 2, RETRY_MAX)
            await self._reconnect()

    def _refuse_impatient(self, cause: str) -> None:
        """Refuse the impatient writes queued behind a batch that waits for the database
        (queued before the outage was known): their requests are answered 503 now."""
        kept = []
        for write in self._queue:
            if write.patient:
                kept.append(write)
            elif write.future is not None and not write.future.done():
                write.future.set_exception(StoreUnavailable(cause))
        self._queue[:] = kept

    async def _reconnect(self) -> None:
        """A new connection for the writer (the old one may be dead after an outage); a
        failure to connect is left to the next attempt."""
        old, self._conn = self._conn, None
        if old is not None:
            try:
                await old.close()
            except Exception as exc:  # noqa: BLE001 - it is dead, that is why we are here
                log.debug("closing the writer's old connection failed: %s", exc)
        try:
            self._conn = await self.engine.connect()
        except Exception as exc:  # reported by the next attempt
            cause = store_failure_cause(exc)
            if cause is None:
                raise
            self.health.failed(cause, "writer connection")

    async def _commit(self, batch: list[Write]) -> str | None:
        """One attempt; returns the cause when the database could not be used (the writes
        not yet answered are then left for a retry), else None."""
        if self._conn is None:
            return self.health.failure.cause if self.health.failure else "no connection"
        try:
            try:
                await self._apply(batch, exact=False)
            except _GuardConflict:
                for write in batch:
                    write.failed = False
                await self._apply_exact(batch)
        except Exception as exc:  # noqa: BLE001 - isolate the write that broke the batch
            cause = store_failure_cause(exc)
            if cause is not None:
                self.health.failed(cause, f"write to {batch[0].resource}")
                return cause
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return None
            log.debug("batch of %d writes failed (%s); retrying one by one", len(batch), exc)
            for write in batch:
                write.failed = False
                try:
                    await self._apply_exact([write])
                except Exception as single_exc:  # noqa: BLE001
                    single_cause = store_failure_cause(single_exc)
                    if single_cause is not None:
                        self.health.failed(single_cause, f"write to {write.resource}")
                        return single_cause  # the rest waits for the database
                    self._fail(write, single_exc)
                else:
                    self.health.ok()
                    if write.future is not None and not write.future.done():
                        write.future.set_result(not write.failed)
            return None
        self.health.ok()
        for write in batch:
            if write.future is not None and not write.future.done():
                write.future.set_result(not write.failed)
        return None

    def _fail(self, write: Write, exc: BaseException) -> None:
        cause = store_failure_cause(exc)
        if cause is not None:
            self.health.failed(cause, f"write to {write.resource}")
        else:
            log.error("write to %s failed: %s", write.resource, exc)
        if write.future is not None and not write.future.done():
            write.future.set_exception(exc)

    async def _apply_exact(self, batch: list[Write]) -> None:
        """Apply with every guard alone; a write whose guard missed after some of its statements
        ran is rolled back whole: the batch runs again without it (each round skips one more)."""
        while True:
            try:
                await self._apply(batch, exact=True)
                return
            except _LateGuardMiss:
                continue  # the losing writes keep ``failed`` and are skipped whole

    async def _apply(self, batch: list[Write], exact: bool) -> None:
        """Run a batch in one transaction.

        Guards are first tried as one ``executemany`` (when the driver reports summed row
        counts); if any guard missed, the transaction is rolled back and retried with every
        guard executed alone, so exactly the losing writes are skipped.
        """
        conn = self._conn
        assert conn is not None
        multi_guards = not exact and conn.dialect.supports_sane_multi_rowcount
        groups = schedule(batch)
        if self.lock is None:
            await self._transaction(conn, groups, multi_guards)
            return
        async with self.lock:
            await self._transaction(conn, groups, multi_guards)

    async def _transaction(
        self, conn: AsyncConnection, groups: list[_Group], multi_guards: bool
    ) -> None:
        ran: set[int] = set()  # the writes some statement of which ran in this transaction
        try:
            async with conn.begin():
                for group in groups:
                    live = [(p, w) for p, w in group.items if not w.failed]
                    if not live:
                        continue
                    if group.guard and multi_guards and len(live) > 1:
                        result = await conn.execute(group.sql, [p for p, _ in live])
                        self.statements += 1
                        if result.rowcount != len(live):
                            raise _GuardConflict()
                        ran.update(id(w) for _, w in live)
                    elif group.guard:
                        for params, write in live:
                            if write.failed:
                                continue
                            result = await conn.execute(group.sql, params)
                            self.statements += 1
                            if result.rowcount == 0:
                                write.failed = True
                                if id(write) in ran:
                                    raise _LateGuardMiss()  # undo what of it ran
                            else:
                                ran.add(id(write))
                    elif len(live) == 1:
                        await conn.execute(group.sql, live[0][0])
                        self.statements += 1
                        ran.add(id(live[0][1]))
                    else:
                        await conn.execute(group.sql, [p for p, _ in live])
                        self.statements += 1
                        ran.update(id(w) for _, w in live)
            self.transactions += 1
        except BaseException:
            if conn.in_transaction():
                await conn.rollback()
            raise


class _GuardConflict(Exception):
    """A folded guard statement touched fewer rows than it had writes."""


class _LateGuardMiss(_GuardConflict):
    """A guard missed after other statements of its write had run: the transaction is rolled
    back and applied again without that write (a write is all or nothing)."""

