"""Control flow: node executions per loop iteration, waits without a lease, sub-workflows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
ACTIVE = "status IN ('PENDING', 'RUNNING')"


def upgrade() -> None:
    with op.batch_alter_table("node_executions") as batch:
        batch.add_column(sa.Column("iteration", sa.String(200), nullable=False, server_default=""))
        batch.add_column(sa.Column("state", JSON, nullable=True))
        batch.add_column(sa.Column("answer", JSON, nullable=True))
        batch.drop_constraint("pk_node_executions", type_="primary")
        batch.create_primary_key("pk_node_executions", ["execution_id", "node_id", "iteration"])
    op.drop_index("ix_executions_claimable", table_name="executions")
    with op.batch_alter_table("executions") as batch:
        batch.add_column(sa.Column("wake_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("waiting_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("parent_execution_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("parent_node_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("depth", sa.Integer(), nullable=False, server_default="0"))
    op.create_index(
        "ix_executions_claimable",
        "executions",
        ["lease_expires_at"],
        postgresql_where=sa.text(f"{ACTIVE} AND wake_at IS NULL"),
        sqlite_where=sa.text(f"{ACTIVE} AND wake_at IS NULL"),
    )
    op.create_index(
        "ix_executions_waking",
        "executions",
        ["wake_at"],
        postgresql_where=sa.text(f"{ACTIVE} AND wake_at IS NOT NULL"),
        sqlite_where=sa.text(f"{ACTIVE} AND wake_at IS NOT NULL"),
    )
    op.create_index("ix_executions_parent", "executions", ["parent_execution_id"])


def downgrade() -> None:
    op.drop_index("ix_executions_parent", table_name="executions")
    op.drop_index("ix_executions_waking", table_name="executions")
    op.drop_index("ix_executions_claimable", table_name="executions")
    with op.batch_alter_table("executions") as batch:
        for column in (
            "depth",
            "parent_node_id",
            "parent_execution_id",
            "waiting_since",
            "wake_at",
        ):
            batch.drop_column(column)
    op.create_index(
        "ix_executions_claimable",
        "executions",
        ["lease_expires_at"],
        postgresql_where=sa.text(ACTIVE),
        sqlite_where=sa.text(ACTIVE),
    )
    op.execute("DELETE FROM node_executions WHERE iteration <> ''")
    with op.batch_alter_table("node_executions") as batch:
        batch.drop_constraint("pk_node_executions", type_="primary")
        batch.create_primary_key("pk_node_executions", ["execution_id", "node_id"])
        for column in ("answer", "state", "iteration"):
            batch.drop_column(column)
