"""Retention end to end: a service that sweeps every 0.1 s while its runner executes, pins
through the API, and old executions gone for good (404)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.application.ports import ExecutionEvent
from orchestrator.domain.engine import initial_nodes
from orchestrator.domain.execution import ExecutionStatus, WorkflowExecution
from orchestrator.infrastructure.clock import SystemClock
from orchestrator.infrastructure.db.engine import create_engine
from orchestrator.infrastructure.db.executions import SqlExecutionRepository, insert_events
from orchestrator.infrastructure.db.tables import execution_events, executions, node_executions
from orchestrator.infrastructure.db.workflows import SqlWorkflowRepository
from orchestrator.infrastructure.retention import Retention
from orchestrator.settings import async_database_url
from tests.flows import chain, create_active, execute, get_execution, node, wait_until
from tests.processes import Process, running, service_process

EVENTS = 3


def tools(count: int, delay_ms: int = 0) -> dict[str, Any]:
    """START, `count` TOOL nodes that each take `delay_ms`, END."""
    return chain(
        *(
            node(f"t{i}", "TOOL", toolId="slow", parameters={"delayMs": delay_ms})
            for i in range(1, count + 1)
        )
    )


@pytest.fixture(scope="module")
def service(service_db: str, standin: str) -> Iterator[Process]:
    """The service, sweeping every 0.1 s: executions finished over a day ago are deleted,
    the events of those finished over an hour ago compacted."""
    with running(
        service_process(
            service_db,
            standin,
            EXECUTION_RETENTION_DAYS="1",
            EVENT_RETENTION_HOURS="1",
            RETENTION_INTERVAL_SECONDS="0.1",
            RETENTION_BATCH_SIZE="7",
        )
    ) as process:
        yield process


@pytest.fixture
async def db(service_db: str) -> AsyncIterator[AsyncEngine]:
    """The service's database, seen from the test."""
    engine = create_engine(async_database_url(service_db))
    yield engine
    await engine.dispose()


async def stored(
    db: AsyncEngine, workflow_id: str, finished_ago: dt.timedelta, pins: tuple[bool, ...] = (False,)
) -> list[str]:
    """Executions that COMPLETED `finished_ago`, one per entry of `pins` (pinned or not),
    each with its nodes and EVENTS events, in one transaction (a sweep sees all or none)."""
    now = dt.datetime.now(dt.UTC)
    completed = now - finished_ago
    ids = []
    async with db.begin() as connection:
        definition = await SqlWorkflowRepository(connection).definition(workflow_id, 1)
        assert definition is not None
        for pin in pins:
            execution = WorkflowExecution(
                id=str(uuid.uuid4()),
                workflow_id=workflow_id,
                workflow_version=1,
                status=ExecutionStatus.COMPLETED,
                input=None,
                user_id=None,
                created_at=completed,
                updated_at=completed,
                deadline_at=completed + dt.timedelta(hours=1),
                nodes=initial_nodes(definition),
                completed_at=completed,
                last_seq=EVENTS,
                keep=pin,
            )
            await SqlExecutionRepository(connection).add(execution)
            events = [
                ExecutionEvent(execution.id, seq, "node:update", {"seq": seq})
                for seq in range(1, EVENTS + 1)
            ]
            await insert_events(connection, events, completed)
            ids.append(execution.id)
    return ids


async def rows_of(db: AsyncEngine, ids: list[str]) -> tuple[int, ...]:
    """How many execution, node execution and event rows these executions have."""
    async with db.connect() as connection:
        return tuple(
            [
                (await connection.execute(select(func.count()).where(column.in_(ids)))).scalar_one()
                for column in (
                    executions.c.id,
                    node_executions.c.execution_id,
                    execution_events.c.execution_id,
                )
            ]
        )


async def until_purged(db: AsyncEngine, ids: list[str], timeout: float = 30.0) -> tuple[int, ...]:
    deadline = time.monotonic() + timeout
    while (left := await rows_of(db, ids)) != (0, 0, 0):
        assert time.monotonic() < deadline, f"still stored: {left}"
        await asyncio.sleep(0.05)
    return left


async def seqs(api: httpx.AsyncClient, execution_id: str) -> list[int]:
    response = await api.get(f"/workflows/executions/{execution_id}/events", params={"limit": 1000})
    assert response.status_code == 200, response.text
    return [e["seq"] for e in response.json()["events"]]


