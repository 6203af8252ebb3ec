"""Fair use across replicas: two service processes on one PostgreSQL database and one Redis, in
AUTH_MODE=gateway (`userId` names the user), with small per-user limits. Each limit is exceeded
by calls that alternate between the replicas: 429 with Retry-After (a refused subscription for
Socket.IO), and another user is not affected.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack
from typing import Any

import httpx
import pytest

from tests.flows import chain, create_active, node, wait_until
from tests.live import LiveClient, live
from tests.processes import Process, base_url, running, service_process

PER_MINUTE = 3
RUNNING = 2
SUBSCRIPTIONS = 3


@pytest.fixture(scope="module")
def replicas(service_db: str, standin: str, redis_url: str) -> Iterator[tuple[Process, Process]]:
    """Two replicas sharing the database and Redis (a channel, hence key prefix, of their own)."""
    shared = {
        "REDIS_URL": redis_url,
        "REDIS_CHANNEL": f"orchestrator-test-{uuid.uuid4().hex}",
        "AUTH_MODE": "gateway",
        "USER_EXECUTIONS_PER_MINUTE": str(PER_MINUTE),
        "USER_RUNNING_EXECUTIONS": str(RUNNING),
        "USER_SUBSCRIPTIONS": str(SUBSCRIPTIONS),
    }
    with ExitStack() as stack:
        a = stack.enter_context(running(service_process(service_db, standin, **shared)))
        b = stack.enter_context(running(service_process(service_db, standin, **shared)))
        yield a, b


@pytest.fixture
async def clients(replicas: tuple[Process, Process]) -> AsyncIterator[Any]:
    """`for_user(name)`: an HTTP client on each replica, both calling as that user."""
    async with AsyncExitStack() as stack:

        async def for_user(user: str) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
            made = [
                await stack.enter_async_context(
                    httpx.AsyncClient(base_url=base_url(r), params={"userId": user}, timeout=30)
                )
                for r in replicas
            ]
            return made[0], made[1]

        yield for_user


def user() -> str:
    """A user of this test's own."""
    return f"user-{uuid.uuid4().hex[:12]}"


def assert_limited(response: httpx.Response, setting: str) -> None:
    """429 with Retry-After (whole seconds, at least 1) and the error envelope naming the limit."""
    assert response.status_code == 429, response.text
    assert int(response.headers["Retry-After"]) >= 1
    body = response.json()
    assert (body["statusCode"], body["error"]) == (429, "Too Many Requests")
    assert setting in body["message"]


async def start(client: httpx.AsyncClient, workflow_id: str) -> httpx.Response:
    """POST /workflows/{id}/execute."""
    return await client.post(f"/workflows/{workflow_id}/execute", json={"input": {}})


FAILING = chain(node("boom", "AGENT", agentId="failing"))
ASKING = chain(node("ask", "PROMPT", prompt="ok?"))


async def test_starts_per_minute_over_both_replicas_and_routes(clients: Any) -> None:
    a, b = await clients(user())
    workflow_id = await create_active(a, FAILING)
    # Three starts, by both execute routes and retry, alternating replicas: each waits for the
    # one before to fail, so that only the rate counts (not the running limit).
    first = await a.post("/workflows/execute", json={"workflowId": workflow_id, "input": {}})
    assert first.status_code == 202, first.text
    failed = await wait_until(b, first.json()["id"])
    assert failed["status"] == "FAILED"
    retried = await b.post(f"/workflows/executions/{failed['id']}/retry")
    assert retried.status_code == 202, retried.text
    await wait_until(a, retried.json()["id"])
    third = await start(a, workflow_id)
    assert third.status_code == 202, third.text
    await wait_until(b, third.json()["id"])

    assert_limited(await start(b, workflow_id), "USER_EXECUTIONS_PER_MINUTE")
    assert_limited(
        await a.post("/workflows/execute", json={"workflowId": workflow_id, "input": {}}),
        "USER_EXECUTIONS_PER_MINUTE",
    )
    assert_limited(
        await b.post(f"/workflows/executions/{failed['id']}/retry"), "USER_EXECUTIONS_PER_MINUTE"
    )

    # Another user has their own budget, on either replica.
    other_a, other_b = await clients(user())
    other_workflow = await create_active(other_a, FAILING)
    assert (await start(other_b, other_workflow)).status_code == 202


