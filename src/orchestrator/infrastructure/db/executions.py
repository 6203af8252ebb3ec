"""Executions, their node states and their events in SQL."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from typing import Any

from sqlalchemy import Table, bindparam, func, insert, null, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.application.ports import (
    FULL_DETAIL,
    NEWEST_FIRST,
    ExecutionDetail,
    ExecutionEvent,
    ExecutionOrder,
    Page,
)
from orchestrator.domain.execution import (
    ACTIVE_EXECUTION,
    ExecutionStatus,
    NodeExecution,
    NodeStatus,
    WorkflowExecution,
)
from orchestrator.infrastructure.db.mappers import (
    NODE_VALUES,
    execution_from_rows,
    execution_row,
    execution_values,
    iteration_text,
    node_row,
    node_values,
)
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


_EXECUTION_DETAIL = ("input", "output")
_NODE_DETAIL = ("input", "output", "attempts")


_SORT_COLUMNS = {
    "createdAt": executions.c.created_at,
    "startedAt": executions.c.started_at,
    "completedAt": executions.c.completed_at,
    "status": executions.c.status,
}


def _ordering(order: ExecutionOrder) -> list[Any]:
    """ORDER BY for a page: NULLs last either way, then newest first, then by id (stable)."""
    column = _SORT_COLUMNS[order.by]
    first = column.desc() if order.descending else column.asc()
    return [first.nulls_last(), executions.c.created_at.desc(), executions.c.id]


def _columns(table: Table, left_out: tuple[str, ...]) -> list[Any]:
    """Every column of `table`, those left out read as NULL: a list loads only what it shows."""
    return [null().label(c.name) if c.name in left_out else c for c in table.c]


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
            [node_row(execution.id, n) for n in execution.nodes.values()],
        )
        return execution

    async def get(self, execution_id: str, lock: bool = False) -> WorkflowExecution | None:
        query = select(executions).where(executions.c.id == execution_id)
        if lock:
            query = query.with_for_update()
        row = (await self._c.execute(query)).first()
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
        detail: ExecutionDetail = FULL_DETAIL,
        order: ExecutionOrder = NEWEST_FIRST,
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
                select(*_columns(executions, () if detail.io else _EXECUTION_DETAIL))
                .where(*conditions)
                .order_by(*_ordering(order))
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
                select(*_columns(node_executions, () if detail.nodes else _NODE_DETAIL))
                .where(node_executions.c.execution_id.in_([r.id for r in rows]))
                .order_by(node_executions.c.execution_id, node_executions.c.position)
            )
        ).all()
        by_execution: dict[str, list[Any]] = {}
        for node in node_rows:
            by_execution.setdefault(node.execution_id, []).append(node)
        return [execution_from_rows(r, by_execution.get(r.id, [])) for r in rows], int(total)

    async def answer(
        self, execution_id: str, node: NodeExecution, answer: Any, now: dt.datetime
    ) -> bool:
        answered = await self._c.execute(
            update(node_executions)
            .where(
                node_executions.c.execution_id == execution_id,
                node_executions.c.node_id == node.node_id,
                node_executions.c.iteration == iteration_text(node.iteration),
                node_executions.c.status == NodeStatus.WAITING_INPUT.value,
                node_executions.c.answer.is_(None),
            )
            .values(answer=answer)
        )
        if answered.rowcount != 1:
            return False
        await wake_execution(self._c, execution_id, now)
        return True

    async def wake(self, execution_id: str, now: dt.datetime) -> None:
        await wake_execution(self._c, execution_id, now)

    async def active_children(self, execution_id: str) -> list[str]:
        rows = await self._c.execute(
            select(executions.c.id).where(
                executions.c.parent_execution_id == execution_id,
                executions.c.status.in_(ACTIVE),
            )
        )
        return list(rows.scalars())

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

    async def write_step(
        self,
        execution: WorkflowExecution,
        previous_seq: int,
        nodes: list[NodeExecution],
        events: list[ExecutionEvent],
    ) -> bool:
        return await write_step(self._c, execution, previous_seq, nodes, events)


_UPDATE_NODE = (
    update(node_executions)
    .where(
        node_executions.c.execution_id == bindparam("b_execution_id"),
        node_executions.c.node_id == bindparam("b_node_id"),
        node_executions.c.iteration == bindparam("b_iteration"),
    )
    .values({name: bindparam(name) for name in NODE_VALUES})
)


async def write_step(
    connection: AsyncConnection,
    execution: WorkflowExecution,
    previous_seq: int,
    nodes: list[NodeExecution],
    events: list[ExecutionEvent],
    token: int | None = None,
    created: Collection[str] = (),
) -> bool:
    """Write one step of an execution in the caller's transaction, fenced: only if the
    execution is unfinished, nobody wrote since `previous_seq` and (when given) the lease token
    is still `token`. False, and nothing written, when the fence does not hold. The node
    executions named in `created` (an iteration's) are inserted, the others updated."""
    now = execution.updated_at
    values: dict[str, Any] = {**execution_values(execution), "updated_at": now}
    if execution.finished:
        values["lease_owner"] = None
        values["lease_expires_at"] = None
    fence = [
        executions.c.id == execution.id,
        executions.c.status.in_(ACTIVE),
        executions.c.last_seq == previous_seq,
    ]
    if token is not None:
        fence.append(executions.c.lease_token == token)
    fenced = await connection.execute(update(executions).where(*fence).values(values))
    if fenced.rowcount != 1:
        return False
    changed = [n for n in nodes if n.key not in created]
    if changed:
        await connection.execute(
            _UPDATE_NODE,
            [
                {
                    "b_execution_id": execution.id,
                    "b_node_id": n.node_id,
                    "b_iteration": iteration_text(n.iteration),
                    **node_values(n),
                }
                for n in changed
            ],
        )
    new = [node_row(execution.id, n) for n in nodes if n.key in created]
    if new:
        await connection.execute(_INSERT_NODES, new)
    await insert_events(connection, events, now)
    return True


NEVER = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
"""`wake_at` of an execution that waits with no timeout: only an answer or a child wakes it."""


async def wake_execution(connection: AsyncConnection, execution_id: str, now: dt.datetime) -> None:
    """Make an unfinished execution claimable now, taking the lease from whoever holds it.

    Whoever drove it stops at its next fenced write, and the next claim loads what woke it
    (an answer, a child's end) with the rest.
    """
    await connection.execute(
        update(executions)
        .where(executions.c.id == execution_id, executions.c.status.in_(ACTIVE))
        .values(
            wake_at=now,
            lease_owner=None,
            lease_expires_at=None,
            lease_token=executions.c.lease_token + 1,
        )
    )


async def count_active(connection: AsyncConnection, user_id: str) -> int:
    """How many executions the user started that are PENDING or RUNNING (waiting for a person
    included); sub-workflows are part of their parent's run and not counted."""
    count = await connection.scalar(
        select(func.count())
        .select_from(executions)
        .where(
            executions.c.user_id == user_id,
            executions.c.status.in_(ACTIVE),
            executions.c.parent_execution_id.is_(None),
        )
    )
    return int(count or 0)


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
