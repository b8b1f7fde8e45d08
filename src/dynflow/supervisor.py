"""The owner of a world's background loops (heartbeat, cleaner, delayed executor).

Each loop runs as one named task the supervisor owns. A loop is meant to run until the world
stops: one that ends by itself, or dies of an error, is logged (ERROR, with its traceback) and
started again after a back-off (:data:`RESTART_FIRST` seconds, doubling to
:data:`RESTART_MAX`), so that a bug in one pass never silently ends the cleaning or the
heartbeat. :meth:`Supervisor.stop` cancels every loop and every pending restart and returns
when all have ended: no task of the supervisor outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("dynflow.supervisor")

RESTART_FIRST = 1.0
"""Seconds before a loop that died is started again (doubling while it keeps dying)."""
RESTART_MAX = 60.0

LoopFactory = Callable[[], Coroutine[Any, Any, None]]


class Supervisor:
    """Runs named loops until :meth:`stop`, restarting the ones that end."""

    def __init__(self, owner: str = "") -> None:
        self.owner = owner
        self._factories: dict[str, LoopFactory] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._restarts: dict[str, asyncio.TimerHandle] = {}
        self._delays: dict[str, float] = {}
        self._stopping = False
        self.restarted: dict[str, int] = {}
        """Times each loop was started again after it ended (for tests and telemetry)."""

    def start(self, name: str, factory: LoopFactory) -> None:
        """Run ``factory()`` as the loop ``name`` until :meth:`stop`."""
        if self._stopping:
            raise RuntimeError("the supervisor is stopping")
        self._factories[name] = factory
        self._run(name)

    def _run(self, name: str) -> None:
        self._restarts.pop(name, None)
        if self._stopping:
            return
        task = asyncio.create_task(self._factories[name](), name=name)
        self._tasks[name] = task
        task.add_done_callback(lambda done: self._ended(name, done))

    def _ended(self, name: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(name) is task:
            del self._tasks[name]
        if self._stopping or task.cancelled():
            return
        delay = self._delays.get(name, RESTART_FIRST)
        self._delays[name] = min(delay * 2, RESTART_MAX)
        error = task.exception()
        log.error(
            "background loop %s%s %s; starting it again in %.0f s",
            name,
            f" of world {self.owner}" if self.owner else "",
            "died" if error else "ended",
            delay,
            exc_info=error,
        )
        self.restarted[name] = self.restarted.get(name, 0) + 1
        self._restarts[name] = asyncio.get_running_loop().call_later(delay, self._run, name)

    def running(self, name: str) -> bool:
        task = self._tasks.get(name)
        return task is not None and not task.done()

    async def stop(self) -> None:
        """Cancel every loop and pending restart; return once all have ended."""
        self._stopping = True
        for handle in self._restarts.values():
            handle.cancel()
        self._restarts.clear()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    def abandon(self) -> None:
        """Cancel everything at once without waiting (a crash, see ``World.abandon``)."""
        self._stopping = True
        for handle in self._restarts.values():
            handle.cancel()
        for task in self._tasks.values():
            task.cancel()
