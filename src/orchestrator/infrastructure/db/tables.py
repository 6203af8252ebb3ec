"""ORM rows: the schema. Queries on hot paths use their tables through SQLAlchemy Core."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

Json = JSON().with_variant(JSONB(), "postgresql")
# A column where SQL NULL means "nothing yet" and a JSON null would be a value.
NullableJson = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC on the way in and out, also on SQLite (which stores naive text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)  # type: ignore[no-any-return]
        return value.astimezone(dt.UTC)  # type: ignore[no-any-return]


FINISHED = "('COMPLETED', 'FAILED', 'CANCELLED')"


class Base(DeclarativeBase):
    """Base of every row, with one naming convention for constraints."""

    metadata = MetaData(naming_convention=NAMING)


class WorkflowRow(Base):
    """A workflow; its definitions live in `workflow_versions`."""

    __tablename__ = "workflows"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    version: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_workflows_user_created", "user_id", "created_at"),
        Index("ix_workflows_status_created", "status", "created_at"),
        Index("ix_workflows_created", "created_at"),
    )


class WorkflowVersionRow(Base):
    """One immutable version of a workflow's definition."""

    __tablename__ = "workflow_versions"

    workflow_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("workflows.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    definition: Mapped[Any] = mapped_column(Json)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class ExecutionRow(Base):
    """One execution, with the lease of the runner that drives it."""

    __tablename__ = "executions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(String(36))
    workflow_version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    input: Mapped[Any] = mapped_column(Json, nullable=True)
    output: Mapped[Any] = mapped_column(Json, nullable=True)
    error: Mapped[str | None] = mapped_column(Text)
    current_node_id: Mapped[str | None] = mapped_column(String(200))
    user_id: Mapped[str | None] = mapped_column(String(200))
    idempotency_key: Mapped[str | None] = mapped_column(String(300), unique=True)
    retry_of: Mapped[str | None] = mapped_column(String(36))
    started_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    deadline_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    # The lease: who drives the execution, until when, and the fencing token of that claim.
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_token: Mapped[int] = mapped_column(BigInteger, default=0)
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    recoveries: Mapped[int] = mapped_column(Integer, default=0)
    # A waiting execution holds no lease; it is claimed again at `wake_at` (a wait's timeout),
    # or at once when an answer or a child's end sets it to now. NULL: claimable now.
    wake_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    waiting_since: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    parent_execution_id: Mapped[str | None] = mapped_column(String(36))
    parent_node_id: Mapped[str | None] = mapped_column(String(200))
    depth: Mapped[int] = mapped_column(Integer, default=0)
    # The W3C `traceparent` of the request that started it (traces on; else NULL).
    trace_parent: Mapped[str | None] = mapped_column(String(55))
    # Pinned: retention never deletes it.
    keep: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # What started it when not a person: {type: "schedule" | "webhook", ...}.
    trigger: Mapped[Any] = mapped_column(Json, nullable=True)
    # Tokens used, summed over its nodes' attempts (and its sub-workflows): the totals and
    # `byModel`.
    usage: Mapped[Any] = mapped_column(Json, nullable=True)
    # {maxTotalTokens?, maxCostUsd?, onExceed}: past it no node starts.
    budget: Mapped[Any] = mapped_column(Json, nullable=True)
    # When its events were compacted (EVENT_RETENTION_HOURS): only the last one is kept.
    events_compacted_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        ForeignKeyConstraint(
            ["workflow_id", "workflow_version"],
            ["workflow_versions.workflow_id", "workflow_versions.version"],
            name="fk_executions_workflow_version",
        ),
        Index("ix_executions_workflow_created", "workflow_id", "created_at"),
        Index("ix_executions_status_created", "status", "created_at"),
        Index("ix_executions_created", "created_at"),
        # The runner's claim query scans only unfinished executions that do not wait; those
        # that wait, by when they wake.
        Index(
            "ix_executions_claimable",
            "lease_expires_at",
            postgresql_where="status IN ('PENDING', 'RUNNING') AND wake_at IS NULL",
            sqlite_where="status IN ('PENDING', 'RUNNING') AND wake_at IS NULL",
        ),
        Index(
            "ix_executions_waking",
            "wake_at",
            postgresql_where="status IN ('PENDING', 'RUNNING') AND wake_at IS NOT NULL",
            sqlite_where="status IN ('PENDING', 'RUNNING') AND wake_at IS NOT NULL",
        ),
        Index("ix_executions_parent", "parent_execution_id"),
        # Retention finds the oldest finished executions; usage reads a user's by time.
        Index(
            "ix_executions_finished",
            "completed_at",
            postgresql_where=f"status IN {FINISHED}",
            sqlite_where=f"status IN {FINISHED}",
        ),
        Index("ix_executions_user_created", "user_id", "created_at"),
        # Compaction reads the finished executions whose events it has not compacted yet.
        Index(
            "ix_executions_uncompacted",
            "completed_at",
            postgresql_where=f"status IN {FINISHED} AND events_compacted_at IS NULL",
            sqlite_where=f"status IN {FINISHED} AND events_compacted_at IS NULL",
        ),
    )


