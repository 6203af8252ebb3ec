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
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.application.ports import ExecutionEvent
from orchestrator.domain.execution import NodeExecution, WorkflowExecution
from orchestrator.infrastructure.db.errors import is_transient
from orchestrator.infrastructure.db.mappers import execution_values, node_values

MAX_BATCH = 200

_WRITE_STEPS = """
WITH step AS (
    SELECT * FROM jsonb_to_recordset($1::jsonb) AS v(
        id text, token bigint, previous_seq bigint, status text, output jsonb, error text,
        current_node_id text, started_at timestamptz, completed_at timestamptz,
        last_seq bigint, finished boolean)
), fence AS (
    UPDATE executions AS e
    SET status = s.status, output = s.output, error = s.error,
        current_node_id = s.current_node_id, started_at = s.started_at,
        completed_at = s.completed_at, updated_at = $4, last_seq = s.last_seq,
        lease_owner = CASE WHEN s.finished THEN NULL ELSE e.lease_owner END,
        lease_expires_at = CASE WHEN s.finished THEN NULL ELSE e.lease_expires_at END
    FROM step AS s
    WHERE e.id = s.id AND e.lease_token = s.token AND e.last_seq = s.previous_seq
      AND e.status IN ('PENDING', 'RUNNING')
    RETURNING e.id
), nodes AS (
    UPDATE node_executions AS n
    SET status = v.status, input = v.input, output = v.output, error = v.error,
        retry_count = v.retry_count, attempts = v.attempts, finished_order = v.finished_order,
        started_at = v.started_at, completed_at = v.completed_at
    FROM fence, jsonb_to_recordset($2::jsonb) AS v(
        execution_id text, node_id text, status text, input jsonb, output jsonb, error text,
        retry_count int, attempts jsonb, finished_order int, started_at timestamptz,
        completed_at timestamptz)
    WHERE v.execution_id = fence.id AND n.execution_id = v.execution_id
      AND n.node_id = v.node_id
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


@dataclass
class Step:
    """One fenced step of one execution."""

    token: int
    execution: WorkflowExecution
    previous_seq: int
    nodes: list[NodeExecution]
    events: list[ExecutionEvent]


class StepWriter:
    """Writes steps in batches; `write` answers whether the step's fence held."""

    def __init__(self, engine: AsyncEngine) -> None:
        # One writer writes one batch at a time, so it keeps one connection of its own.
        self._dsn = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._connection: asyncpg.Connection | None = None
        self._queue: list[_Queued] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def write(self, step: Step) -> bool:
        """Queue the step and wait for its batch; False when the fence did not hold."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="step-writer")
        execution = step.execution
        row = {
            "id": execution.id,
            "token": step.token,
            "previous_seq": step.previous_seq,
            "finished": execution.finished,
            **execution_values(execution),
        }
        nodes = [
            {"execution_id": execution.id, "node_id": n.node_id, **node_values(n)}
            for n in step.nodes
        ]
        events = [
            {"execution_id": e.execution_id, "seq": e.seq, "event": e.name, "payload": e.payload}
            for e in step.events
        ]
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((row, nodes, events, future))
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
