"""Schedules, webhooks, user templates, retention, usage and budgets.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIME = sa.DateTime(timezone=True)
FINISHED = "status IN ('COMPLETED', 'FAILED', 'CANCELLED')"


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("keep", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("trigger", JSON, nullable=True))
        batch.add_column(sa.Column("usage", JSON, nullable=True))
        batch.add_column(sa.Column("budget", JSON, nullable=True))
        batch.add_column(sa.Column("events_compacted_at", TIME, nullable=True))
    op.create_index(
        "ix_executions_finished",
        "executions",
        ["completed_at"],
        postgresql_where=sa.text(FINISHED),
        sqlite_where=sa.text(FINISHED),
    )
    op.create_index("ix_executions_user_created", "executions", ["user_id", "created_at"])
    op.create_index(
        "ix_executions_uncompacted",
        "executions",
        ["completed_at"],
        postgresql_where=sa.text(f"{FINISHED} AND events_compacted_at IS NULL"),
        sqlite_where=sa.text(f"{FINISHED} AND events_compacted_at IS NULL"),
    )
    op.create_table(
        "schedules",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "workflow_id",
            sa.String(36),
            sa.ForeignKey(
                "workflows.id", ondelete="CASCADE", name="fk_schedules_workflow_id_workflows"
            ),
            nullable=False,
        ),
        sa.Column("user_id", sa.String(200), nullable=True),
        sa.Column("cron", sa.String(200), nullable=False),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("input", JSON, nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("catch_up", sa.String(8), nullable=False),
        sa.Column("next_run_at", TIME, nullable=True),
        sa.Column("last_run_at", TIME, nullable=True),
        sa.Column("last_execution_id", sa.String(36), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
    )
    op.create_index("ix_schedules_workflow", "schedules", ["workflow_id"])
    op.create_index(
        "ix_schedules_due",
        "schedules",
        ["next_run_at"],
        postgresql_where=sa.text("enabled"),
        sqlite_where=sa.text("enabled"),
    )
    op.create_table(
        "webhooks",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "workflow_id",
            sa.String(36),
            sa.ForeignKey(
                "workflows.id", ondelete="CASCADE", name="fk_webhooks_workflow_id_workflows"
            ),
            nullable=False,
        ),
        sa.Column("user_id", sa.String(200), nullable=True),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("token_hint", sa.String(16), nullable=False),
        sa.Column("secret", sa.String(200), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("last_used_at", TIME, nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
    )
    op.create_index("ix_webhooks_workflow", "webhooks", ["workflow_id"])
    op.create_table(
        "templates",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(200), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("category", sa.String(100), nullable=True),
        sa.Column("definition", JSON, nullable=False),
        sa.Column("parameters", JSON, nullable=True),
        sa.Column("source_workflow_id", sa.String(36), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_index("ix_templates_user_created", "templates", ["user_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_templates_user_created", table_name="templates")
    op.drop_table("templates")
    op.drop_index("ix_webhooks_workflow", table_name="webhooks")
    op.drop_table("webhooks")
    op.drop_index("ix_schedules_due", table_name="schedules")
    op.drop_index("ix_schedules_workflow", table_name="schedules")
    op.drop_table("schedules")
    op.drop_index("ix_executions_uncompacted", table_name="executions")
    op.drop_index("ix_executions_user_created", table_name="executions")
    op.drop_index("ix_executions_finished", table_name="executions")
    with op.batch_alter_table("executions") as batch:
        for column in ("events_compacted_at", "budget", "usage", "trigger", "keep"):
            batch.drop_column(column)
