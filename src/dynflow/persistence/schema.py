"""Tables of the store (spec §4.1), as SQLAlchemy Core metadata. Migrations create them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BindParameter,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
)

metadata = MetaData()

execution_plans = Table(
    "dynflow_execution_plans",
    metadata,
    Column("uuid", String(36), primary_key=True),
    Column("state", String(20), nullable=False),
    Column("result", String(20), nullable=False),
    Column("started_at", DateTime, index=True),
    Column("ended_at", DateTime, index=True),
    Column("real_time", Float),
    Column("execution_time", Float),
    Column("label", String(255), index=True),
    Column("class", String(255)),
    Column("run_flow", Text),
    Column("finalize_flow", Text),
    Column("execution_history", Text),
    Column("step_ids", Text),
    Column("root_plan_step_id", Integer),
    Index("dynflow_execution_plans_state_result", "state", "result"),
)

actions = Table(
    "dynflow_actions",
    metadata,
    Column("execution_plan_uuid", String(36), primary_key=True),
    Column("id", Integer, primary_key=True),
    Column("caller_execution_plan_id", String(36)),
    Column("caller_action_id", Integer),
    Column("class", String(255)),
    Column("input", Text),
    Column("output", Text),
    Column("plan_step_id", Integer),
    Column("run_step_id", Integer),
    Column("finalize_step_id", Integer),
    ForeignKeyConstraint(
        ["execution_plan_uuid"], ["dynflow_execution_plans.uuid"], ondelete="CASCADE"
    ),
    Index("dynflow_actions_caller", "caller_execution_plan_id", "caller_action_id"),
)

steps = Table(
    "dynflow_steps",
    metadata,
    Column("execution_plan_uuid", String(36), primary_key=True),
    Column("id", Integer, primary_key=True),
    Column("action_id", Integer, nullable=False),
    Column("state", String(20), nullable=False),
    Column("started_at", DateTime),
    Column("ended_at", DateTime),
    Column("real_time", Float),
    Column("execution_time", Float),
    Column("progress_done", Float),
    Column("progress_weight", Float),
    Column("class", String(255)),
    Column("action_class", String(255)),
    Column("queue", String(255)),
    Column("error", Text),
    Column("children", Text),
    ForeignKeyConstraint(
        ["execution_plan_uuid", "action_id"],
        ["dynflow_actions.execution_plan_uuid", "dynflow_actions.id"],
        ondelete="CASCADE",
    ),
)

output_chunks = Table(
    "dynflow_output_chunks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("execution_plan_uuid", String(36), nullable=False),
    Column("action_id", Integer, nullable=False),
    Column("chunk", Text),
    Column("kind", String(255)),
    Column("timestamp", Float, nullable=False),
    ForeignKeyConstraint(
        ["execution_plan_uuid", "action_id"],
        ["dynflow_actions.execution_plan_uuid", "dynflow_actions.id"],
        ondelete="CASCADE",
    ),
    Index("dynflow_output_chunks_action", "execution_plan_uuid", "action_id"),
)

planned_events = Table(
    "dynflow_planned_events",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("execution_plan_uuid", String(36), nullable=False, index=True),
    Column("step_id", Integer, nullable=False),
    Column("event", Text, nullable=False),
    Column("deliver_at", Float, nullable=False, index=True),
    Column("optional", Boolean, nullable=False, default=False),
    ForeignKeyConstraint(
        ["execution_plan_uuid"], ["dynflow_execution_plans.uuid"], ondelete="CASCADE"
    ),
)

coordinator_records = Table(
    "dynflow_coordinator_records",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("class", String(100), primary_key=True, index=True),
    Column("owner_id", String(100), index=True),
    Column("data", Text),
)

delayed_plans = Table(
    "dynflow_delayed_plans",
    metadata,
    Column("execution_plan_uuid", String(36), primary_key=True),
    Column("start_at", DateTime, index=True),
    Column("start_before", DateTime),
    Column("args_serializer", String(255)),
    Column("serialized_args", Text),
    Column("frozen", Boolean, nullable=False, default=False),
    ForeignKeyConstraint(
        ["execution_plan_uuid"], ["dynflow_execution_plans.uuid"], ondelete="CASCADE"
    ),
)

execution_plan_dependencies = Table(
    "dynflow_execution_plan_dependencies",
    metadata,
    Column("execution_plan_uuid", String(36), primary_key=True),
    Column("blocked_by_uuid", String(36), primary_key=True, index=True),
    ForeignKeyConstraint(
        ["execution_plan_uuid"], ["dynflow_execution_plans.uuid"], ondelete="CASCADE"
    ),
    ForeignKeyConstraint(["blocked_by_uuid"], ["dynflow_execution_plans.uuid"], ondelete="CASCADE"),
)


def plan_state_params() -> dict[str, BindParameter[Any]]:
    """The bind parameters of a plan's state columns, shared by the statements that move it."""
    columns = ("state", "result", "started_at", "ended_at", "real_time", "execution_time")
    return {name: bindparam(name) for name in (*columns, "execution_history")}
