"""The agent-service and tool-service stand-ins, exercised in process over ASGI."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from orchestrator.standins import cli as standins_main
from orchestrator.standins.app import create_standin_app

FIXTURE_DELAY_MS = 50


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://standins")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with _client(create_standin_app(default_delay_ms=FIXTURE_DELAY_MS)) as http:
        yield http


async def run_agent(
    http: httpx.AsyncClient,
    agent_id: str,
    text: str,
    key: str | None = None,
    prefix: str = "/api",
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await http.post(
        f"{prefix}/agents/{agent_id}/execute",
        json={"input": text, "metadata": {"executionId": "e1"}},
        headers=headers,
    )


async def run_tool(
    http: httpx.AsyncClient, tool_id: str, parameters: dict[str, Any], key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return await http.post(
        "/tools/execute",
        json={"toolId": tool_id, "parameters": parameters, "timeout": 5000},
        headers=headers,
    )


async def calls(http: httpx.AsyncClient, **filters: str) -> list[dict[str, Any]]:
    response = await http.get("/_calls", params=filters)
    assert response.status_code == 200
    logged: list[dict[str, Any]] = response.json()["calls"]
    return logged


def seconds_between(earlier: str, later: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


async def test_health_answers_at_the_root_and_under_the_agent_prefix(
    client: httpx.AsyncClient,
) -> None:
    for path in ("/health", "/api/health"):
        response = await client.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


async def test_agent_echo_replies_with_a_completed_execution(client: httpx.AsyncClient) -> None:
    response = await run_agent(client, "echo", "hello world")

    assert response.status_code == 200
    body = response.json()
    assert body["agentId"] == "echo"
    assert body["input"] == "hello world"
    assert body["output"] == "hello world"
    assert body["status"] == "COMPLETED"
    assert body["error"] is None
    assert body["tokens"] == 4
    assert uuid.UUID(body["id"]).version == 4
    assert body["startedAt"].endswith("Z")
    assert body["completedAt"].endswith("Z")
    assert seconds_between(body["startedAt"], body["completedAt"]) >= 0


async def test_agent_with_an_unknown_id_echoes(client: httpx.AsyncClient) -> None:
    response = await run_agent(client, "summariser-42", '{"text": "abc"}')

    assert response.status_code == 200
    assert response.json()["output"] == '{"text": "abc"}'
    assert response.json()["status"] == "COMPLETED"


async def test_tool_echo_returns_the_parameters_as_data(client: httpx.AsyncClient) -> None:
    response = await run_tool(client, "echo", {"query": "cats", "limit": 3})

    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True
    assert body["data"] == {"query": "cats", "limit": 3}
    assert body["error"] is None
    assert isinstance(body["executionTime"], int)
    assert body["executionTime"] >= 0


async def test_tool_with_an_unknown_id_echoes(client: httpx.AsyncClient) -> None:
    response = await run_tool(client, "web-search", {"q": "x"})

    body = response.json()
    assert (body["success"], body["data"], body["error"]) == (True, {"q": "x"}, None)


async def test_instant_echoes_for_both_services(client: httpx.AsyncClient) -> None:
    agent = await run_agent(client, "instant", "fast")
    tool = await run_tool(client, "instant", {"n": 1})

    assert agent.json()["output"] == "fast"
    assert agent.json()["status"] == "COMPLETED"
    assert tool.json()["success"] is True
    assert tool.json()["data"] == {"n": 1}


async def test_agent_scorer_answers_a_deterministic_score_as_json_text(
    client: httpx.AsyncClient,
) -> None:
    first = await run_agent(client, "scorer", "hello")
    second = await run_agent(client, "scorer", "hello")
    low = await run_agent(client, "scorer", "review this pull request")

    assert json.loads(first.json()["output"]) == {"score": 0.5342, "ok": True, "input": "hello"}
    assert second.json()["output"] == first.json()["output"]
    assert json.loads(low.json()["output"]) == {
        "score": 0.4397,
        "ok": False,
        "input": "review this pull request",
    }


async def test_tool_scorer_hashes_the_parameters_whatever_their_key_order(
    client: httpx.AsyncClient,
) -> None:
    first = await run_tool(client, "scorer", {"a": 1, "b": 2})
    reordered = await run_tool(client, "scorer", {"b": 2, "a": 1})

    assert first.json()["success"] is True
    assert first.json()["data"] == {"score": 0.8931, "ok": True, "input": {"a": 1, "b": 2}}
    assert reordered.json()["data"]["score"] == 0.8931


async def test_agent_slow_sleeps_the_delay_from_its_json_input(client: httpx.AsyncClient) -> None:
    text = json.dumps({"delayMs": 120, "topic": "x"})
    started = time.perf_counter()
    response = await run_agent(client, "slow", text)

    assert time.perf_counter() - started >= 0.12
    assert response.json()["output"] == text
    assert response.json()["status"] == "COMPLETED"


async def test_agent_slow_with_plain_text_sleeps_the_default(client: httpx.AsyncClient) -> None:
    response = await run_agent(client, "slow", "no json here", key="k-slow")

    assert response.json()["output"] == "no json here"
    [call] = await calls(client, key="k-slow")
    assert seconds_between(call["receivedAt"], call["answeredAt"]) >= FIXTURE_DELAY_MS / 1000


async def test_tool_slow_sleeps_the_delay_from_its_parameters(client: httpx.AsyncClient) -> None:
    started = time.perf_counter()
    response = await run_tool(client, "slow", {"delayMs": 100})

    assert time.perf_counter() - started >= 0.1
    assert response.json()["data"] == {"delayMs": 100}
    assert response.json()["executionTime"] >= 100


async def test_slow_default_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_DEFAULT_DELAY_MS", "80")
    async with _client(create_standin_app()) as http:
        response = await run_tool(http, "slow", {})

    assert response.json()["executionTime"] >= 80


async def test_slow_default_is_half_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STANDIN_DEFAULT_DELAY_MS", raising=False)
    async with _client(create_standin_app()) as http:
        response = await run_tool(http, "slow", {})

    assert response.json()["executionTime"] >= 500


def test_a_negative_default_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        create_standin_app(default_delay_ms=-1)


async def test_agent_flaky_fails_twice_per_key_then_succeeds(client: httpx.AsyncClient) -> None:
    statuses = [(await run_agent(client, "flaky", "hi", key="k1")).status_code for _ in range(4)]
    other_key = await run_agent(client, "flaky", "hi", key="k2")

    assert statuses == [503, 503, 200, 200]
    assert other_key.status_code == 503
    assert other_key.json() == {"message": "flaky failure 1 of 2"}
    success = await run_agent(client, "flaky", "hi", key="k1")
    assert success.json()["output"] == "hi"


async def test_agent_flaky_reads_fail_times_from_its_json_input(
    client: httpx.AsyncClient,
) -> None:
    once = json.dumps({"failTimes": 1})
    never = json.dumps({"failTimes": 0})

    assert (await run_agent(client, "flaky", once, key="a")).status_code == 503
    assert (await run_agent(client, "flaky", once, key="a")).status_code == 200
    assert (await run_agent(client, "flaky", never, key="b")).status_code == 200


async def test_tool_flaky_counts_per_key_with_fail_times(client: httpx.AsyncClient) -> None:
    parameters = {"failTimes": 3}
    responses = [await run_tool(client, "flaky", parameters, key="t1") for _ in range(4)]

    assert [r.status_code for r in responses] == [503, 503, 503, 200]
    assert responses[2].json() == {"message": "flaky failure 3 of 3"}
    assert responses[3].json()["data"] == parameters
    assert (await run_tool(client, "flaky", parameters, key="t2")).status_code == 503


async def test_flaky_counters_of_the_two_services_are_separate(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(2):
        await run_agent(client, "flaky", "x", key="shared")

    assert (await run_agent(client, "flaky", "x", key="shared")).status_code == 200
    assert (await run_tool(client, "flaky", {}, key="shared")).status_code == 503


async def test_failing_agent_answers_200_with_a_failed_execution(
    client: httpx.AsyncClient,
) -> None:
    response = await run_agent(client, "failing", "anything")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "FAILED"
    assert body["error"] == "agent failed on purpose"
    assert body["output"] == ""
    assert body["agentId"] == "failing"


async def test_failing_tool_answers_200_with_success_false(client: httpx.AsyncClient) -> None:
    response = await run_tool(client, "failing", {"x": 1})

    assert response.status_code == 200
    assert response.json()["success"] is False
    assert response.json()["data"] is None
    assert response.json()["error"] == "tool failed on purpose"


async def test_error500_always_answers_500(client: httpx.AsyncClient) -> None:
    for _ in range(2):
        agent = await run_agent(client, "error500", "x", key="same")
        tool = await run_tool(client, "error500", {}, key="same")
        assert agent.status_code == 500
        assert tool.status_code == 500
        assert agent.json() == {"message": "internal error on purpose"}


async def test_badrequest_always_answers_400(client: httpx.AsyncClient) -> None:
    agent = await run_agent(client, "badrequest", "x")
    tool = await run_tool(client, "badrequest", {})

    assert agent.status_code == 400
    assert tool.status_code == 400
    assert agent.json() == {"message": "bad request on purpose"}
    assert tool.json() == {"message": "bad request on purpose"}


async def test_bodies_that_break_the_contract_get_422(client: httpx.AsyncClient) -> None:
    object_input = await client.post("/api/agents/echo/execute", json={"input": {"a": 1}})
    no_tool_id = await client.post("/tools/execute", json={"parameters": {}})
    list_parameters = await client.post(
        "/tools/execute", json={"toolId": "echo", "parameters": [1]}
    )
    not_json = await client.post("/tools/execute", content=b"not json")

    assert [r.status_code for r in (object_input, no_tool_id, list_parameters, not_json)] == [
        422,
        422,
        422,
        422,
    ]
    assert [call["body"] for call in await calls(client, service="tool")][-1] == "not json"


async def test_tool_parameters_default_to_an_empty_object(client: httpx.AsyncClient) -> None:
    response = await client.post("/tools/execute", json={"toolId": "echo"})

    assert response.status_code == 200
    assert response.json()["data"] == {}


async def test_the_call_log_records_every_call_and_filters(client: httpx.AsyncClient) -> None:
    await run_agent(client, "echo", "one", key="key-1")
    await run_tool(client, "failing", {"p": 1}, key="key-1")
    await run_tool(client, "error500", {}, key="key-2")
    await run_agent(client, "flaky", "x")

    logged = await calls(client)
    assert [(c["service"], c["id"], c["idempotencyKey"], c["status"]) for c in logged] == [
        ("agent", "echo", "key-1", 200),
        ("tool", "failing", "key-1", 200),
        ("tool", "error500", "key-2", 500),
        ("agent", "flaky", None, 503),
    ]
    assert logged[0]["body"] == {"input": "one", "metadata": {"executionId": "e1"}}
    assert logged[1]["body"] == {"toolId": "failing", "parameters": {"p": 1}, "timeout": 5000}
    for call in logged:
        assert seconds_between(call["receivedAt"], call["answeredAt"]) >= 0
    assert [c["id"] for c in await calls(client, key="key-1")] == ["echo", "failing"]
    assert [c["id"] for c in await calls(client, service="tool")] == ["failing", "error500"]
    assert [c["idempotencyKey"] for c in await calls(client, id="error500")] == ["key-2"]
    assert await calls(client, key="absent") == []


async def test_clearing_the_call_log_also_resets_the_flaky_counters(
    client: httpx.AsyncClient,
) -> None:
    for _ in range(3):
        await run_tool(client, "flaky", {}, key="k")

    cleared = await client.delete("/_calls")

    assert cleared.status_code == 204
    assert await calls(client) == []
    assert (await run_tool(client, "flaky", {}, key="k")).status_code == 503


async def test_the_call_log_keeps_only_the_most_recent_calls() -> None:
    async with _client(create_standin_app(max_calls=3)) as http:
        for number in range(5):
            await run_agent(http, "echo", str(number))
        logged = await calls(http)

    assert [call["body"]["input"] for call in logged] == ["2", "3", "4"]


async def test_the_agent_prefix_is_configurable() -> None:
    async with _client(create_standin_app(prefix_agent="agent-svc/")) as http:
        moved = await run_agent(http, "echo", "hi", prefix="/agent-svc")
        old = await run_agent(http, "echo", "hi")
        health = await http.get("/agent-svc/health")

    assert moved.json()["output"] == "hi"
    assert old.status_code == 404
    assert health.json() == {"status": "ok"}


async def test_an_empty_agent_prefix_serves_agents_at_the_root() -> None:
    async with _client(create_standin_app(prefix_agent="")) as http:
        response = await run_agent(http, "echo", "root", prefix="")
        health = await http.get("/health")

    assert response.json()["output"] == "root"
    assert health.status_code == 200


async def test_the_command_line_hands_the_app_to_uvicorn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served: dict[str, Any] = {}

    def fake_run(app: FastAPI, **options: Any) -> None:
        served.update(options, app=app)

    monkeypatch.setattr(uvicorn, "run", fake_run)
    standins_main.main(["--host", "0.0.0.0", "--port", "4010", "--agent-prefix", "/v1"])

    assert {k: served[k] for k in ("host", "port", "log_level")} == {
        "host": "0.0.0.0",
        "port": 4010,
        "log_level": "warning",
    }
    async with _client(served["app"]) as http:
        assert (await http.get("/v1/health")).json() == {"status": "ok"}
