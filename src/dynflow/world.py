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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import delayed, halt, locks, recovery
from .action import Action, referenced_steps, registered, registry_generation
from .cleaner import Cleaner
from .coordinator import EXECUTION_LOCK, WORLD_RECORD, execution_lock_id, world_owner
from .delayed import Scheduled
from .delayed_executor import DelayedExecutor
from .errors import EventRejected, ExecutionRejected, PlanNotFound
from .execution_plan import ExecutionPlan
from .executor import Executor
from .middleware import (
    Middleware,
    MiddlewareRules,
    generation,
    hook_chain,
    present_chain,
    resolve,
    rules_of,
)
from .persistence.health import StoreFailure, StoreUnavailable, impatient, store_failure_cause
from .persistence.store import Store
from .serialization import dumps, format_time, utcnow
from .serializers import DelayOptions
from .supervisor import Supervisor

log = logging.getLogger("dynflow")
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
    # How often the delayed executor looks for due delayed plans (None: not in this world).
    delayed_executor_interval: float | None = 15.0
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
    scheduled = False

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
    scheduled = False


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
        # World-level middleware rules: ``world.middleware.use(M, before=, after=, replace=)``.
        self.middleware = MiddlewareRules(self.config.middleware)
        self._middleware_cache: dict[type[Action], tuple[int, list[Middleware]]] = {}
        self._middleware_instances: dict[type, Middleware] = {}
        self._subscriptions: tuple[int, dict[type[Action], list[type[Action]]]] | None = None
        self.supervisor = Supervisor(self.id)
        self._before_termination: list[Callable[[], Any]] = []
        self._started = False
        self.cleaner = Cleaner(self)
        self.delayed_executor = DelayedExecutor(self)

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
                    WORLD_RECORD, self.id, world_owner(self.id), self._record()
                )
            ],
        )
        self._started = True
        if self.config.auto_recover:
            await recovery.invalidate_dead_worlds(self)
        if self.config.auto_execute:
            await recovery.auto_execute(self)
        self.supervisor.start("dynflow-heartbeat", self._heartbeat)
        cleaner_interval = self.config.cleaner_interval
        if cleaner_interval:
            self.supervisor.start("cleaner", lambda: self.cleaner.loop(cleaner_interval))
        delayed_interval = self.config.delayed_executor_interval
        if delayed_interval:
            self.supervisor.start(
                "dynflow-delayed-executor", lambda: self.delayed_executor.loop(delayed_interval)
            )
        log.info("world %s started (%s)", self.id, self.store.url.render_as_string())

    def before_termination(self, hook: Callable[[], Any]) -> None:
        """Call ``hook()`` (a plain or ``async`` function) when :meth:`stop` begins, before the
        world stops taking work, in the order registered; a hook that fails is logged and the
        others still run (Dynflow's ``before_termination``)."""
        self._before_termination.append(hook)

    async def _run_before_termination(self) -> None:
        hooks, self._before_termination = self._before_termination, []
        for hook in hooks:
            try:
                result = hook()
                if inspect.isawaitable(result):
                    await result
            except Exception:  # one broken hook must not stop the others
                log.exception("a before_termination hook of world %s failed", self.id)

    async def stop(self) -> None:
        await self._run_before_termination()
        if not self._started:
            await self.store.close()
            return
        self.terminating = True
        # an outage is waited out no longer than the stop may take: a background task's
        # cleanup write (the cleaner's lock release) must not hold the stop forever
        self.store.stop_waiting_after(self.config.termination_timeout)
        await self.supervisor.stop()
        await self.delayed_executor.release()
        await self.executor.shutdown(self.config.termination_timeout)
        try:
            with impatient():  # a database that is down must not hold the stop forever
                await self.store.release_lock(WORLD_RECORD, self.id)
        except StoreUnavailable as exc:
            log.warning(
                "world %s stopped without removing its record (the database cannot be used: "
                "%s); the next start or another world invalidates it",
                self.id,
                exc.cause,
            )
        await self.store.close()
        self._started = False
        log.info("world %s stopped", self.id)

    async def abandon(self) -> None:
        """Drop the world as a SIGKILL would: nothing more reaches the database, no hook or
        release runs, what was running is left as it is stored (recovery at the next start
        of a world on the database deals with it). For tests and demonstrations of crashes."""
        self.supervisor.abandon()
        self.executor.abandon()  # nothing runs on before the store is cut off
        await self.store.abandon()
        await self.executor.abandon_threads()
        self._started = False

    def _record(self) -> dict[str, Any]:
        return {
            "class": WORLD_RECORD,
            "id": self.id,
            "meta": {
                **self.meta,
                "queues": {n: {"pool_size": q.pool_size} for n, q in self.executor.queues.items()},
                "last_seen": format_time(utcnow()),
                "delayed_executor": self.delayed_executor.holding,
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
                await halt.check_inhibitions(self)  # plans other worlds asked to halt
            except Exception as exc:
                if store_failure_cause(exc) is None:  # a store outage is logged once, by it
                    log.exception("heartbeat failed")

    # ---- middleware and hooks ----------------------------------------------------------------
    def middleware_for(self, cls: type[Action]) -> list[Middleware]:
        """The middleware stack of an action class, outermost first (spec §1.7): the world's
        rules, then those of every ancestor class and the class's own, sorted by their
        ``before``/``after``/``replace`` rules. Raises ``MiddlewareCycle`` on contradictions."""
        current = generation()
        cached = self._middleware_cache.get(cls)
        if cached is not None and cached[0] == current:
            return cached[1]
        chain = []
        for key, instance in resolve([self.middleware, *rules_of(cls)]):
            if instance is None:
                instance = self._middleware_instances.get(key)
                if instance is None:
                    instance = self._middleware_instances[key] = key()
            chain.append(instance)
        self._middleware_cache[cls] = (current, chain)
        return chain

    def present_action(
        self, plan: ExecutionPlan, action_id: int, data: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """What may be shown of an action (console, status API): ``data`` (default: the
        action's hash) through the ``present`` middleware of its class. Storage is untouched."""
        action = plan.actions[action_id]
        if data is None:
            data = action.to_hash()
        return present_chain(self.middleware_for(type(action)), action, data)

    def subscribed_actions(self, action_class: type[Action]) -> list[type[Action]]:
        """The registered action classes subscribed to ``action_class`` (spec §1.1, §1.3)."""
        current = registry_generation()
        if self._subscriptions is None or self._subscriptions[0] != current:
            index: dict[type[Action], list[type[Action]]] = {}
            for cls in dict.fromkeys(registered().values()):
                for trigger in cls.subscriptions():
                    index.setdefault(trigger, []).append(cls)
            self._subscriptions = (current, index)
        return list(self._subscriptions[1].get(action_class, ()))

    async def run_hooks(self, plan: ExecutionPlan, state: str) -> None:
        kinds = [state]
        if state == "stopped":
            self.delayed_executor.plan_stopped(plan.id)  # chained plans may wait for it
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
        except Exception:  # a hook never changes the plan's fate
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
        if plan.state != "planned" or await locks.acquire_planning_locks(self, plan):
            await self.store.write(plan.id, self.store.insert_plan_stmts(plan))
        await self.run_hooks(plan, "pending")
        await self.run_hooks(plan, "planning")
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
        """Plan and start executing; planning and the start share one transaction.

        While the world stops, a step still running here (e.g. a batch planning its children)
        may trigger: the plan is stored ``planned`` and runs at the next start (auto-execute);
        the returned ``finished`` future fails with :class:`ExecutionRejected`. Refused, the
        plan would be lost although its caller had asked for it."""
        if self._started and self.terminating:
            return await self._plan_for_next_start(action_class, args, kwargs, id, caller_action)
        self._check_running()
        plan = self._plan_in_memory(action_class, args, kwargs or {}, id, caller_action)
        if plan.state == "planned" and not await locks.acquire_planning_locks(self, plan):
            pass  # stored as stopped: a singleton lock is held by another plan
        elif plan.state != "planned":
            await self.store.write(plan.id, self.store.insert_plan_stmts(plan))
        if plan.state != "planned":
            for state in ("pending", "planning", "stopped"):
                await self.run_hooks(plan, state)
            failed = plan.failed_steps()
            return PlanningFailed(plan.id, failed[0].error if failed else None)
        future = await self._start(plan, insert=True)
        return Triggered(plan.id, future)

    async def _plan_for_next_start(
        self,
        action_class: type[Action],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        id: str | None,
        caller_action: Action | None,
    ) -> Triggered | PlanningFailed:
        plan = await self.plan_with_options(
            action_class, args=args, kwargs=kwargs, id=id, caller_action=caller_action
        )
        if plan.state != "planned":
            failed = plan.failed_steps()
            return PlanningFailed(plan.id, failed[0].error if failed else None)
        log.info("world %s is stopping: plan %s runs at the next start", self.id, plan.id)
        finished: asyncio.Future[ExecutionPlan] = asyncio.get_running_loop().create_future()
        finished.set_exception(
            ExecutionRejected(f"the world is stopping; plan {plan.id} runs at the next start")
        )
        finished.exception()  # retrieved: nobody need wait for it
        return Triggered(plan.id, finished)

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
        if await locks.is_inhibited(self.store, plan_id):
            await halt.stop_directly(self, plan)
            raise ExecutionRejected(f"execution plan {plan_id} was halted; it cannot run")
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
        stmts.append(
            self.store.acquire_lock_stmt(
                EXECUTION_LOCK,
                execution_lock_id(plan.id),
                self.id,
                {"world_id": self.id, "execution_plan_id": plan.id},
            )
        )
        if not insert:
            stmts.append(self.store.update_plan_stmt(plan, guard_from=previous))
        claimed = await self.store.write(plan.id, stmts)
        if not claimed:
            plan.state = previous
            raise ExecutionRejected(
                f"execution plan {plan.id} is already running elsewhere (or is no longer "
                f"{previous})"
            )
        events = [] if insert else await self.store.planned_events_of(plan.id)
        run = self.executor.adopt(plan, events)
        if insert:
            await self.run_hooks(plan, "pending")
            await self.run_hooks(plan, "planning")
            await self.run_hooks(plan, "planned")
        await self.run_hooks(plan, "running")
        return run.future

    def _check_running(self) -> None:
        if not self._started or self.terminating:
            raise ExecutionRejected("the world is not running")

    # ---- delayed plans, chaining, planning elsewhere (spec §1.8) ------------------------------
    async def delay(
        self,
        action_class: type[Action],
        delay_options: DelayOptions | dict[str, Any] | None,
        *args: Any,
        **kwargs: Any,
    ) -> Scheduled:
        """Store a plan of ``action_class`` to be planned and executed later.

        ``delay_options`` is a ``DelayOptions(start_at, start_before, frozen)`` (or a dict of
        those, or None: as soon as possible); ``args``/``kwargs`` go to ``plan()`` then, through
        the serializer the action's ``delay()`` returns. The plan is ``scheduled`` at once;
        returns ``Scheduled``. A serializer that fails stops the plan (root step ``error``).
        """
        return await self.delay_with_options(
            action_class, delay_options=delay_options, args=args, kwargs=kwargs
        )

    async def delay_with_options(
        self,
        action_class: type[Action],
        *,
        delay_options: DelayOptions | dict[str, Any] | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        id: str | None = None,
        caller_action: Action | None = None,
        prerequisites: list[str] | tuple[str, ...] = (),
    ) -> Scheduled:
        self._check_running()
        return await delayed.delay(
            self,
            action_class,
            DelayOptions.coerce(delay_options),
            args,
            kwargs or {},
            id=id,
            caller_action=caller_action,
            prerequisites=prerequisites,
        )

    async def chain(
        self,
        prerequisites: str | list[str] | tuple[str, ...],
        action_class: type[Action],
        *args: Any,
        **kwargs: Any,
    ) -> Scheduled:
        """A delayed plan that starts once every prerequisite plan is ``stopped``; it fails
        (history "failed-dependency") if one of them stopped with result ``error``."""
        ids = [prerequisites] if isinstance(prerequisites, str) else list(prerequisites)
        return await self.delay_with_options(
            action_class, args=args, kwargs=kwargs, prerequisites=ids
        )

    async def plan_elsewhere(
        self, action_class: type[Action], *args: Any, **kwargs: Any
    ) -> Scheduled:
        """Return at once with ``Scheduled``; the plan is planned and executed by this world's
        executor right after (or, should this process die first, by the delayed executor)."""
        scheduled = await self.delay_with_options(action_class, args=args, kwargs=kwargs)
        self.executor.spawn(self.delayed_executor.plan(scheduled.id), f"plan {scheduled.id}")
        return scheduled

    async def set_delayed_frozen(
        self, plan_id: str, frozen: bool, start_at: Any = delayed.KEEP
    ) -> bool:
        """Freeze (never start) or unfreeze a delayed plan; ``start_at`` moves its start time.
        False if the plan has no delayed record."""
        return await delayed.set_frozen(self, plan_id, frozen, start_at)

    async def delayed_plan(self, plan_id: str) -> dict[str, Any] | None:
        """The delayed record of a plan: ``start_at``, ``start_before``, ``frozen``,
        ``args_serializer``, ``serialized_args`` (None once it was planned or cancelled)."""
        return await self.store.delayed.load(plan_id)

    async def dependencies(self, plan_id: str) -> list[str]:
        """Ids of the plans ``plan_id`` waits for (its prerequisites, see ``chain``)."""
        return await self.store.delayed.dependencies(plan_id)

    async def blocks(self, plan_id: str) -> list[str]:
        """Ids of the plans that wait for ``plan_id`` (chained to it)."""
        return await self.store.delayed.blocked_plans(plan_id)

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
        run.arm_timer(event_id, step_id, event, deliver_at, optional)

    # ---- operations --------------------------------------------------------------------------
    async def cancel(self, plan_id: str, force: bool = False) -> int:
        """Send Cancel (Abort when ``force``) to every cancellable step; returns how many.

        A ``scheduled`` (delayed) plan is cancelled instead: its root step becomes
        ``cancelled``, the plan ``stopped`` with result ``cancelled`` (returns 1).
        """
        run = self.executor.runs.get(plan_id)
        if run is None:
            return await delayed.cancel(self, plan_id)
        return run.cancel(force)

    async def halt(self, plan_id: str) -> str:
        """Stop a plan for good (spec §1.9), whatever its steps are doing; returns its state.

        Takes the plan's execution inhibition lock. A plan this world runs stops dispatching,
        lets the steps that are executing finish and ends ``stopped`` (suspended steps stay
        suspended) — or ``paused`` if a step had failed; a plan that is not running
        (pending, planned, paused, scheduled) is stopped at once; a plan another world runs is
        halted by that world at its next heartbeat (then ``running`` is returned). An inhibited
        plan is never executed again. Raises ``PlanNotFound`` for an unknown id.
        """
        return await halt.halt(self, plan_id)

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

    async def plan_output_chunks(self, plan_id: str, after_id: int = 0) -> list[dict[str, Any]]:
        """Every output chunk of the plan newer than chunk ``after_id`` (each with its
        ``action_id`` and ``id``), oldest first: one query for a whole plan's output."""
        return await self.store.load_plan_output_chunks(plan_id, after_id)

    async def plan_counts(
        self, filters: dict[str, Any] | None = None, group_by: tuple[str, ...] = ("state",)
    ) -> dict[tuple[Any, ...], int]:
        """Plans matching ``filters`` counted per value of ``group_by``, e.g.
        ``{("running", "pending"): 3, ...}`` for ``("state", "result")``. Filters are those of
        ``find_plans``, plus ``search``: the label contains it or the id starts with it."""
        return await self.store.plan_counts(filters, group_by)

    async def plan_labels(self, limit: int = 500) -> list[str]:
        """The distinct labels of stored plans, sorted."""
        return await self.store.plan_labels(limit)

    async def sub_plan_counts(self, plan_id: str) -> dict[int | None, int]:
        """How many sub-plans each action of the plan spawned: ``{caller_action_id: n}``."""
        return await self.store.sub_plan_counts(plan_id)

    async def worlds(self) -> list[dict[str, Any]]:
        """The executor worlds registered in the database (this one included): ``id``,
        ``meta`` (hostname, pid, queues, last_seen), ``active``, ``alive`` (its heartbeat is
        recent and its process runs), ``current`` (this world) and ``executing`` (plans it
        holds the execution lock of)."""
        records = await self.store.find_records(cls=WORLD_RECORD)
        executing: dict[str, int] = {}
        for lock in await self.store.find_records(cls=EXECUTION_LOCK):
            owner = str(lock["owner_id"])
            executing[owner] = executing.get(owner, 0) + 1
        result = []
        for record in records:
            data = record.get("data") or {}
            current = record["id"] == self.id
            result.append(
                {
                    "id": record["id"],
                    "meta": data.get("meta") or {},
                    "active": bool(data.get("active", True)),
                    "alive": current or not recovery.is_dead(self, record),
                    "current": current,
                    "executing": executing.get(record["id"], 0),
                }
            )
        return result

    async def invalidate_dead_worlds(self) -> int:
        """Forget worlds that are gone and recover the plans they were executing (as at
        start); returns how many worlds were invalidated."""
        return await recovery.invalidate_dead_worlds(self)

    def execution_status(self) -> dict[str, dict[str, int]]:
        return self.executor.status()

    def store_failure(self) -> StoreFailure | None:
        """Why the database cannot be used now (cause and since when), None while it works.

        Set by a failed write or by :meth:`report_store_failure`, cleared by the next commit.
        """
        return self.store.health.failure

    def report_store_failure(self, exc: BaseException) -> str | None:
        """The cause when ``exc`` says the database cannot be used (recorded in
        :meth:`store_failure`, logged once per outage), None for any other error."""
        cause = store_failure_cause(exc)
        if cause is not None:
            self.store.health.failed(cause)
        return cause

    def is_running(self, plan_id: str) -> bool:
        return plan_id in self.executor.runs
