"""Cancel stops the work: the in-flight agent or tool call is aborted and the callee sees its
connection close within 2 s, even when the cancel reaches another replica than the one that
runs the execution; the execution deadline closes it too.

The replicas heartbeat every 10 s here, so only the process bus can be this fast.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from tests.databases import plain
from tests.flows import chain, create_active, execute, node, wait_until
from tests.processes import Process, base_url, running, service_process

pytestmark = pytest.mark.timeout(120)

# Far beyond the 2 s a cancel may take: without the bus, B's cancel reaches A in up to 10 s.
SLOW = {"HEARTBEAT_SECONDS": "10", "LEASE_SECONDS": "30"}
CALL_MS = 30_000
CLOSED_WITHIN_S = 2.0


def seconds(earlier: datetime, later: str) -> float:
    """From a moment here to an ISO time in the stand-in's log (one host, one clock)."""
    return (datetime.fromisoformat(later) - earlier).total_seconds()


async def in_flight(standin: httpx.AsyncClient, key: str) -> None:
    """Wait until the stand-in is answering the call with this Idempotency-Key."""
    deadline = time.monotonic() + 30
    while not (await standin.get("/_inflight", params={"key": key})).json()["calls"]:
        assert time.monotonic() < deadline, f"the call {key} never arrived"
        await asyncio.sleep(0.02)


async def ended(standin: httpx.AsyncClient, key: str, timeout: float = 30) -> dict[str, Any]:
    """Wait until the stand-in logged the call with this Idempotency-Key as ended."""
    deadline = time.monotonic() + timeout
    while True:
        logged = (await standin.get("/_calls", params={"key": key})).json()["calls"]
        if logged:
            call: dict[str, Any] = logged[0]
            return call
        assert time.monotonic() < deadline, f"the call {key} is still going"
        await asyncio.sleep(0.02)


async def held_by(database_url: str, execution_id: str) -> str:
    """The lease owner of an execution (host:pid:random)."""
    db = await asyncpg.connect(plain(database_url))
    try:
        owner: str = await db.fetchval(
            "SELECT lease_owner FROM executions WHERE id = $1", execution_id
        )
    finally:
        await db.close()
    return owner


async def start_slow(
    api: httpx.AsyncClient, standin: httpx.AsyncClient, slow: dict[str, Any]
) -> str:
    """Run a one-node workflow whose call takes 30 s; returns the execution id once the call
    is in the stand-in's hands."""
    workflow_id = await create_active(api, chain(slow))
    execution_id: str = (await execute(api, workflow_id, {}))["id"]
    await in_flight(standin, f"{execution_id}:{slow['id']}")
    return execution_id


async def test_a_cancel_through_another_replica_closes_the_calls_within_2_s(
    pg_url: str, standin: str, calls: httpx.AsyncClient
) -> None:
    with (
        running(service_process(pg_url, standin, **SLOW)) as a,
        running(service_process(pg_url, standin, **SLOW)) as b,
    ):
        async with (
            httpx.AsyncClient(base_url=base_url(a), timeout=30) as on_a,
            httpx.AsyncClient(base_url=base_url(b), timeout=30) as on_b,
        ):
            nodes = [
                node("think", "AGENT", agentId="slow", inputMapping={"delayMs": CALL_MS}),
                node("fetch", "TOOL", toolId="slow", parameters={"delayMs": CALL_MS}),
            ]
            for slow in nodes:
                execution_id = await start_slow(on_a, calls, slow)
                assert f":{a.pid}:" in await held_by(pg_url, execution_id)

                cancelled = await on_b.post(f"/workflows/executions/{execution_id}/cancel")
                assert cancelled.status_code == 204, cancelled.text
                answered_at = datetime.now(UTC)

                call = await ended(calls, f"{execution_id}:{slow['id']}")
                assert call["status"] == 499, call
                assert seconds(answered_at, call["disconnectedAt"]) < CLOSED_WITHIN_S, call
                done = await wait_until(on_a, execution_id)
                assert done["status"] == "CANCELLED"
            assert_quiet(a, b)


async def test_the_execution_deadline_closes_the_call(
    pg_url: str, standin: str, calls: httpx.AsyncClient
) -> None:
    timeout_s = 2.0
    env = {**SLOW, "EXECUTION_TIMEOUT": str(int(timeout_s * 1000))}
    with running(service_process(pg_url, standin, **env)) as service:
        async with httpx.AsyncClient(base_url=base_url(service), timeout=30) as api:
            slow = node("think", "AGENT", agentId="slow", inputMapping={"delayMs": CALL_MS})
            execution_id = await start_slow(api, calls, slow)

            call = await ended(calls, f"{execution_id}:think")
            done = await wait_until(api, execution_id)

        assert done["status"] == "FAILED"
        assert "timed out" in done["error"]
        assert call["status"] == 499, call
        received = datetime.fromisoformat(call["receivedAt"])
        # The call started after the execution did, so it has less than the timeout to run.
        assert seconds(received, call["disconnectedAt"]) < timeout_s + CLOSED_WITHIN_S, call
        assert_quiet(service)


def assert_quiet(*processes: Process) -> None:
    """No process logged an unexpected error."""
    for process in processes:
        assert "Traceback" not in process.log_since_start(), process.log_tail()
