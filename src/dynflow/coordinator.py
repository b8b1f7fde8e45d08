"""The coordinator's kinds: every lock and record the engine keeps (Dynflow's ``coordinator.rb``).

Locks and records are rows of ``dynflow_coordinator_records``, keyed by ``(id, class)``; the
constants below are what the ``class`` column holds. Taking a lock is an ``INSERT ... ON
CONFLICT DO NOTHING`` guard (``store.acquire_lock`` / ``acquire_lock_stmt``), so two worlds
sharing a database never both get it; releasing one deletes the row, guarded on its owner where
the owner is known (``release_lock``, ``release_locks_of_owner_stmt``).

Every kind says who takes it, what its id and its owner are, and when it is released. The code
that takes and releases them lives with its user (``world``, ``executor``, ``locks``,
``singleton``, ``halt``, ``delayed``, ``delayed_executor``, ``cleaner``, ``recovery``); this
module holds only the names and the ids, and imports nothing of the rest of ``dynflow``, so any
module may import it.

Owners are either a world (its id; ``world:<id>`` for its own record) or an execution plan
(``execution-plan:<uuid>``, :func:`plan_owner`). What a world owns is released when it stops or,
once it is dead, by the recovery of another world (or of its next start); what a plan owns is
released when the plan pauses or stops.
"""

from __future__ import annotations

from typing import Final

# ---- records -------------------------------------------------------------------------------------
WORLD_RECORD: Final = "ExecutorWorld"
"""A world's registration (Dynflow's ``ExecutorWorld``).

Id: the world's id; owner: ``world:<id>`` (:func:`world_owner`); data: its meta (hostname, pid,
queues, ``last_seen``), ``last_seen_epoch`` and ``active``. Written by ``World.start``, its data
rewritten at every heartbeat (``heartbeat_interval``). Released by ``World.stop``; a world that
died without stopping is invalidated by another world's recovery (or by the next start on this
host): its record is released when its process is gone or its heartbeat is older than
``world_timeout``, and then everything it owned is recovered or released. The other kinds read
it to tell a live owner from a dead one.
"""

# ---- locks held by an execution plan -------------------------------------------------------------
SINGLETON_LOCK: Final = "SingletonActionLock"
"""One active plan per singleton action class (``dynflow.singleton``).

Id: ``singleton-action:<class name>`` (:func:`singleton_lock_id`); owner: the plan
(``execution-plan:<uuid>``); data: :func:`dynflow.locks.lock_data`. Requested while planning
(``Singleton.request_singleton_lock``) and taken together with the first store of the plan
(``locks.take_planning_locks``: "Action X is already active" if another plan holds it); taken
again when the run starts unless the plan still holds it (``Singleton.singleton_lock``).
Released when the plan pauses or stops (``locks.end_stmts``), when it is halted without running
(``halt.stop_directly``), by the action itself (``Singleton.singleton_unlock``), by recovery
when the plan of a dead world was never stored, and at world start for plans gone, paused or
stopped (``locks.clean_orphaned_locks``).
"""

INHIBITION_LOCK: Final = "ExecutionInhibitionLock"
"""A halted plan: it is never executed again (``dynflow.halt``).

Id and owner: the plan (``execution-plan:<uuid>``, :func:`plan_owner`); data:
``{"execution_plan_id"}``. Taken by ``world.halt``. Looked for by ``world.execute`` (an
inhibited plan is stopped instead), by the delayed planning, and by every heartbeat of the
world running the plan (``halt.check_inhibitions``: plans other worlds asked to halt).
Released when the plan stops (``locks.end_stmts`` with ``halted``, ``halt.stop_directly``), when
it is already stopped or gone, and at world start for plans gone or stopped
(``locks.clean_orphaned_locks``).
"""

