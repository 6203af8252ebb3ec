"""The agent-service and tool-service HTTP clients, against respx-mocked services."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx
from httpx_aiohttp import AiohttpTransport

from orchestrator.application.ports import CallContext, InvocationError
from orchestrator.infrastructure.clients.http import AgentClient, ToolClient, build_http_client

AGENT_BASE = "http://agent-service:3002/api"
TOOL_BASE = "http://tool-service:3003/api/"
AGENT_URL = f"{AGENT_BASE}/agents/a1/execute"
TOOL_URL = "http://tool-service:3003/api/tools/execute"

CTX = CallContext(
    execution_id="e-1",
    workflow_id="w-1",
    node_id="n-1",
    user_id="u-1",
    idempotency_key="e-1:n-1",
    timeout_s=2.5,
)
BARE_CTX = CallContext(
    execution_id="e-1",
    workflow_id="w-1",
    node_id="n-1",
    user_id=None,
    idempotency_key="e-1:n-1",
    timeout_s=None,
)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    # respx intercepts httpx's own transport; the aiohttp one is covered end to end.
    async with build_http_client(transport=httpx.AsyncHTTPTransport()) as client:
        yield client


@pytest.fixture
def router() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=True) as mock:
        yield mock


def agent_reply(**fields: Any) -> dict[str, Any]:
    return {
        "id": "x-1",
        "agentId": "a1",
        "input": "",
        "output": "done",
        "tokens": 12,
        "status": "COMPLETED",
        "error": None,
        **fields,
    }


async def call_agent(http: httpx.AsyncClient, ctx: CallContext = CTX) -> Any:
    return await AgentClient(http, AGENT_BASE).execute_agent("a1", "hi", ctx)


async def call_tool(http: httpx.AsyncClient, ctx: CallContext = CTX) -> Any:
    return await ToolClient(http, TOOL_BASE).execute_tool("t1", {"q": 1}, ctx)


async def test_agent_request_carries_input_metadata_and_idempotency_key(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    route = router.post(f"{AGENT_BASE}/agents/a%201%2Fb/execute").respond(
        json=agent_reply(output='{"score": 0.9, "tags": ["x"]}')
    )

    result = await AgentClient(http, AGENT_BASE + "/").execute_agent(
        "a 1/b", {"text": "héllo", "n": [1, 2]}, CTX
    )

    assert result == {"score": 0.9, "tags": ["x"]}
    request = route.calls.last.request
    assert request.headers["Idempotency-Key"] == "e-1:n-1"
    assert json.loads(request.content) == {
        "input": '{"text":"héllo","n":[1,2]}',
        "metadata": {"executionId": "e-1", "workflowId": "w-1", "nodeId": "n-1", "userId": "u-1"},
    }


async def test_agent_string_input_is_sent_as_is_and_plain_output_kept(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    route = router.post(AGENT_URL).respond(json=agent_reply(output="Hello there"))

    assert await call_agent(http, BARE_CTX) == "Hello there"
    body = json.loads(route.calls.last.request.content)
    assert body["input"] == "hi"
    assert body["metadata"]["userId"] is None


@pytest.mark.parametrize(
    ("output", "expected"),
    [(None, None), ("42", 42), ("NaN", "NaN"), ("[1, 2", "[1, 2"), ('"quoted"', "quoted")],
)
async def test_agent_output_parsing(
    http: httpx.AsyncClient, router: respx.MockRouter, output: str | None, expected: Any
) -> None:
    router.post(AGENT_URL).respond(json=agent_reply(output=output))

    assert await call_agent(http) == expected


async def test_agent_reply_with_error_is_not_retryable(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    router.post(AGENT_URL).respond(json=agent_reply(error="model overloaded", output=None))

    with pytest.raises(InvocationError) as raised:
        await call_agent(http)
    assert raised.value.retryable is False
    assert raised.value.message == "agent 'a1' failed: model overloaded"


async def test_agent_failed_status_is_not_retryable(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    router.post(AGENT_URL).respond(json=agent_reply(status="FAILED"))

    with pytest.raises(InvocationError) as raised:
        await call_agent(http)
    assert raised.value.retryable is False
    assert raised.value.message == "agent 'a1' failed (status FAILED)"


async def test_tool_request_carries_timeout_user_and_idempotency_key(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    route = router.post(TOOL_URL).respond(
        json={"success": True, "data": {"rows": [1, 2]}, "error": None, "executionTime": 8}
    )

    assert await call_tool(http) == {"rows": [1, 2]}
    request = route.calls.last.request
    assert request.headers["Idempotency-Key"] == "e-1:n-1"
    assert json.loads(request.content) == {
        "toolId": "t1",
        "parameters": {"q": 1},
        "timeout": 2500,
        "userId": "u-1",
    }


async def test_tool_request_leaves_out_unset_timeout_and_user(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    route = router.post(TOOL_URL).respond(json={"success": True, "data": None})

    assert await call_tool(http, BARE_CTX) is None
    assert json.loads(route.calls.last.request.content) == {"toolId": "t1", "parameters": {"q": 1}}


async def test_tool_success_false_on_http_200_is_not_retryable(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    router.post(TOOL_URL).respond(
        200, json={"success": False, "data": None, "error": "bad query", "executionTime": 3}
    )

    with pytest.raises(InvocationError) as raised:
        await call_tool(http)
    assert raised.value.retryable is False
    assert raised.value.message == "tool 't1' failed: bad query"


async def test_tool_reply_without_success_is_a_failure(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    router.post(TOOL_URL).respond(200, json={"data": {"rows": []}})

    with pytest.raises(InvocationError) as raised:
        await call_tool(http)
    assert raised.value.retryable is False
    assert raised.value.message == "tool 't1' failed (no success reported)"


@pytest.mark.parametrize("status", [500, 503, 429, 408])
async def test_retryable_statuses(
    http: httpx.AsyncClient, router: respx.MockRouter, status: int
) -> None:
    router.post(AGENT_URL).respond(status, json={"message": "upstream down"})
    router.post(TOOL_URL).respond(status, text="busy")

    with pytest.raises(InvocationError) as agent_error:
        await call_agent(http)
    with pytest.raises(InvocationError) as tool_error:
        await call_tool(http)

    assert (agent_error.value.retryable, agent_error.value.status_code) == (True, status)
    assert (
        agent_error.value.message
        == f"agent-service returned {status} for agent 'a1': upstream down"
    )
    assert (tool_error.value.retryable, tool_error.value.status_code) == (True, status)
    assert tool_error.value.message == f"tool-service returned {status} for tool 't1': busy"


@pytest.mark.parametrize("status", [400, 404])
async def test_client_errors_are_not_retryable(
    http: httpx.AsyncClient, router: respx.MockRouter, status: int
) -> None:
    router.post(AGENT_URL).respond(
        status, json={"statusCode": status, "message": ["input must be a string"], "error": "Bad"}
    )

    with pytest.raises(InvocationError) as raised:
        await call_agent(http)
    assert raised.value.retryable is False
    assert raised.value.status_code == status
    assert raised.value.message == (
        f"agent-service returned {status} for agent 'a1': input must be a string"
    )


async def test_error_body_excerpt_is_bounded(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    router.post(TOOL_URL).respond(422, json={"error": "x" * 500})

    with pytest.raises(InvocationError) as raised:
        await call_tool(http)
    excerpt = raised.value.message.split(": ", 1)[1]
    assert len(excerpt) == 200
    assert excerpt.endswith("…")


async def test_html_error_page_is_left_out_of_the_message(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    router.post(AGENT_URL).respond(502, html="<html><body>Bad Gateway</body></html>")

    with pytest.raises(InvocationError) as raised:
        await call_agent(http)
    assert raised.value.message == "agent-service returned 502 for agent 'a1'"
    assert raised.value.retryable is True


async def test_connect_error_is_retryable_and_names_no_host(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    router.post(AGENT_URL).mock(side_effect=httpx.ConnectError("connect to 10.0.0.7:3002 failed"))

    with pytest.raises(InvocationError) as raised:
        await call_agent(http)
    assert raised.value.retryable is True
    assert raised.value.status_code is None
    assert raised.value.message == "could not reach agent-service for agent 'a1' (ConnectError)"


async def test_timeout_is_retryable_and_names_the_limit(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    router.post(TOOL_URL).mock(side_effect=httpx.ReadTimeout("read timed out"))

    with pytest.raises(InvocationError) as raised:
        await call_tool(http)
    assert raised.value.retryable is True
    assert raised.value.message == "tool-service timed out after 2500 ms for tool 't1'"


async def test_timeout_without_call_limit_names_the_client_default(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    router.post(AGENT_URL).mock(side_effect=httpx.ReadTimeout("read timed out"))

    with pytest.raises(InvocationError) as raised:
        await call_agent(http, BARE_CTX)
    assert raised.value.message == "agent-service timed out after 30000 ms for agent 'a1'"


async def test_slow_reply_is_cut_at_the_call_deadline(http: httpx.AsyncClient) -> None:
    started = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        started.set()
        await asyncio.sleep(5)
        return httpx.Response(200, json=agent_reply())

    ctx = CallContext("e-1", "w-1", "n-1", None, "k", timeout_s=0.05)
    # respx records a call only once its side effect returns, which this one never does.
    with respx.mock(assert_all_called=False) as router:
        router.post(AGENT_URL).mock(side_effect=slow)
        with pytest.raises(InvocationError) as raised:
            await asyncio.wait_for(call_agent(http, ctx), timeout=2)
    assert started.is_set()
    assert raised.value.retryable is True
    assert raised.value.message == "agent-service timed out after 50 ms for agent 'a1'"


@pytest.mark.parametrize("reply", ["not json", "[1, 2]"])
async def test_invalid_reply_is_not_retryable(
    http: httpx.AsyncClient, router: respx.MockRouter, reply: str
) -> None:
    router.post(TOOL_URL).respond(200, text=reply)

    with pytest.raises(InvocationError) as raised:
        await call_tool(http)
    assert raised.value.retryable is False
    assert raised.value.message == (
        "tool-service sent an invalid reply for tool 't1' (not a JSON object)"
    )


async def test_undecodable_reply_is_not_retryable(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    router.post(AGENT_URL).mock(side_effect=httpx.DecodingError("bad gzip stream"))

    with pytest.raises(InvocationError) as raised:
        await call_agent(http)
    assert raised.value.retryable is False
    assert raised.value.message == (
        "agent-service sent an invalid reply for agent 'a1' (DecodingError)"
    )


async def test_build_http_client_limits_and_timeouts() -> None:
    async with build_http_client(max_connections=10, timeout_s=12.0) as client:
        assert client.timeout == httpx.Timeout(12.0, connect=5.0)
        transport = client._transport
        assert isinstance(transport, AiohttpTransport)
        assert transport.limits.max_connections == 10
