"""The unit of work: the repositories on one connection, in one transaction."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orchestrator.application.ports import ExecutionRepository, UnitOfWork, WorkflowRepository
from orchestrator.infrastructure.db.executions import LeaseSource, SqlExecutionRepository
from orchestrator.infrastructure.db.workflows import SqlWorkflowRepository


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
