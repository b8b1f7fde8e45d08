"""The executor: queues, and one ``PlanRun`` per running execution plan (spec §2.4, §5.1).

A ``PlanRun`` walks the run flow with a cursor (a failed step stops only its own sequence),
runs each ready step once (claimed with an optimistic state guard in the store), delivers
events to suspended steps, then runs the finalize phase and ends the plan. Async ``run``
methods run on the event loop; plain ones in the queue's bounded thread pool.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from . import flow as flows
from . import locks, telemetry
from .action import (
    ABORT,
    CANCEL,
    SKIP,
    Action,
    PlannedEvent,
    Suspend,
    dereference,
    referenced_steps,
)
from .coordinator import EXECUTION_LOCK, execution_lock_id
from .errors import EventRejected, NotSerializable
from .execution_plan import ExecutionPlan
from .middleware import finalize_chain, finalize_phase_chain, run_chain
from .serialization import dumps, utcnow
from .step import FinalizeStep, RunStep, Step, error_hash, plain_error

if TYPE_CHECKING:
    from .persistence.writer import Stmt
    from .world import World

log = logging.getLogger("dynflow.executor")

RUNNABLE_FROM = ("pending", "error", "skipping", "suspended")

# A planned event whose save is written with its step's: (event id, event, deliver at).
StoredEvent = tuple[str, PlannedEvent, float]


class Queue:
    """A named queue: a bounded thread pool for plain ``def`` steps; async steps are not limited."""

    def __init__(self, name: str, pool_size: int, world_id: str = "") -> None:
        self.name = name
        self.pool_size = pool_size
        self.world_id = world_id
        self.pool = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix=f"dynflow-{name}")
        self.busy_threads = 0
        self.waiting = 0
        self.async_running = 0
        self.events: dict[str, int] = {}  # executions per worker (thread name / event loop)
        telemetry.track_queue(self)

    async def call(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        self.waiting += 1

        def job() -> Any:
            self.waiting -= 1
            self.busy_threads += 1
            try:
                return fn(*args)
            finally:
                self.busy_threads -= 1
                worker = threading.current_thread().name  # one key per thread: no races
                self.events[worker] = self.events.get(worker, 0) + 1

        return await loop.run_in_executor(self.pool, job)

    def status(self) -> dict[str, int]:
        return {
            "pool_size": self.pool_size,
            "free_workers": self.pool_size - self.busy_threads,
            "queue_size": self.waiting,
            "async_running": self.async_running,
        }

    async def run_async(self, coro: Any) -> Any:
        """Run an ``async def`` step body on the loop, counted as a busy worker."""
        self.async_running += 1
        try:
            return await coro
        finally:
            self.async_running -= 1
            self.events[telemetry.ASYNC_WORKER] = self.events.get(telemetry.ASYNC_WORKER, 0) + 1

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)
        telemetry.untrack_queue(self)

    async def abandon(self) -> None:
        """Drop the steps waiting for a thread; wait (off the loop) for the running ones to
        end, their results unheard: a crash kills them, and a step of this process must not
        still be running when a recovering world runs it again."""
        await asyncio.to_thread(self.pool.shutdown, True, cancel_futures=True)
        telemetry.untrack_queue(self)


def _record_progress(step: Step, progress: Any, weight: Any) -> None:
    """Store what the action says of its progress on the step (never fails the step)."""
    if step.state in ("success", "skipped"):
        step.progress_done = 1.0
    else:
        try:
            step.progress_done = min(1.0, max(0.0, float(progress())))
        except Exception:  # noqa: BLE001
            step.progress_done = 0.5
    try:
        step.progress_weight = max(0.0, float(weight()))
    except Exception:  # noqa: BLE001
        step.progress_weight = step.progress_weight or 1.0


class _Pending:
    """An event waiting for its step, and the future of whoever sent it."""

    __slots__ = ("event", "future", "event_id")

    def __init__(self, event: Any, future: asyncio.Future[None] | None, event_id: str | None):
        self.event = event
        self.future = future
        self.event_id = event_id


class _Outcomes(dict[int, str]):
    """Step id -> ``done`` | ``failed`` | ``busy`` | ``suspended``; a change sets ``changed``."""

    def __init__(self, changed: asyncio.Event) -> None:
        super().__init__()
        self.changed = changed

    def __setitem__(self, step_id: int, outcome: str) -> None:
        super().__setitem__(step_id, outcome)
        self.changed.set()

    def pop(self, step_id: int, default: Any = None) -> Any:
        self.changed.set()
        return super().pop(step_id, default)


class PlanRun:
    """Drives one execution plan from ``running`` to ``paused`` or ``stopped``."""

    def __init__(self, executor: Executor, plan: ExecutionPlan) -> None:
        self.executor = executor
        self.world = executor.world
        self.store = executor.world.store
        self.plan = plan
        self.future: asyncio.Future[ExecutionPlan] = asyncio.get_running_loop().create_future()
        self._changed = asyncio.Event()  # a step's outcome, the phase or the future changed
        self.future.add_done_callback(lambda _: self._changed.set())
        self.outcome: dict[int, str] = _Outcomes(self._changed)
        self.queued: dict[int, deque[_Pending]] = {}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.rescued: set[int] = set()
        self._phase = "run"
        self.halting = False
        self.halted = False  # world.halt: ends stopped, releasing the inhibition lock
        self._finalize_stmts: list[Stmt] = []

    # ---- the cursor ------------------------------------------------------------------------------

    @property
    def phase(self) -> str:
        """``run``, ``ending``, ``finalize`` or ``done``; a change wakes what waits for it."""
        return self._phase

    @phase.setter
    def phase(self, value: str) -> None:
        self._phase = value
        self._changed.set()

    async def _until_quiet(self) -> bool:
        """Wait until no step executes in the run phase (True), or the plan is done (False):
        a condition, woken by every change of a step's outcome, the phase or the future."""
        while self.phase != "done" and not self.future.done():
            if self.phase == "run" and not any(o == "busy" for o in self.outcome.values()):
                return True
            self._changed.clear()
            await self._changed.wait()
        return False

    def start(self, planned_events: list[dict[str, Any]] | None = None) -> None:
        for step in self.plan.steps.values():
            if isinstance(step, RunStep) and step.state in ("success", "skipped"):
                self.outcome[step.id] = "done"
        for row in planned_events or []:
            self.arm_timer(
                row["id"], row["step_id"], row["event"], row["deliver_at"], row["optional"]
            )
        self.advance()

    def _status(self, node: flows.Flow, ready: list[int]) -> str:
        """'done', 'blocked' (failed, nothing moving) or 'active'; collects ready step ids."""
        if isinstance(node, flows.Atom):
            outcome = self.outcome.get(node.step_id)
            if outcome == "done":
                return "done"
            if outcome == "failed":
                return "blocked"
            if outcome is None:
                ready.append(node.step_id)
            return "active"
        assert isinstance(node, flows.Composed)
        if isinstance(node, flows.Sequence):
            for child in node.children:
                status = self._status(child, ready)
                if status != "done":
                    return status
            return "done"
        statuses = [self._status(child, ready) for child in node.children]
        if any(s == "active" for s in statuses):
            return "active"
        return "blocked" if "blocked" in statuses else "done"

    def advance(self) -> None:
        if self.phase != "run" or self.halting:
            return
        ready: list[int] = []
        status = self._status(self.plan.run_flow, ready)
        for step_id in ready:
            self.outcome[step_id] = "busy"
            self.executor.spawn(self._execute_step(step_id, None, None, None), f"step {step_id}")
        if status == "active":
            return
        self.phase = "ending"
        self.executor.spawn(self._finish_run_phase(status == "blocked"), "run phase end")

    # ---- running one step ------------------------------------------------------------------------
    async def _execute_step(
        self,
        step_id: int,
        event: Any,
        future: asyncio.Future[None] | None,
        event_id: str | None,
    ) -> None:
        step = self.plan.steps[step_id]
        action = self.plan.actions[step.action_id]
        if self.halting:  # dispatched just before a halt: not started, so not run
            if step.state == "suspended":
                self.outcome[step_id] = "suspended"
            else:
                self.outcome.pop(step_id, None)
            if future is not None and not future.done():
                future.set_exception(EventRejected("Message dropped: the plan is being halted"))
            return
        extra: list[Stmt] = []
        if event_id is not None:
            extra.append(self.store.delete_event_stmt(event_id))
        try:
            if step.state == "skipping":
                # As Dynflow: a run that takes events gets SKIP (it may record why, or refuse
                # by failing); one that does not is skipped without running.
                if type(action).run_accepts_event():
                    await self._run_action(step, action, SKIP, skipping=True)
                else:
                    step.set_state("skipped")
                    telemetry.step_executed(action.name(), "run", 0.0, step.real_time or 0.0)
                if step.state == "skipped":
                    step.progress_done = 1.0
                    step.progress_weight = step.progress_weight or 1.0
                await self._save_step(step, action, extra, action.pending_output_chunks)
                action.clear_pending_output_chunks()
                self._step_done(step, future)
                return
            previous = step.state
            step.set_state("running")
            if step.started_at is None:
                step.started_at = utcnow()
            claimed = await self.store.write(
                self.plan.id, [*extra, self.store.update_step_stmt(step, guard_from=previous)]
            )
            extra = []
            if not claimed:
                step.state = "error"
                step.error = plain_error(
                    f"Could not transition step from {previous} to running, "
                    "step already in running."
                )
                await self.store.write(self.plan.id, [self.store.update_step_stmt(step)])
                self._step_done(step, future)
                return
            await self._run_action(step, action, event)
            stmts, stored_events = self._planned_event_stmts(step, action)
            if self._ends_plan(step):
                # The last step of a plan without finalize: its save and the plan's end share
                # one transaction.
                await self._save_step(
                    step, action, stmts, action.pending_output_chunks, end=True
                )
                action.clear_pending_output_chunks()
                self._arm_planned(action, stored_events)
                if future is not None and not future.done():
                    future.set_result(None)
                await self._after_end("stopped")
                return
            await self._save_step(step, action, stmts, action.pending_output_chunks)
            action.clear_pending_output_chunks()
            self._arm_planned(action, stored_events)
        except Exception as exc:  # the engine must survive any failure here
            log.exception("step %s:%s failed in the engine", self.plan.id, step_id)
            step.state = "error"
            step.error = error_hash(exc)
            # Whoever sent the event must not take it as processed: it was not stored.
            if future is not None and not future.done():
                future.set_exception(EventRejected(f"the step could not be saved: {exc}"))
            try:
                await self.store.write(self.plan.id, [self.store.update_step_stmt(step)])
            except Exception:
                log.exception("could not save step %s:%s", self.plan.id, step_id)
        self._step_done(step, future)

    async def _run_action(
        self, step: Step, action: Action, event: Any, *, skipping: bool = False
    ) -> None:
        stored_input = action.input
        action.phase = "run"
        action.state = "running"
        action.clear_planned_events()
        resolved, refers = self._resolved(stored_input)
        action.input = resolved
        started = time.monotonic()
        queue = self.executor.queue(step.queue)
        chain = self.world.middleware_for(type(action))
        run = action.run  # type: ignore[attr-defined]
        accepts_event = type(action).run_accepts_event()
        try:

            async def invoke(ev: Any) -> None:
                args = (ev,) if accepts_event else ()
                if inspect.iscoroutinefunction(run):
                    await queue.run_async(run(*args))
                else:
                    await queue.call(run, *args)

            await run_chain(chain, action, invoke, event)
            step.set_state("skipped" if skipping else "success")
            step.error = None
        except Suspend:
            # Nothing wakes a step being skipped: suspending it skips it.
            step.set_state("skipped" if skipping else "suspended")
        except Exception as exc:  # noqa: BLE001 - the action's failure fails its step
            step.set_state("error")
            step.error = error_hash(exc)
            self.world.action_logger.warning(
                "%s (step %s:%s) failed: %s", action.name(), self.plan.id, step.id, exc
            )
        finally:
            action.input = resolved if refers else stored_input
            if refers:
                action.mark_input_changed()
            elapsed = time.monotonic() - started
            step.execution_time = (step.execution_time or 0.0) + elapsed
            step.ended_at = utcnow()
            if step.started_at is not None:
                step.real_time = (step.ended_at - step.started_at).total_seconds()
            telemetry.step_executed(
                action.name(), "run", elapsed,
                step.real_time if step.state == "success" else None,
            )
        try:
            dumps(action.output_data)
        except NotSerializable as exc:
            action.output = {"not_serializable": True}
            step.state = "error"
            step.error = plain_error(f"output of {action.name()} is not serialisable: {exc}")
        changes = action.take_stored_input_changes()
        if changes:
            self._change_input(step, action, changes)
        action.state = step.state
        _record_progress(step, action.run_progress, action.run_progress_weight)

    @staticmethod
    def _change_input(
        step: Step, action: Action, changes: list[Callable[[dict[str, Any]], dict[str, Any]]]
    ) -> None:
        """Apply the run's ``change_stored_input`` requests; the step's save writes the
        result (same transaction as the output)."""
        try:
            changed = action.input
            for change in changes:
                changed = change(changed)
            dumps(changed)
        except Exception as exc:  # noqa: BLE001 - a broken change fails the step, not the engine
            step.state = "error"
            step.error = plain_error(f"changing the input of {action.name()} failed: {exc}")
            return
        action.input = changed
        action.mark_input_changed()

    def _resolved(self, stored_input: Any) -> tuple[Any, bool]:
        """A fresh copy of the input with its output references resolved, and whether it held
        any (then it is stored resolved from now on, as Dynflow does)."""
        refers = next(referenced_steps(stored_input), None) is not None
        return dereference(stored_input, self._output_of), refers

    def _output_of(self, action_id: int) -> dict[str, Any]:
        action = self.plan.actions.get(action_id)
        return action.output_data if action is not None else {}

    def _planned_event_stmts(
        self, step: Step, action: Action
    ) -> tuple[list[Stmt], list[StoredEvent]]:
        """The statements that store the run's planned events, and those events (the
        serialisable ones) to arm with :meth:`_arm_planned` once the step is saved."""
        stmts = []
        now = time.time()
        kept: list[StoredEvent] = []
        for pe in action.planned_events:
            try:
                dumps(pe.event)
            except NotSerializable as exc:
                step.state = "error"
                step.error = plain_error(f"event is not serialisable: {exc}")
                continue
            event_id = str(uuidlib.uuid4())
            deliver_at = now + (pe.delay or 0.0)
            if pe.execution_plan_id == self.plan.id:
                stmts.append(
                    self.store.insert_event_stmt(
                        event_id,
                        pe.execution_plan_id,
                        pe.step_id,
                        pe.event,
                        deliver_at,
                        pe.optional,
                    )
                )
            kept.append((event_id, pe, deliver_at))
        return stmts, kept

    def _arm_planned(self, action: Action, stored_events: list[StoredEvent]) -> None:
        for event_id, pe, deliver_at in stored_events:
            if pe.execution_plan_id == self.plan.id:
                self.arm_timer(event_id, pe.step_id, pe.event, deliver_at, pe.optional)
            else:
                self.executor.spawn(
                    self._deliver_later(
                        pe.execution_plan_id, pe.step_id, pe.event, pe.delay or 0.0
                    ),
                    "foreign event",
                )
        action.clear_planned_events()

    async def _deliver_later(self, plan_id: str, step_id: int, event: Any, delay: float) -> None:
        """An event planned for a step of another plan: sent through the world after the
        delay (not stored), dropped if that plan's step does not take it."""
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await self.world.event(plan_id, step_id, event, optional=True)
        except EventRejected as exc:
            log.info("event for %s:%s dropped: %s", plan_id, step_id, exc)

    def arm_timer(
        self, event_id: str, step_id: int, event: Any, deliver_at: float, optional: bool
    ) -> None:
        """Deliver the stored planned event ``event_id`` to ``step_id`` at ``deliver_at`` (a
        ``time.time()`` value); a rejected one is deleted from the store. Called by the plan
        run for the stored events at its start and after a step's save, and by
        ``World.plan_event`` once it stored an event for this plan."""
        loop = asyncio.get_running_loop()
        delay = max(0.0, deliver_at - time.time())

        def fire() -> None:
            self.timers.pop(event_id, None)
            try:
                self.deliver(step_id, event, None, event_id, optional)
            except EventRejected as exc:
                if self._parking():
                    return  # stays stored: the next start of the plan delivers it
                if not optional:
                    log.info("planned event for %s:%s dropped: %s", self.plan.id, step_id, exc)
                self.executor.spawn(
                    self.store.write(self.plan.id, [self.store.delete_event_stmt(event_id)]),
                    "drop event",
                )

        self.timers[event_id] = loop.call_later(delay, fire)

    def _has_finalize(self) -> bool:
        return any(True for _ in self.plan.finalize_flow.step_ids())

    def _ends_plan(self, step: Step) -> bool:
        """Would this step, finishing now with success, end a plan that has no finalize phase?"""
        if step.state != "success" or self.queued.get(step.id) or self.halting:
            return False
        if self._has_finalize():
            return False
        self.outcome[step.id] = "done"
        ready: list[int] = []
        if self._status(self.plan.run_flow, ready) == "done" and not ready:
            self.phase = "ending"
            return True
        self.outcome[step.id] = "busy"
        return False

    async def _save_step(
        self,
        step: Step,
        action: Action,
        extra: list[Stmt],
        chunks: list[dict[str, Any]],
        end: bool = False,
    ) -> None:
        stmts = [*extra, self.store.update_step_stmt(step)]
        if isinstance(step, RunStep):
            stmts.extend(self._action_stmts(action, chunks))
        else:
            stmts.extend(self._chunk_stmts(action, chunks))
        if end:
            stmts.extend(self._end_stmts("stopped"))
        await self.store.write(self.plan.id, stmts)

    def _action_stmts(self, action: Action, chunks: list[dict[str, Any]]) -> list[Stmt]:
        """The action's output, its input when it changed, and its output chunks."""
        stmts = [self.store.update_action_stmt(action)]
        if action.take_input_changed():
            stmts.append(self.store.update_action_input_stmt(action))
        return stmts + self._chunk_stmts(action, chunks)

    def _chunk_stmts(self, action: Action, chunks: list[dict[str, Any]]) -> list[Stmt]:
        stmts = []
        if action.take_output_chunks_drop():
            stmts.append(self.store.delete_chunks_stmt(self.plan.id, action.id))
        if chunks:
            stmts.extend(self.store.insert_chunk_stmts(self.plan.id, action.id, chunks))
        return stmts

    def _step_done(self, step: Step, future: asyncio.Future[None] | None) -> None:
        if future is not None and not future.done():
            future.set_result(None)
        queue = self.queued.get(step.id)
        if step.state == "suspended":
            self.outcome[step.id] = "suspended"
            if queue and not self.halting:
                pending = queue.popleft()
                self._dispatch_event(step.id, pending)
                return
        else:
            self.outcome[step.id] = "failed" if step.state == "error" else "done"
        while queue:
            pending = queue.popleft()
            if pending.future is not None and not pending.future.done():
                pending.future.set_exception(EventRejected("Message dropped"))
            if pending.event_id is not None and not self._parking():
                self.executor.spawn(
                    self.store.write(
                        self.plan.id, [self.store.delete_event_stmt(pending.event_id)]
                    ),
                    "drop event",
                )
        self.queued.pop(step.id, None)
        self.advance()

    # ---- events ----------------------------------------------------------------------------------
    def deliver(
        self,
        step_id: int,
        event: Any,
        future: asyncio.Future[None] | None,
        event_id: str | None = None,
        optional: bool = False,
    ) -> None:
        """Hand an event to a step: run it now if suspended, queue it if the step is executing.
        Called by ``World.event`` (and by this run's timers and cancel)."""
        step = self.plan.steps.get(step_id)
        outcome = self.outcome.get(step_id)
        if self.halting or not isinstance(step, RunStep) or outcome not in ("busy", "suspended"):
            raise EventRejected(
                f"step {self.plan.id}:{step_id} is not suspended, it cannot process events"
            )
        pending = _Pending(event, future, event_id)
        if outcome == "busy":
            self.queued.setdefault(step_id, deque()).append(pending)
            return
        self._dispatch_event(step_id, pending)

    def _dispatch_event(self, step_id: int, pending: _Pending) -> None:
        self.outcome[step_id] = "busy"
        self.executor.spawn(
            self._execute_step(step_id, pending.event, pending.future, pending.event_id),
            f"event for step {step_id}",
        )

    def cancellable_steps(self) -> list[Step]:
        result = []
        for step_id, outcome in self.outcome.items():
            if outcome in ("busy", "suspended"):
                step = self.plan.steps[step_id]
                action = self.plan.actions.get(step.action_id)
                if action is not None and type(action).cancellable:
                    result.append(step)
        return result

    def cancel(self, force: bool = False) -> int:
        steps = self.cancellable_steps()
        for step in steps:
            self.deliver(step.id, ABORT if force else CANCEL, None)
        return len(steps)

    # ---- end of the run phase, finalize, end -----------------------------------------------------
    async def _finish_run_phase(self, failed: bool) -> None:
        try:
            if failed:
                await self._handle_failure()
                return
            if self._has_finalize():
                self.phase = "finalize"
                ok = await self._run_finalize()
                if not ok:
                    await self._handle_failure()
                    return
            await self._end("stopped")
        except Exception:
            log.exception("ending plan %s failed", self.plan.id)
            await self._end("paused")

    async def _handle_failure(self) -> None:
        failed = {s.id for s in self.plan.steps.values() if s.state == "error"}
        if self.world.auto_rescue and not self.world.terminating and not failed <= self.rescued:
            self.rescued |= failed
            strategy = self.plan.rescue_strategy()
            log.info("plan %s failed, rescue strategy %s", self.plan.id, strategy)
            if strategy == "skip":
                stmts = []
                for step_id in failed:
                    step = self.plan.steps[step_id]
                    if isinstance(step, RunStep):
                        step.set_state("skipping")
                        self.outcome.pop(step_id, None)
                    elif isinstance(step, FinalizeStep):
                        step.set_state("skipped")
                    stmts.append(self.store.update_step_stmt(step))
                await self.store.write(self.plan.id, stmts)
                self.phase = "run"
                self.advance()
                return
            if strategy == "fail":
                await self._end("stopped")
                return
        await self._end("paused")

    async def _run_finalize(self) -> bool:
        steps = [self.plan.steps[s] for s in self.plan.finalize_flow.step_ids()]
        for step in steps:
            if step.state in ("success", "error"):
                step.set_state("pending")
        result = {"ok": True}
        stmts: list[Stmt] = []

        async def phase() -> None:
            for step in steps:
                if step.state == "skipped":
                    continue
                ok = await self._finalize_step(step)
                stmts.append(self.store.update_step_stmt(step))
                # What finalize did to its action (output, chunks) is saved with the step.
                action = self.plan.actions[step.action_id]
                stmts.extend(self._action_stmts(action, action.pending_output_chunks))
                action.clear_pending_output_chunks()
                if not ok:
                    result["ok"] = False
                    break

        root = self.plan.root_action()
        if root is None:
            await phase()
        else:
            await finalize_phase_chain(
                self.world.middleware_for(type(root)), root, phase, self.plan
            )
        ok = result["ok"] and all(s.state in ("success", "skipped") for s in steps)
        self._finalize_stmts = stmts
        if not ok:
            await self.store.write(self.plan.id, stmts)
            self._finalize_stmts = []
        return ok

    async def _finalize_step(self, step: Step) -> bool:
        action = self.plan.actions[step.action_id]
        action.phase = "finalize"
        step.set_state("running")
        step.started_at = step.started_at or utcnow()
        started = time.monotonic()
        finalize = action.finalize  # type: ignore[attr-defined]
        queue = self.executor.queue(step.queue)

        async def invoke(fn: Any = finalize, q: Queue = queue) -> None:
            if inspect.iscoroutinefunction(fn):
                await q.run_async(fn())
            else:
                await q.call(fn)

        stored_input = action.input
        resolved, refers = self._resolved(stored_input)
        action.input = resolved
        ok = True
        try:
            await finalize_chain(self.world.middleware_for(type(action)), action, invoke)
            step.set_state("success")
        except Exception as exc:  # noqa: BLE001
            step.set_state("error")
            step.error = error_hash(exc)
            ok = False
        finally:
            action.input = resolved if refers else stored_input
            if refers:
                action.mark_input_changed()
            elapsed = time.monotonic() - started
            step.execution_time = (step.execution_time or 0.0) + elapsed
            step.ended_at = utcnow()
            step.real_time = (step.ended_at - step.started_at).total_seconds()
            telemetry.step_executed(
                action.name(), "finalize", elapsed, step.real_time if ok else None
            )
        _record_progress(step, action.finalize_progress, action.finalize_progress_weight)
        return ok

    def _end_stmts(self, state: str, history: str | None = None) -> list[Stmt]:
        for handle in self.timers.values():
            handle.cancel()
        self.timers.clear()
        self.phase = "done"
        plan = self.plan
        plan.set_state(state, history=history, world_id=self.world.id)
        stmts = []
        if history != "terminate execution":
            # A plan parked by a graceful shutdown keeps its timers for the next start.
            stmts.append(self.store.delete_plan_events_stmt(plan.id))
        return [
            *stmts,
            self.store.update_plan_stmt(plan),
            self.store.release_lock_stmt(
                EXECUTION_LOCK, execution_lock_id(plan.id), self.world.id
            ),
            *locks.end_stmts(self.store, plan, state, halted=self.halted),
        ]

    async def _end(self, state: str, history: str | None = None) -> None:
        stmts = list(self._finalize_stmts)
        stmts.extend(self._end_stmts(state, history))
        await self.store.write(self.plan.id, stmts)
        await self._after_end(state)

    async def _after_end(self, state: str) -> None:
        plan = self.plan
        self.executor.forget(self)
        await self.world.run_hooks(plan, state)
        if not self.future.done():
            self.future.set_result(plan)

    async def halt(self) -> ExecutionPlan:
        """``world.halt``: stop dispatching now, let executing steps finish, end the plan.

        It ends ``stopped`` (suspended steps stay suspended), or ``paused`` if a step had
        failed; a plan already finalizing or ending finishes that first.
        """
        if not self.halting:
            self.halting = True
            self.halted = True
            self.executor.forget(self)  # from now on events find no manager for it
            for handle in self.timers.values():
                handle.cancel()
            self.timers.clear()
            if await self._until_quiet():
                await self._end("paused" if self.plan.failed_steps() else "stopped")
        return await asyncio.shield(self.future)

    def _parking(self) -> bool:
        """A graceful shutdown is parking the plan: its stored events are kept for the next
        start (a halt, which stops the plan for good, deletes them)."""
        return self.halting and not self.halted

    async def halt_after_inflight(self) -> None:
        """Graceful shutdown: let executing steps finish, then park the plan as paused.

        A plan ending its run phase, finalizing or being rescued finishes that first; if the
        rescue (skip) brings it back to the run phase, it is parked then.
        """
        self.halting = True
        if await self._until_quiet():
            await self._end("paused", history="terminate execution")


