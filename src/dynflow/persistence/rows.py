"""The rows of plans, actions and steps as the store writes them, and their insert statements.

Shared by the ``Store`` (inserting and updating plans) and ``store.delayed`` (replacing a delayed
plan's rows once it is planned); the statements are built once, so the writer folds equal ones
into ``executemany``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import insert

from ..serialization import dumps
from .schema import actions, execution_plans, steps

if TYPE_CHECKING:
    from ..action import Action
    from ..execution_plan import ExecutionPlan
    from ..step import Step

INSERT_PLAN = insert(execution_plans)
INSERT_ACTION = insert(actions)
INSERT_STEP = insert(steps)


def plan_row(plan: ExecutionPlan) -> dict[str, Any]:
    return {
        "uuid": plan.id,
        "state": plan.state,
        "result": plan.result,
        "started_at": plan.started_at,
        "ended_at": plan.ended_at,
        "real_time": plan.real_time,
        "execution_time": plan.execution_time,
        "label": plan.label,
        "class": plan.wire_class,
        "run_flow": dumps(plan.run_flow.encode()),
        "finalize_flow": dumps(plan.finalize_flow.encode()),
        "execution_history": dumps(plan.execution_history),
        "step_ids": dumps(plan.step_ids),
        "root_plan_step_id": plan.root_plan_step_id,
    }


def plan_update_params(plan: ExecutionPlan) -> dict[str, Any]:
    return {
        "b_uuid": plan.id,
        "state": plan.state,
        "result": plan.result,
        "started_at": plan.started_at,
        "ended_at": plan.ended_at,
        "real_time": plan.real_time,
        "execution_time": plan.execution_time,
        "execution_history": dumps(plan.execution_history),
    }


def step_row(step: Step) -> dict[str, Any]:
    return {
        "execution_plan_uuid": step.execution_plan_id,
        "id": step.id,
        "action_id": step.action_id,
        "state": step.state,
        "started_at": step.started_at,
        "ended_at": step.ended_at,
        "real_time": step.real_time,
        "execution_time": step.execution_time,
        "progress_done": step.progress_done,
        "progress_weight": step.progress_weight,
        "class": step.wire_class,
        "action_class": step.action_class,
        "queue": step.queue,
        "error": dumps(step.error) if step.error is not None else None,
        "children": dumps(step.children) if step.children is not None else None,
    }


def step_update_params(step: Step) -> dict[str, Any]:
    return {
        "b_uuid": step.execution_plan_id,
        "b_id": step.id,
        "state": step.state,
        "error": dumps(step.error) if step.error is not None else None,
        "started_at": step.started_at,
        "ended_at": step.ended_at,
        "real_time": step.real_time,
        "execution_time": step.execution_time,
        "progress_done": step.progress_done,
        "progress_weight": step.progress_weight,
    }


def action_row(action: Action) -> dict[str, Any]:
    return {
        "execution_plan_uuid": action.execution_plan_id,
        "id": action.id,
        "caller_execution_plan_id": action.caller_execution_plan_id,
        "caller_action_id": action.caller_action_id,
        "class": action.name(),
        "input": dumps(action.input),
        "output": dumps(action.output_data),
        "plan_step_id": action.plan_step_id,
        "run_step_id": action.run_step_id,
        "finalize_step_id": action.finalize_step_id,
    }