async def test_executions_running_at_once_over_both_replicas(clients: Any) -> None:
    a, b = await clients(user())
    workflow_id = await create_active(a, ASKING)
    first = await start(a, workflow_id)
    second = await start(b, workflow_id)
    assert (first.status_code, second.status_code) == (202, 202)
    for response in (first, second):
        await wait_until(a, response.json()["id"], {"RUNNING"})  # waits for a person

    assert_limited(await start(a, workflow_id), "USER_RUNNING_EXECUTIONS")
    assert_limited(await start(b, workflow_id), "USER_RUNNING_EXECUTIONS")

    other_a, _ = await clients(user())
    other_workflow = await create_active(other_a, ASKING)
    assert (await start(other_a, other_workflow)).status_code == 202

    # Cancelling one frees its place, seen by the other replica (refusals used no rate).
    cancelled = await b.post(f"/workflows/executions/{first.json()['id']}/cancel")
    assert cancelled.status_code == 204, cancelled.text
    assert (await start(a, workflow_id)).status_code == 202
    assert_limited(await start(b, workflow_id), "USER_RUNNING_EXECUTIONS")


async def refused(client: LiveClient, execution_id: str, message: str = "subscribe") -> str:
    """Subscribe; check that it is refused and answered with an `error` event; the error."""
    ack = await client.call(message, {"executionId": execution_id})
    assert ack["ok"] is False, ack
    error: str = ack["error"]
    await client.wait_for(lambda r: r.name == "error" and r.data["error"] == error)
    return error


async def subscribed_soon(client: LiveClient, execution_id: str, timeout: float = 10) -> None:
    """Subscribe, again until accepted: a closed connection is let go of a moment later."""
    deadline = time.monotonic() + timeout
    while True:
        ack = await client.call("subscribe", {"executionId": execution_id})
        if ack["ok"]:
            return
        assert time.monotonic() < deadline, ack
        await asyncio.sleep(0.05)


async def test_subscriptions_over_connections_and_replicas(
    clients: Any, replicas: tuple[Process, Process]
) -> None:
    name = user()
    a, _ = await clients(name)
    workflow_id = await create_active(a, ASKING)
    execution_id = (await start(a, workflow_id)).json()["id"]
    urls = [f"{base_url(r)}?userId={name}" for r in replicas]
    async with AsyncExitStack() as stack:
        # One connection per subscription, alternating replicas: each counts.
        connections = [await stack.enter_async_context(live(urls[i % 2])) for i in range(4)]
        for connection in connections[:SUBSCRIPTIONS]:
            await connection.subscribe(execution_id)
        error = await refused(connections[3], execution_id)
        assert f"at most {SUBSCRIPTIONS} per user" in error
        assert "USER_SUBSCRIPTIONS" in error
        assert "try again" in error
        assert "at most" in await refused(connections[3], execution_id, "join")

        # Another user subscribes as usual.
        other = user()
        other_a, _ = await clients(other)
        other_execution = (await start(other_a, await create_active(other_a, ASKING))).json()
        async with live(f"{base_url(replicas[1])}?userId={other}") as theirs:
            await theirs.subscribe(other_execution["id"])

        # Unsubscribing on replica A frees a place for a connection on B...
        left = await connections[0].call("unsubscribe", {"executionId": execution_id})
        assert left["ok"] is True
        await connections[3].subscribe(execution_id)
        extra = await stack.enter_async_context(live(urls[0]))
        await refused(extra, execution_id)
        # ... and so does a connection closing (B's, freeing a place on A).
        await connections[1].close()
        await subscribed_soon(extra, execution_id)
        await refused(connections[0], execution_id)
