"""The Socket.IO gateway end to end: real socketio clients against the service on loopback."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import socketio

from tests.databases import sync_database
from tests.flows import chain, create_active, edge, execute, node, wait_node, wait_until
from tests.live import LiveClient, Received, live, seqs, stored_events
from tests.processes import Process, base_url, running, service_process

ALLOWED = "http://allowed.example"
CAP = 3


@pytest.fixture(scope="module")
def restricted(template_database: str, standin: str) -> Iterator[Process]:
    """A service of its own that accepts one origin and few subscriptions per connection."""
    with (
        sync_database(template_database) as url,
        running(
            service_process(
                url, standin, CORS_ORIGIN=ALLOWED, MAX_SUBSCRIPTIONS_PER_CLIENT=str(CAP)
            )
        ) as process,
    ):
        yield process


def slow(node_id: str, delay_ms: int, **mapping: Any) -> dict[str, Any]:
    """An AGENT node on the `slow` stand-in."""
    return node(node_id, "AGENT", agentId="slow", inputMapping={"delayMs": delay_ms, **mapping})


def live_part(client: LiveClient, execution_id: str) -> tuple[Received, list[Received]]:
    """The snapshot a subscription began with, and the events received after it."""
    events = client.execution_events(execution_id)
    assert events, "no event received"
    snapshot, rest = events[0], events[1:]
    assert snapshot.name == "execution:update"
    return snapshot, rest


def assert_follows(snapshot: Received, rest: list[Received]) -> None:
    """The events after a snapshot are numbered on from it, by one, none twice, none missing."""
    assert seqs(rest) == list(range(snapshot.seq + 1, snapshot.seq + 1 + len(rest))), [
        (r.name, r.seq) for r in [snapshot, *rest]
    ]


async def test_subscribe_is_answered_then_the_snapshot_and_the_ack(
    service: Process, api: httpx.AsyncClient
) -> None:
    workflow_id = await create_active(api, chain(node("t", "TRANSFORM", expression="'done'")))
    execution_id = (await execute(api, workflow_id, {}))["id"]
    done = await wait_until(api, execution_id)
    async with live(base_url(service)) as client:
        ack = await client.call("subscribe", {"executionId": execution_id})
        assert ack == {"ok": True, "executionId": execution_id, "seq": done["lastSeq"]}
        names = [r.name for r in client.received]
        assert names == ["subscribed", "execution:update"]
        assert client.received[0].data == {"executionId": execution_id}
        snapshot = client.received[1].data
        assert snapshot["seq"] == done["lastSeq"] > 0
        assert snapshot["status"] == "COMPLETED"
        assert snapshot["output"] == "done"
        assert snapshot["workflowId"] == workflow_id
        assert {n["nodeId"]: n["status"] for n in snapshot["nodeExecutions"]} == {
            "start": "COMPLETED",
            "t": "COMPLETED",
            "end": "COMPLETED",
        }
        assert set(snapshot) == {
            "executionId",
            "workflowId",
            "status",
            "currentNodeId",
            "currentNodeName",
            "nodeExecutions",
            "output",
            "error",
            "seq",
            "timestamp",
        }


async def test_a_run_with_retries_arrives_in_order_with_nothing_missing(
    service: Process, api: httpx.AsyncClient
) -> None:
    retry = {"maxAttempts": 3, "initialDelayMs": 50, "jitter": False}
    definition = chain(
        slow("wait", 600),
        node("flaky", "AGENT", agentId="flaky", retry=retry, inputMapping={"failTimes": 2}),
        node("shape", "TRANSFORM", expression="{'flaky': input}"),
    )
    workflow_id = await create_active(api, definition)
    async with live(base_url(service)) as client:
        execution_id = (await execute(api, workflow_id, {"x": 1}))["id"]
        await client.subscribe(execution_id)
        finished = await client.wait_finished(execution_id)
        assert finished.data["status"] == "COMPLETED"
        snapshot, rest = live_part(client, execution_id)
        assert_follows(snapshot, rest)
        assert rest[-1] is finished

        # Exactly what was stored, in the same order, with the same payloads.
        stored = await stored_events(api, execution_id, snapshot.seq)
        assert [(e["event"], e["data"]) for e in stored] == [(r.name, r.data) for r in rest]
        assert [e["seq"] for e in await stored_events(api, execution_id)] == list(
            range(1, finished.seq + 1)
        )

        # The flaky node's story, every attempt of it.
        flaky = [
            (r.data["status"], r.data["attempt"])
            for r in rest
            if r.name == "node:update" and r.data["nodeId"] == "flaky"
        ]
        # It starts before its input mapping is resolved; the resolved input follows.
        assert flaky == [
            ("RUNNING", 1),
            ("RUNNING", 1),
            ("RUNNING", 2),
            ("RUNNING", 3),
            ("COMPLETED", 3),
        ]
        statuses = [(r.data["nodeId"], r.data["status"]) for r in rest if r.name == "node:update"]
        assert ("wait", "COMPLETED") in statuses
        assert statuses[-4:] == [
            ("shape", "RUNNING"),
            ("shape", "COMPLETED"),
            ("end", "RUNNING"),
            ("end", "COMPLETED"),
        ]
        update = next(r.data for r in rest if r.name == "node:update")
        assert set(update) == {
            "executionId",
            "nodeId",
            "nodeName",
            "nodeType",
            "status",
            "attempt",
            "data",
            "seq",
            "timestamp",
        }
        assert set(update["data"]) == {"input", "output", "error"}
        assert finished.data["output"] == {"flaky": {"failTimes": 2}}


async def test_join_and_leave_are_aliases(service: Process, api: httpx.AsyncClient) -> None:
    workflow_id = await create_active(api, chain(slow("s", 1500)))
    execution_id = (await execute(api, workflow_id, {}))["id"]
    async with live(base_url(service)) as client:
        ack = await client.subscribe(execution_id, "join")
        assert ack["executionId"] == execution_id
        assert [r.name for r in client.received][:2] == ["joined", "execution:update"]
        left = await client.call("leave", {"executionId": execution_id})
        assert left == {"ok": True, "executionId": execution_id}
        assert len(client.named("left")) == 1
        assert client.named("left")[0].data == {"executionId": execution_id}
        count = len(client.execution_events(execution_id))
        await wait_until(api, execution_id)
        # A round trip: whatever the service sent this client before the answer has arrived.
        await client.call("leave", {"executionId": execution_id})
        assert len(client.execution_events(execution_id)) == count


async def test_unsubscribe_stops_the_events_and_other_clients_keep_theirs(
    service: Process, api: httpx.AsyncClient
) -> None:
    workflow_id = await create_active(api, chain(slow("a", 400), slow("b", 400), slow("c", 400)))
    async with live(base_url(service)) as leaving, live(base_url(service)) as staying:
        execution_id = (await execute(api, workflow_id, {}))["id"]
        await leaving.subscribe(execution_id)
        await staying.subscribe(execution_id)
        await leaving.wait_for(
            lambda r: r.name == "node:update" and r.data["nodeId"] == "a", timeout=10
        )
        ack = await leaving.call("unsubscribe", {"executionId": execution_id})
        assert ack == {"ok": True, "executionId": execution_id}
        assert leaving.named("unsubscribed")[0].data == {"executionId": execution_id}
        count = len(leaving.execution_events(execution_id))

        finished = await staying.wait_finished(execution_id)
        # The last event went to the room before this round trip, so it would be here by now.
        await leaving.call("unsubscribe", {"executionId": execution_id})
        assert len(leaving.execution_events(execution_id)) == count
        snapshot, rest = live_part(staying, execution_id)
        assert_follows(snapshot, rest)
        assert rest[-1] == finished


async def test_an_unknown_execution_is_refused(service: Process, api: httpx.AsyncClient) -> None:
    unknown = str(uuid.uuid4())
    async with live(base_url(service)) as client:
        for message in ("subscribe", "join"):
            ack = await client.call(message, {"executionId": unknown})
            assert ack == {"ok": False, "error": f"Execution {unknown} not found"}
        errors = client.named("error")
        assert [e.data["event"] for e in errors] == ["subscribe", "join"]
        assert errors[0].data == {
            "event": "subscribe",
            "executionId": unknown,
            "error": f"Execution {unknown} not found",
        }
        assert client.named("subscribed", "joined", *("execution:update",)) == []

        # Still usable.
        workflow_id = await create_active(api, chain())
        execution_id = (await execute(api, workflow_id, {}))["id"]
        await wait_until(api, execution_id)
        assert (await client.subscribe(execution_id))["seq"] > 0


@pytest.mark.parametrize(
    "payload",
    [
        None,
        42,
        "",
        [],
        {},
        {"executionId": ""},
        {"executionId": 42},
        {"executionId": None},
        {"executionId": ["a"]},
        {"id": "x"},
        {"executionId": "x" * 20_000},
        "y" * 20_000,
    ],
    ids=lambda p: type(p).__name__ + (f"[{len(p)}]" if hasattr(p, "__len__") else ""),
)
async def test_a_malformed_payload_is_refused_and_the_connection_stays_usable(
    service: Process, api: httpx.AsyncClient, payload: Any
) -> None:
    workflow_id = await create_active(api, chain())
    execution_id = (await execute(api, workflow_id, {}))["id"]
    async with live(base_url(service)) as client:
        for message in ("subscribe", "unsubscribe", "join", "leave"):
            ack = await client.call(message, payload)
            assert ack["ok"] is False, (message, ack)
            assert "executionId" in ack["error"]
        assert len(client.named("error")) == 4
        assert await client.subscribe(execution_id)


async def test_several_arguments_are_refused(service: Process, api: httpx.AsyncClient) -> None:
    async with live(base_url(service)) as client:
        ack = await client.sio.call(
            "subscribe", ({"executionId": "a"}, {"executionId": "b"}), namespace="/workflows"
        )
        assert ack["ok"] is False
        assert await client.call("subscribe") == ack


async def test_the_subscription_cap_and_a_flood_leave_other_clients_alone(
    restricted: Process,
) -> None:
    url = base_url(restricted)
    headers = {"Origin": ALLOWED}
    async with httpx.AsyncClient(base_url=url, timeout=30) as api:
        quick = await create_active(api, chain())
        ids = [(await execute(api, quick, {}))["id"] for _ in range(CAP + 1)]
        watched_wf = await create_active(api, chain(slow("a", 300), slow("b", 300)))
        async with live(url, headers) as greedy, live(url, headers) as other:
            # Refused subscriptions take no room: the cap still allows CAP real ones after them.
            for _ in range(CAP + 2):
                assert (await greedy.call("subscribe", {"executionId": str(uuid.uuid4())}))[
                    "ok"
                ] is False
            for execution_id in ids[:CAP]:
                await greedy.subscribe(execution_id)
            await greedy.subscribe(ids[0])  # again: no new room
            refused = await greedy.call("subscribe", {"executionId": ids[CAP]})
            assert refused == {
                "ok": False,
                "error": f"too many subscriptions: at most {CAP} per connection",
            }
            assert (await greedy.call("unsubscribe", {"executionId": ids[0]}))["ok"] is True
            await greedy.subscribe(ids[CAP])

            # A flood of thousands of subscriptions, while another client follows a run.
            watched = (await execute(api, watched_wf, {}))["id"]
            await other.subscribe(watched)
            flood = [
                greedy.call("subscribe", {"executionId": str(uuid.uuid4())}, timeout=60)
                for _ in range(2000)
            ]
            answers = await asyncio.gather(*flood)
            assert all(a["ok"] is False for a in answers)
            assert {a["error"] for a in answers} <= {
                f"too many subscriptions: at most {CAP} per connection",
                "too many messages in flight on this connection",
            }
            finished = await other.wait_finished(watched)
            assert finished.data["status"] == "COMPLETED"
            snapshot, rest = live_part(other, watched)
            assert_follows(snapshot, rest)
            assert greedy.sio.connected
            assert (await greedy.call("unsubscribe", {"executionId": ids[1]}))["ok"] is True
            await greedy.subscribe(watched)


async def test_only_allowed_origins_may_connect(restricted: Process) -> None:
    url = base_url(restricted)
    evil = LiveClient(url, {"Origin": "http://evil.example"})
    with pytest.raises(socketio.exceptions.ConnectionError):
        await evil.connect()
    await evil.close()
    async with live(url, {"Origin": ALLOWED}) as good:
        assert good.sio.connected
        ack = await good.call("subscribe", {"executionId": str(uuid.uuid4())})
        assert ack["ok"] is False


async def test_a_client_that_reconnects_catches_up_through_the_events_route(
    service: Process, api: httpx.AsyncClient
) -> None:
    workflow_id = await create_active(api, chain(*(slow(f"s{i}", 250) for i in range(1, 7))))
    execution_id = (await execute(api, workflow_id, {}))["id"]
    first = LiveClient(base_url(service))
    await first.connect()
    await first.subscribe(execution_id)
    await first.wait_for(lambda r: r.name == "node:update" and r.data["nodeId"] == "s2")
    await first.close()
    snapshot, rest = live_part(first, execution_id)
    assert_follows(snapshot, rest)
    seen = [snapshot.data["seq"], *seqs(rest)]
    last_seen = seen[-1]

    deadline = time.monotonic() + 30
    while not await stored_events(api, execution_id, last_seen):  # events happen while away
        assert time.monotonic() < deadline, "no event happened while away"
        await asyncio.sleep(0.05)
    async with live(base_url(service)) as second:
        ack = await second.subscribe(execution_id)
        assert ack["seq"] > last_seen
        missed = await stored_events(api, execution_id, last_seen)
        assert [e["seq"] for e in missed][: ack["seq"] - last_seen] == list(
            range(last_seen + 1, ack["seq"] + 1)
        )
        await second.wait_finished(execution_id)
        snapshot2, rest2 = live_part(second, execution_id)
        assert snapshot2.seq == ack["seq"]
        assert_follows(snapshot2, rest2)

    # Before the first snapshot from the route, then the first client's events, the missed
    # ones, and the second client's: the whole story, each event once.
    history = await stored_events(api, execution_id)
    before = [e["seq"] for e in history if e["seq"] <= snapshot.seq]
    caught_up = [e["seq"] for e in missed if e["seq"] <= snapshot2.seq]
    whole = before + seqs(rest) + caught_up + seqs(rest2)
    assert whole == list(range(1, history[-1]["seq"] + 1))
    assert rest2[-1].data["status"] == "COMPLETED"


async def test_skipped_failed_cancelled_and_execution_error_are_delivered(
    service: Process, api: httpx.AsyncClient
) -> None:
    definition = {
        "nodes": [
            node("start", "START"),
            slow("wait", 500),
            node("check", "CONDITIONAL", condition="true"),
            node("boom", "AGENT", agentId="failing"),
            slow("long", 1500),
            node("never", "TRANSFORM", expression="'never'"),
            node("end", "END"),
        ],
        "edges": [
            edge("start", "wait"),
            edge("wait", "check"),
            edge("check", "boom", sourceHandle="true"),
            edge("check", "long", sourceHandle="true"),
            edge("check", "never", sourceHandle="false"),
            edge("boom", "end"),
            edge("long", "end"),
            edge("never", "end"),
        ],
    }
    workflow_id = await create_active(api, definition)
    async with live(base_url(service)) as client:
        execution_id = (await execute(api, workflow_id, {}))["id"]
        await client.subscribe(execution_id)
        finished = await client.wait_finished(execution_id)
        assert finished.data["status"] == "FAILED"
        snapshot, rest = live_part(client, execution_id)
        assert_follows(snapshot, rest)
        updates = {
            r.data["nodeId"]: r.data["status"]
            for r in rest
            if r.name == "node:update" and r.data["status"] != "RUNNING"
        }
        assert updates["never"] == "SKIPPED"
        assert updates["boom"] == "FAILED"
        assert updates["long"] == "CANCELLED"
        failed = next(
            r
            for r in rest
            if r.name == "node:update"
            and r.data["nodeId"] == "boom"
            and r.data["status"] == "FAILED"
        )
        assert "agent failed on purpose" in failed.data["data"]["error"]
        error = client.named("execution:error")
        assert len(error) == 1
        assert error[0].data["nodeId"] == "boom"
        assert "agent failed on purpose" in error[0].data["error"]
        assert set(error[0].data) == {"executionId", "nodeId", "error", "seq", "timestamp"}
        assert [r.name for r in rest[-2:]] == ["execution:error", "execution:update"]
        stored = await stored_events(api, execution_id, snapshot.seq)
        assert [(e["event"], e["data"]) for e in stored] == [(r.name, r.data) for r in rest]


async def test_a_cancel_through_the_api_is_delivered(
    service: Process, api: httpx.AsyncClient
) -> None:
    workflow_id = await create_active(
        api, chain(slow("long", 3000), node("after", "TRANSFORM", expression="1"))
    )
    async with live(base_url(service)) as client:
        execution_id = (await execute(api, workflow_id, {}))["id"]
        await client.subscribe(execution_id)
        await wait_node(api, execution_id, "long", "RUNNING")
        response = await api.post(f"/workflows/executions/{execution_id}/cancel")
        assert response.status_code == 204, (response.text, await stored_events(api, execution_id))
        finished = await client.wait_finished(execution_id, timeout=10)
        assert finished.data["status"] == "CANCELLED"
        snapshot, rest = live_part(client, execution_id)
        assert_follows(snapshot, rest)
        cancelled = [
            r.data["nodeId"]
            for r in rest
            if r.name == "node:update" and r.data["status"] == "CANCELLED"
        ]
        assert cancelled == ["long"]
        assert rest[-1] is finished


async def test_subscriptions_in_the_midst_of_fast_runs_see_each_event_once_in_order(
    service: Process, api: httpx.AsyncClient
) -> None:
    definition = chain(*(node(f"n{i}", "AGENT", agentId="instant") for i in range(1, 31)))
    workflow_id = await create_active(api, definition)
    ids = [(await execute(api, workflow_id, {"i": i}))["id"] for i in range(8)]

    async def follow(delay: float) -> LiveClient:
        await asyncio.sleep(delay)
        client = LiveClient(base_url(service))
        await client.connect()
        for execution_id in ids:
            await client.subscribe(execution_id)
        try:
            for execution_id in ids:
                await client.wait_finished(execution_id)
        except AssertionError:
            # Say whether the run was slow or its events did not arrive.
            states = []
            for execution_id in ids:
                stored = (await api.get(f"/workflows/executions/{execution_id}")).json()
                last = [e.data.get("seq") for e in client.execution_events(execution_id)][-1:]
                states.append(f"{stored['status']} lastSeq={stored['lastSeq']} got up to {last}")
            raise AssertionError("; ".join(states)) from None
        await client.close()
        return client

    clients = await asyncio.gather(*(follow(0.02 * i) for i in range(12)))
    midway = [
        snapshot
        for client in clients
        for execution_id in ids
        if (snapshot := live_part(client, execution_id)[0]).data["status"] == "RUNNING"
    ]
    assert len(midway) >= 10
    for client in clients:
        for execution_id in ids:
            snapshot, rest = live_part(client, execution_id)
            assert_follows(snapshot, rest)
            assert (rest[-1] if rest else snapshot).data["status"] == "COMPLETED"
