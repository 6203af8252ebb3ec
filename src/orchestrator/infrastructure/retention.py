"""Retention: old finished executions are deleted, old events compacted, in small batches."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orchestrator.application.ports import Clock
from orchestrator.infrastructure.db.retention import (
    COMPACT_LOCK_ID,
    DELETE_LOCK_ID,
    EPOCH,
    Compaction,
    compact_old,
    delete_old,
    take_sweep_lock,
)
from orchestrator.infrastructure.metrics import Metrics

log = logging.getLogger(__name__)

# The first sweep waits this long after start (at most one interval): starting up, the
# runner's recovery claims come first.
FIRST_SWEEP_DELAY_S = 5.0
Batch = Callable[[AsyncConnection], Awaitable[int]]


@dataclass(frozen=True)
class Swept:
    """What one sweep did."""

    deleted: int = 0  # executions deleted, with their node executions and events
    compacted: int = 0  # executions whose events were compacted


class Retention:
    """Deletes what EXECUTION_RETENTION_DAYS and EVENT_RETENTION_HOURS let go.

    Every process with a runner sweeps every `interval_s`. Each batch of at most `batch_size`
    executions is its own short transaction, so no lock is held for long; on PostgreSQL a
    batch runs only in the transaction that holds the advisory lock of its kind (deleting,
    compacting), so one replica at a time deletes and one compacts, and rows another
    transaction has locked are skipped, not waited for. Unfinished executions are never
    touched; pinned (`keep`) ones are never deleted, though their events are compacted.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        clock: Clock,
        execution_retention_days: int,
        event_retention_hours: int,
        interval_s: float,
        batch_size: int,
        metrics: Metrics | None = None,
    ) -> None:
        self._engine = engine
        self._clock = clock
        self._days = execution_retention_days
        self._hours = event_retention_hours
        self._interval_s = interval_s
        self._batch_size = batch_size
        self._metrics = metrics
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        """False when the settings keep everything: then nothing is swept at all."""
        return self._days > 0 or self._hours > 0

    async def start(self) -> None:
        """Sweep shortly after start, then every interval, until stopped."""
        if self.enabled and self._task is None:
            self._stopping.clear()
            self._task = asyncio.create_task(self._loop(), name="retention")

    async def stop(self) -> None:
        """Stop at once: a batch in flight is rolled back, and done by a later sweep."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def sweep_once(self) -> Swept:
        """Delete, then compact, batch after batch until nothing is left to do (or another
        replica is doing it)."""
        now = self._clock.now()
        deleted = compacted = 0
        deleted_before = EPOCH
        if self._days > 0:
            deleted_before = now - dt.timedelta(days=self._days)
            deleted, _ = await self._batches(
                DELETE_LOCK_ID,
                lambda connection: delete_old(connection, deleted_before, self._batch_size),
            )
        if self._hours > 0:
            compaction = Compaction(
                cutoff=now - dt.timedelta(hours=self._hours),
                deleted_before=deleted_before,
                now=now,
            )
            compacted, _ = await self._batches(
                COMPACT_LOCK_ID,
                lambda connection: compact_old(connection, compaction, self._batch_size),
            )
        return Swept(deleted, compacted)

    async def _batches(self, lock_id: int, batch: Batch) -> tuple[int, bool]:
        """Run `batch` in transactions of its own while each fills up; the rows it handled,
        and whether it got through.

        False when stopping, or when another replica runs such batches now: that one goes on
        until done (or until yet another takes over), so no work is left behind.
        """
        total = 0
        while not self._stopping.is_set():
            async with self._engine.begin() as connection:
                if not await take_sweep_lock(connection, lock_id):
                    return total, False
                done = await batch(connection)
            total += done
            if done < self._batch_size:
                return total, True
            # Let the rest of the process run between batches.
            await asyncio.sleep(0)
        return total, False

    async def _loop(self) -> None:
        delay = min(FIRST_SWEEP_DELAY_S, self._interval_s)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return
            delay = self._interval_s
            try:
                swept = await self.sweep_once()
            except Exception as exc:
                log.warning("retention sweep failed (%s); retrying in %s s", exc, delay)
                if self._metrics is not None:
                    self._metrics.retention_failures.inc()
                continue
            if self._metrics is not None:
                self._metrics.retention_deleted.inc(swept.deleted)
                self._metrics.retention_compacted.inc(swept.compacted)
            if swept.deleted or swept.compacted:
                log.info(
                    "retention: deleted %d executions, compacted the events of %d",
                    swept.deleted,
                    swept.compacted,
                )
