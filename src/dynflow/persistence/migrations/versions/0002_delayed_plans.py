"""Delayed plans and dependencies between plans (chaining).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dynflow_delayed_plans",
        sa.Column("execution_plan_uuid", sa.String(36), primary_key=True),
        sa.Column("start_at", sa.DateTime),
        sa.Column("start_before", sa.DateTime),
        sa.Column("args_serializer", sa.String(255)),
        sa.Column("serialized_args", sa.Text),
        sa.Column("frozen", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.ForeignKeyConstraint(
            ["execution_plan_uuid"], ["dynflow_execution_plans.uuid"], ondelete="CASCADE"
        ),
    )
    op.create_index("ix_dynflow_delayed_plans_start_at", "dynflow_delayed_plans", ["start_at"])
    op.create_table(
        "dynflow_execution_plan_dependencies",
        sa.Column("execution_plan_uuid", sa.String(36), primary_key=True),
        sa.Column("blocked_by_uuid", sa.String(36), primary_key=True),
        sa.ForeignKeyConstraint(
            ["execution_plan_uuid"], ["dynflow_execution_plans.uuid"], ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["blocked_by_uuid"], ["dynflow_execution_plans.uuid"], ondelete="CASCADE"
        ),
    )
    op.create_index(
        "ix_dynflow_execution_plan_dependencies_blocked_by_uuid",
        "dynflow_execution_plan_dependencies",
        ["blocked_by_uuid"],
    )


def downgrade() -> None:
    op.drop_table("dynflow_execution_plan_dependencies")
    op.drop_table("dynflow_delayed_plans")
