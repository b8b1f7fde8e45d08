"""Stored delayed plans and dependencies between plans (spec §1.8, §4.1, §4.3).

``DelayedStore`` (``store.delayed``) builds the statements the writer commits (insert and delete
a delayed record, dependency rows, the guarded plan-state moves of a delayed plan, the wholesale
replacement of a delayed plan's rows once it is planned) and runs the queries of the delayed
executor: the ready records (due, not frozen, no unfinished prerequisite) joined with their
plan's state in one query, the next due time, the prerequisites still running, and the
dependency lookups.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import bindparam, delete, exists, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ..serialization import dumps, format_time, loads, parse_time
from .rows import INSERT_ACTION, INSERT_STEP, action_row, plan_row, plan_update_params, step_row
from .schema import (
    actions,
    delayed_plans,
    execution_plan_dependencies,
    execution_plans,
    plan_state_params,
    steps,
)
from .writer import Stmt

if TYPE_CHECKING:
    from ..execution_plan import ExecutionPlan

INSERT_DELAYED = insert(delayed_plans)
DELETE_DELAYED = delete(delayed_plans).where(
    delayed_plans.c.execution_plan_uuid == bindparam("b_uuid")
)
UPDATE_DELAYED_FROZEN = (
    update(delayed_plans)
    .where(delayed_plans.c.execution_plan_uuid == bindparam("b_uuid"))
    .values(frozen=bindparam("frozen"))
)
UPDATE_DELAYED_FROZEN_START = (
    update(delayed_plans)
    .where(delayed_plans.c.execution_plan_uuid == bindparam("b_uuid"))
    .values(frozen=bindparam("frozen"), start_at=bindparam("start_at"))
)
INSERT_DEPENDENCY = insert(execution_plan_dependencies)
# A plan-state move that only happens if the stored state still is ``b_from`` (a guard).
GUARDED_PLAN_STATE = (
    update(execution_plans)
    .where(
        execution_plans.c.uuid == bindparam("b_uuid"),
        execution_plans.c.state == bindparam("b_from"),
    )
    .values(**plan_state_params())
)
# The whole plan row, once a delayed plan has been planned.
UPDATE_PLAN_FULL = (
    update(execution_plans)
    .where(execution_plans.c.uuid == bindparam("b_uuid"))
    .values(
        **plan_state_params(),
        label=bindparam("label"),
        run_flow=bindparam("run_flow"),
        finalize_flow=bindparam("finalize_flow"),
        step_ids=bindparam("step_ids"),
        root_plan_step_id=bindparam("root_plan_step_id"),
    )
)
DELETE_PLAN_STEPS = delete(steps).where(steps.c.execution_plan_uuid == bindparam("b_uuid"))
DELETE_PLAN_ACTIONS = delete(actions).where(actions.c.execution_plan_uuid == bindparam("b_uuid"))


def delayed_info(row: Any) -> dict[str, Any]:
    """What the plan hash shows of a delayed record (spec §3.4, without the arguments)."""
    return {
        "start_at": format_time(parse_time(row.start_at)),
        "start_before": format_time(parse_time(row.start_before)),
        "frozen": bool(row.frozen),
    }


class Reader(Protocol):
    """What the queries need of the ``Store`` they are part of: its read connections."""

    def read(self) -> AbstractAsyncContextManager[AsyncConnection]: ...


class DelayedStore:
    """The delayed-plan and dependency part of the ``Store``."""

    def __init__(self, store: Reader) -> None:
        self.store = store

    # ---- statements ------------------------------------------------------------------------------
    @staticmethod
    def insert_stmt(
        plan_id: str,
        start_at: datetime | None,
        start_before: datetime | None,
        args_serializer: str,
        serialized_args: Any,
        frozen: bool,
    ) -> Stmt:
        return Stmt(
            INSERT_DELAYED,
            {
                "execution_plan_uuid": plan_id,
                "start_at": start_at,
                "start_before": start_before,
                "args_serializer": args_serializer,
                "serialized_args": dumps(serialized_args),
                "frozen": frozen,
            },
        )

    @staticmethod
    def delete_stmt(plan_id: str) -> Stmt:
        return Stmt(DELETE_DELAYED, {"b_uuid": plan_id})

    @staticmethod
    def set_frozen_stmt(
        plan_id: str, frozen: bool, start_at: datetime | None = None, *, move: bool = False
    ) -> Stmt:
        """Freeze or unfreeze a record; with ``move`` its ``start_at`` becomes ``start_at``."""
        if move:
            params = {"b_uuid": plan_id, "frozen": frozen, "start_at": start_at}
            return Stmt(UPDATE_DELAYED_FROZEN_START, params, guard=True)
        return Stmt(UPDATE_DELAYED_FROZEN, {"b_uuid": plan_id, "frozen": frozen}, guard=True)

    @staticmethod
    def dependency_stmts(plan_id: str, prerequisites: Iterable[str]) -> list[Stmt]:
        return [
            Stmt(INSERT_DEPENDENCY, {"execution_plan_uuid": plan_id, "blocked_by_uuid": p})
            for p in prerequisites
        ]

    @staticmethod
    def guarded_state_stmt(plan: ExecutionPlan, from_state: str) -> Stmt:
        """Save the plan's state (and timings, history) only if it is still ``from_state``."""
        params = {**plan_update_params(plan), "b_from": from_state}
        return Stmt(GUARDED_PLAN_STATE, params, guard=True)

    @staticmethod
    def replace_plan_stmts(plan: ExecutionPlan) -> list[Stmt]:
        """Swap the stored rows of a delayed plan (its root action and scheduling step) for
        the planned ones; the plan row is updated in place, so its delayed record and
        dependency rows stay."""
        row = plan_row(plan)
        params = {k: v for k, v in row.items() if k not in ("uuid", "class")}
        params["b_uuid"] = plan.id
        return [
            Stmt(DELETE_PLAN_STEPS, {"b_uuid": plan.id}),
            Stmt(DELETE_PLAN_ACTIONS, {"b_uuid": plan.id}),
            Stmt(UPDATE_PLAN_FULL, params),
            *(Stmt(INSERT_ACTION, action_row(a)) for a in plan.actions.values()),
            *(Stmt(INSERT_STEP, step_row(s)) for s in plan.steps.values()),
        ]

    # ---- queries ---------------------------------------------------------------------------------
    async def load(self, plan_id: str) -> dict[str, Any] | None:
        """The delayed record of a plan (spec §3.4), or None."""
        query = select(delayed_plans).where(delayed_plans.c.execution_plan_uuid == plan_id)
        async with self.store.read() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return {
            "execution_plan_uuid": row.execution_plan_uuid,
            "start_at": parse_time(row.start_at),
            "start_before": parse_time(row.start_before),
            "args_serializer": row.args_serializer,
            "serialized_args": loads(row.serialized_args),
            "frozen": bool(row.frozen),
        }

    @staticmethod
    async def info_of(conn: AsyncConnection, plan_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``delayed_info`` of each of ``plan_ids`` that has a record, read on ``conn``."""
        if not plan_ids:
            return {}
        query = select(
            delayed_plans.c.execution_plan_uuid,
            delayed_plans.c.start_at,
            delayed_plans.c.start_before,
            delayed_plans.c.frozen,
        ).where(delayed_plans.c.execution_plan_uuid.in_(list(plan_ids)))
        rows = (await conn.execute(query)).all()
        return {r.execution_plan_uuid: delayed_info(r) for r in rows}

    @staticmethod
    def _unfinished_prerequisite() -> Any:
        """EXISTS (a prerequisite of the outer delayed record that is not stopped)."""
        pre = execution_plans.alias("prerequisite")
        return (
            select(execution_plan_dependencies.c.blocked_by_uuid)
            .join(pre, pre.c.uuid == execution_plan_dependencies.c.blocked_by_uuid)
            .where(
                execution_plan_dependencies.c.execution_plan_uuid
                == delayed_plans.c.execution_plan_uuid,
                pre.c.state != "stopped",
            )
            .exists()
        )

    async def find_ready(self, now: datetime, limit: int = 500) -> list[dict[str, Any]]:
        """Records due at ``now`` (spec §1.8): not frozen, ``start_at`` null or passed (or
        ``start_before`` passed), no unfinished prerequisite; with their plan's state, ordered
        by ``start_at`` (nulls first)."""
        query = (
            select(
                delayed_plans.c.execution_plan_uuid,
                delayed_plans.c.start_at,
                delayed_plans.c.start_before,
                execution_plans.c.state,
            )
            .join(execution_plans, execution_plans.c.uuid == delayed_plans.c.execution_plan_uuid)
            .where(~delayed_plans.c.frozen)
            .where(
                delayed_plans.c.start_at.is_(None)
                | (delayed_plans.c.start_at <= now)
                | (
                    delayed_plans.c.start_before.is_not(None)
                    & (delayed_plans.c.start_before <= now)
                )
            )
            .where(~self._unfinished_prerequisite())
            .order_by(
                delayed_plans.c.start_at.asc().nulls_first(), delayed_plans.c.execution_plan_uuid
            )
            .limit(limit)
        )
        async with self.store.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            {
                "execution_plan_id": r.execution_plan_uuid,
                "start_at": parse_time(r.start_at),
                "start_before": parse_time(r.start_before),
                "state": r.state,
            }
            for r in rows
        ]

    async def next_start(self, now: datetime) -> datetime | None:
        """The earliest ``start_at`` after ``now`` of a record that is not frozen."""
        query = select(func.min(delayed_plans.c.start_at)).where(
            ~delayed_plans.c.frozen, delayed_plans.c.start_at > now
        )
        async with self.store.read() as conn:
            return parse_time((await conn.execute(query)).scalar())

    async def waited_on(self, limit: int = 10000) -> set[str]:
        """Prerequisites, not stopped yet, of delayed records that are not frozen."""
        pre = execution_plans.alias("prerequisite")
        query = (
            select(execution_plan_dependencies.c.blocked_by_uuid)
            .distinct()
            .join(
                delayed_plans,
                delayed_plans.c.execution_plan_uuid
                == execution_plan_dependencies.c.execution_plan_uuid,
            )
            .join(pre, pre.c.uuid == execution_plan_dependencies.c.blocked_by_uuid)
            .where(~delayed_plans.c.frozen, pre.c.state != "stopped")
            .limit(limit)
        )
        async with self.store.read() as conn:
            return {r[0] for r in (await conn.execute(query)).all()}

    async def failed_prerequisites(self, plan_id: str) -> list[str]:
        """Prerequisites of ``plan_id`` that stopped with result ``error``."""
        query = (
            select(execution_plans.c.uuid)
            .join(
                execution_plan_dependencies,
                execution_plan_dependencies.c.blocked_by_uuid == execution_plans.c.uuid,
            )
            .where(
                execution_plan_dependencies.c.execution_plan_uuid == plan_id,
                execution_plans.c.state == "stopped",
                execution_plans.c.result == "error",
            )
            .order_by(execution_plans.c.uuid)
        )
        async with self.store.read() as conn:
            return [r[0] for r in (await conn.execute(query)).all()]

    async def dependencies(self, plan_id: str) -> list[str]:
        """The plans ``plan_id`` waits for (its prerequisites)."""
        deps = execution_plan_dependencies.c
        return await self._related(deps.blocked_by_uuid, deps.execution_plan_uuid, plan_id)

    async def blocked_plans(self, plan_id: str) -> list[str]:
        """The plans that wait for ``plan_id``."""
        deps = execution_plan_dependencies.c
        return await self._related(deps.execution_plan_uuid, deps.blocked_by_uuid, plan_id)

    async def _related(self, wanted: Any, known: Any, plan_id: str) -> list[str]:
        query = select(wanted).where(known == plan_id).order_by(wanted)
        async with self.store.read() as conn:
            return [r[0] for r in (await conn.execute(query)).all()]

    async def existing(self, plan_ids: Sequence[str]) -> set[str]:
        """Which of ``plan_ids`` are stored plans."""
        if not plan_ids:
            return set()
        query = select(execution_plans.c.uuid).where(execution_plans.c.uuid.in_(list(plan_ids)))
        async with self.store.read() as conn:
            return {r[0] for r in (await conn.execute(query)).all()}

    @staticmethod
    def has_record() -> Any:
        """EXISTS (a delayed record of the outer plan): the ``delayed`` filter of queries."""
        return exists().where(delayed_plans.c.execution_plan_uuid == execution_plans.c.uuid)