class NodeExecutionRow(Base):
    """One node's state within one execution."""

    __tablename__ = "node_executions"

    execution_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("executions.id", ondelete="CASCADE"), primary_key=True
    )
    node_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    # The iteration path in loop bodies ("2", "0.3"); "" outside loops.
    iteration: Mapped[str] = mapped_column(String(200), primary_key=True, default="")
    position: Mapped[int] = mapped_column(Integer)
    node_type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    input: Mapped[Any] = mapped_column(Json, nullable=True)
    output: Mapped[Any] = mapped_column(Json, nullable=True)
    error: Mapped[str | None] = mapped_column(Text)
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[Any] = mapped_column(Json, nullable=True)
    finished_order: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    # The ids of the outgoing edges taken when the node completed.
    routes: Mapped[Any] = mapped_column(Json, nullable=True)
    # A control node's state (a wait, a FOR_EACH's items) and a person's answer to a wait.
    state: Mapped[Any] = mapped_column(Json, nullable=True)
    answer: Mapped[Any] = mapped_column(NullableJson, nullable=True)
    # The tokens an agent reported for this node.
    usage: Mapped[Any] = mapped_column(Json, nullable=True)


class ExecutionEventRow(Base):
    """An event sent to Socket.IO subscribers, kept so that a client can catch up."""

    __tablename__ = "execution_events"

    execution_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("executions.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event: Mapped[str] = mapped_column(String(32))
    payload: Mapped[Any] = mapped_column(Json)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)


class ScheduleRow(Base):
    """A cron schedule that starts executions of a workflow; `next_run_at` is the next due
    tick (NULL while disabled)."""

    __tablename__ = "schedules"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("workflows.id", ondelete="CASCADE")
    )
    user_id: Mapped[str | None] = mapped_column(String(200))
    cron: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    input: Mapped[Any] = mapped_column(Json, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean)
    catch_up: Mapped[str] = mapped_column(String(8))
    next_run_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    last_run_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    last_execution_id: Mapped[str | None] = mapped_column(String(36))
    # Why the last due tick started nothing (the workflow is archived, ...); NULL if it did.
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)

    __table_args__ = (
        Index("ix_schedules_workflow", "workflow_id"),
        Index(
            "ix_schedules_due", "next_run_at", postgresql_where="enabled", sqlite_where="enabled"
        ),
    )


class WebhookRow(Base):
    """An HTTP trigger of a workflow: its token is stored only as a SHA-256 digest."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    workflow_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("workflows.id", ondelete="CASCADE")
    )
    user_id: Mapped[str | None] = mapped_column(String(200))
    name: Mapped[str | None] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The token's first characters, so that a user can tell tokens apart.
    token_hint: Mapped[str] = mapped_column(String(16))
    # The HMAC-SHA256 key of X-Signature-256 (NULL: no signature asked for).
    secret: Mapped[str | None] = mapped_column(String(200))
    enabled: Mapped[bool] = mapped_column(Boolean)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_webhooks_workflow", "workflow_id"),)


class TemplateRow(Base):
    """A user's own template (the built-in ones live in the code)."""

    __tablename__ = "templates"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(String(100))
    definition: Mapped[Any] = mapped_column(Json)
    parameters: Mapped[Any] = mapped_column(Json, nullable=True)
    source_workflow_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_templates_user_created", "user_id", "created_at"),)


workflows = cast(Table, WorkflowRow.__table__)
workflow_versions = cast(Table, WorkflowVersionRow.__table__)
executions = cast(Table, ExecutionRow.__table__)
node_executions = cast(Table, NodeExecutionRow.__table__)
execution_events = cast(Table, ExecutionEventRow.__table__)
schedules = cast(Table, ScheduleRow.__table__)
webhooks = cast(Table, WebhookRow.__table__)
templates = cast(Table, TemplateRow.__table__)
