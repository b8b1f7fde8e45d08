"""Initial schema: plans, actions, steps, output chunks, planned events, coordinator records.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dynflow_execution_plans",
        sa.Column("uuid", sa.String(36), primary_key=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("result", sa.String(20), nullable=False),
        sa.Column("started_at", sa.DateTime),
        sa.Column("ended_at", sa.DateTime),
        sa.Column("real_time", sa.Float),
        sa.Column("execution_time", sa.Float),
        sa.Column("label", sa.String(255)),
        sa.Column("class", sa.String(255)),
        sa.Column("run_flow", sa.Text),
        sa.Column("finalize_flow", sa.Text),
        sa.Column("execution_history", sa.Text),
        sa.Column("step_ids", sa.Text),
        sa.Column("root_plan_step_id", sa.Integer),
    )
    op.create_index(
        "ix_dynflow_execution_plans_started_at", "dynflow_execution_plans", ["started_at"]
    )
    op.create_index("ix_dynflow_execution_plans_ended_at", "dynflow_execution_plans", ["ended_at"])
    op.create_index("ix_dynflow_execution_plans_label", "dynflow_execution_plans", ["label"])
    op.create_index(
        "dynflow_execution_plans_state_result", "dynflow_execution_plans", ["state", "result"]
    )
    op.create_table(
        "dynflow_actions",
        sa.Column("execution_plan_uuid", sa.String(36), primary_key=True),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("caller_execution_plan_id", sa.String(36)),
        sa.Column("caller_action_id", sa.Integer),
        sa.Column("class", sa.String(255)),
        sa.Column("input", sa.Text),
        sa.Column("output", sa.Text),
        sa.Column("plan_step_id", sa.Integer),
        sa.Column("run_step_id", sa.Integer),
        sa.Column("finalize_step_id", sa.Integer),
        sa.ForeignKeyConstraint(
            ["execution_plan_uuid"], ["dynflow_execution_plans.uuid"], ondelete="CASCADE"
        ),
    )
    op.create_index(
        "dynflow_actions_caller",
        "dynflow_actions",
        ["caller_execution_plan_id", "caller_action_id"],
    )
    op.create_table(
        "dynflow_steps",
        sa.Column("execution_plan_uuid", sa.String(36), primary_key=True),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("action_id", sa.Integer, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("started_at", sa.DateTime),
        sa.Column("ended_at", sa.DateTime),
        sa.Column("real_time", sa.Float),
        sa.Column("execution_time", sa.Float),
        sa.Column("progress_done", sa.Float),
        sa.Column("progress_weight", sa.Float),
        sa.Column("class", sa.String(255)),
        sa.Column("action_class", sa.String(255)),
        sa.Column("queue", sa.String(255)),
        sa.Column("error", sa.Text),
        sa.Column("children", sa.Text),
        sa.ForeignKeyConstraint(
            ["execution_plan_uuid", "action_id"],
            ["dynflow_actions.execution_plan_uuid", "dynflow_actions.id"],
            ondelete="CASCADE",
        ),
    )
    op.create_table(
        "dynflow_output_chunks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("execution_plan_uuid", sa.String(36), nullable=False),
        sa.Column("action_id", sa.Integer, nullable=False),
        sa.Column("chunk", sa.Text),
        sa.Column("kind", sa.String(255)),
        sa.Column("timestamp", sa.Float, nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_plan_uuid", "action_id"],
            ["dynflow_actions.execution_plan_uuid", "dynflow_actions.id"],
            ondelete="CASCADE",
        ),
    )
    op.create_index(
        "dynflow_output_chunks_action",
        "dynflow_output_chunks",
        ["execution_plan_uuid", "action_id"],
    )
    op.create_table(
        "dynflow_planned_events",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("execution_plan_uuid", sa.String(36), nullable=False),
        sa.Column("step_id", sa.Integer, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("deliver_at", sa.Float, nullable=False),
        sa.Column("optional", sa.Boolean, nullable=False),
        sa.ForeignKeyConstraint(
            ["execution_plan_uuid"], ["dynflow_execution_plans.uuid"], ondelete="CASCADE"
        ),
    )
    op.create_index(
        "ix_dynflow_planned_events_execution_plan_uuid",
        "dynflow_planned_events",
        ["execution_plan_uuid"],
    )
    op.create_index(
        "ix_dynflow_planned_events_deliver_at", "dynflow_planned_events", ["deliver_at"]
    )
    op.create_table(
        "dynflow_coordinator_records",
        sa.Column("id", sa.String(100), primary_key=True),
        sa.Column("class", sa.String(100), primary_key=True),
        sa.Column("owner_id", sa.String(100)),
        sa.Column("data", sa.Text),
    )
    op.create_index(
        "ix_dynflow_coordinator_records_class", "dynflow_coordinator_records", ["class"]
    )
    op.create_index(
        "ix_dynflow_coordinator_records_owner_id", "dynflow_coordinator_records", ["owner_id"]
    )


def downgrade() -> None:
    for table in (
        "dynflow_coordinator_records",
        "dynflow_planned_events",
        "dynflow_output_chunks",
        "dynflow_steps",
        "dynflow_actions",
        "dynflow_execution_plans",
    ):
        op.drop_table(table)
