"""Execution inhibition: ``world.halt(plan_id)`` stops a plan for good (spec §1.9).

Halting takes the plan's ``ExecutionInhibitionLock`` first, then:

* a plan this world runs stops dispatching at once (its events are rejected from now on), lets
  the steps that are executing finish, and ends ``stopped`` (suspended steps stay
  ``suspended``; the result is whatever the steps say, e.g. ``pending``) — or ``paused`` if it
  already had a failed step: the lock then stops it at the next attempt to execute it;
* a plan run by another world sharing the database is halted by that world, which looks for
  inhibition locks of its running plans at every heartbeat;
* a plan that is not running (``pending``, ``planned``, ``paused``, ``scheduled``) is set
  ``stopped`` directly (a scheduled plan's delayed record is deleted).

An inhibited plan is never executed again: ``execute`` rejects it and stops it. The lock is
released when the plan becomes ``stopped``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from .coordinator import INHIBITION_LOCK, SINGLETON_LOCK, plan_owner
from .errors import PlanNotFound

if TYPE_CHECKING:
    from .execution_plan import ExecutionPlan
    from .executor import Executor
    from .persistence.store import Store

log = logging.getLogger("dynflow.halt")


class HaltingWorld(Protocol):
    """What halting uses of the world (``dynflow.world.World`` is one)."""

    @property
    def id(self) -> str: ...
    @property
    def store(self) -> Store: ...
    @property
    def executor(self) -> Executor: ...
    async def run_hooks(self, plan: ExecutionPlan, state: str) -> None: ...


STOPPABLE = ("pending", "planned", "paused", "scheduled")


async def halt(world: HaltingWorld, plan_id: str) -> str:
    """Halt ``plan_id``; returns its state afterwards (``running`` if another world runs it
    and will halt it at its next heartbeat)."""
    store = world.store
    statuses = await store.plan_statuses({"uuid": [plan_id]})
    if plan_id not in statuses:
        raise PlanNotFound(f"execution plan {plan_id} not found")
    owner = plan_owner(plan_id)
    await store.acquire_lock(INHIBITION_LOCK, owner, owner, {"execution_plan_id": plan_id})
    run = world.executor.runs.get(plan_id)
    if run is not None:
        log.info("halting plan %s", plan_id)
        halted = await run.halt()
        return halted.state
    plan = await store.load_plan(plan_id, world)
    if plan is None:
        await store.release_lock(INHIBITION_LOCK, owner, owner)
        raise PlanNotFound(f"execution plan {plan_id} not found")
    if plan.state == "stopped":
        await store.release_lock(INHIBITION_LOCK, owner, owner)
    elif plan.state in STOPPABLE and not await stop_directly(world, plan):
        statuses = await store.plan_statuses({"uuid": [plan_id]})
        return str(statuses.get(plan_id, {}).get("state", plan.state))
    return plan.state


async def stop_directly(world: HaltingWorld, plan: ExecutionPlan) -> bool:
    """A plan nobody executes → ``stopped``, releasing its locks (and a delayed record).

    False if a scheduled plan was claimed for planning meanwhile (its executor halts it).
    """
    store = world.store
    owner = plan_owner(plan.id)
    scheduled = plan.state == "scheduled"
    plan.set_state("stopped", world_id=world.id)
    stmts = [
        store.update_plan_stmt(plan),
        store.delete_plan_events_stmt(plan.id),
        store.release_locks_of_owner_stmt(SINGLETON_LOCK, owner),
        store.release_lock_stmt(INHIBITION_LOCK, owner, owner),
    ]
    delayed_store = getattr(store, "delayed", None)
    if scheduled and delayed_store is not None:
        # Only if the delayed executor did not start planning it meanwhile.
        stmts[0] = delayed_store.guarded_state_stmt(plan, "scheduled")
        stmts.append(delayed_store.delete_stmt(plan.id))
    if not await store.write(plan.id, stmts):
        log.info("plan %s left scheduled while being halted; its executor halts it", plan.id)
        return False
    if scheduled:
        plan.delayed = None
    log.info("plan %s halted", plan.id)
    await world.run_hooks(plan, "stopped")
    return True


async def check_inhibitions(world: HaltingWorld) -> int:
    """Halt the running plans of this world another world asked to halt; returns how many."""
    runs = world.executor.runs
    if not runs:
        return 0
    count = 0
    for lock in await world.store.find_records(cls=INHIBITION_LOCK):
        plan_id = (lock.get("data") or {}).get("execution_plan_id")
        run = runs.get(plan_id) if isinstance(plan_id, str) else None
        if run is not None and not run.halting:
            world.executor.spawn(run.halt(), f"halt {plan_id}")
            count += 1
    return count
