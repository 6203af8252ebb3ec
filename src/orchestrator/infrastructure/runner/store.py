"""The runner's database work: claims, heartbeats, releases and fenced step commits."""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import bindparam, case, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orchestrator.application.ports import ExecutionEvent
from orchestrator.domain.engine import Step
from orchestrator.domain.execution import ACTIVE_EXECUTION, ExecutionStatus, WorkflowExecution
from orchestrator.domain.workflow import Definition
from orchestrator.infrastructure.db.executions import (
    NEVER,
    SqlExecutionRepository,
    insert_events,
    wake_execution,
    write_step,
)
from orchestrator.infrastructure.db.tables import executions
from orchestrator.infrastructure.db.workflows import SqlWorkflowRepository
from orchestrator.infrastructure.metrics import Metrics
from orchestrator.infrastructure.runner.batch import StepWriter

ACTIVE = [s.value for s in ACTIVE_EXECUTION]


class Outcome(enum.Enum):
    """How a driver stopped."""

    FINISHED = "finished"  # the execution reached a terminal status
    DRAINED = "drained"  # shutdown: in-flight nodes finished, the rest is for another runner
    LOST = "lost"  # another runner holds the lease now, or the execution was cancelled
    WAITING = "waiting"  # every unfinished node waits (for a person, a child): park it
    ABANDONED = "abandoned"  # the database or the expression workers stayed unavailable


class StepStore(Protocol):
    """What a driver writes through (RunnerStore in production)."""

    async def commit(
        self, claim: Claim, execution: WorkflowExecution, step: Step, events: list[ExecutionEvent]
    ) -> None: ...

    async def load(self, execution_id: str) -> tuple[WorkflowExecution, Definition] | None: ...

    async def force_fail(self, claim: Claim, execution_id: str, message: str) -> None: ...


class DatabaseUnavailable(Exception):
    """Commits kept failing for longer than the driver waits."""


class LeaseLost(Exception):
    """A fenced write found that this runner no longer holds the execution's lease."""


@dataclass(frozen=True)
class Claim:
    """An execution this runner now drives, with the fencing token of the claim."""

    execution_id: str
    token: int
    recoveries: int


