"""The agent-service and tool-service stand-ins, exercised in process (over ASGI, or served by
uvicorn on loopback where real connections matter)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response

import orchestrator.standins.cli as standins_main
from orchestrator.infrastructure.clients.http import usage_of
from orchestrator.standins.app import create_standin_app
from tests.processes import free_port

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


# --- streaming agents and disconnects, over real HTTP on loopback ------------------------------


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """Serve `app` with uvicorn in this event loop on a free port: (base URL, server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or task.done())
        assert server.started, "the server did not start"
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        await task
        sock.close()


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll `condition` until it holds (generous deadline)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


class Receiver:
    """The orchestrator's internal routes, recording what was posted to them."""

    def __init__(self, status: int = 202) -> None:
        self.posts: list[tuple[str, dict[str, Any], str | None]] = []
        self.app = FastAPI()

        @self.app.post("/internal/{route}")
        async def receive(route: str, request: Request) -> Response:
            body = await request.json()
            self.posts.append((route, body, request.headers.get("authorization")))
            return Response(status_code=status)

    def bodies(self, route: str) -> list[dict[str, Any]]:
        return [body for posted, body, _ in self.posts if posted == route]


def streaming_request(fields: dict[str, Any], **metadata: Any) -> dict[str, Any]:
    return {
        "input": json.dumps(fields),
        "metadata": {"executionId": "e1", "nodeId": "n1", **metadata},
    }


async def test_streaming_posts_its_progress_then_answers_the_last_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ORCHESTRATOR_URL", raising=False)
    receiver = Receiver()
    fields = {"reports": 3, "intervalMs": 10, "model": "m-1", "inputTokens": 4}
    fields["outputPerReport"] = 5
    async with serving(receiver.app) as (url, _):
        app = create_standin_app(orchestrator_url=url + "/", internal_token="s3cret")
        async with _client(app) as http:
            response = await http.post(
                "/api/agents/streaming/execute",
                json=streaming_request(fields, attempt=2, loopIteration=[1, 0]),
                headers={"Idempotency-Key": "k-stream"},
            )
            [call] = await calls(http, key="k-stream")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "COMPLETED"
    assert body["output"] == json.dumps(fields)
    assert body["tokens"] == {
        "inputTokens": 4,
        "outputTokens": 15,
        "totalTokens": 19,
        "model": "m-1",
    }
    assert usage_of(body["tokens"]) == {"inputTokens": 4, "outputTokens": 15, "totalTokens": 19}
    about = {"executionId": "e1", "nodeId": "n1", "attempt": 2, "loop": [1, 0]}
    assert receiver.bodies("token-progress") == [
        {**about, "inputTokens": 4, "outputTokens": 5 * n, "totalTokens": 4 + 5 * n}
        | {"model": "m-1", "iteration": n}
        for n in (1, 2, 3)
    ]
    steps = receiver.bodies("thinking-step")
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert all({**s, **about} == s and s["thought"] for s in steps)
    assert [("plan" in s, "toolCalls" in s) for s in steps] == [
        (True, False),
        (False, True),
        (False, False),
    ]
    assert {auth for *_, auth in receiver.posts} == {"Bearer s3cret"}
    # Reports and steps alternate, and the call log keeps each with the answer it got.
    assert [r for r, *_ in receiver.posts] == ["token-progress", "thinking-step"] * 3
    assert [(r["route"], r["body"], r["status"]) for r in call["reports"]] == [
        (route, body, 202) for route, body, _ in receiver.posts
    ]
    assert call["disconnectedAt"] is None


async def test_streaming_without_a_url_reports_nothing_and_just_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ORCHESTRATOR_URL", raising=False)
    async with _client(create_standin_app()) as http:
        started = time.perf_counter()
        response = await http.post(
            "/api/agents/streaming/execute",
            json=streaming_request({"reports": 4, "intervalMs": 30}),
            headers={"Idempotency-Key": "quiet"},
        )
        [call] = await calls(http, key="quiet")

    assert time.perf_counter() - started >= 0.12
    assert response.json()["tokens"] == {
        "inputTokens": 10,
        "outputTokens": 28,
        "totalTokens": 38,
        "model": "standin-model",
    }
    assert call["reports"] == []


