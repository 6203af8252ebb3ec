"""kill -9 amid 20 executions: after a restart all complete, and no finished node runs twice."""

from __future__ import annotations

import asyncpg
import httpx

from tests import faults
from tests.databases import plain
from tests.flows import agents, calls_for, create_active, execute, wait_until
from tests.processes import base_url, running, service_process

FAST_LEASES = {"LEASE_SECONDS": "3", "HEARTBEAT_SECONDS": "1"}


async def completed_node_keys(database_url: str) -> set[str]:
    """Idempotency keys (executionId:nodeId) of every AGENT node committed as COMPLETED."""
    connection = await asyncpg.connect(plain(database_url))
    try:
        rows = await connection.fetch(
            "SELECT execution_id, node_id FROM node_executions "
            "WHERE status = 'COMPLETED' AND node_type = 'AGENT'"
        )
    finally:
        await connection.close()
    return {f"{r['execution_id']}:{r['node_id']}" for r in rows}


async def test_kill_9_then_restart_completes_everything_once(pg_url: str, standin: str) -> None:
    first = service_process(pg_url, standin, **FAST_LEASES)
    with running(first):
        async with httpx.AsyncClient(base_url=base_url(first), timeout=30) as client:
            definition = agents(5, "slow", inputMapping={"delayMs": 300})
            workflow_id = await create_active(client, definition)
            ids = [(await execute(client, workflow_id, {"i": i}))["id"] for i in range(20)]
            db = await faults.connect(pg_url)
            try:
                await faults.wait_progress(db, ids, len(ids), timeout=60)
            finally:
                await db.close()
        first.kill()
    done_before = await completed_node_keys(pg_url)
    assert done_before, "some nodes should have completed before the kill"

    second = service_process(pg_url, standin, **FAST_LEASES)
    with running(second):
        async with (
            httpx.AsyncClient(base_url=base_url(second), timeout=30) as client,
            httpx.AsyncClient(base_url=standin, timeout=30) as standin_client,
        ):
            finished = [await wait_until(client, i, timeout=60) for i in ids]
            assert [e["status"] for e in finished] == ["COMPLETED"] * 20
            for key in done_before:
                assert len(await calls_for(standin_client, key)) == 1, key
            for execution in finished:
                assert all(n["status"] == "COMPLETED" for n in execution["nodeExecutions"])
