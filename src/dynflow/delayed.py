"""Delayed plans, argument serializers, chaining and ``plan_elsewhere`` (spec §1.8, §1.10).

A delayed plan is stored right away with only its root plan step (``scheduling`` →
``pending``) and a delayed record (when to start, the serialised arguments, frozen or not, and,
for a chained plan, one dependency row per prerequisite); the plan is ``scheduled``. When it is
due, the delayed executor (``delayed_executor``) of one world plans it: the move
``scheduled`` → ``planning`` is a guarded write that also takes the plan's planning lock, so a
plan is planned once even if two worlds try; planning, the start of the execution and the
deletion of the record then share one transaction.

The arguments go through an *args serializer*: the root action's ``delay(delay_options, *args,
**kwargs)`` returns one (``JsonArgs`` by default: the arguments as JSON values). A custom one
turns, say, objects into ids when the plan is delayed and back when it is planned. The
serializers and ``DelayOptions`` are defined in ``dynflow.serializers`` (below ``dynflow.action``)
and can be imported from here too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from . import locks
from .action import Action, resolve_class
from .coordinator import EXECUTION_LOCK, PLANNING_LOCK, execution_lock_id, planning_lock_id
from .errors import DynflowError, NotSerializable, PlanNotFound
from .execution_plan import ExecutionPlan
from .middleware import delay_chain
from .serialization import format_time, utcnow
from .serializers import ArgsSerializer, DelayOptions, TimeSpec, serializer_class
from .serializers import JsonArgs as JsonArgs  # re-exported: ``dynflow.delayed.JsonArgs``
from .step import PlanStep, error_hash, plain_error

if TYPE_CHECKING:
    from .persistence.writer import Stmt
    from .world import World

log = logging.getLogger("dynflow.delayed")

HISTORY_TIMEOUT = "timeout"
HISTORY_FAILED_DEPENDENCY = "failed-dependency"
HISTORY_CANCELLED = "Delayed task cancelled"


def _absolute(value: TimeSpec, now: datetime) -> datetime | None:
    """A start time as naive UTC: a datetime (naive ones are UTC), a timedelta or a number of
    seconds from ``now``."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            return value.astimezone(UTC).replace(tzinfo=None)
        return value
    if isinstance(value, timedelta):
        return now + value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return now + timedelta(seconds=float(value))
    raise TypeError(f"a start time is a datetime, a timedelta or seconds, not {value!r}")


@dataclass
class Scheduled:
    """What ``delay``, ``chain`` and ``plan_elsewhere`` return (spec §1.10)."""

    execution_plan_id: str
    world: World | None = field(default=None, repr=False, compare=False)

    triggered = False
    planned = False
    scheduled = True

    @property
    def id(self) -> str:
        return self.execution_plan_id

    async def wait(self, timeout: float | None = None, poll: float = 0.05) -> ExecutionPlan:
        """Wait until the plan has run (``stopped``, or ``paused`` on an error); executed by
        this world it resolves at once, otherwise the store is polled."""
        assert self.world is not None, "Scheduled.wait needs the world"
        return await asyncio.wait_for(wait_for_end(self.world, self.id, poll), timeout)


async def wait_for_end(world: World, plan_id: str, poll: float = 0.05) -> ExecutionPlan:
    while True:
        run = world.executor.runs.get(plan_id)
        if run is not None:
            return await asyncio.shield(run.future)
        plan = await world.store.load_plan(plan_id, world)
        if plan is None:
            raise PlanNotFound(f"execution plan {plan_id} not found")
        if plan.state in ("stopped", "paused") and not world.is_running(plan_id):
            return plan
        await asyncio.sleep(poll)
        poll = min(poll * 1.5, 1.0)


