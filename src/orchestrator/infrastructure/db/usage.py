"""Reading the stored usage of root executions, a chunk at a time (application/usage.py sums it)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Collection, Sequence

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.application.usage import UsageRow
from orchestrator.infrastructure.db.tables import executions, workflows

CHUNK_ROWS = 1000
NAMES_PER_QUERY = 500


class SqlUsageSource:
    """The usage of executions in PostgreSQL or SQLite."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def chunks(
        self, user_id: str | None, start: dt.datetime, end: dt.datetime
    ) -> AsyncIterator[Sequence[UsageRow]]:
        """Streamed through a server-side cursor on PostgreSQL: however many executions the
        range holds, only one chunk is in memory."""
        conditions = [
            executions.c.parent_execution_id.is_(None),
            executions.c.created_at >= start,
            executions.c.created_at < end,
            self._holds_object(),
        ]
        if user_id is not None:
            conditions.append(executions.c.user_id == user_id)
        query = select(executions.c.workflow_id, executions.c.created_at, executions.c.usage).where(
            *conditions
        )
        async with self._engine.connect() as connection:
            result = await connection.stream(query.execution_options(yield_per=CHUNK_ROWS))
            async for rows in result.partitions(CHUNK_ROWS):
                yield [UsageRow(r.workflow_id, r.created_at, r.usage) for r in rows]

    async def workflow_names(self, workflow_ids: Collection[str]) -> dict[str, str]:
        """A few queries of NAMES_PER_QUERY ids each, so that no statement grows unbounded."""
        ids = sorted(workflow_ids)
        names: dict[str, str] = {}
        async with self._engine.connect() as connection:
            for at in range(0, len(ids), NAMES_PER_QUERY):
                rows = await connection.execute(
                    select(workflows.c.id, workflows.c.name).where(
                        workflows.c.id.in_(ids[at : at + NAMES_PER_QUERY])
                    )
                )
                names.update({row.id: row.name for row in rows})
        return names

    def _holds_object(self) -> ColumnElement[bool]:
        """The usage is a JSON object: neither SQL NULL nor the JSON `null` that an execution
        without reported usage stores."""
        if self._engine.dialect.name == "postgresql":
            return func.jsonb_typeof(executions.c.usage) == "object"
        return func.json_type(executions.c.usage) == "object"
