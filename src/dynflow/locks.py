"""Coordinator locks of plans: singleton-action locks and execution inhibition (spec §1.9, §3.4).

The kinds (who takes each, its id and owner, when it is released) are in
:mod:`dynflow.coordinator`; this module takes and releases the ones a plan holds:

* the locks planning asked for (singleton actions), taken together with the first store of the
  plan (``take_planning_locks``: "Action X is already active" if another plan holds one);
* what a plan entering ``paused`` or ``stopped`` releases (``end_stmts``): its singleton locks,
  and its inhibition lock once it stops after a halt;
* ``clean_orphaned_locks`` (run at world start, after recovery) releases singleton locks whose
  plan is gone, paused or stopped, and inhibition locks whose plan is gone or stopped.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from .coordinator import INHIBITION_LOCK, LOCK_ERROR, SINGLETON_LOCK, WORLD_RECORD, plan_owner
from .step import plain_error

if TYPE_CHECKING:
    from .execution_plan import ExecutionPlan, LockRequest
    from .persistence.store import Store
    from .persistence.writer import Stmt

log = logging.getLogger("dynflow.locks")


class LockingWorld(Protocol):
    """What the functions here use of the world (``dynflow.world.World`` is one)."""

    @property
    def id(self) -> str: ...
    @property
    def store(self) -> Store: ...


# A lock whose plan is not stored (yet) is left alone this long: planning takes the locks just
# before it stores the plan.
ORPHAN_GRACE = 60.0


def lock_data(plan_id: str, world_id: str | None = None) -> dict[str, Any]:
    """The data of a plan's lock; ``world_id``: the world taking it (a lock whose plan is not
    stored and whose world is gone is released at once, not after :data:`ORPHAN_GRACE`)."""
    data: dict[str, Any] = {"execution_plan_id": plan_id, "acquired_at": time.time()}
    if world_id is not None:
        data["world_id"] = world_id
    return data


def has_singletons(plan: ExecutionPlan) -> bool:
    return any(getattr(type(a), "singleton", False) for a in plan.actions.values())


def _unique(requests: list[LockRequest]) -> list[LockRequest]:
    seen: dict[tuple[str, str], LockRequest] = {}
    for request in requests:
        seen.setdefault((request.lock_class, request.lock_id), request)
    return list(seen.values())


async def take_planning_locks(world: LockingWorld, plan: ExecutionPlan) -> list[Stmt] | None:
    """Take the locks planning asked for, all in one transaction; returns the statements that
    release them.

    If another plan holds one, nothing is taken and None is returned: the requesting action's
    plan step gets the error ("Action X is already active") and the plan is ``stopped`` in
    memory (the caller stores it).
    """
    requests = _unique(plan.lock_requests)
    if not requests:
        return []
    store = world.store
    stmts = [store.acquire_lock_stmt(r.lock_class, r.lock_id, r.owner, r.data) for r in requests]
    if await store.write(plan.id, stmts):
        return [store.release_lock_stmt(r.lock_class, r.lock_id, r.owner) for r in requests]
    conflict = requests[0]
    for request in requests:
        held = await store.find_records(cls=request.lock_class, record_id=request.lock_id)
        if held and held[0]["owner_id"] != request.owner:
            conflict = request
            break
    action = plan.actions.get(conflict.action_id)
    step = plan.steps.get(action.plan_step_id) if action is not None else None
    if step is None:
        step = plan.steps[plan.root_plan_step_id or 1]
    step.state = "error"
    step.error = plain_error(conflict.message, LOCK_ERROR)
    plan.set_state("stopped", world_id=world.id)
    log.info("planning of %s failed: %s", plan.id, conflict.message)
    return None


async def acquire_planning_locks(world: LockingWorld, plan: ExecutionPlan) -> bool:
    """:func:`take_planning_locks` for a plan not stored yet: on a conflict the plan is stored
    ``stopped`` and False is returned."""
    if await take_planning_locks(world, plan) is not None:
        return True
    await world.store.write(plan.id, world.store.insert_plan_stmts(plan))
    return False


def end_stmts(store: Store, plan: ExecutionPlan, state: str, *, halted: bool = False) -> list[Stmt]:
    """What a plan entering ``state`` releases: its singleton locks (paused, stopped) and, once
    stopped after a halt, its inhibition lock."""
    stmts: list[Stmt] = []
    owner = plan_owner(plan.id)
    if state in ("paused", "stopped") and has_singletons(plan):
        stmts.append(store.release_locks_of_owner_stmt(SINGLETON_LOCK, owner))
    if state == "stopped" and halted:
        stmts.append(store.release_lock_stmt(INHIBITION_LOCK, owner, owner))
    return stmts


async def is_inhibited(store: Store, plan_id: str) -> bool:
    owner = plan_owner(plan_id)
    return bool(await store.find_records(cls=INHIBITION_LOCK, record_id=owner))


async def clean_orphaned_locks(world: LockingWorld) -> int:
    """Release singleton and inhibition locks nobody needs any more; returns how many."""
    store = world.store
    records = [
        *await store.find_records(cls=SINGLETON_LOCK),
        *await store.find_records(cls=INHIBITION_LOCK),
    ]
    if not records:
        return 0

    def plan_of(record: dict[str, Any]) -> str:
        data = record.get("data") or {}
        plan_id = data.get("execution_plan_id")
        if isinstance(plan_id, str):
            return plan_id
        return str(record["owner_id"]).removeprefix("execution-plan:")

    statuses = await store.plan_statuses({"uuid": sorted({plan_of(r) for r in records})})
    live = {r["id"] for r in await store.find_records(cls=WORLD_RECORD)}
    now = time.time()
    stmts = []
    for record in records:
        status = statuses.get(plan_of(record))
        if status is None:
            data = record.get("data") or {}
            acquired = data.get("acquired_at")
            planner_alive = data.get("world_id") in live if "world_id" in data else True
            recent = isinstance(acquired, int | float) and now - acquired < ORPHAN_GRACE
            if planner_alive and recent:
                continue
        elif record["class"] == SINGLETON_LOCK and status["state"] not in ("paused", "stopped"):
            continue
        elif record["class"] == INHIBITION_LOCK and status["state"] != "stopped":
            continue
        log.warning("releasing orphaned %s %s", record["class"], record["id"])
        stmts.append(store.release_lock_stmt(record["class"], record["id"], record["owner_id"]))
    if stmts:
        await store.write("orphaned-locks", stmts)
    return len(stmts)