def _call_delay(
    world: World,
    action: Action,
    options: DelayOptions,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """``action.delay(...)`` through the ``delay`` middleware of its class."""
    return delay_chain(
        world.middleware_for(type(action)), action, action.delay, options, *args, **kwargs
    )


# ---- delay ---------------------------------------------------------------------------------------
async def delay(
    world: World,
    action_class: type[Action],
    options: DelayOptions,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    id: str | None = None,
    caller_action: Action | None = None,
    prerequisites: Iterable[str] = (),
) -> Scheduled:
    """Store a delayed plan (spec §1.8); see ``World.delay``. When the action's ``delay`` or
    its arguments' serializer fails, the plan is stored stopped/error and the error raised."""
    if not (isinstance(action_class, type) and issubclass(action_class, Action)):
        raise TypeError(f"{action_class!r} is not an Action class")
    store = world.store
    now = utcnow()
    start_at = _absolute(options.start_at, now)
    start_before = _absolute(options.start_before, now)
    prerequisites = list(dict.fromkeys(prerequisites))
    if prerequisites:
        missing = set(prerequisites) - await store.delayed.existing(prerequisites)
        if missing:
            raise PlanNotFound(f"prerequisite execution plans not found: {sorted(missing)}")
    plan = ExecutionPlan.new(world, id)
    action = plan.add_plan_step(action_class, None, caller_action)
    plan.root_plan_step_id = action.plan_step_id
    step = plan.steps[action.plan_step_id]
    step.state = "scheduling"
    action.phase = "delay"
    serializer: ArgsSerializer | None = None
    serialized: Any = None
    failure: Exception | None = None
    try:
        serializer = _call_delay(world, action, options, args, kwargs)
        if not isinstance(serializer, ArgsSerializer):
            raise DynflowError(
                f"{action.name()}.delay must return an ArgsSerializer, not {serializer!r}"
            )
        serialized = serializer.serialize_args()
        step.set_state("pending")
    except Exception as exc:  # noqa: BLE001 - stored as the plan's error, then raised
        failure = exc
        if isinstance(exc, NotSerializable):
            message = f"arguments of {action.name()} are not serialisable: {exc}"
            step.error = error_hash(exc, message)
        else:
            step.error = error_hash(exc)
        step.set_state("error")
        log.warning("delaying %s failed: %s", action.name(), exc)
    action.phase = "present"
    try:
        plan.label = action.label
    except Exception:  # noqa: BLE001 - a label needing the input is not known yet
        plan.label = action.name()
    stmts: list[Stmt]
    if step.state == "error":
        plan.set_state("stopped", world_id=world.id)
        stmts = store.insert_plan_stmts(plan)
    else:
        assert serializer is not None
        plan.set_state("scheduled", world_id=world.id)
        stmts = store.insert_plan_stmts(plan)
        stmts.append(
            store.delayed.insert_stmt(
                plan.id,
                start_at,
                start_before,
                type(serializer).name(),
                serialized,
                bool(options.frozen),
            )
        )
        stmts.extend(store.delayed.dependency_stmts(plan.id, prerequisites))
        plan.delayed = {
            "start_at": format_time(start_at),
            "start_before": format_time(start_before),
            "frozen": bool(options.frozen),
        }
    await store.write(plan.id, stmts)
    await world.run_hooks(plan, "pending")
    await world.run_hooks(plan, plan.state)
    if failure is not None:
        raise failure  # as Dynflow: the plan is stored stopped/error and the caller learns why
    if plan.state == "scheduled" and not options.frozen:
        world.delayed_executor.notify(start_at, prerequisites)
    return Scheduled(plan.id, world)


# ---- ending a delayed plan without planning it ---------------------------------------------------
async def _stop_unplanned(
    world: World, plan: ExecutionPlan, step_state: str, error: dict[str, Any] | None, history: str
) -> bool:
    """Scheduled → stopped with the root step ``error`` or ``cancelled`` (one guarded write)."""
    store = world.store
    step = plan.steps.get(plan.root_plan_step_id or 1)
    stmts: list[Stmt] = []
    if step is not None:
        step.state = step_state
        step.error = error
    plan.set_state("stopped", history=history, world_id=world.id)
    stmts.append(store.delayed.guarded_state_stmt(plan, "scheduled"))
    if step is not None:
        stmts.append(store.update_step_stmt(step))
    stmts.append(store.delayed.delete_stmt(plan.id))
    if not await store.write(plan.id, stmts):
        return False
    plan.delayed = None
    await world.run_hooks(plan, "stopped")
    return True


async def cancel(world: World, plan_id: str) -> int:
    """Cancel a scheduled plan: root step ``cancelled``, plan ``stopped``/``cancelled``."""
    plan = await world.store.load_plan(plan_id, world)
    if plan is None or plan.state != "scheduled":
        return 0
    stopped = await _stop_unplanned(world, plan, "cancelled", None, HISTORY_CANCELLED)
    return 1 if stopped else 0


# ---- planning a delayed plan ---------------------------------------------------------------------
async def plan_delayed(world: World, plan_id: str) -> asyncio.Future[ExecutionPlan] | None:
    """Plan a scheduled plan and start executing it (spec §1.8, the planning work item).

    Returns the future of its end, or None when it was not planned here: gone, not
    ``scheduled``, claimed by another world, or stopped instead (failed prerequisite, missed
    ``start_before``, planning error).
    """
    store = world.store
    if world.terminating:
        return None
    record = await store.delayed.load(plan_id)
    plan = await store.load_plan(plan_id, world)
    if record is None or plan is None or plan.state != "scheduled":
        return None
    failed = await store.delayed.failed_prerequisites(plan_id)
    if failed:
        bullets = "\n".join(f"- {uuid}" for uuid in failed)
        message = (
            "Execution plan could not be started because some of its prerequisite execution "
            f"plans failed:\n{bullets}"
        )
        await _stop_unplanned(world, plan, "error", plain_error(message), HISTORY_FAILED_DEPENDENCY)
        return None
    start_before = record["start_before"]
    if start_before is not None and start_before < utcnow():
        message = (
            f"Execution plan could not be started before set time ({format_time(start_before)} UTC)"
        )
        await _stop_unplanned(world, plan, "error", plain_error(message), HISTORY_TIMEOUT)
        return None

    # Claim: scheduled -> planning and the planning lock, or nothing (someone else has it).
    lock_id = planning_lock_id(plan_id)
    plan.set_state("planning", world_id=world.id)
    claimed = await store.write(
        plan_id,
        [
            store.delayed.guarded_state_stmt(plan, "scheduled"),
            store.release_lock_stmt(PLANNING_LOCK, lock_id),  # a stale one: the plan is ours
            store.acquire_lock_stmt(
                PLANNING_LOCK,
                lock_id,
                world.id,
                {"world_id": world.id, "execution_plan_id": plan_id},
            ),
        ],
    )
    if not claimed:
        log.debug("delayed plan %s is planned elsewhere", plan_id)
        return None
    return await _plan_claimed(world, plan, record)


async def _plan_claimed(
    world: World, stored: ExecutionPlan, record: dict[str, Any]
) -> asyncio.Future[ExecutionPlan] | None:
    store = world.store
    plan_id = stored.id
    lock_id = planning_lock_id(plan_id)
    root = stored.root_action()
    root_step = stored.steps.get(stored.root_plan_step_id or 1)
    release = store.release_lock_stmt(PLANNING_LOCK, lock_id, world.id)
    release.guard = True  # lost the lock (declared dead meanwhile): leave the plan to the rescuer

    try:
        if root_step is None:
            raise DynflowError(f"delayed plan {plan_id} has no root plan step")
        action_class = resolve_class(root_step.action_class)
        serializer = serializer_class(record["args_serializer"])()
        args, kwargs = serializer.deserialize_args(record["serialized_args"])
        plan = ExecutionPlan(
            plan_id,
            world=world,
            state="scheduled",
            execution_history=list(stored.execution_history),
        )
        plan.plan(
            action_class,
            args,
            kwargs,
            initial_input=root.input if root is not None and root.input else None,
        )
    except Exception as exc:  # noqa: BLE001 - unreadable arguments (or worse) fail the plan
        log.warning("delayed plan %s cannot be planned: %s", plan_id, exc)
        if root_step is not None:
            root_step.state = "error"
            root_step.error = error_hash(exc)
        stored.set_state("stopped", world_id=world.id)
        stmts = [release, store.update_plan_stmt(stored), store.delayed.delete_stmt(plan_id)]
        if root_step is not None:
            stmts.append(store.update_step_stmt(root_step))
        if await store.write(plan_id, stmts):
            await world.run_hooks(stored, "stopped")
        return None

    new_root = plan.root_action()
    if new_root is not None and root is not None:
        new_root.caller_execution_plan_id = root.caller_execution_plan_id
        new_root.caller_action_id = root.caller_action_id
    end: list[Stmt] = []
    taken: list[Stmt] = []
    if plan.state == "planned" and await locks.is_inhibited(store, plan_id):
        # halted while it was being planned: it never runs
        plan.set_state("stopped", world_id=world.id)
        end = locks.end_stmts(store, plan, "stopped", halted=True)
    elif plan.state == "planned":
        taken = await locks.take_planning_locks(world, plan) or []
    if plan.state == "planned":
        plan.set_state("running", world_id=world.id)
        stmts = [
            release,
            store.acquire_lock_stmt(
                EXECUTION_LOCK,
                execution_lock_id(plan_id),
                world.id,
                {"world_id": world.id, "execution_plan_id": plan_id},
            ),
            *store.delayed.replace_plan_stmts(plan),
            store.delayed.delete_stmt(plan_id),
        ]
        if not await store.write(plan_id, stmts):
            log.warning("delayed plan %s was taken from this world while planning", plan_id)
            if taken:
                await store.write(plan_id, taken)
            return None
        run = world.executor.adopt(plan, [])
        await world.run_hooks(plan, "planning")
        await world.run_hooks(plan, "planned")
        await world.run_hooks(plan, "running")
        return run.future
    stmts = [
        release,
        *store.delayed.replace_plan_stmts(plan),
        store.delayed.delete_stmt(plan_id),
        *end,
    ]
    if await store.write(plan_id, stmts):
        await world.run_hooks(plan, "planning")
        await world.run_hooks(plan, "stopped")
    return None


async def repair(world: locks.LockingWorld, plan_id: str, stale_owner: str | None) -> bool:
    """A plan left in ``planning`` by a world that died: back to ``scheduled`` (spec §1.8)."""
    store = world.store
    plan = await store.load_plan(plan_id, world, with_actions=False)
    if plan is None or plan.state != "planning":
        return False
    plan.state = "scheduled"  # the repair bypasses the transition check, as in the original
    stmts = [store.delayed.guarded_state_stmt(plan, "planning")]
    step = plan.steps.get(plan.root_plan_step_id or 1)
    if isinstance(step, PlanStep) and step.state != "pending":
        step.state = "pending"
        step.error = None
        stmts.append(store.update_step_stmt(step))
    stmts.append(store.release_lock_stmt(PLANNING_LOCK, planning_lock_id(plan_id), stale_owner))
    repaired = await store.write(plan_id, stmts)
    if repaired:
        log.warning("delayed plan %s was left in planning; scheduled again", plan_id)
    return repaired


KEEP: Any = object()


async def set_frozen(world: World, plan_id: str, frozen: bool, start_at: Any = KEEP) -> bool:
    """Freeze or unfreeze a delayed record; ``start_at`` (if given) moves its start."""
    store = world.store
    when: datetime | None = None
    if start_at is KEEP:
        stmt = store.delayed.set_frozen_stmt(plan_id, frozen)
    else:
        when = _absolute(start_at, utcnow())
        stmt = store.delayed.set_frozen_stmt(plan_id, frozen, when, move=True)
    changed = await store.write(plan_id, [stmt])
    if changed and not frozen:
        world.delayed_executor.notify(when, ())
    return changed
