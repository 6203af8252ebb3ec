"""Retention in SQL: pins, and the batches that delete old executions and compact events."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import bindparam, delete, false, func, or_, select, text, true, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orchestrator.application.retention import Owned, PinRepository, PinTransactions
from orchestrator.infrastructure.db.tables import FINISHED, execution_events, executions

# Any constants work; all replicas must use the same ones (and nothing else these). One per
# kind of batch: a replica compacting does not stop another from deleting.
DELETE_LOCK_ID = 7_311_402_912
COMPACT_LOCK_ID = 7_311_402_913

# Written as the partial index ix_executions_finished says it, so that PostgreSQL can prove
# the index covers the query (it cannot from bound parameters).
_FINISHED = text(f"executions.status IN {FINISHED}")

_CUTOFF = bindparam("cutoff", type_=executions.c.completed_at.type)


def _oldest_finished(*conditions: Any) -> Any:
    """The ids of the oldest finished executions before the cutoff that match, locked, those
    locked by someone else skipped (SQLite has no row locks, and ignores the clause)."""
    return (
        select(executions.c.id)
        .where(_FINISHED, executions.c.completed_at < _CUTOFF, *conditions)
        .order_by(executions.c.completed_at)
        .limit(bindparam("batch"))
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )


# Node executions and events go with their execution (ON DELETE CASCADE; SQLite enforces it
# since every connection turns foreign keys on, see db/engine.py).
_DELETE_OLD = delete(executions).where(
    executions.c.id.in_(_oldest_finished(executions.c.keep == false()))
)

_COMPACT_OLD = (
    update(executions)
    .where(
        executions.c.id.in_(
            _oldest_finished(
                # Compacted executions leave the partial index ix_executions_uncompacted, which
                # this reads: a sweep never walks them again.
                executions.c.events_compacted_at.is_(None),
                # What deleting takes is not compacted first (nor locked, for it to skip).
                or_(
                    executions.c.keep == true(),
                    executions.c.completed_at >= bindparam("deleted_before", type_=_CUTOFF.type),
                ),
            )
        )
    )
    .values(events_compacted_at=bindparam("now", type_=_CUTOFF.type))
    .returning(executions.c.id)
)

_LAST = execution_events.alias("last")
# Every event but the last one (the terminal snapshot) of the given executions.
_DELETE_EARLIER_EVENTS = delete(execution_events).where(
    execution_events.c.execution_id.in_(bindparam("ids", expanding=True)),
    execution_events.c.seq
    < select(func.max(_LAST.c.seq))
    .where(_LAST.c.execution_id == execution_events.c.execution_id)
    .scalar_subquery(),
)

# Older than anything stored: deleting takes nothing before it (EXECUTION_RETENTION_DAYS=0).
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


async def take_sweep_lock(connection: AsyncConnection, lock_id: int) -> bool:
    """True when this transaction may run a batch of its kind (`lock_id`): on PostgreSQL,
    when no other replica's transaction runs one now (the lock goes with the transaction);
    SQLite has one process."""
    if connection.dialect.name != "postgresql":
        return True
    taken = await connection.scalar(text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": lock_id})
    return bool(taken)


async def delete_old(connection: AsyncConnection, cutoff: dt.datetime, batch: int) -> int:
    """Delete up to `batch` unpinned executions that finished before `cutoff`, oldest first,
    with their node executions and events; how many were deleted."""
    deleted = await connection.execute(_DELETE_OLD, {"cutoff": cutoff, "batch": batch})
    return deleted.rowcount


@dataclass(frozen=True)
class Compaction:
    """Which executions a compaction batch takes: those finished before `cutoff`, not
    compacted yet, except the unpinned ones that finished before `deleted_before` (deleting
    takes them)."""

    cutoff: dt.datetime
    deleted_before: dt.datetime
    now: dt.datetime  # their `events_compacted_at`


async def compact_old(connection: AsyncConnection, compaction: Compaction, batch: int) -> int:
    """Compact the events of up to `batch` executions, oldest first: all but the last event
    go. How many executions were compacted."""
    ids = list(
        (await connection.execute(_COMPACT_OLD, {**asdict(compaction), "batch": batch})).scalars()
    )
    if ids:
        await connection.execute(_DELETE_EARLIER_EVENTS, {"ids": ids})
    return len(ids)


class SqlPins:
    """`keep` of executions on one connection, in its transaction."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._c = connection

    async def lock(self, execution_id: str) -> Owned | None:
        row = (
            await self._c.execute(
                select(executions.c.user_id)
                .where(executions.c.id == execution_id)
                .with_for_update()
            )
        ).first()
        return None if row is None else Owned(row.user_id)

    async def set_keep(self, execution_id: str, keep: bool) -> None:
        await self._c.execute(
            update(executions).where(executions.c.id == execution_id).values(keep=keep)
        )


def pin_transactions(engine: AsyncEngine) -> PinTransactions:
    """Transactions on `engine` for the pinning use case."""

    @contextlib.asynccontextmanager
    async def transaction() -> AsyncIterator[PinRepository]:
        async with engine.begin() as connection:
            yield SqlPins(connection)

    return transaction
