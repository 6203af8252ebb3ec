"""The runner: claims executions with a lease, drives them, heartbeats, recovers, drains."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from tenacity import AsyncRetrying, RetryCallState, wait_exponential

from orchestrator.application.nodes import NodeWork
from orchestrator.application.ports import Clock, EventPublisher
from orchestrator.domain.engine import CompiledWorkflow, Limits, ProgressReport
from orchestrator.domain.execution import WorkflowExecution
from orchestrator.domain.workflow import Definition
from orchestrator.infrastructure.metrics import Metrics
from orchestrator.infrastructure.runner.driver import Driver, DriverConfig
from orchestrator.infrastructure.runner.store import Claim, Outcome, RunnerStore

log = logging.getLogger(__name__)

COMPILED_CACHE_SIZE = 512
FRESH_CACHE_SIZE = 2048


@dataclass(frozen=True)
class RunnerConfig:
    """How a runner claims and holds work."""

    max_concurrent: int
    lease_seconds: float
    heartbeat_seconds: float
    poll_interval_s: float
    max_recoveries: int
    execution_timeout_ms: int
    limits: Limits = field(default_factory=Limits)
    metrics: Metrics | None = None
    progress_flush_s: float = 0.1


def new_owner_id() -> str:
    """A lease owner id that names the host and process, unique per start."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Runner:
    """Claims executions from the database and drives each with a Driver."""

    def __init__(
        self,
        store: RunnerStore,
        work: NodeWork,
        publisher: EventPublisher,
        clock: Clock,
        config: RunnerConfig,
    ) -> None:
        self._store = store
        self._work = work
        self._publisher = publisher
        self._clock = clock
        self._config = config
        self._drivers: dict[str, tuple[Claim, Driver, asyncio.Task[None]]] = {}
        self._compiled: OrderedDict[tuple[str, int], CompiledWorkflow] = OrderedDict()
        self._fresh: OrderedDict[str, tuple[WorkflowExecution, Definition]] = OrderedDict()
        self._reserved: OrderedDict[str, dt.datetime] = OrderedDict()
        self._wake = asyncio.Event()
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []

    @property
    def owner(self) -> str:
        """This runner's lease owner id."""
        return self._store.owner

    def lease_for(self, execution_id: str) -> tuple[str, dt.datetime] | None:
        """Take a new execution of this process at once, if there is room: (owner, expiry).

        The execution is then inserted already claimed by this runner, with token 1.
        """
        if self._stopping or len(self._drivers) >= self._config.max_concurrent:
            return None
        expires = self._clock.now() + lease_of(self._config)
        self._reserved[execution_id] = expires
        if len(self._reserved) > FRESH_CACHE_SIZE:
            self._reserved.popitem(last=False)  # its insert never committed
        return self.owner, expires

    def created(self, execution: WorkflowExecution, definition: Definition) -> None:
        """Start it now if it was inserted with this runner's lease, else claim it now.

        Either way, what is in hand is used instead of being loaded again.
        """
        if self._reserved.pop(execution.id, None) is not None and not self._stopping:
            self._start(Claim(execution.id, 1, 0), execution, definition)
            return
        self._fresh[execution.id] = (execution, definition)
        if len(self._fresh) > FRESH_CACHE_SIZE:
            self._fresh.popitem(last=False)
        self._wake.set()

    def cancelled(self, execution_id: str) -> None:
        """Abandon the execution's in-flight work at once (it was cancelled)."""
        entry = self._drivers.get(execution_id)
        if entry is not None:
            entry[2].cancel()

    def progress(self, execution_id: str, report: ProgressReport) -> bool:
        """Hand an agent's progress report to the driver of its execution; False when no
        driver of this runner drives it."""
        entry = self._drivers.get(execution_id)
        if entry is None:
            return False
        entry[1].progress(report)
        return True

    def woken(self, execution_id: str) -> None:
        """A waiting execution can go on: whoever drove it here stops, and it is claimed anew
        (with what woke it) at once."""
        self.cancelled(execution_id)
        self._wake.set()

    async def start(self) -> None:
        """Start claiming and heartbeating."""
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="runner-claim"),
            asyncio.create_task(self._heartbeat_loop(), name="runner-heartbeat"),
        ]
        log.info("runner %s started", self.owner)

    async def stop(self, grace_s: float) -> None:
        """Stop claiming; let in-flight nodes finish within `grace_s`; release what remains."""
        self._stopping = True
        self._wake.set()
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        for _, driver, _ in self._drivers.values():
            driver.drain()
        tasks = [task for _, _, task in self._drivers.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        for claim, _, task in list(self._drivers.values()):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            with contextlib.suppress(Exception):
                await self._store.release(claim)
        await self._store.close()
        log.info("runner %s stopped", self.owner)

    async def _claim_loop(self) -> None:
        while not self._stopping:
            # Cleared before the claim, so that a wake-up during the claim is not lost.
            self._wake.clear()
            free = self._config.max_concurrent - len(self._drivers)
            claimed: list[Claim] = []
            if free > 0:
                claimed = await self._claim(free)
            for claim in claimed:
                await self._begin(claim)
            if claimed and len(claimed) == free:
                continue  # more may be waiting
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._config.poll_interval_s)

    async def _claim(self, limit: int) -> list[Claim]:
        """Claim up to `limit`; while the database fails, back off up to 5 s between tries."""
        retrying = AsyncRetrying(
            wait=wait_exponential(multiplier=self._config.poll_interval_s, max=5.0),
            before_sleep=self._log_claim_retry,
        )
        claims: list[Claim] = await retrying(self._claim_now, limit)
        return claims

    async def _claim_now(self, limit: int) -> list[Claim]:
        return await self._store.claim(limit, self._clock.now(), self._drivers)

    def _log_claim_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        log.warning("runner %s: claim failed (%s); retrying", self.owner, error)

    async def _begin(self, claim: Claim) -> None:
        fresh = self._fresh.pop(claim.execution_id, None)
        try:
            # The first claim of an execution created here: nothing can have changed it but a
            # cancel, and the fenced commits see that.
            loaded = (
                fresh if fresh and claim.token == 1 else await self._store.load(claim.execution_id)
            )
        except Exception as exc:
            log.warning("execution %s: could not load (%s)", claim.execution_id, exc)
            with contextlib.suppress(Exception):
                await self._store.release(claim)
            return
        if loaded is not None:
            self._start(claim, *loaded)

    def _start(self, claim: Claim, execution: WorkflowExecution, definition: Definition) -> None:
        driver = Driver(
            self._store,
            claim,
            self._compile(execution.workflow_id, definition),
            execution,
            self._work,
            self._publisher,
            self._clock,
            DriverConfig(
                self._config.max_recoveries,
                self._config.execution_timeout_ms,
                self._config.limits,
                metrics=self._config.metrics,
                progress_flush_s=self._config.progress_flush_s,
            ),
        )
        task = asyncio.create_task(
            self._drive(claim, driver), name=f"execution:{claim.execution_id}"
        )
        self._drivers[claim.execution_id] = (claim, driver, task)
        if self._config.metrics is not None:
            self._config.metrics.held.set(len(self._drivers))
            if claim.recoveries > 0:
                self._config.metrics.takeovers.inc()

    def _compile(self, workflow_id: str, definition: Definition) -> CompiledWorkflow:
        key = (workflow_id, definition.version)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = CompiledWorkflow(definition)
            self._compiled[key] = compiled
            if len(self._compiled) > COMPILED_CACHE_SIZE:
                self._compiled.popitem(last=False)
        else:
            self._compiled.move_to_end(key)
        return compiled

    async def _drive(self, claim: Claim, driver: Driver) -> None:
        was_full = False
        claim_again = False  # something may be claimable at once: look now, not at next poll
        try:
            outcome = await driver.run()
            # Out of the heartbeat's sight before the lease is given up: a heartbeat must not
            # take the given-up lease for a lost one.
            was_full = self._forget(claim)
            if outcome in (Outcome.DRAINED, Outcome.ABANDONED, Outcome.LOST):
                # Fenced by the token: a no-op if another runner holds the lease now.
                with contextlib.suppress(Exception):
                    await self._store.release(claim)
                claim_again = outcome == Outcome.LOST
            elif outcome == Outcome.WAITING:
                await self._park(claim, driver)
            elif driver.execution.parent_execution_id is not None:
                await self._wake_parent(driver.execution.parent_execution_id)
                claim_again = True
        except asyncio.CancelledError:
            log.info("execution %s: abandoned here (cancelled or lease lost)", claim.execution_id)
            claim_again = True
        finally:
            was_full = self._forget(claim) or was_full
            if not self._stopping and (was_full or claim_again):
                self._wake.set()

    def _forget(self, claim: Claim) -> bool:
        """Stop tracking the claim's driver; True if every slot was taken until now."""
        entry = self._drivers.get(claim.execution_id)
        if entry is None or entry[0] is not claim:
            return False
        was_full = len(self._drivers) >= self._config.max_concurrent
        del self._drivers[claim.execution_id]
        if self._config.metrics is not None:
            self._config.metrics.held.set(len(self._drivers))
        return was_full

    async def _park(self, claim: Claim, driver: Driver) -> None:
        """A waiting execution holds no lease and no memory here until it is woken."""
        try:
            await self._store.park(claim, driver.wake_at())
        except Exception as exc:
            # Claimed again when the lease runs out: it is then parked again.
            log.warning("execution %s: could not park (%s)", claim.execution_id, exc)

    async def _wake_parent(self, parent_id: str) -> None:
        """A sub-workflow finished: its parent goes on at once (else at its next recheck)."""
        try:
            await self._store.wake(parent_id, self._clock.now())
        except Exception as exc:
            log.warning("execution %s: could not wake it (%s)", parent_id, exc)

    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self._config.heartbeat_seconds)
            claims = [claim for claim, _, _ in self._drivers.values()]
            try:
                gone = await self._store.heartbeat(claims, self._clock.now())
            except Exception as exc:
                log.warning("runner %s: heartbeat failed (%s)", self.owner, exc)
                continue
            for execution_id in gone:
                entry = self._drivers.get(execution_id)
                if entry is not None:
                    log.warning("execution %s: lease lost or cancelled; stopping", execution_id)
                    if self._config.metrics is not None:
                        self._config.metrics.leases_lost.inc()
                    entry[2].cancel()


def lease_of(config: RunnerConfig) -> dt.timedelta:
    """The lease length."""
    return dt.timedelta(seconds=config.lease_seconds)
