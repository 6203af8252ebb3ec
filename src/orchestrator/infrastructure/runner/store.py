"""The runner's database work: claims, heartbeats, releases and fenced step commits."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, case, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.application.ports import ExecutionEvent
from orchestrator.domain.execution import ACTIVE_EXECUTION, NodeExecution, WorkflowExecution
from orchestrator.domain.workflow import Definition
from orchestrator.infrastructure.db.executions import SqlExecutionRepository, insert_events
from orchestrator.infrastructure.db.mappers import execution_values, node_values
from orchestrator.infrastructure.db.tables import executions, node_executions
from orchestrator.infrastructure.db.workflows import SqlWorkflowRepository
from orchestrator.infrastructure.runner.batch import Step, StepWriter

ACTIVE = [s.value for s in ACTIVE_EXECUTION]


class LeaseLost(Exception):
    """A fenced write found that this runner no longer holds the execution's lease."""


@dataclass(frozen=True)
class Claim:
    """An execution this runner now drives, with the fencing token of the claim."""

    execution_id: str
    token: int
    recoveries: int


_node_update = (
    update(node_executions)
    .where(
        node_executions.c.execution_id == bindparam("b_execution_id"),
        node_executions.c.node_id == bindparam("b_node_id"),
    )
    .values(
        status=bindparam("status"),
        input=bindparam("input"),
        output=bindparam("output"),
        error=bindparam("error"),
        retry_count=bindparam("retry_count"),
        attempts=bindparam("attempts"),
        finished_order=bindparam("finished_order"),
        started_at=bindparam("started_at"),
        completed_at=bindparam("completed_at"),
    )
)


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
        # Taking over from another owner whose lease ran out is a recovery; taking back what
        # this runner gave up itself is not.
        recoveries=executions.c.recoveries
        + case(
            (
                and_(
                    executions.c.lease_owner.is_not(None),
                    executions.c.lease_owner != bindparam("owner"),
                ),
                1,
            ),
            else_=0,
        ),
    )
    .returning(executions.c.id, executions.c.lease_token, executions.c.recoveries)
)


class RunnerStore:
    """Every write is fenced by the lease token and by the execution still being unfinished."""

    def __init__(self, engine: AsyncEngine, owner: str, lease: dt.timedelta) -> None:
        self._engine = engine
        self.owner = owner
        self._lease = lease
        self._writer = StepWriter(engine) if engine.dialect.name == "postgresql" else None

    async def claim(
        self, limit: int, now: dt.datetime, driving: Collection[str] = ()
    ) -> list[Claim]:
        """Claim up to `limit` unleased or expired executions, oldest first, except `driving`.

        A claim of an execution whose previous holder's lease ran out counts as a recovery.
        """
        async with self._engine.begin() as connection:
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
        async with self._engine.begin() as connection:
            renewed = (
                await connection.execute(
                    update(executions)
                    .where(
                        executions.c.id.in_(held),
                        executions.c.lease_owner == self.owner,
                        executions.c.status.in_(ACTIVE),
                    )
                    .values(lease_expires_at=now + self._lease)
                    .returning(executions.c.id, executions.c.lease_token)
                )
            ).all()
        tokens = {c.execution_id: c.token for c in claims}
        return held - {r.id for r in renewed if tokens[r.id] == r.lease_token}

    async def release(self, claim: Claim) -> None:
        """Give the lease up so that any runner can claim the execution at once."""
        async with self._engine.begin() as connection:
            await connection.execute(
                update(executions)
                .where(
                    executions.c.id == claim.execution_id, executions.c.lease_token == claim.token
                )
                .values(lease_owner=None, lease_expires_at=None)
            )

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
        previous_seq: int,
        nodes: list[NodeExecution],
        events: list[ExecutionEvent],
        now: dt.datetime,
    ) -> None:
        """Write one step atomically, or raise LeaseLost and write nothing.

        The step is fenced: the lease token must be this claim's, the execution unfinished,
        and nobody else may have written since `previous_seq`.
        """
        step = Step(claim.token, execution, previous_seq, nodes, events)
        if self._writer is not None:
            written = await self._writer.write(step)
        else:
            written = await self._write_portable(step, now)
        if not written:
            raise LeaseLost(execution.id)

    async def _write_portable(self, step: Step, now: dt.datetime) -> bool:
        """The step in one transaction of its own (SQLite); False when the fence did not hold."""
        execution = step.execution
        values: dict[str, Any] = {**execution_values(execution), "updated_at": now}
        if execution.finished:
            values["lease_owner"] = None
            values["lease_expires_at"] = None
        async with self._engine.begin() as connection:
            fenced = await connection.execute(
                update(executions)
                .where(
                    and_(
                        executions.c.id == execution.id,
                        executions.c.lease_token == step.token,
                        executions.c.status.in_(ACTIVE),
                        executions.c.last_seq == step.previous_seq,
                    )
                )
                .values(values)
            )
            if fenced.rowcount != 1:
                return False
            if step.nodes:
                await connection.execute(
                    _node_update,
                    [
                        {"b_execution_id": execution.id, "b_node_id": n.node_id, **node_values(n)}
                        for n in step.nodes
                    ],
                )
            await insert_events(connection, step.events, now)
        return True

    async def close(self) -> None:
        """Stop the batch writer."""
        if self._writer is not None:
            await self._writer.close()
