"""Live events across replicas: two service processes on one PostgreSQL database and one Redis.

Replica A runs no executions (RUNNER_ENABLED=false); B runs them all. Clients connect to A only.
Each test uses a Redis channel of its own (REDIS_CHANNEL), so tests never hear each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import redis.asyncio as aioredis

from tests.flows import chain, create_active, execute, node, wait_until
from tests.live import LiveClient, live, seqs, stored_events
from tests.processes import base_url, running, service_process


def channel() -> str:
    """A Redis channel of this test's own."""
    return f"orchestrator-test-{uuid.uuid4().hex}"


def workflow() -> dict[str, Any]:
    """A short run with a retried node in it: a dozen events or so."""
    retry = {"maxAttempts": 3, "initialDelayMs": 30, "jitter": False}
    return chain(
        node("wait", "AGENT", agentId="slow", inputMapping={"delayMs": 200}),
        node("flaky", "AGENT", agentId="flaky", retry=retry, inputMapping={"failTimes": 2}),
        node("shape", "TRANSFORM", expression="{'done': true}"),
        node("tail", "AGENT", agentId="slow", inputMapping={"delayMs": 200}),
    )


async def assert_whole_story(client: LiveClient, api: httpx.AsyncClient, execution_id: str) -> None:
    """The client got every stored event of the execution after its snapshot of seq 0, in order."""
    events = client.execution_events(execution_id)
    snapshot, rest = events[0], events[1:]
    assert (snapshot.name, snapshot.seq, snapshot.data["status"]) == (
        "execution:update",
        0,
        "PENDING",
    )
    stored = await stored_events(api, execution_id)
    assert seqs(rest) == [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
    assert [(r.name, r.data) for r in rest] == [(e["event"], e["data"]) for e in stored]
    assert rest[-1].data["status"] == "COMPLETED"


async def test_a_client_on_one_replica_sees_every_event_of_a_run_on_the_other(
    pg_url: str, standin: str, redis_url: str
) -> None:
    shared = {"REDIS_URL": redis_url, "REDIS_CHANNEL": channel()}
    with running(service_process(pg_url, standin, RUNNER_ENABLED="false", **shared)) as a:
        async with (
            httpx.AsyncClient(base_url=base_url(a), timeout=30) as api,
            live(base_url(a)) as client,
        ):
            workflow_id = await create_active(api, workflow())
            # Nobody runs them yet: each subscription starts at seq 0.
            ids = [(await execute(api, workflow_id, {"n": i}))["id"] for i in range(5)]
            for execution_id in ids:
                assert (await client.subscribe(execution_id))["seq"] == 0

            with running(service_process(pg_url, standin, **shared)) as b:
                async with live(base_url(b)) as on_b:
                    # Mid-run, on the replica that runs it: a snapshot, then the rest.
                    await client.wait_for(lambda r: r.name == "node:update")
                    ack = await on_b.subscribe(ids[0])
                    for execution_id in ids:
                        await client.wait_finished(execution_id)
                    await on_b.wait_finished(ids[0])
                for execution_id in ids:
                    await assert_whole_story(client, api, execution_id)
                    done = await wait_until(api, execution_id)
                    assert done["status"] == "COMPLETED"
                events_b = on_b.execution_events(ids[0])
                assert events_b[0].seq == ack["seq"]
                assert seqs(events_b[1:]) == list(range(ack["seq"] + 1, events_b[-1].seq + 1))
                assert events_b[-1].data["status"] == "COMPLETED"


@contextlib.asynccontextmanager
async def lossy_relay(
    url: str, source: str, target: str, drop: set[int]
) -> AsyncIterator[list[int]]:
    """Forward Socket.IO messages from one Redis channel to another, losing the events whose
    seq is in `drop` (as Redis pub/sub does when a subscriber's connection breaks); yields the
    seqs it dropped."""
    connection = aioredis.Redis.from_url(url)
    pubsub = connection.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(source)
    dropped: list[int] = []

    async def forward() -> None:
        async for message in pubsub.listen():
            data = json.loads(message["data"])
            payload = data.get("data") or [None]
            seq = payload[0].get("seq") if isinstance(payload[0], dict) else None
            if data.get("method") == "emit" and seq in drop:
                dropped.append(seq)
                continue
            await connection.publish(target, message["data"])

    task = asyncio.create_task(forward())
    try:
        yield dropped
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await connection.aclose()


async def test_events_lost_on_the_way_are_filled_from_the_database_in_order(
    pg_url: str, standin: str, redis_url: str
) -> None:
    heard, published = channel(), channel()
    a_env = {"REDIS_URL": redis_url, "REDIS_CHANNEL": heard, "RUNNER_ENABLED": "false"}
    # B is a worker (no HTTP, no Socket.IO server: it publishes straight to Redis).
    b_env = {"REDIS_URL": redis_url, "REDIS_CHANNEL": published}
    with running(service_process(pg_url, standin, **a_env)) as a:
        async with (
            httpx.AsyncClient(base_url=base_url(a), timeout=30) as api,
            live(base_url(a)) as client,
            lossy_relay(redis_url, published, heard, drop={3, 4, 7}) as dropped,
        ):
            workflow_id = await create_active(api, workflow())
            execution_id = (await execute(api, workflow_id, {}))["id"]
            assert (await client.subscribe(execution_id))["seq"] == 0
            with running(service_process(pg_url, standin, "worker", **b_env)):
                await client.wait_finished(execution_id)
            assert sorted(dropped) == [3, 4, 7]
            await assert_whole_story(client, api, execution_id)