# Built once: the runner claims often, and building the statement costs more than running it.
_CLAIM = (
    update(executions)
    .where(
        executions.c.id.in_(
            select(executions.c.id)
            .where(
                executions.c.status.in_(ACTIVE),
                or_(
                    executions.c.lease_expires_at.is_(None),
                    executions.c.lease_expires_at < bindparam("now"),
                ),
                or_(executions.c.wake_at.is_(None), executions.c.wake_at <= bindparam("now")),
                # What this runner still drives, even past a late heartbeat, is not new work.
                executions.c.id.not_in(bindparam("driving", expanding=True)),
            )
            .order_by(executions.c.created_at)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
    )
    .values(
        lease_owner=bindparam("owner"),
        lease_token=executions.c.lease_token + 1,
        lease_expires_at=bindparam("expires"),
        wake_at=None,
        # Every claim of a lease that was not given back is a recovery, whoever held it (this
        # runner too, if its driver died); taking back a released execution is not.
        recoveries=executions.c.recoveries
        + case((executions.c.lease_owner.is_not(None), 1), else_=0),
    )
    .returning(executions.c.id, executions.c.lease_token, executions.c.recoveries)
)


class RunnerStore:
    """Every write is fenced by the lease token and by the execution still being unfinished."""

    def __init__(
        self,
        engine: AsyncEngine,
        owner: str,
        lease: dt.timedelta,
        metrics: Metrics | None = None,
    ) -> None:
        self._engine = engine
        self.owner = owner
        self._lease = lease
        postgres = engine.dialect.name == "postgresql"
        self._writer = StepWriter(engine, metrics) if postgres else None

    async def claim(
        self, limit: int, now: dt.datetime, driving: Collection[str] = ()
    ) -> list[Claim]:
        """Claim up to `limit` unleased or expired executions, oldest first, except `driving`.

        A claim of an execution whose previous holder's lease ran out counts as a recovery.
        """
        async with self._autocommit() as connection:
            rows = (
                await connection.execute(
                    _CLAIM,
                    {
                        "now": now,
                        "limit": limit,
                        "owner": self.owner,
                        "expires": now + self._lease,
                        "driving": list(driving),
                    },
                )
            ).all()
        return [Claim(r.id, r.lease_token, r.recoveries) for r in rows]

    async def heartbeat(self, claims: list[Claim], now: dt.datetime) -> set[str]:
        """Extend the leases still held; returns the ids whose lease (or liveness) is gone."""
        if not claims:
            return set()
        held = {c.execution_id for c in claims}
        # Rows are locked in id order, as the step writer locks them, so that the two never
        # deadlock; one autocommitted statement, so that a process paused mid-heartbeat holds
        # no lock.
        mine = (
            select(executions.c.id)
            .where(
                executions.c.id.in_(held),
                executions.c.lease_owner == self.owner,
                executions.c.status.in_(ACTIVE),
            )
            .order_by(executions.c.id)
            .with_for_update()
        )
        async with self._autocommit() as connection:
            renewed = (
                await connection.execute(
                    update(executions)
                    .where(executions.c.id.in_(mine.scalar_subquery()))
                    .values(lease_expires_at=now + self._lease)
                    .returning(executions.c.id, executions.c.lease_token)
                )
            ).all()
        tokens = {c.execution_id: c.token for c in claims}
        return held - {r.id for r in renewed if tokens[r.id] == r.lease_token}

    async def park(self, claim: Claim, wake_at: dt.datetime | None) -> bool:
        """Give the lease of a waiting execution up until `wake_at` (None: until woken).

        Fenced by the token: an answer or a child's end that came in between took the lease
        away (see `wake`), and then the execution stays claimable at once.
        """
        async with self._autocommit() as connection:
            parked = await connection.execute(
                update(executions)
                .where(
                    executions.c.id == claim.execution_id,
                    executions.c.lease_token == claim.token,
                    executions.c.status.in_(ACTIVE),
                )
                .values(lease_owner=None, lease_expires_at=None, wake_at=wake_at or NEVER)
            )
        return parked.rowcount == 1

    async def wake(self, execution_id: str, now: dt.datetime) -> None:
        """Make a waiting execution claimable now (a child of it finished)."""
        async with self._engine.begin() as connection:
            await wake_execution(connection, execution_id, now)

    async def release(self, claim: Claim) -> None:
        """Give the lease up so that any runner can claim the execution at once."""
        async with self._autocommit() as connection:
            await connection.execute(
                update(executions)
                .where(
                    executions.c.id == claim.execution_id, executions.c.lease_token == claim.token
                )
                .values(lease_owner=None, lease_expires_at=None)
            )

    @contextlib.asynccontextmanager
    async def _autocommit(self) -> AsyncIterator[AsyncConnection]:
        """A connection whose each statement commits at once: one round trip per write."""
        async with self._engine.connect() as connection:
            yield await connection.execution_options(isolation_level="AUTOCOMMIT")

    async def load(self, execution_id: str) -> tuple[WorkflowExecution, Definition] | None:
        """The execution and the definition of the version it runs."""
        async with self._engine.connect() as connection:
            execution = await SqlExecutionRepository(connection).get(execution_id)
            if execution is None:
                return None
            definition = await SqlWorkflowRepository(connection).definition(
                execution.workflow_id, execution.workflow_version
            )
        return None if definition is None else (execution, definition)

    async def commit(
        self,
        claim: Claim,
        execution: WorkflowExecution,
        step: Step,
        events: list[ExecutionEvent],
    ) -> None:
        """Write one step atomically, or raise LeaseLost and write nothing.

        The step is fenced: the lease token must be this claim's, the execution unfinished,
        and nobody else may have written since the step began.
        """
        nodes = list(step.nodes.values())
        if self._writer is not None:
            written = await self._writer.write(
                claim.token, execution, step.previous_seq, nodes, events, step.created
            )
        else:
            async with self._engine.begin() as connection:
                written = await write_step(
                    connection,
                    execution,
                    step.previous_seq,
                    nodes,
                    events,
                    claim.token,
                    step.created,
                )
        if not written:
            raise LeaseLost(execution.id)

    async def force_fail(self, claim: Claim, execution_id: str, message: str) -> None:
        """FAIL the execution with the smallest possible write: when a step cannot be stored,
        its failure still can (fenced by the lease token, like every step)."""
        now = dt.datetime.now(dt.UTC)
        async with self._engine.begin() as connection:
            seq = (
                await connection.execute(
                    update(executions)
                    .where(
                        executions.c.id == execution_id,
                        executions.c.lease_token == claim.token,
                        executions.c.status.in_(ACTIVE),
                    )
                    .values(
                        status=ExecutionStatus.FAILED.value,
                        error=message,
                        completed_at=now,
                        updated_at=now,
                        lease_owner=None,
                        lease_expires_at=None,
                        last_seq=executions.c.last_seq + 1,
                    )
                    .returning(executions.c.last_seq)
                )
            ).scalar_one_or_none()
            if seq is None:
                return
            payload = {
                "executionId": execution_id,
                "nodeId": None,
                "error": message,
                "seq": seq,
                "timestamp": now.isoformat().replace("+00:00", "Z"),
            }
            await insert_events(
                connection, [ExecutionEvent(execution_id, seq, "execution:error", payload)], now
            )

    async def close(self) -> None:
        """Stop the batch writer."""
        if self._writer is not None:
            await self._writer.close()