async def test_executions_run_to_the_end_while_retention_sweeps(
    api: httpx.AsyncClient, db: AsyncEngine
) -> None:
    workflow_id = await create_active(api, tools(3, delay_ms=100))
    stop = asyncio.Event()

    async def old_ones_keep_coming() -> list[str]:
        made: list[str] = []
        while not stop.is_set():
            made += await stored(db, workflow_id, dt.timedelta(days=2), (False,) * 10)
            await asyncio.sleep(0.02)
        return made

    async def another_replica_sweeps() -> None:
        # A second sweeper on its own connections, as another replica would be.
        sweeper = Retention(db, SystemClock(), 1, 1, 300, 5)
        while not stop.is_set():
            await sweeper.sweep_once()
            await asyncio.sleep(0.01)

    producer = asyncio.create_task(old_ones_keep_coming())
    replica = asyncio.create_task(another_replica_sweeps())
    try:
        started = [await execute(api, workflow_id, {"n": i}) for i in range(20)]
        done = [await wait_until(api, s["id"], timeout=60) for s in started]
    finally:
        stop.set()
        old = await producer
        await replica

    assert [d["status"] for d in done] == ["COMPLETED"] * len(done)
    for execution in done:
        assert {n["status"] for n in execution["nodeExecutions"]} == {"COMPLETED"}
        assert await seqs(api, execution["id"]) == list(range(1, execution["lastSeq"] + 1))
    assert await rows_of(db, [d["id"] for d in done]) == (
        20,
        20 * 5,
        sum(d["lastSeq"] for d in done),
    )
    # Every old one went, with its node rows and events.
    assert len(old) >= 10
    await until_purged(db, old)
    purged = await api.get(f"/workflows/executions/{old[0]}")
    assert purged.status_code == 404
    assert purged.json()["statusCode"] == 404


async def test_a_pinned_execution_stays_until_unpinned(
    api: httpx.AsyncClient, db: AsyncEngine
) -> None:
    workflow_id = await create_active(api, tools(1))
    [pinned, sentinel] = await stored(db, workflow_id, dt.timedelta(days=3), (True, False))
    # The sweep that deleted the sentinel saw the pinned one too.
    await until_purged(db, [sentinel])
    kept = await get_execution(api, pinned)
    assert kept["keep"] is True

    unpinned = await api.delete(f"/workflows/executions/{pinned}/keep")
    assert unpinned.status_code == 200, unpinned.text
    assert unpinned.json() == {"executionId": pinned, "keep": False}
    await until_purged(db, [pinned])
    assert (await api.get(f"/workflows/executions/{pinned}")).status_code == 404
    assert (await api.put(f"/workflows/executions/{pinned}/keep")).status_code == 404


async def test_the_events_of_an_old_execution_are_compacted_to_the_last(
    api: httpx.AsyncClient, db: AsyncEngine
) -> None:
    workflow_id = await create_active(api, tools(1))
    [old] = await stored(db, workflow_id, dt.timedelta(hours=2))
    [recent] = await stored(db, workflow_id, dt.timedelta(minutes=30))
    before = await get_execution(api, old)

    deadline = time.monotonic() + 30
    while await seqs(api, old) != [EVENTS]:
        assert time.monotonic() < deadline, "not compacted"
        await asyncio.sleep(0.05)
    assert await get_execution(api, old) == before
    assert await seqs(api, recent) == list(range(1, EVENTS + 1))


async def test_pin_and_unpin_through_the_api(api: httpx.AsyncClient) -> None:
    workflow_id = await create_active(api, tools(1))
    started = await execute(api, workflow_id)
    execution_id = started["id"]
    assert started["keep"] is False

    for _ in range(2):  # pinning twice is fine
        pinned = await api.put(f"/workflows/executions/{execution_id}/keep")
        assert pinned.status_code == 200, pinned.text
        assert pinned.json() == {"executionId": execution_id, "keep": True}
    done = await wait_until(api, execution_id)
    assert done["status"] == "COMPLETED"
    assert done["keep"] is True  # the runner's steps did not undo it

    for _ in range(2):
        unpinned = await api.delete(f"/workflows/executions/{execution_id}/keep")
        assert unpinned.status_code == 200, unpinned.text
        assert unpinned.json() == {"executionId": execution_id, "keep": False}
    assert (await get_execution(api, execution_id))["keep"] is False


async def test_only_the_owner_pins_and_others_get_404(api: httpx.AsyncClient) -> None:
    workflow_id = await create_active(api, tools(1))
    response = await api.post(
        "/workflows/execute", params={"userId": "ann"}, json={"workflowId": workflow_id}
    )
    assert response.status_code == 202, response.text
    execution_id = response.json()["id"]

    for method in ("PUT", "DELETE"):
        other = await api.request(
            method, f"/workflows/executions/{execution_id}/keep", params={"userId": "bob"}
        )
        assert other.status_code == 404, other.text
        assert other.json()["statusCode"] == 404
    assert (await get_execution(api, execution_id))["keep"] is False

    owner = await api.put(f"/workflows/executions/{execution_id}/keep", params={"userId": "ann"})
    assert owner.status_code == 200, owner.text
    assert (await get_execution(api, execution_id))["keep"] is True


async def test_pinning_an_unknown_execution_is_404(api: httpx.AsyncClient) -> None:
    for method in ("PUT", "DELETE"):
        response = await api.request(method, f"/workflows/executions/{uuid.uuid4()}/keep")
        assert response.status_code == 404
        body = response.json()
        assert body["statusCode"] == 404
        assert "Execution" in body["message"]