# ---- locks held by a world -----------------------------------------------------------------------
EXECUTION_LOCK: Final = "ExecutionLock"
"""The world executing a plan right now (Dynflow's ``ExecutionLock``).

Id: ``execution-plan:<uuid>`` (:func:`execution_lock_id`); owner: the world's id; data:
``{"world_id", "execution_plan_id"}``. Taken with the move to ``running`` in one guarded write
(``World.execute``/``trigger``, the start of a delayed plan): a plan another world executes is
refused. Released with the plan's last save when its run ends (paused, stopped, or parked by a
graceful stop of the world). A dead world's are released by recovery, in the write that pauses
the plan (guarded on the lock: of two worlds recovering it, one wins); the plan is then rescued
or executed again.
"""

PLANNING_LOCK: Final = "PlanningLock"
"""A delayed plan being planned (``dynflow.delayed``).

Id: ``execution-plan:<uuid>`` (:func:`planning_lock_id`); owner: the world's id; data:
``{"world_id", "execution_plan_id"}``. Taken by the delayed executor's world together with the
guarded move ``scheduled`` → ``planning`` (``delayed.plan_delayed``), so a plan is planned once.
Released in the transaction that stores the planned plan (and starts it); a dead world's is
released by recovery, which puts the plan back to ``scheduled`` (``delayed.repair``).
"""

DELAYED_EXECUTOR_LOCK: Final = "DelayedExecutorLock"
"""The one world of a cluster running the delayed executor (``dynflow.delayed_executor``).

Id: ``delayed-executor`` (:data:`DELAYED_EXECUTOR_ID`); owner: the world's id; data:
``{"world_id"}``. Taken (or kept) by ``DelayedExecutor.hold`` at every tick, and taken over
from an owner that is dead (no world record, its process gone on this host, or its heartbeat
older than ``world_timeout``). Released by ``DelayedExecutor.release`` when the world stops; a
dead world's by recovery.
"""

CLEANER_LOCK: Final = "ExecutionPlanCleanerLock"
"""The world cleaning old plans right now (``dynflow.cleaner``).

Id: ``execution-plan-cleaner`` (:data:`CLEANER_ID`); owner: the world's id; data:
``{"world_id"}``. Taken by ``Cleaner.clean`` for one round (another world holding it: no round
here); released at the end of the round; a dead world's by recovery (a stale one stopped every
world from cleaning).
"""

WORLD_OWNED_LOCKS: Final = (PLANNING_LOCK, DELAYED_EXECUTOR_LOCK, CLEANER_LOCK)
"""The locks a world holds for itself, released by recovery once it is dead (the execution
locks, also a world's, are recovered plan by plan)."""

DELAYED_EXECUTOR_ID: Final = "delayed-executor"
"""The id of the :data:`DELAYED_EXECUTOR_LOCK` (there is one)."""

CLEANER_ID: Final = "execution-plan-cleaner"
"""The id of the :data:`CLEANER_LOCK` (there is one)."""

LOCK_ERROR: Final = "Dynflow::Coordinator::LockError"
"""The error class of a plan step whose lock another owner holds (a planning lock conflict)."""


# ---- ids and owners ------------------------------------------------------------------------------
def plan_owner(plan_id: str) -> str:
    """The owner id of the locks a plan holds (:data:`SINGLETON_LOCK`,
    :data:`INHIBITION_LOCK`), also the id of its inhibition lock."""
    return f"execution-plan:{plan_id}"


def world_owner(world_id: str) -> str:
    """The owner id of a world's :data:`WORLD_RECORD`."""
    return f"world:{world_id}"


def execution_lock_id(plan_id: str) -> str:
    """The id of a plan's :data:`EXECUTION_LOCK`."""
    return f"execution-plan:{plan_id}"


def planning_lock_id(plan_id: str) -> str:
    """The id of a delayed plan's :data:`PLANNING_LOCK`."""
    return f"execution-plan:{plan_id}"


def singleton_lock_id(action_class_name: str) -> str:
    """The id of the :data:`SINGLETON_LOCK` of an action class (by its name)."""
    return f"singleton-action:{action_class_name}"
