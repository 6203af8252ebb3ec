"""Schedules: each due tick starts one execution, claimed in the database across processes.

Every process that runs executions runs a Scheduler. A pass claims due schedules with
`SELECT ... FOR UPDATE SKIP LOCKED` in a transaction that stays open while their ticks are
started (each start commits on a connection of its own), then records the next tick and
commits: another process skips the rows held, so each tick is started by one process. If
the process dies between a start and the commit, the lock goes with its connection and
another process fires the tick again; its per-tick Idempotency-Key gives back the execution
started the first time: the tick is neither lost nor doubled.

On SQLite (one process) there are no row locks: the claim is read, the ticks started, and
each schedule's next tick written in short transactions of their own (a transaction held
open would block the starts' writes).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import weakref

from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.application.executions import ExecutionServices
from orchestrator.application.ports import Clock
from orchestrator.application.schedules import LATE_GRACE, Firing, fire_due
from orchestrator.domain.schedules import Schedule
from orchestrator.infrastructure.db.errors import is_transient
from orchestrator.infrastructure.db.schedules import SqlScheduleRepository, SqlScheduleStore
from orchestrator.infrastructure.metrics import Metrics

log = logging.getLogger(__name__)

# Schedules claimed by one pass, and how many of them start their ticks at once: small
# enough that the claim's transaction stays short (it holds its rows' locks).
BATCH = 50
CONCURRENCY = 10
MAX_BACKOFF_S = 30.0
# Due rows held by another process are looked at again after this, not at once.
MIN_WAIT_S = 0.05
STOP_GRACE_S = 10.0

_RUNNING: weakref.WeakSet[Scheduler] = weakref.WeakSet()


def schedules_changed() -> None:
    """Wake this process's schedulers: a schedule was created or changed here."""
    for scheduler in list(_RUNNING):
        scheduler.wake()


class Scheduler:
    """Starts the executions of due schedule ticks (every process with a runner runs one);
    `metrics` counts them by outcome."""

    def __init__(
        self,
        engine: AsyncEngine,
        services: ExecutionServices,
        clock: Clock,
        poll_s: float,
        catch_up_max: int,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = SqlScheduleStore(engine)
        self._clock = clock
        self._metrics = metrics
        self._poll_s = poll_s
        self._firing = Firing(
            services, LATE_GRACE + dt.timedelta(seconds=poll_s), catch_up_max, self._count
        )
        self._locks = engine.dialect.name == "postgresql"
        self._woken = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start looking for due ticks."""
        self._stopping.clear()
        self._task = asyncio.create_task(self._loop(), name="scheduler")
        _RUNNING.add(self)

    async def stop(self) -> None:
        """Stop looking; a pass under way finishes first (or is cut off after a grace)."""
        _RUNNING.discard(self)
        self._stopping.set()
        if self._task is None:
            return
        task, self._task = self._task, None
        try:
            await asyncio.wait_for(task, STOP_GRACE_S)
        except TimeoutError:
            log.warning("scheduler pass cut off at stop")

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.schedule_ticks.labels(outcome).inc()

    def wake(self) -> None:
        """Look again now rather than at the next poll."""
        self._woken.set()

    async def _loop(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            self._woken.clear()  # a wake from now on cuts the next sleep short
            try:
                fired = await self.run_once()
                wait = 0.0 if fired >= BATCH else await self._until_due()
                failures = 0
            except Exception as exc:
                failures += 1
                wait = min(MAX_BACKOFF_S, self._poll_s * 2**failures)
                if is_transient(exc):  # an outage: expected, and said in one line
                    log.warning("scheduler pass failed (%s); next try in %.1f s", exc, wait)
                else:
                    log.exception("scheduler pass failed; next try in %.1f s", wait)
            await self._sleep(wait)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, cut short by a wake or a stop."""
        if seconds <= 0:
            return
        wakers = [
            asyncio.create_task(self._woken.wait()),
            asyncio.create_task(self._stopping.wait()),
        ]
        try:
            await asyncio.wait(wakers, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waker in wakers:
                waker.cancel()

    async def _until_due(self) -> float:
        """Seconds until the earliest tick, at most one poll interval (and at least
        MIN_WAIT_S: a tick due now is held by another process)."""
        async with self._store() as schedules:
            earliest = await schedules.earliest_due()
        if earliest is None:
            return self._poll_s
        until = (earliest - self._clock.now()).total_seconds()
        return min(self._poll_s, max(MIN_WAIT_S, until))

    async def run_once(self) -> int:
        """One pass: start the ticks of up to BATCH due schedules; how many were claimed."""
        now = self._clock.now()
        if self._locks:
            async with self._store() as schedules:
                claimed = await schedules.claim_due(now, BATCH)
                await self._fire_and_advance(schedules, claimed, now)
                await schedules.commit()
            return len(claimed)
        async with self._store() as schedules:
            claimed = await schedules.claim_due(now, BATCH)
        for schedule in claimed:
            async with self._store() as schedules:
                await self._fire_and_advance(schedules, [schedule], now)
                await schedules.commit()
        return len(claimed)

    async def _fire_and_advance(
        self, schedules: SqlScheduleRepository, claimed: list[Schedule], now: dt.datetime
    ) -> None:
        due = {schedule.id: schedule.next_run_at for schedule in claimed}
        gate = asyncio.Semaphore(CONCURRENCY)

        async def fire(schedule: Schedule) -> Schedule:
            async with gate:
                return await fire_due(self._firing, schedule, now)

        # One failing start (the database) cancels the others: the pass is tried again.
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(fire(schedule)) for schedule in claimed]
        for task in tasks:
            schedule = task.result()
            claimed_due = due[schedule.id]
            if claimed_due is not None:
                await schedules.advance(schedule, claimed_due)
