"""Agents' progress, live and counted: two replicas on one PostgreSQL database and one Redis.

The stand-in agent "streaming" posts token updates and thinking steps to the URL its input
names (`progressUrl`) while it works. Replica A runs no executions; B runs them all, so a
report posted to A travels to B over the bus, and B's events reach A's clients through Redis.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tests.flows import chain, create_active, execute, node, wait_until
from tests.live import Received, live, stored_events
from tests.processes import Process, base_url, running, service_process

PROGRESS = ("node:token-update", "node:thinking")
TOKEN = "test-internal-token"


@contextmanager
def replicas(
    pg_url: str, standin: str, redis_url: str, **extra: str
) -> Iterator[tuple[Process, Process]]:
    """A (serves, runs nothing) and B (serves and runs), sharing a Redis channel."""
    shared = {
        "REDIS_URL": redis_url,
        "REDIS_CHANNEL": f"orchestrator-test-{uuid.uuid4().hex}",
        **extra,
    }
    with (
        running(service_process(pg_url, standin, RUNNER_ENABLED="false", **shared)) as a,
        running(service_process(pg_url, standin, **shared)) as b,
    ):
        yield a, b


def streaming(**config: Any) -> dict[str, Any]:
    """The streaming agent, then a short wait: a report that travels between replicas may
    arrive just after the agent's reply, and is still relayed while the execution goes on."""
    return chain(
        node("agent", "AGENT", agentId="streaming", **config),
        node("after", "AGENT", agentId="slow", inputMapping={"delayMs": 1000}),
    )


def progress_of(events: list[Received]) -> list[Received]:
    return [r for r in events if r.name in PROGRESS]


async def standin_calls(standin: str, execution_id: str) -> list[dict[str, Any]]:
    """The stand-in's calls of the execution's nodes, oldest first."""
    async with httpx.AsyncClient(base_url=standin, timeout=30) as calls:
        response = await calls.get("/_calls", params={"service": "agent"})
    found: list[dict[str, Any]] = [
        c
        for c in response.json()["calls"]
        if (c.get("body") or {}).get("metadata", {}).get("executionId") == execution_id
    ]
    return found


def reported(call: dict[str, Any], route: str) -> list[dict[str, Any]]:
    return [r["body"] for r in call["reports"] if r["route"] == route]


async def test_a_client_on_one_replica_sees_every_report_of_a_node_on_the_other_once_in_order(
    pg_url: str, standin: str, redis_url: str
) -> None:
    with replicas(pg_url, standin, redis_url) as (a, _b):
        async with (
            httpx.AsyncClient(base_url=base_url(a), timeout=30) as api,
            live(base_url(a)) as client,
        ):
            workflow_id = await create_active(api, streaming())
            data = {"reports": 15, "intervalMs": 40, "progressUrl": base_url(a)}
            execution_id = (await execute(api, workflow_id, data))["id"]
            first = (await client.subscribe(execution_id))["seq"]
            await client.wait_finished(execution_id)
            done = await wait_until(api, execution_id)

            mine = [
                r
                for r in client.received
                if isinstance(r.data, dict)
                and r.data.get("executionId") == execution_id
                and "seq" in r.data
            ][1:]  # after the snapshot
            stored = await stored_events(api, execution_id, first)
            # Every event once, in order, as stored: progress included.
            assert [(r.name, r.data) for r in mine] == [(e["event"], e["data"]) for e in stored]
            assert [r.seq for r in mine] == list(range(first + 1, done["lastSeq"] + 1))

            call = (await standin_calls(standin, execution_id))[0]
            assert all(r["status"] == 204 for r in call["reports"])
            thoughts = progress_of(mine)
            steps = [r.data["step"] for r in thoughts if r.name == "node:thinking"]
            assert steps == list(range(1, 16))
            updates = [r.data for r in thoughts if r.name == "node:token-update"]
            # Token updates of a node may be coalesced, never so that the last one is lost.
            assert 1 <= len(updates) <= 15
            last = reported(call, "token-progress")[-1]
            assert updates[-1]["totalTokens"] == last["totalTokens"]
            assert updates[-1]["model"] == last["model"]
            assert {u["attempt"] for u in updates} == {1}
            assert updates[-1]["nodeName"] == "agent"
            agent = next(n for n in done["nodeExecutions"] if n["nodeId"] == "agent")
            assert agent["usage"]["totalTokens"] == last["totalTokens"]