async def test_the_progress_url_comes_from_the_environment_or_the_input(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from_env, from_input = Receiver(), Receiver()
    async with serving(from_env.app) as (env_url, _), serving(from_input.app) as (input_url, _):
        monkeypatch.setenv("ORCHESTRATOR_URL", env_url)
        monkeypatch.setenv("STANDIN_INTERNAL_TOKEN", "from-env")
        async with _client(create_standin_app()) as http:
            quiet = {"reports": 2, "intervalMs": 0, "thinking": False}
            await http.post("/api/agents/streaming/execute", json=streaming_request(quiet))
            await http.post(
                "/api/agents/streaming/execute",
                json=streaming_request({**quiet, "progressUrl": input_url}),
            )

    assert [(r, b["iteration"], a) for r, b, a in from_env.posts] == [
        ("token-progress", 1, "Bearer from-env"),
        ("token-progress", 2, "Bearer from-env"),
    ]
    assert [(r, b["iteration"]) for r, b, _ in from_input.posts] == [
        ("token-progress", 1),
        ("token-progress", 2),
    ]
    assert "attempt" not in from_env.posts[0][1], "only what the metadata has is echoed"


async def test_a_report_that_cannot_be_posted_is_logged_and_the_call_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("STANDIN_INTERNAL_TOKEN", raising=False)
    refusing = Receiver(status=401)
    nobody = f"http://127.0.0.1:{free_port()}"
    async with (
        serving(refusing.app) as (url, _),
        _client(create_standin_app(orchestrator_url=url)) as http,
    ):
        fields = {"reports": 1, "intervalMs": 0, "thinking": False}
        refused = await http.post(
            "/api/agents/streaming/execute",
            json=streaming_request(fields),
            headers={"Idempotency-Key": "refused"},
        )
        unreachable = await http.post(
            "/api/agents/streaming/execute",
            json=streaming_request({**fields, "progressUrl": nobody}),
            headers={"Idempotency-Key": "unreachable"},
        )
        [refused_call] = await calls(http, key="refused")
        [unreachable_call] = await calls(http, key="unreachable")

    assert refused.status_code == unreachable.status_code == 200
    assert refusing.posts[0][2] is None, "no token, no Authorization header"
    assert refused_call["reports"][0]["status"] == 401
    [report] = unreachable_call["reports"]
    assert (report["status"], report["error"]) == (None, "ConnectError")


async def test_streaming_flaky_fails_after_its_reports_then_succeeds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ORCHESTRATOR_URL", raising=False)
    receiver = Receiver()
    fields = {"reports": 2, "intervalMs": 0, "failTimes": 1, "thinking": False}
    async with (
        serving(receiver.app) as (url, _),
        _client(create_standin_app(orchestrator_url=url)) as http,
    ):
        attempts = [
            await http.post(
                "/api/agents/streaming-flaky/execute",
                json=streaming_request(fields),
                headers={"Idempotency-Key": "sf"},
            )
            for _ in range(2)
        ]

    assert [a.status_code for a in attempts] == [503, 200]
    assert attempts[0].json() == {"message": "flaky failure 1 of 1"}
    assert attempts[1].json()["tokens"]["outputTokens"] == 14
    # The failed attempt streamed its reports first: each attempt counts from zero.
    assert [b["outputTokens"] for b in receiver.bodies("token-progress")] == [7, 14, 7, 14]


async def test_tools_named_like_streaming_agents_echo(client: httpx.AsyncClient) -> None:
    for tool_id in ("streaming", "streaming-flaky"):
        response = await run_tool(client, tool_id, {"reports": 2})
        assert response.json()["data"] == {"reports": 2}


async def test_a_streaming_call_stops_reporting_when_its_client_goes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ORCHESTRATOR_URL", raising=False)
    receiver = Receiver()
    fields = {"reports": 1000, "intervalMs": 20}
    async with (
        serving(receiver.app) as (url, _),
        serving(create_standin_app(orchestrator_url=url)) as (standin, _),
        httpx.AsyncClient(base_url=standin, timeout=30) as http,
    ):
        call = asyncio.create_task(
            http.post(
                "/api/agents/streaming/execute",
                json=streaming_request(fields),
                headers={"Idempotency-Key": "gone"},
            )
        )
        await until(lambda: len(receiver.bodies("token-progress")) >= 2)
        call.cancel()  # closes the connection
        left_at = datetime.now(UTC)
        with contextlib.suppress(asyncio.CancelledError):
            await call

        logged = await wait_logged(http, "gone")
        posted = len(receiver.posts)
        await asyncio.sleep(0.2)  # nothing is reported after the call was logged

    assert len(receiver.posts) == posted
    assert logged["status"] == 499
    assert logged["disconnectedAt"] is not None
    assert abs(seconds_between(left_at.isoformat(), logged["disconnectedAt"])) < 0.5
    assert len(logged["reports"]) == posted < 2 * 1000


async def test_a_slow_call_ends_when_its_client_goes(client: httpx.AsyncClient) -> None:
    async with (
        serving(create_standin_app()) as (standin, _),
        httpx.AsyncClient(base_url=standin, timeout=30) as http,
    ):
        slow = {"toolId": "slow", "parameters": {"delayMs": 30_000}}
        call = asyncio.create_task(
            http.post("/tools/execute", json=slow, headers={"Idempotency-Key": "slow-gone"})
        )
        await wait_in_flight(http, "slow-gone")
        call.cancel()
        left_at = datetime.now(UTC)
        with contextlib.suppress(asyncio.CancelledError):
            await call

        logged = await wait_logged(http, "slow-gone")
        assert (await http.get("/_inflight")).json() == {"calls": []}

    assert logged["status"] == 499
    assert abs(seconds_between(left_at.isoformat(), logged["disconnectedAt"])) < 0.5
    assert seconds_between(logged["receivedAt"], logged["answeredAt"]) < 5


async def wait_in_flight(http: httpx.AsyncClient, key: str) -> dict[str, Any]:
    """Poll /_inflight until the call with this key is being answered."""
    deadline = time.monotonic() + 15
    while True:
        found = (await http.get("/_inflight", params={"key": key})).json()["calls"]
        if found:
            entry: dict[str, Any] = found[0]
            return entry
        assert time.monotonic() < deadline, f"{key} never arrived"
        await asyncio.sleep(0.01)


async def wait_logged(http: httpx.AsyncClient, key: str) -> dict[str, Any]:
    """Poll /_calls until the call with this key is logged (it ended)."""
    deadline = time.monotonic() + 15
    while True:
        found = await calls(http, key=key)
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"{key} was never logged"
        await asyncio.sleep(0.01)
