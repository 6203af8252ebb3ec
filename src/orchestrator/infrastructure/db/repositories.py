"""SQL repositories and the unit of work, on one AsyncConnection per unit."""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orchestrator.application.ports import (
    ExecutionEvent,
    ExecutionRepository,
    Page,
    UnitOfWork,
    VersionRecord,
    WorkflowRepository,
)
from orchestrator.application.views import execution_update, node_update
from orchestrator.domain.errors import ConcurrentChange, Conflict
from orchestrator.domain.execution import (
    ACTIVE_EXECUTION,
    ExecutionStatus,
    NodeStatus,
    WorkflowExecution,
)
from orchestrator.domain.workflow import Definition, Workflow, WorkflowStatus
from orchestrator.infrastructure.db.mappers import (
    definition_from_json,
    definition_to_json,
    execution_from_rows,
    execution_row,
    node_row,
    workflow_from_row,
)
from orchestrator.infrastructure.db.tables import (
    execution_events,
    executions,
    node_executions,
    workflow_versions,
    workflows,
)

ACTIVE = [s.value for s in ACTIVE_EXECUTION]


# Versions are immutable, so their parsed definitions can be kept (by every process alike).
_DEFINITIONS: OrderedDict[tuple[str, int], Definition] = OrderedDict()
DEFINITION_CACHE_SIZE = 1024


def _remember(workflow_id: str, version: int, stored: Any) -> Definition:
    key = (workflow_id, version)
    definition = _DEFINITIONS.get(key)
    if definition is None:
        definition = definition_from_json(stored)
        _DEFINITIONS[key] = definition
        if len(_DEFINITIONS) > DEFINITION_CACHE_SIZE:
            _DEFINITIONS.popitem(last=False)
    return definition


class SqlWorkflowRepository:
    """Workflows in SQL; each definition version is its own immutable row.

    `save` refuses (Conflict) to overwrite a workflow that changed since `get` read it.
    """

    def __init__(self, connection: AsyncConnection) -> None:
        self._c = connection
        # The (version, updated_at) that `get` read, checked again by `save`.
        self._read: dict[str, tuple[int, dt.datetime]] = {}

    async def add(self, workflow: Workflow) -> None:
        await self._c.execute(
            insert(workflows).values(
                id=workflow.id,
                name=workflow.name,
                description=workflow.description,
                status=workflow.status.value,
                version=workflow.version,
                user_id=workflow.user_id,
                created_at=workflow.created_at,
                updated_at=workflow.updated_at,
            )
        )
        await self._add_version(workflow)

    async def _add_version(self, workflow: Workflow) -> None:
        await self._c.execute(
            insert(workflow_versions).values(
                workflow_id=workflow.id,
                version=workflow.version,
                definition=definition_to_json(workflow.definition),
                created_at=workflow.updated_at,
            )
        )

    def _select(self) -> Any:
        return select(workflows, workflow_versions.c.definition).join(
            workflow_versions,
            and_(
                workflow_versions.c.workflow_id == workflows.c.id,
                workflow_versions.c.version == workflows.c.version,
            ),
        )

    async def get(self, workflow_id: str) -> Workflow | None:
        row = (
            await self._c.execute(select(workflows).where(workflows.c.id == workflow_id))
        ).first()
        if row is None:
            return None
        definition = await self.definition(row.id, row.version)
        if definition is None:
            return None
        self._read[workflow_id] = (row.version, row.updated_at)
        return workflow_from_row(row, definition)

    async def list_page(
        self, page: Page, user_id: str | None, status: WorkflowStatus | None
    ) -> tuple[list[Workflow], int]:
        conditions = []
        if user_id is not None:
            conditions.append(workflows.c.user_id == user_id)
        if status is not None:
            conditions.append(workflows.c.status == status.value)
        query = (
            self._select()
            .where(*conditions)
            .order_by(workflows.c.created_at.desc(), workflows.c.id)
            .limit(page.limit)
            .offset(page.offset)
        )
        rows = (await self._c.execute(query)).all()
        total = (
            await self._c.execute(select(func.count()).select_from(workflows).where(*conditions))
        ).scalar_one()
        return [workflow_from_row(r, _remember(r.id, r.version, r.definition)) for r in rows], int(
            total
        )

    async def save(self, workflow: Workflow, new_version: bool) -> None:
        statement = update(workflows).where(workflows.c.id == workflow.id)
        read = self._read.get(workflow.id)
        if read is not None:
            # Two requests that read the same row: the second to write would undo the first
            # (revive an archived workflow, or clash on the next version number).
            statement = statement.where(
                workflows.c.version == read[0], workflows.c.updated_at == read[1]
            )
        saved = await self._c.execute(
            statement.values(
                name=workflow.name,
                description=workflow.description,
                status=workflow.status.value,
                version=workflow.version,
                updated_at=workflow.updated_at,
            )
        )
        if saved.rowcount != 1:
            raise ConcurrentChange(
                f"Workflow {workflow.id} was changed by another request; reload it and retry"
            )
        self._read[workflow.id] = (workflow.version, workflow.updated_at)
        if new_version:
            await self._add_version(workflow)

    async def versions(self, workflow_id: str) -> list[VersionRecord]:
        rows = await self._c.execute(
            select(workflow_versions)
            .where(workflow_versions.c.workflow_id == workflow_id)
            .order_by(workflow_versions.c.version)
        )
        return [
            VersionRecord(r.version, definition_from_json(r.definition), r.created_at) for r in rows
        ]

    async def definition(self, workflow_id: str, version: int) -> Definition | None:
        cached = _DEFINITIONS.get((workflow_id, version))
        if cached is not None:
            return cached
        row = (
            await self._c.execute(
                select(workflow_versions.c.definition).where(
                    workflow_versions.c.workflow_id == workflow_id,
                    workflow_versions.c.version == version,
                )
            )
        ).first()
        return None if row is None else _remember(workflow_id, version, row.definition)


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


class SqlUnitOfWork:
    """One connection, one transaction; rolled back unless committed."""

    workflows: WorkflowRepository
    executions: ExecutionRepository

    def __init__(self, engine: AsyncEngine, lease_for: LeaseSource | None = None) -> None:
        self._engine = engine
        self._lease_for = lease_for
        self._connection: AsyncConnection | None = None

    async def __aenter__(self) -> UnitOfWork:
        self._connection = await self._engine.connect()
        await self._connection.begin()
        self.workflows = SqlWorkflowRepository(self._connection)
        self.executions = SqlExecutionRepository(self._connection, self._lease_for)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._connection is not None
        try:
            await self._connection.rollback()
        finally:
            await self._connection.close()
            self._connection = None

    async def commit(self) -> None:
        assert self._connection is not None
        await self._connection.commit()