async def test_killing_the_clients_replica_mid_stream_and_resuming_on_the_other_leaves_no_gap(
    pg_url: str, standin: str, redis_url: str
) -> None:
    with replicas(pg_url, standin, redis_url) as (a, b):
        async with httpx.AsyncClient(base_url=base_url(b), timeout=30) as api:
            workflow_id = await create_active(api, streaming())
            data = {"reports": 30, "intervalMs": 50, "progressUrl": base_url(b)}
            execution_id = (await execute(api, workflow_id, data))["id"]
            async with live(base_url(a)) as before:
                first = (await before.subscribe(execution_id))["seq"]
                await before.wait_for(lambda r: r.name == "node:thinking" and r.data["step"] >= 5)
                a.kill()
                seen = [r for r in before.received if isinstance(r.data, dict) and "seq" in r.data]
                seen = seen[1:]  # after the snapshot
            last_seen = max([first, *(r.seq for r in seen)])
            async with live(base_url(b)) as after:
                ack = await after.call(
                    "subscribe", {"executionId": execution_id, "afterSeq": last_seen}
                )
                assert ack["ok"] is True
                await after.wait_finished(execution_id)
                rest = [r for r in after.received if isinstance(r.data, dict) and "seq" in r.data]
            done = await wait_until(api, execution_id)
            together = [r.seq for r in seen] + [r.seq for r in rest]
            assert together == list(range(first + 1, done["lastSeq"] + 1))
            steps = [r.data["step"] for r in [*seen, *rest] if r.name == "node:thinking"]
            assert steps == list(range(1, 31))


async def test_a_late_subscriber_replays_every_report_once(
    pg_url: str, standin: str, redis_url: str
) -> None:
    with replicas(pg_url, standin, redis_url) as (a, _b):
        async with httpx.AsyncClient(base_url=base_url(a), timeout=30) as api:
            workflow_id = await create_active(api, streaming())
            data = {"reports": 8, "intervalMs": 20, "progressUrl": base_url(a)}
            execution_id = (await execute(api, workflow_id, data))["id"]
            done = await wait_until(api, execution_id)
            async with live(base_url(a)) as late:
                ack = await late.call("subscribe", {"executionId": execution_id, "afterSeq": 0})
                assert ack == {"ok": True, "executionId": execution_id, "seq": done["lastSeq"]}
                got = [r for r in late.received if isinstance(r.data, dict) and "seq" in r.data]
            stored = await stored_events(api, execution_id)
            assert [(r.name, r.data) for r in got] == [(e["event"], e["data"]) for e in stored]
            assert [r.seq for r in got] == list(range(1, done["lastSeq"] + 1))
            steps = [r.data["step"] for r in got if r.name == "node:thinking"]
            assert steps == list(range(1, 9))


async def test_retried_attempts_are_marked_and_their_tokens_counted_exactly_once(
    pg_url: str, standin: str, redis_url: str
) -> None:
    with replicas(pg_url, standin, redis_url) as (a, b):
        async with (
            httpx.AsyncClient(base_url=base_url(a), timeout=30) as api,
            live(base_url(a)) as client,
        ):
            retry = {"maxAttempts": 3, "initialDelayMs": 20, "jitter": False}
            definition = chain(
                node("agent", "AGENT", agentId="streaming-flaky", retry=retry),
                node("again", "AGENT", agentId="streaming"),
            )
            workflow_id = await create_active(api, definition)
            data = {
                "reports": 4,
                "intervalMs": 20,
                "failTimes": 2,
                "model": "m-test",
                # To B, which runs them: each attempt's last report is in before its reply.
                "progressUrl": base_url(b),
            }
            execution_id = (await execute(api, workflow_id, data))["id"]
            await client.subscribe(execution_id)
            await client.wait_finished(execution_id)
            done = await wait_until(api, execution_id)
            assert done["status"] == "COMPLETED"

            calls = await standin_calls(standin, execution_id)
            finals = [reported(c, "token-progress")[-1]["totalTokens"] for c in calls]
            assert len(finals) == 4  # three attempts of `agent`, one of `again`
            assert done["usage"]["totalTokens"] == sum(finals)
            assert done["usage"]["byModel"]["m-test"]["totalTokens"] == sum(finals)
            agent = next(n for n in done["nodeExecutions"] if n["nodeId"] == "agent")
            assert [at["usage"]["totalTokens"] for at in agent["attempts"]] == finals[:3]

            story = [
                (r.name, r.data.get("attempt"))
                for r in client.received
                if r.name in (*PROGRESS, "node:update") and r.data.get("nodeId") == "agent"
            ]
            # Each attempt is announced (its node:update) before its own progress.
            announced = 0
            for name, attempt in story:
                if name == "node:update":
                    announced = max(announced, attempt)
                else:
                    assert attempt == announced
            assert announced == 3
            history = await api.get(f"/workflows/{workflow_id}/executions")
            assert history.status_code == 200, history.text
            row = history.json()["data"][0]
            assert row["totalTokens"] == sum(finals)


