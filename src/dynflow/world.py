"""The world: one engine runtime per process (spec §1.1).

It bundles the store, the executor, the recovery at start, the heartbeat and the cleaner, and
offers the public API: ``plan``, ``execute``, ``trigger``, ``event``, ``plan_event``, ``cancel``,
``resume``, ``skip_step`` and the plan queries. Use it as ``async with World(url) as world:``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import socket
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import Any

from . import recovery
from .action import Action, referenced_steps
from .cleaner import Cleaner
from .errors import EventRejected, ExecutionRejected, PlanNotFound
from .execution_plan import ExecutionPlan
from .executor import EXECUTION_LOCK, Executor
from .middleware import Middleware, class_middleware, hook_chain
from .persistence.store import Store
from .serialization import dumps, format_time, utcnow

log = logging.getLogger("dynflow")
WORLD_RECORD = "ExecutorWorld"
DEFAULT_DB_URL = "sqlite+aiosqlite:///var/dynflow.db"


@dataclass
class WorldConfig:
    """Settings of a world; every one has a sensible default."""

    db_url: str = DEFAULT_DB_URL
    pool_size: int = 5
    queues: dict[str, int] = field(default_factory=dict)
    auto_rescue: bool = True
    auto_execute: bool = True
    auto_recover: bool = True
    heartbeat_interval: float = 15.0
    world_timeout: float = 60.0
    termination_timeout: float = 60.0
    cleaner_interval: float | None = 300.0
    stopped_max_age: float = 1800.0
    paused_max_age: float = 7 * 24 * 3600.0
    sqlite_synchronous: str = "FULL"
    db_pool_size: int = 5
    meta: dict[str, Any] = field(default_factory=dict)
    middleware: list[Any] = field(default_factory=list)


@dataclass
class Triggered:
    execution_plan_id: str
    finished: asyncio.Future[ExecutionPlan]

    @property
    def id(self) -> str:
        return self.execution_plan_id

    triggered = True
    planned = True

    async def wait(self, timeout: float | None = None) -> ExecutionPlan:
        return await asyncio.wait_for(asyncio.shield(self.finished), timeout)


@dataclass
class PlanningFailed:
    execution_plan_id: str
    error: dict[str, Any] | None

    @property
    def id(self) -> str:
        return self.execution_plan_id

    triggered = False
    planned = False


class World:
    def __init__(self, db_url: str | None = None, **options: Any) -> None:
        self.config = WorldConfig(**options)
        if db_url is not None:
            self.config.db_url = db_url
        self.id = str(uuidlib.uuid4())
        self.logger = log
        self.action_logger = logging.getLogger("dynflow.action")
        self.store = Store(
            self.config.db_url,
            pool_size=self.config.db_pool_size,
            sqlite_synchronous=self.config.sqlite_synchronous,
        )
        self.executor = Executor(self, self.config.pool_size, self.config.queues)
        self.auto_rescue = self.config.auto_rescue
        self.terminating = False
        self.meta = {"hostname": socket.gethostname(), "pid": os.getpid(), **self.config.meta}
        self._middleware = [m() if isinstance(m, type) else m for m in self.config.middleware]
        self._middleware_cache: dict[type[Action], list[Middleware]] = {}
        self._background: list[asyncio.Task[Any]] = []
        self._started = False
        self.cleaner = Cleaner(self)

    # ---- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> World:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    async def start(self) -> None:
        await self.store.start()
        await self.store.write(
            f"world:{self.id}",
            [
                self.store.acquire_lock_stmt(
                    WORLD_RECORD, self.id, f"world:{self.id}", self._record()
                )
            ],
        )
        self._started = True
        if self.config.auto_recover:
            await recovery.invalidate_dead_worlds(self)
        if self.config.auto_execute:
            await recovery.auto_execute(self)
        self._background.append(asyncio.create_task(self._heartbeat(), name="dynflow-heartbeat"))
        if self.config.cleaner_interval:
            self._background.append(
                asyncio.create_task(self.cleaner.loop(self.config.cleaner_interval), name="cleaner")
            )
        log.info("world %s started (%s)", self.id, self.store.url.render_as_string())

    async def stop(self) -> None:
        if not self._started:
            await self.store.close()
            return
        self.terminating = True
        for task in self._background:
            task.cancel()
        for task in self._background:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await self.executor.shutdown(self.config.termination_timeout)
        await self.store.release_lock(WORLD_RECORD, self.id)
        await self.store.close()
        self._started = False
        log.info("world %s stopped", self.id)

    def _record(self) -> dict[str, Any]:
        return {
            "class": WORLD_RECORD,
            "id": self.id,
            "meta": {
                **self.meta,
                "queues": {n: {"pool_size": q.pool_size} for n, q in self.executor.queues.items()},
                "last_seen": format_time(utcnow()),
            },
            "last_seen_epoch": time.time(),
            "active": not self.terminating,
        }

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            try:
                await self.store.write(
                    f"world:{self.id}",
                    [self.store.update_record_stmt(WORLD_RECORD, self.id, self._record())],
                )
            except Exception:  # noqa: BLE001
                log.exception("heartbeat failed")

    # ---- middleware and hooks ----------------------------------------------------------------
    def middleware_for(self, cls: type[Action]) -> list[Middleware]:
        chain = self._middleware_cache.get(cls)
        if chain is None:
            chain = list(self._middleware) + [m() for m in class_middleware(cls)]
            self._middleware_cache[cls] = chain
        return chain

    async def run_hooks(self, plan: ExecutionPlan, state: str) -> None:
        kinds = [state]
        if state == "stopped":
            kinds.append(
                "failure" if plan.result in ("error", "warning", "cancelled") else "success"
            )
        for action in list(plan.actions.values()):
            hooks = getattr(type(action), "execution_plan_hooks", None) or {}
            for kind in kinds:
                for method_name in hooks.get(kind, ()):
                    await self._run_hook(action, method_name, plan, kind)

    async def _run_hook(
        self, action: Action, method_name: str, plan: ExecutionPlan, kind: str
    ) -> None:
        async def final(p: ExecutionPlan, k: str) -> None:
            method = getattr(action, method_name)
            result = method(p)
            if inspect.isawaitable(result):
                await result

        try:
            await hook_chain(self.middleware_for(type(action)), action, final, plan, kind)
        except Exception:  # noqa: BLE001 - a hook never changes the plan's fate
            log.exception("hook %s of %s on %s failed", method_name, action.name(), kind)

    # ---- planning and execution -------------------------------------------------------------
    def _plan_in_memory(
        self,
        action_class: type[Action],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        id: str | None,
        caller_action: Action | None,
    ) -> ExecutionPlan:
        if not (isinstance(action_class, type) and issubclass(action_class, Action)):
            raise TypeError(f"{action_class!r} is not an Action class")
        plan = ExecutionPlan.new(self, id)
        plan.plan(action_class, args, kwargs, caller_action=caller_action)
        return plan

    async def plan(self, action_class: type[Action], *args: Any, **kwargs: Any) -> ExecutionPlan:
        return await self.plan_with_options(action_class, args=args, kwargs=kwargs)

    async def plan_with_options(
        self,
        action_class: type[Action],
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        id: str | None = None,
        caller_action: Action | None = None,
    ) -> ExecutionPlan:
        """Plan and store a plan (``planned``, or ``stopped`` when planning failed)."""
        plan = self._plan_in_memory(action_class, args, kwargs or {}, id, caller_action)
        await self.store.write(plan.id, self.store.insert_plan_stmts(plan))
        await self.run_hooks(plan, "pending")
        await self.run_hooks(plan, plan.state)
        return plan

    async def trigger(self, action_class: type[Action], *args: Any, **kwargs: Any) -> Any:
        return await self.trigger_with_options(action_class, args=args, kwargs=kwargs)

    async def trigger_with_options(
        self,
        action_class: type[Action],
        *,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        id: str | None = None,
        caller_action: Action | None = None,
    ) -> Triggered | PlanningFailed:
        """Plan and start executing; planning and the start share one transaction."""
        self._check_running()
        plan = self._plan_in_memory(action_class, args, kwargs or {}, id, caller_action)
        if plan.state != "planned":
            await self.store.write(plan.id, self.store.insert_plan_stmts(plan))
            await self.run_hooks(plan, "stopped")
            failed = plan.failed_steps()
            return PlanningFailed(plan.id, failed[0].error if failed else None)
        future = await self._start(plan, insert=True)
        return Triggered(plan.id, future)

    async def execute(self, plan_id: str) -> asyncio.Future[ExecutionPlan]:
        """Start (or resume) a planned or paused plan; returns the future of its end."""
        self._check_running()
        if plan_id in self.executor.runs:
            raise ExecutionRejected(f"execution plan {plan_id} is already running")
        plan = await self.store.load_plan(plan_id, self)
        if plan is None:
            raise PlanNotFound(f"execution plan {plan_id} not found")
        if plan.state not in ("planned", "paused"):
            raise ExecutionRejected(
                f"execution plan {plan_id} is {plan.state}; only planned or paused plans run"
            )
        return await self._start(plan, insert=False)

    async def resume(self, plan_id: str) -> asyncio.Future[ExecutionPlan]:
        plan = await self.store.load_plan(plan_id, self, with_steps=False, with_actions=False)
        if plan is None:
            raise PlanNotFound(f"execution plan {plan_id} not found")
        if plan.state != "paused":
            raise ExecutionRejected(f"execution plan {plan_id} has to be paused to be resumed")
        return await self.execute(plan_id)

    async def _start(self, plan: ExecutionPlan, *, insert: bool) -> asyncio.Future[ExecutionPlan]:
        previous = plan.state
        plan.set_state("running", world_id=self.id)
        stmts = self.store.insert_plan_stmts(plan) if insert else []
        lock_id = f"execution-plan:{plan.id}"
        stmts.append(
            self.store.acquire_lock_stmt(
                EXECUTION_LOCK,
                lock_id,
                self.id,
                {"world_id": self.id, "execution_plan_id": plan.id},
            )
        )
        if not insert:
            stmts.append(self.store.update_plan_stmt(plan))
        claimed = await self.store.write(plan.id, stmts)
        if not claimed:
            plan.state = previous
            raise ExecutionRejected(f"execution plan {plan.id} is already running elsewhere")
        events = [] if insert else await self.store.planned_events_of(plan.id)
        run = self.executor.adopt(plan, events)
        if insert:
            await self.run_hooks(plan, "pending")
            await self.run_hooks(plan, "planned")
        await self.run_hooks(plan, "running")
        return run.future

    def _check_running(self) -> None:
        if not self._started or self.terminating:
            raise ExecutionRejected("the world is not running")

    # ---- events ------------------------------------------------------------------------------
    async def event(self, plan_id: str, step_id: int, event: Any, optional: bool = False) -> None:
        """Deliver ``event`` to a suspended step and wait until the step has processed it."""
        dumps(event)
        run = self.executor.runs.get(plan_id)
        if run is None:
            if optional:
                return
            raise EventRejected(f"no manager for execution plan {plan_id}")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            run.deliver(step_id, event, future)
        except EventRejected:
            if optional:
                return
            raise
        await future

    async def plan_event(
        self, plan_id: str, step_id: int, event: Any, delay_seconds: float, optional: bool = False
    ) -> None:
        """Deliver ``event`` after ``delay_seconds``; stored, so a restart does not lose it."""
        run = self.executor.runs.get(plan_id)
        if run is None:
            if optional:
                return
            raise EventRejected(f"no manager for execution plan {plan_id}")
        event_id = str(uuidlib.uuid4())
        deliver_at = time.time() + delay_seconds
        await self.store.write(
            plan_id,
            [self.store.insert_event_stmt(event_id, plan_id, step_id, event, deliver_at, optional)],
        )
        run._arm_timer(event_id, step_id, event, deliver_at, optional)

    async def _deliver_later(
        self, plan_id: str, step_id: int, event: Any, delay: float, optional: bool
    ) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await self.event(plan_id, step_id, event, optional=True)
        except EventRejected as exc:
            log.info("event for %s:%s dropped: %s", plan_id, step_id, exc)

    # ---- operations --------------------------------------------------------------------------
    async def cancel(self, plan_id: str, force: bool = False) -> int:
        """Send Cancel (Abort when ``force``) to every cancellable step; returns how many."""
        run = self.executor.runs.get(plan_id)
        if run is None:
            return 0
        return run.cancel(force)

    async def skip_step(self, plan_id: str, step_id: int) -> None:
        """Mark a failed step of a paused plan (and what depends on it) to be skipped."""
        if plan_id in self.executor.runs:
            raise ExecutionRejected(f"execution plan {plan_id} is running; it has to be paused")
        plan = await self.store.load_plan(plan_id, self)
        if plan is None:
            raise PlanNotFound(f"execution plan {plan_id} not found")
        if plan.state != "paused":
            raise ExecutionRejected(f"execution plan {plan_id} has to be paused to skip a step")
        step = plan.steps.get(step_id)
        if step is None or step.state != "error":
            raise ExecutionRejected(f"step {step_id} of {plan_id} is not failed")
        changed = []
        skipped_steps = {step_id}
        grew = True
        while grew:
            grew = False
            for action in plan.actions.values():
                if action.run_step_id is None or action.run_step_id in skipped_steps:
                    continue
                if set(referenced_steps(action.input)) & skipped_steps:
                    skipped_steps.add(action.run_step_id)
                    grew = True
        for sid in skipped_steps:
            s = plan.steps[sid]
            if s.state == "error":
                s.set_state("skipping")
            elif s.state == "pending":
                s.set_state("skipped")
            else:
                continue
            changed.append(s)
            action = plan.actions[s.action_id]
            if action.finalize_step_id is not None:
                fs = plan.steps[action.finalize_step_id]
                if fs.state in ("pending", "error"):
                    fs.set_state("skipped")
                    changed.append(fs)
        plan.result = plan.result
        await self.store.write(
            plan.id,
            [*(self.store.update_step_stmt(s) for s in changed), self.store.update_plan_stmt(plan)],
        )

    # ---- queries -----------------------------------------------------------------------------
    async def load_plan(self, plan_id: str) -> ExecutionPlan | None:
        return await self.store.load_plan(plan_id, self)

    def plan_version(self, plan_id: str) -> int:
        """A number that changes whenever this world stores a change of the plan.

        Lets callers cache what they loaded (e.g. a status page) and load again only when it
        changed. Changes made by other processes sharing the database are not seen.
        """
        return self.store.version(plan_id)

    async def find_plans(self, **options: Any) -> list[ExecutionPlan]:
        return await self.store.find_plans(self, **options)

    async def count_plans(self, filters: dict[str, Any] | None = None) -> int:
        return await self.store.count_plans(filters)

    async def plan_statuses(self, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.store.plan_statuses(filters)

    async def sub_plans(self, plan_id: str, action_id: int | None = None) -> list[ExecutionPlan]:
        filters: dict[str, Any] = {"caller_execution_plan_id": plan_id}
        if action_id is not None:
            filters["caller_action_id"] = action_id
        return await self.store.find_plans(self, filters=filters)

    async def output_chunks(self, plan_id: str, action_id: int) -> list[dict[str, Any]]:
        return await self.store.load_output_chunks(plan_id, action_id)

    def execution_status(self) -> dict[str, dict[str, int]]:
        return self.executor.status()

    def is_running(self, plan_id: str) -> bool:
        return plan_id in self.executor.runs
