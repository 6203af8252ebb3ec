"""Group commit on PostgreSQL: the steps of many executions written by one statement.

Drivers hand their steps to one writer. While a write is in flight, new steps queue up and
go together in the next one, so under load a round trip and a statement serve many steps;
alone, a step is written at once. Each step stays fenced on its own: the statement updates
only executions whose lease token, status and last seq still match, and writes node states
and events only for those.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Collection
from typing import Any

import asyncpg
import orjson
from sqlalchemy import Table
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.application.ports import ExecutionEvent
from orchestrator.domain.execution import NodeExecution, WorkflowExecution
from orchestrator.infrastructure.db.errors import is_transient
from orchestrator.infrastructure.db.mappers import (
    EXECUTION_VALUES,
    NODE_VALUES,
    execution_values,
    node_row,
)
from orchestrator.infrastructure.db.tables import executions, node_executions
from orchestrator.infrastructure.metrics import Metrics

MAX_BATCH = 200


def _recordset(table: Table, names: tuple[str, ...]) -> str:
    """`name type, ...` of the columns, for jsonb_to_recordset (a node row also says whether
    it is `new`)."""
    dialect = PGDialect()  # type: ignore[no-untyped-call]
    columns = ", ".join(f"{n} {table.c[n].type.compile(dialect=dialect)}" for n in names)
    return columns + ", new boolean" if table is node_executions else columns


def _assign(names: tuple[str, ...], source: str) -> str:
    return ", ".join(f"{n} = {source}.{n}" for n in names)


_NODE_COLUMNS = ("execution_id", "node_id", "iteration", "position", "node_type", *NODE_VALUES)


# The column lists come from the table definitions and the mappers, so that a new column is
# named in one place.
_WRITE_STEPS = f"""
WITH step AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS v(
        id text, token bigint, previous_seq bigint, finished boolean,
        {_recordset(executions, EXECUTION_VALUES)})
), locked AS (
    -- In id order, as the heartbeat locks them: the two statements never deadlock.
    SELECT x.id FROM executions AS x WHERE x.id IN (SELECT id FROM step)
    ORDER BY x.id FOR UPDATE
), fence AS (
    UPDATE executions AS e
    SET {_assign(EXECUTION_VALUES, "s")}, updated_at = $4,
        lease_owner = CASE WHEN s.finished THEN NULL ELSE e.lease_owner END,
        lease_expires_at = CASE WHEN s.finished THEN NULL ELSE e.lease_expires_at END
    FROM step AS s, locked AS l
    WHERE e.id = s.id AND l.id = s.id
      AND e.lease_token = s.token AND e.last_seq = s.previous_seq
      AND e.status IN ('PENDING', 'RUNNING')
    RETURNING e.id
), nodes AS (
    UPDATE node_executions AS n
    SET {_assign(NODE_VALUES, "v")}
    FROM fence, jsonb_to_recordset($2::jsonb) AS v({_recordset(node_executions, _NODE_COLUMNS)})
    WHERE NOT v.new AND v.execution_id = fence.id AND n.execution_id = v.execution_id
      AND n.node_id = v.node_id AND n.iteration = v.iteration
    RETURNING 1
), new_nodes AS (
    -- An iteration's node executions: the step that made them inserts them.
    INSERT INTO node_executions ({", ".join(_NODE_COLUMNS)})
    SELECT {", ".join(f"v.{n}" for n in _NODE_COLUMNS)}
    FROM fence JOIN jsonb_to_recordset($2::jsonb) AS v(
        {_recordset(node_executions, _NODE_COLUMNS)}) ON v.execution_id = fence.id
    WHERE v.new
    RETURNING 1
), events AS (
    INSERT INTO execution_events (execution_id, seq, event, payload, created_at)
    SELECT v.execution_id, v.seq, v.event, v.payload, $4
    FROM fence, jsonb_to_recordset($3::jsonb) AS v(
        execution_id text, seq bigint, event text, payload jsonb)
    WHERE v.execution_id = fence.id
    RETURNING 1
)
SELECT id FROM fence
"""


_Queued = tuple[dict[str, Any], list[Any], list[Any], "asyncio.Future[bool]"]


class StepWriter:
    """Writes steps in batches; `write` answers whether the step's fence held."""

    def __init__(self, engine: AsyncEngine, metrics: Metrics | None = None) -> None:
        self._metrics = metrics
        # One writer writes one batch at a time, so it keeps one connection of its own.
        self._dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._connection: asyncpg.Connection | None = None
        self._queue: list[_Queued] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def write(
        self,
        token: int,
        execution: WorkflowExecution,
        previous_seq: int,
        nodes: list[NodeExecution],
        events: list[ExecutionEvent],
        created: Collection[str] = (),
    ) -> bool:
        """Queue one fenced step and wait for its batch; False when the fence did not hold.

        The node executions named in `created` are inserted, the others updated."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="step-writer")
        row = {
            "id": execution.id,
            "token": token,
            "previous_seq": previous_seq,
            "finished": execution.finished,
            **execution_values(execution),
        }
        node_rows = [{**node_row(execution.id, n), "new": n.key in created} for n in nodes]
        event_rows = [
            {"execution_id": e.execution_id, "seq": e.seq, "event": e.name, "payload": e.payload}
            for e in events
        ]
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((row, node_rows, event_rows, future))
        self._ready.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    await self._settle(batch)
                except Exception as exc:
                    if len(batch) == 1 or is_transient(exc):
                        for *_, future in batch:
                            if not future.done():
                                future.set_exception(exc)
                        continue
                    # One step holds a value the database refuses (say a NUL in an agent's
                    # answer): write them one by one, so that only that execution fails.
                    for item in batch:
                        try:
                            await self._settle([item])
                        except Exception as single:
                            if not item[3].done():
                                item[3].set_exception(single)

    async def _settle(self, batch: list[_Queued]) -> None:
        if self._metrics is not None:
            self._metrics.batch_size.observe(len(batch))
        written = await self._write(batch)
        for row, _, _, future in batch:
            if not future.done():
                future.set_result(row["id"] in written)

    async def _write(self, batch: list[_Queued]) -> set[str]:
        rows = orjson.dumps([row for row, *_ in batch]).decode()
        nodes = orjson.dumps([n for _, node_rows, *_ in batch for n in node_rows]).decode()
        events = orjson.dumps([e for *_, event_rows, _ in batch for e in event_rows]).decode()
        if self._connection is None or self._connection.is_closed():
            self._connection = await asyncpg.connect(
                self._dsn, timeout=10, server_settings={"application_name": "orchestrator-steps"}
            )
        try:
            records = await self._connection.fetch(
                _WRITE_STEPS, rows, nodes, events, dt.datetime.now(dt.UTC), timeout=30
            )
        except BaseException:
            # Whatever state the connection is in now, the next batch starts on a new one.
            connection, self._connection = self._connection, None
            connection.terminate()
            raise
        return {r["id"] for r in records}

    async def close(self) -> None:
        """Stop the writer (steps still queued fail)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for *_, future in self._queue:
            if not future.done():
                future.set_exception(ConnectionError("the step writer stopped"))
        self._queue.clear()
        if self._connection is not None:
            await self._connection.close(timeout=5)
            self._connection = None
