"""What the platform's frontend reads over Socket.IO: node names, a join's replay, and CORS."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.databases import sync_database
from tests.flows import chain, create_active, execute, node, wait_node
from tests.live import live, seqs
from tests.processes import Process, base_url, running, service_process

LISTED = "http://listed.example"
ALSO_LISTED = "http://also-listed.example"
POLLING = "/socket.io/?EIO=4&transport=polling"


@pytest.fixture(scope="module")
def listed(template_database: str, standin: str) -> Iterator[Process]:
    """A service of its own whose CORS_ORIGIN lists two origins."""
    with (
        sync_database(template_database) as url,
        running(service_process(url, standin, CORS_ORIGIN=f"{LISTED},{ALSO_LISTED}")) as process,
    ):
        yield process


def named_flow() -> dict[str, Any]:
    """START, a named TRANSFORM, a named slow AGENT, an unnamed TRANSFORM, END."""
    return chain(
        {**node("t", "TRANSFORM", expression="'done'"), "name": "Shape it"},
        {**node("s", "AGENT", agentId="slow", inputMapping={"delayMs": 1500}), "name": "Think"},
        node("u", "TRANSFORM", expression="'again'"),
    )


NAMES = {"start": "start", "t": "Shape it", "s": "Think", "u": "u", "end": "end"}


async def test_updates_carry_the_display_names_of_the_nodes(
    service: Process, api: httpx.AsyncClient
) -> None:
    workflow_id = await create_active(api, named_flow())
    execution_id = (await execute(api, workflow_id, {}))["id"]
    await wait_node(api, execution_id, "s", "RUNNING")
    async with live(base_url(service)) as client:
        await client.subscribe(execution_id)
        await client.wait_finished(execution_id)
    updates = client.named("execution:update", execution_id=execution_id)
    assert updates[0].data["currentNodeId"] == "s"
    assert updates[0].data["currentNodeName"] == "Think"
    for update in updates:
        current = update.data["currentNodeId"]
        assert update.data["currentNodeName"] == (None if current is None else NAMES[current])
    assert updates[-1].data["currentNodeName"] is None
    nodes = client.named("node:update", execution_id=execution_id)
    assert {r.data["nodeId"] for r in nodes} >= {"s", "u", "end"}
    for update in nodes:
        assert update.data["nodeName"] == NAMES[update.data["nodeId"]]


async def test_join_and_subscribe_give_one_snapshot_and_one_replay_of_the_started_nodes(
    service: Process, api: httpx.AsyncClient
) -> None:
    workflow_id = await create_active(api, named_flow())
    execution_id = (await execute(api, workflow_id, {}))["id"]
    await wait_node(api, execution_id, "s", "RUNNING")
    async with live(base_url(service)) as client:
        # Both at once, as the platform's frontend sends them.
        joined, subscribed = await asyncio.gather(
            client.call("join", {"executionId": execution_id}),
            client.call("subscribe", {"executionId": execution_id}),
        )
        await client.wait_finished(execution_id)
    assert joined["ok"] is True
    assert subscribed["ok"] is True
    assert subscribed["seq"] >= joined["seq"]
    assert [r.name for r in client.named("joined", "subscribed")] == ["joined", "subscribed"]
    events = client.execution_events(execution_id)
    snapshot = events[0]
    assert snapshot.name == "execution:update"
    assert snapshot.seq == joined["seq"]
    replayed = [e for e in events[1:] if e.name == "node:update" and e.seq == snapshot.seq]
    # In definition order, only the nodes that have started, each once.
    assert [(r.data["nodeId"], r.data["status"]) for r in replayed] == [
        ("start", "COMPLETED"),
        ("t", "COMPLETED"),
        ("s", "RUNNING"),
    ]
    assert [r.data["nodeName"] for r in replayed] == ["start", "Shape it", "Think"]
    assert events[1 : 1 + len(replayed)] == replayed
    live_events = events[1 + len(replayed) :]
    assert all(e.seq != snapshot.seq for e in live_events)
    assert seqs(live_events) == list(range(snapshot.seq + 1, snapshot.seq + 1 + len(live_events)))
    assert ("u", "COMPLETED") in [
        (r.data["nodeId"], r.data["status"]) for r in live_events if r.name == "node:update"
    ]


async def test_socketio_cors_with_any_origin_allows_no_credentials(service: Process) -> None:
    async with httpx.AsyncClient(base_url=base_url(service)) as http:
        response = await http.get(POLLING, headers={"Origin": "http://anywhere.example"})
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] in {"*", "http://anywhere.example"}
    assert "access-control-allow-credentials" not in response.headers


async def test_socketio_cors_with_a_list_allows_credentials_for_those_origins_only(
    listed: Process,
) -> None:
    async with httpx.AsyncClient(base_url=base_url(listed)) as http:
        for origin in (LISTED, ALSO_LISTED):
            response = await http.get(POLLING, headers={"Origin": origin})
            assert response.status_code == 200, response.text
            assert response.headers["access-control-allow-origin"] == origin
            assert response.headers["access-control-allow-credentials"] == "true"
        other = await http.get(POLLING, headers={"Origin": "http://other.example"})
    assert "access-control-allow-origin" not in other.headers
    assert other.status_code == 400
