"""Executions, their node states and their events in SQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.application.ports import ExecutionEvent, Page
from orchestrator.application.views import execution_update, node_update
from orchestrator.domain.errors import Conflict
from orchestrator.domain.execution import (
    ACTIVE_EXECUTION,
    ExecutionStatus,
    NodeStatus,
    WorkflowExecution,
)
from orchestrator.infrastructure.db.mappers import execution_from_rows, execution_row, node_row
from orchestrator.infrastructure.db.tables import execution_events, executions, node_executions

ACTIVE = [s.value for s in ACTIVE_EXECUTION]

# Built once, values bound at execution: building an insert with its values each time cost
# more than running it.
_INSERT_EXECUTION = insert(executions)
_INSERT_NODES = insert(node_executions)
_INSERT_ONCE = {
    postgres: (postgresql.insert if postgres else sqlite.insert)(executions)
    .on_conflict_do_nothing(index_elements=["idempotency_key"])
    .returning(executions.c.id)
    for postgres in (True, False)
}


LeaseSource = Callable[[str], "tuple[str, dt.datetime] | None"]
"""Given a new execution's id, the (owner, expiry) of a runner that takes it at once, or None."""


class SqlExecutionRepository:
    """Executions, node executions and events in SQL."""

    def __init__(self, connection: AsyncConnection, lease_for: LeaseSource | None = None) -> None:
        self._c = connection
        self._lease_for = lease_for

    async def add(self, execution: WorkflowExecution) -> WorkflowExecution:
        values = execution_row(execution)
        lease = self._lease_for(execution.id) if self._lease_for is not None else None
        if lease is not None:
            # Inserted already claimed (token 1) by the runner of this process: it starts
            # the execution without a claim round trip.
            values.update(lease_owner=lease[0], lease_token=1, lease_expires_at=lease[1])
        if execution.idempotency_key is None:
            await self._c.execute(_INSERT_EXECUTION, values)
        else:
            statement = _INSERT_ONCE[self._c.dialect.name == "postgresql"]
            inserted = (await self._c.execute(statement, values)).first()
            if inserted is None:
                existing = (
                    await self._c.execute(
                        select(executions.c.id).where(
                            executions.c.idempotency_key == execution.idempotency_key
                        )
                    )
                ).scalar_one()
                found = await self.get(existing)
                assert found is not None
                return found
        await self._c.execute(
            _INSERT_NODES,
            [node_row(execution.id, i, n) for i, n in enumerate(execution.nodes.values())],
        )
        return execution

    async def get(self, execution_id: str) -> WorkflowExecution | None:
        row = (
            await self._c.execute(select(executions).where(executions.c.id == execution_id))
        ).first()
        if row is None:
            return None
        nodes = await self._c.execute(
            select(node_executions)
            .where(node_executions.c.execution_id == execution_id)
            .order_by(node_executions.c.position)
        )
        return execution_from_rows(row, nodes.all())

    async def list_page(
        self,
        page: Page,
        workflow_id: str | None,
        status: ExecutionStatus | None,
        user_id: str | None,
    ) -> tuple[list[WorkflowExecution], int]:
        conditions = []
        if workflow_id is not None:
            conditions.append(executions.c.workflow_id == workflow_id)
        if status is not None:
            conditions.append(executions.c.status == status.value)
        if user_id is not None:
            conditions.append(executions.c.user_id == user_id)
        rows = (
            await self._c.execute(
                select(executions)
                .where(*conditions)
                .order_by(executions.c.created_at.desc(), executions.c.id)
                .limit(page.limit)
                .offset(page.offset)
            )
        ).all()
        total = (
            await self._c.execute(select(func.count()).select_from(executions).where(*conditions))
        ).scalar_one()
        if not rows:
            return [], int(total)
        node_rows = (
            await self._c.execute(
                select(node_executions)
                .where(node_executions.c.execution_id.in_([r.id for r in rows]))
                .order_by(node_executions.c.execution_id, node_executions.c.position)
            )
        ).all()
        by_execution: dict[str, list[Any]] = {}
        for node in node_rows:
            by_execution.setdefault(node.execution_id, []).append(node)
        return [execution_from_rows(r, by_execution.get(r.id, [])) for r in rows], int(total)

    async def events(self, execution_id: str, after_seq: int, limit: int) -> list[ExecutionEvent]:
        rows = await self._c.execute(
            select(execution_events)
            .where(
                execution_events.c.execution_id == execution_id, execution_events.c.seq > after_seq
            )
            .order_by(execution_events.c.seq)
            .limit(limit)
        )
        return [ExecutionEvent(r.execution_id, r.seq, r.event, r.payload) for r in rows]

    async def cancel(self, execution: WorkflowExecution, now: dt.datetime) -> list[ExecutionEvent]:
        # The database decides which nodes were still unfinished: the runner may have moved on
        # since the execution was read.
        changed = (
            await self._c.execute(
                update(node_executions)
                .where(
                    node_executions.c.execution_id == execution.id,
                    node_executions.c.status.in_(
                        [NodeStatus.PENDING.value, NodeStatus.RUNNING.value]
                    ),
                )
                .values(status=NodeStatus.CANCELLED.value, completed_at=now)
                .returning(node_executions.c.node_id, node_executions.c.status)
            )
        ).all()
        was_running = {
            node_id for node_id, node in execution.nodes.items() if node.started_at is not None
        }
        announced = [r.node_id for r in changed if r.node_id in was_running]
        last_seq = (
            await self._c.execute(
                update(executions)
                .where(executions.c.id == execution.id, executions.c.status.in_(ACTIVE))
                .values(
                    status=ExecutionStatus.CANCELLED.value,
                    error=execution.error,
                    completed_at=now,
                    updated_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                    last_seq=executions.c.last_seq + len(announced) + 1,
                )
                .returning(executions.c.last_seq)
            )
        ).scalar_one_or_none()
        if last_seq is None:
            raise Conflict(f"Execution {execution.id} finished before it could be cancelled")
        first = last_seq - len(announced)
        events = [
            ExecutionEvent(
                execution.id,
                first + i,
                "node:update",
                node_update(execution.id, execution.nodes[node_id], first + i, now),
            )
            for i, node_id in enumerate(announced)
        ]
        execution.last_seq = last_seq
        events.append(
            ExecutionEvent(
                execution.id,
                last_seq,
                "execution:update",
                execution_update(execution, last_seq, now),
            )
        )
        await insert_events(self._c, events, now)
        return events


async def insert_events(
    connection: AsyncConnection, events: list[ExecutionEvent], now: dt.datetime
) -> None:
    """Store events in the caller's transaction (they are published after it commits)."""
    if events:
        await connection.execute(
            insert(execution_events),
            [
                {
                    "execution_id": e.execution_id,
                    "seq": e.seq,
                    "event": e.name,
                    "payload": e.payload,
                    "created_at": now,
                }
                for e in events
            ],
        )
