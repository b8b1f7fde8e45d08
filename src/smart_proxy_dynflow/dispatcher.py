"""Drives runners and delivers their updates (spec §4.5, asyncio design).

Every runner gets one asyncio task owned by the :class:`Dispatcher`. The task
starts the runner, refreshes it every ``refresh_interval`` seconds and processes
the commands queued for it (kill, external event, on-demand refresh, timeout)
one at a time, so a runner never runs two hooks concurrently. Updates go to
the ``deliver`` callback given by the owner; the dispatcher knows nothing of
the engine. ``deliver`` returns once the update is stored, and False when it could not be
(None counts as stored); after the update with the exit status was stored the runner is told
(:meth:`Runner.result_stored`) before it is closed, so it removes its job's traces on the
target only when a crash can no longer lose the result.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from smart_proxy_dynflow.runner import Runner, SuspendedAction, Update

logger = logging.getLogger("smart_proxy_dynflow.dispatcher")

Deliver = Callable[[SuspendedAction, Update], Awaitable[bool | None]]

STOP_GRACE = 5.0
"""Seconds :meth:`Dispatcher.stop` waits for exit statuses being stored."""
_KILL = "kill"
_EXTERNAL_EVENT = "external_event"
_REFRESH_OUTPUT = "refresh_output"


@dataclass(eq=False)
class _RunnerState:
    """Book-keeping of one runner owned by the dispatcher."""

    runner: Runner
    suspended_action: SuspendedAction
    commands: collections.deque[tuple[str, Any]] = field(default_factory=collections.deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    refresh_output_pending: bool = False
    finishing: bool = False
    closed: bool = False
    delivering_result: bool = False  # the update with the exit status is being stored


class Dispatcher:
    """Owns running runners and delivers their updates through ``deliver``."""

    def __init__(self, deliver: Deliver, *, refresh_interval: float = 1.0) -> None:
        self._deliver = deliver
        self.refresh_interval = refresh_interval
        self._runners: dict[str, _RunnerState] = {}
        self._aux_tasks: set[asyncio.Task[object]] = set()
        self._closing: set[_RunnerState] = set()  # finished, their tasks closing them

    # -- public API ----------------------------------------------------------

    def start(
        self, suspended_action: SuspendedAction, runner: Runner, *, resume: bool = False
    ) -> str | None:
        """Start driving ``runner`` (``reattach()`` instead of ``start()`` when resuming).

        Returns the runner id, or None when a runner with that id already runs (the
        error is then delivered to ``suspended_action`` as a fatal runner error).
        """
        if runner.id in self._runners:
            exc = RuntimeError(f"Runner with id {runner.id} is already running")
            logger.error("Cannot start %r: %s", runner, exc)
            update = Update.encode_exception("Runner error", exc, True)
            self._spawn_aux(self._safe_deliver(suspended_action, update))
            return None
        state = _RunnerState(runner, suspended_action)
        self._runners[runner.id] = state
        runner.on_news = lambda: self.refresh_output(runner.id)
        state.task = asyncio.get_running_loop().create_task(
            self._run(state, resume), name=f"runner-{runner.id}"
        )
        return runner.id

    def kill(self, runner_id: str) -> bool:
        """Ask the runner to kill its job; False for an unknown runner."""
        return self._enqueue(runner_id, _KILL)

    def external_event(self, runner_id: str, event: Any) -> bool:
        """Pass ``event`` to the runner and deliver its updates; False for an unknown runner."""
        return self._enqueue(runner_id, _EXTERNAL_EVENT, event)

    def refresh_output(self, runner_id: str) -> bool:
        """Refresh the runner now and deliver its output; False for an unknown runner.

        Coalesced with an on-demand refresh that is still pending.
        """
        state = self._runners.get(runner_id)
        if state is None or state.finishing:
            return False
        if not state.refresh_output_pending:
            state.refresh_output_pending = True
            self._push(state, _REFRESH_OUTPUT)
        return True

    def runner_ids(self) -> list[str]:
        """Ids of the runners being driven."""
        return list(self._runners)

    def __contains__(self, runner_id: object) -> bool:
        return runner_id in self._runners

    def __len__(self) -> int:
        return len(self._runners)

    def status(self) -> dict[str, int]:
        """Counts for status reporting."""
        return {"runners": len(self._runners)}

    async def stop(self) -> None:
        """Cancel every runner task and close the runners, delivering nothing more.

        Runners storing an exit status, or closing after one, get up to :data:`STOP_GRACE`
        seconds, in all, to see it stored and close as after any job (removing their traces on
        the target), including those that begin storing one while others are waited for:
        cancelled in between, the engine would still store the status while the runner, closed
        without knowing it or cut short while closing, left the job's directory on the host for
        good. Runners doing anything else are cancelled at once; they re-attach after the
        restart."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_GRACE
        while (remaining := deadline - loop.time()) > 0:
            ending = [
                s.task
                for s in (*self._runners.values(), *self._closing)
                if (s.delivering_result or s.finishing) and s.task is not None and not s.task.done()
            ]
            if not ending:
                break
            await asyncio.wait(ending, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        # From here on, no await until every task is cancelled: none can begin storing a result.
        states = [*self._runners.values(), *self._closing]
        self._runners.clear()
        tasks: list[asyncio.Task[object]] = [
            state.task for state in states if state.task is not None
        ]
        tasks.extend(self._aux_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for state in states:
            await self._close(state)

    # -- runner task ---------------------------------------------------------

    def _enqueue(self, runner_id: str, command: str, payload: Any = None) -> bool:
        state = self._runners.get(runner_id)
        if state is None or state.finishing:
            return False
        self._push(state, command, payload)
        return True

    @staticmethod
    def _push(state: _RunnerState, command: str, payload: Any = None) -> None:
        state.commands.append((command, payload))
        state.wakeup.set()

    async def _run(self, state: _RunnerState, resume: bool) -> None:
        runner = state.runner
        loop = asyncio.get_running_loop()
        try:
            timeout_at: float | None = None
            try:
                interval = runner.timeout_interval()
                if interval is not None:
                    timeout_at = loop.time() + interval
                if resume:
                    await runner.reattach()
                else:
                    await runner.start()
                await self._deliver_updates(state, await runner.run_refresh())
            except Exception as exc:  # noqa: BLE001 - any failure of a runner's start ends its job with the error
                hook = "reattach" if resume else "start"
                await self._command_failed(state, hook, exc, fatal=True)
            next_refresh = loop.time() + self.refresh_interval

            while not state.finishing:
                if not state.commands:
                    deadline = next_refresh if timeout_at is None else min(next_refresh, timeout_at)
                    state.wakeup.clear()
                    delay = deadline - loop.time()
                    if delay > 0:
                        try:
                            await asyncio.wait_for(state.wakeup.wait(), delay)
                        except TimeoutError:
                            pass
                now = loop.time()
                if timeout_at is not None and now >= timeout_at:
                    timeout_at = None
                    await self._process(state, "timeout", None)
                elif now >= next_refresh:
                    await self._process(state, "refresh", None)
                    next_refresh = loop.time() + self.refresh_interval
                elif state.commands:
                    command, payload = state.commands.popleft()
                    await self._process(state, command, payload)
        finally:
            state.finishing = True
            if self._runners.get(runner.id) is state:
                del self._runners[runner.id]
            self._closing.add(state)
            try:
                await self._close(state)
            finally:
                self._closing.discard(state)

    async def _process(self, state: _RunnerState, command: str, payload: Any) -> None:
        """Run one command against the runner; exceptions become runner errors."""
        runner = state.runner
        try:
            if command == "refresh":
                await self._deliver_updates(state, await runner.run_refresh())
            elif command == _REFRESH_OUTPUT:
                state.refresh_output_pending = False
                await self._deliver_updates(state, await runner.run_refresh_output())
            elif command == _EXTERNAL_EVENT:
                await self._deliver_updates(state, await runner.external_event(payload))
            elif command == _KILL:
                await runner.kill()
            elif command == "timeout":
                await runner.timeout()
            else:  # pragma: no cover - internal commands only
                raise ValueError(f"Unknown runner command {command!r}")
        except Exception as exc:  # noqa: BLE001 - any failure of a runner command is reported to its action
            await self._command_failed(state, command, exc, fatal=command not in (_KILL, "timeout"))

    async def _deliver_updates(
        self, state: _RunnerState, updates: dict[SuspendedAction | None, Update]
    ) -> None:
        """Deliver every update in order; finish when the main one carries an exit status."""
        runner = state.runner
        finished = False
        for receiver, update in updates.items():
            main = (
                receiver is None
                or receiver == state.suspended_action
                or receiver == runner.suspended_action
            )
            target = receiver if receiver is not None else state.suspended_action
            result = main and update.exit_status is not None
            state.delivering_result = result
            try:
                stored = await self._safe_deliver(target, update)
            finally:
                state.delivering_result = False
            if result:
                finished = True
                if stored:
                    runner.result_stored()
        if finished:
            self._finish(state)

    async def _command_failed(
        self, state: _RunnerState, command: str, exc: Exception, *, fatal: bool
    ) -> None:
        logger.error("Runner %s failed in %s", state.runner.id, command, exc_info=exc)
        update = Update.encode_exception("Runner error", exc, fatal)
        await self._safe_deliver(state.suspended_action, update)
        if fatal:
            self._finish(state)

    def _finish(self, state: _RunnerState) -> None:
        """Mark the runner finishing and forget it; its task then closes it and ends."""
        state.finishing = True
        if self._runners.get(state.runner.id) is state:
            del self._runners[state.runner.id]
        self._closing.add(state)

    async def _close(self, state: _RunnerState) -> None:
        if state.closed:
            return
        state.closed = True
        try:
            await state.runner.close()
        except Exception:
            logger.exception("Closing runner %s failed", state.runner.id)

    async def _safe_deliver(self, receiver: SuspendedAction, update: Update) -> bool:
        """Deliver ``update``; True when it was stored."""
        try:
            return await self._deliver(receiver, update) is not False
        except Exception:
            logger.exception("Delivering an update to %s failed", receiver)
            return False

    def _spawn_aux(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._aux_tasks.add(task)
        task.add_done_callback(self._aux_tasks.discard)
