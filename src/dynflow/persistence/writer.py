"""Group commit: many small writes from concurrent plans share one transaction.

Every caller hands over a ``Write`` (statements touching one resource, usually one execution
plan) and awaits its commit. The writer takes whatever is queued, orders the statements so that
those of one resource keep their order, folds equal statements of different resources into one
``executemany``, and commits once. A *guard* statement (an optimistic ``UPDATE ... WHERE state
IN (...)`` or an ``INSERT ... ON CONFLICT DO NOTHING`` claim) must touch a row; if it does not,
the rest of its write is skipped and the caller learns it lost the race.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger("dynflow.persistence")


class Stmt:
    __slots__ = ("sql", "params", "guard")

    def __init__(self, sql: Any, params: dict[str, Any], guard: bool = False) -> None:
        self.sql = sql
        self.params = params
        self.guard = guard


class Write:
    __slots__ = ("resource", "stmts", "future", "failed")

    def __init__(self, resource: str, stmts: Sequence[Stmt]) -> None:
        self.resource = resource
        self.stmts = list(stmts)
        self.future: asyncio.Future[bool] | None = None
        self.failed = False


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
        self, engine: AsyncEngine, max_batch: int = 2000, lock: asyncio.Lock | None = None
    ) -> None:
        self.engine = engine
        self.lock = lock
        self.max_batch = max_batch
        self.transactions = 0
        self.statements = 0
        self._queue: list[Write] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: AsyncConnection | None = None
        self._closing = False

    async def start(self) -> None:
        self._conn = await self.engine.connect()
        self._task = asyncio.create_task(self._loop(), name="dynflow-writer")

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._conn is not None:
            await self._conn.close()

    async def write(self, write: Write) -> bool:
        """Queue ``write`` and wait until it is committed; False if one of its guards failed."""
        if self._closing:
            raise RuntimeError("the store is closed")
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
                await self._commit(batch)
            if self._closing and not self._queue:
                return

    async def _commit(self, batch: list[Write]) -> None:
        assert self._conn is not None
        try:
            try:
                await self._apply(batch, exact=False)
            except _GuardConflict:
                for write in batch:
                    write.failed = False
                await self._apply(batch, exact=True)
        except Exception as exc:  # noqa: BLE001 - isolate the write that broke the batch
            if len(batch) == 1:
                _fail(batch[0], exc)
                return
            log.debug("batch of %d writes failed (%s); retrying one by one", len(batch), exc)
            for write in batch:
                write.failed = False
                try:
                    await self._apply([write], exact=True)
                except Exception as single_exc:  # noqa: BLE001
                    _fail(write, single_exc)
                else:
                    if write.future is not None and not write.future.done():
                        write.future.set_result(not write.failed)
            return
        for write in batch:
            if write.future is not None and not write.future.done():
                write.future.set_result(not write.failed)

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
                    elif group.guard:
                        for params, write in live:
                            if write.failed:
                                continue
                            result = await conn.execute(group.sql, params)
                            self.statements += 1
                            if result.rowcount == 0:
                                write.failed = True
                    elif len(live) == 1:
                        await conn.execute(group.sql, live[0][0])
                        self.statements += 1
                    else:
                        await conn.execute(group.sql, [p for p, _ in live])
                        self.statements += 1
            self.transactions += 1
        except BaseException:
            if conn.in_transaction():
                await conn.rollback()
            raise


class _GuardConflict(Exception):
    """A folded guard statement touched fewer rows than it had writes."""


def _fail(write: Write, exc: BaseException) -> None:
    log.error("write to %s failed: %s", write.resource, exc)
    if write.future is not None and not write.future.done():
        write.future.set_exception(exc)