class Executor:
    """Owns the queues and the running plans of one world."""

    def __init__(self, world: World, pool_size: int, queues: dict[str, int] | None) -> None:
        self.world = world
        self.queues: dict[str, Queue] = {"default": Queue("default", pool_size, world.id)}
        for name, size in (queues or {}).items():
            self.queues[name] = Queue(name, size, world.id)
        self.runs: dict[str, PlanRun] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def queue(self, name: str | None) -> Queue:
        return self.queues.get(name or "default") or self.queues["default"]

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("engine task %s failed", task.get_name(), exc_info=task.exception())

    def adopt(self, plan: ExecutionPlan, planned_events: list[dict[str, Any]] | None) -> PlanRun:
        run = PlanRun(self, plan)
        self.runs[plan.id] = run
        run.start(planned_events)
        return run

    def forget(self, run: PlanRun) -> None:
        if self.runs.get(run.plan.id) is run:
            del self.runs[run.plan.id]

    def status(self) -> dict[str, dict[str, int]]:
        return {name: q.status() for name, q in self.queues.items()}

    async def shutdown(self, timeout: float) -> None:
        runs = list(self.runs.values())
        if runs:
            halts = [asyncio.ensure_future(r.halt_after_inflight()) for r in runs]
            _done, late = await asyncio.wait(halts, timeout=timeout)
            for halt in late:  # a step that could not end in time (the database is down...)
                halt.cancel()
            if late:
                await asyncio.wait(late)
        deadline = time.monotonic() + timeout
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(list(self._tasks), timeout=max(0.01, deadline - time.monotonic()))
        for task in list(self._tasks):
            task.cancel()
        for q in self.queues.values():
            q.shutdown()

    def abandon(self) -> None:
        """Drop every task and timer at once, as a crash would (see :meth:`World.abandon`);
        then :meth:`abandon_threads`."""
        for task in list(self._tasks):
            task.cancel()
        for run in self.runs.values():
            for handle in run.timers.values():
                handle.cancel()

    async def abandon_threads(self) -> None:
        """Drop the steps waiting for a thread and wait for the running ones to end."""
        for q in self.queues.values():
            await q.abandon()