async def test_a_budget_stops_the_run_at_the_node_that_passes_it_and_closes_its_call(
    pg_url: str, standin: str, redis_url: str
) -> None:
    with replicas(pg_url, standin, redis_url) as (a, b):
        async with httpx.AsyncClient(base_url=base_url(a), timeout=30) as api:
            definition = chain(
                node("first", "AGENT", agentId="streaming"),
                node("second", "AGENT", agentId="streaming"),
                node("third", "AGENT", agentId="echo"),
            )
            definition["budget"] = {"maxTotalTokens": 60, "onExceed": "fail"}
            workflow_id = await create_active(api, definition)
            # first: 10 + 3 * 7 = 31 tokens; second passes 60 at its 3rd report (31 + 10 + 21).
            # Posted to B, which runs them: a report is in before its agent's reply (one
            # forwarded from A might arrive after it, and then the node would have completed).
            data = {"reports": 3, "intervalMs": 30, "progressUrl": base_url(b)}
            execution_id = (await execute(api, workflow_id, data))["id"]
            done = await wait_until(api, execution_id)
            states = {n["nodeId"]: n["status"] for n in done["nodeExecutions"]}
            assert states["first"] == "COMPLETED"
            assert states["second"] == "FAILED"
            assert states["third"] == "PENDING"
            assert "Budget exceeded" in done["error"]
            assert "maxTotalTokens is 60" in done["error"]
            assert done["usage"]["totalTokens"] > 60


async def test_a_paused_run_goes_on_once_its_budget_is_raised(
    pg_url: str, standin: str, redis_url: str
) -> None:
    with replicas(pg_url, standin, redis_url) as (a, _b):
        async with httpx.AsyncClient(base_url=base_url(a), timeout=30) as api:
            workflow_id = await create_active(
                api,
                chain(
                    node("one", "AGENT", agentId="streaming"), node("two", "AGENT", agentId="echo")
                ),
            )
            data = {"reports": 2, "intervalMs": 20, "progressUrl": base_url(a)}
            response = await api.post(
                f"/workflows/{workflow_id}/execute",
                json={"input": data, "budget": {"maxTotalTokens": 20, "onExceed": "pause"}},
            )
            assert response.status_code == 202, response.text
            execution_id = response.json()["id"]
            paused = await wait_for_pause(api, execution_id)
            assert paused["status"] == "RUNNING"
            assert "maxTotalTokens is 20" in paused["budget"]["pausedBecause"]
            refused = await api.post(
                f"/workflows/executions/{execution_id}/budget", json={"maxTotalTokens": 0}
            )
            assert refused.status_code == 400
            raised = await api.post(
                f"/workflows/executions/{execution_id}/budget",
                json={"maxTotalTokens": 10_000, "onExceed": "pause"},
            )
            assert raised.status_code == 200, raised.text
            done = await wait_until(api, execution_id)
            assert done["status"] == "COMPLETED"
            assert done["budget"] == {"maxTotalTokens": 10_000, "onExceed": "pause"}
            again = await api.post(
                f"/workflows/executions/{execution_id}/budget", json={"maxTotalTokens": 5}
            )
            assert again.status_code == 409


async def wait_for_pause(api: httpx.AsyncClient, execution_id: str) -> dict[str, Any]:
    """Poll until the execution is paused by its budget."""
    deadline = time.monotonic() + 30
    while True:
        body: dict[str, Any] = (await api.get(f"/workflows/executions/{execution_id}")).json()
        if (body.get("budget") or {}).get("pausedBecause"):
            return body
        assert body["status"] in ("PENDING", "RUNNING"), body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


async def test_internal_routes_want_the_token_and_drop_what_no_node_runs_for(
    pg_url: str, standin: str, redis_url: str
) -> None:
    with replicas(pg_url, standin, redis_url, INTERNAL_TOKEN=TOKEN) as (a, _b):
        async with httpx.AsyncClient(base_url=base_url(a), timeout=30) as api:
            report = {"executionId": str(uuid.uuid4()), "nodeId": "n", "outputTokens": 3}
            missing = await api.post("/internal/token-progress", json=report)
            assert missing.status_code == 401
            wrong = await api.post(
                "/internal/token-progress", json=report, headers={"Authorization": "Bearer no"}
            )
            assert wrong.status_code == 401
            good = {"Authorization": f"Bearer {TOKEN}"}
            before = await dropped(api)
            answered = await api.post("/internal/token-progress", json=report, headers=good)
            assert answered.status_code == 204
            step = {"executionId": report["executionId"], "nodeId": "n", "step": 1}
            answered = await api.post("/internal/thinking-step", json=step, headers=good)
            assert answered.status_code == 204
            assert await dropped(api) == before + 2
            bad = await api.post("/internal/thinking-step", json={"executionId": "x"}, headers=good)
            assert bad.status_code == 400


async def dropped(api: httpx.AsyncClient) -> float:
    """orchestrator_progress_reports_total{outcome="dropped"} of the replica."""
    text = (await api.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith('orchestrator_progress_reports_total{outcome="dropped"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
