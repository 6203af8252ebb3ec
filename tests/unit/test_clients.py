"""The agent-service and tool-service HTTP clients, against respx-mocked services."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import httpx
import pytest
import respx
from httpx_aiohttp import AiohttpTransport

from orchestrator.application.ports import AgentAnswer, CallContext, InvocationError
from orchestrator.infrastructure.clients.http import (
    DEFAULT_MAX_REPLY_BYTES,
    AgentClient,
    ToolClient,
    build_http_client,
)

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
    answer = await AgentClient(http, AGENT_BASE).execute_agent("a1", "hi", ctx)
    return answer.output


async def call_tool(http: httpx.AsyncClient, ctx: CallContext = CTX) -> Any:
    return await ToolClient(http, TOOL_BASE).execute_tool("t1", {"q": 1}, ctx)


async def test_agent_request_carries_input_metadata_and_idempotency_key(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    route = router.post(f"{AGENT_BASE}/agents/ag%C3%A9nt%3A1/execute").respond(
        json=agent_reply(output='{"score": 0.9, "tags": ["x"]}')
    )

    result = await AgentClient(http, AGENT_BASE + "/").execute_agent(
        "agént:1", {"text": "héllo", "n": [1, 2]}, CTX
    )

    assert result == AgentAnswer({"score": 0.9, "tags": ["x"]}, {"totalTokens": 12})
    request = route.calls.last.request
    assert request.headers["Idempotency-Key"] == "e-1:n-1"
    assert json.loads(request.content) == {
        "input": '{"text":"héllo","n":[1,2]}',
        "metadata": {
            "executionId": "e-1",
            "workflowId": "w-1",
            "nodeId": "n-1",
            "userId": "u-1",
            "attempt": 1,
        },
    }


async def test_a_loop_body_call_names_its_attempt_and_iteration(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    route = router.post(AGENT_URL).respond(json=agent_reply())

    await call_agent(http, replace(CTX, attempt=3, iteration=(2, 0)))

    metadata = json.loads(route.calls.last.request.content)["metadata"]
    assert (metadata["attempt"], metadata["loopIteration"]) == (3, [2, 0])


@pytest.mark.parametrize(
    ("reply", "model"),
    [
        ({"tokens": {"totalTokens": 3, "model": "gpt-4o"}}, "gpt-4o"),
        ({"tokens": 3, "model": "claude"}, "claude"),
        ({"tokens": {"totalTokens": 3, "model": 7}}, None),
        ({"tokens": 3, "model": "m" * 101}, None),
        ({"tokens": 3}, None),
    ],
)
async def test_the_model_a_reply_names_is_kept(
    http: httpx.AsyncClient, router: respx.MockRouter, reply: dict[str, Any], model: str | None
) -> None:
    router.post(AGENT_URL).respond(json={**agent_reply(), **reply})

    answer = await AgentClient(http, AGENT_BASE).execute_agent("a1", "hi", CTX)

    assert answer.model == model


async def test_agent_string_input_is_sent_as_is_and_plain_output_kept(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    route = router.post(AGENT_URL).respond(json=agent_reply(output="Hello there"))

    assert await call_agent(http, BARE_CTX) == "Hello there"
    body = json.loads(route.calls.last.request.content)
    assert body["input"] == "hi"
    assert body["metadata"]["userId"] is None


@pytest.mark.parametrize(
    ("tokens", "usage"),
    [
        (12, {"totalTokens": 12}),
        (
            {"inputTokens": 3, "outputTokens": 4},
            {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7},
        ),
        (
            {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            {"inputTokens": 5, "outputTokens": 1, "totalTokens": 6},
        ),
        ({"input": 2}, {"inputTokens": 2}),
        (None, None),
        (-1, None),
        (True, None),
        ("12", None),
        ({"inputTokens": "3"}, None),
    ],
)
async def test_agent_tokens_are_read_as_usage(
    http: httpx.AsyncClient, router: respx.MockRouter, tokens: Any, usage: Any
) -> None:
    router.post(AGENT_URL).respond(json=agent_reply(tokens=tokens))

    answer = await AgentClient(http, AGENT_BASE).execute_agent("a1", "hi", CTX)

    assert answer.usage == usage


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
            await asyncio.wait_for(call_agent(http, ctx), timeout=10)
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
        # Dropped before agent-service and tool-service (Node, uvicorn: 5 s) close them.
        assert transport.limits.keepalive_expiry is not None
        assert transport.limits.keepalive_expiry < 5


async def test_a_connection_closed_without_an_answer_is_no_timeout() -> None:
    """httpx-aiohttp reports it as a ConnectTimeout; the message must not say "timed out"."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with build_http_client() as http:
            client = AgentClient(http, f"http://127.0.0.1:{port}")
            with pytest.raises(InvocationError) as raised:
                await client.execute_agent("a1", "hi", BARE_CTX)
    finally:
        server.close()
        await server.wait_closed()
    assert raised.value.retryable is True
    assert raised.value.message == (
        "could not reach agent-service for agent 'a1' (ServerDisconnectedError)"
    )


UNSAFE_IDS = [".", "..", "../admin", "a/b", "a\\b", "a?x=1", "a#b", "a%2Fb", "a b", "a\nb", "a\x00"]


@pytest.mark.parametrize("agent_id", UNSAFE_IDS)
async def test_an_unsafe_agent_id_is_refused_before_any_call(
    http: httpx.AsyncClient, agent_id: str
) -> None:
    with respx.mock(assert_all_called=False) as router:
        anything = router.route()
        with pytest.raises(InvocationError) as raised:
            await AgentClient(http, AGENT_BASE).execute_agent(agent_id, "hi", CTX)
    assert not anything.called
    assert raised.value.retryable is False
    assert raised.value.message.startswith(
        f"cannot call agent-service for agent {agent_id!r}: agentId {agent_id!r} "
    )
    assert "an id is printable characters other than / \\ ? # % and whitespace" in (
        raised.value.message
    )


@pytest.mark.parametrize("tool_id", UNSAFE_IDS)
async def test_an_unsafe_tool_id_is_refused_before_any_call(
    http: httpx.AsyncClient, tool_id: str
) -> None:
    with respx.mock(assert_all_called=False) as router:
        anything = router.route()
        with pytest.raises(InvocationError) as raised:
            await ToolClient(http, TOOL_BASE).execute_tool(tool_id, {}, CTX)
    assert not anything.called
    assert raised.value.retryable is False
    assert f"toolId {tool_id!r} " in raised.value.message


@pytest.mark.parametrize("key", ["e-1:agént", "e-1:a\nb", "e-1:a\rb", "e-1:\x7f"])
async def test_an_idempotency_key_that_is_no_header_value_is_refused_before_any_call(
    http: httpx.AsyncClient, key: str
) -> None:
    ctx = CallContext("e-1", "w-1", "n-1", None, key, None)
    with respx.mock(assert_all_called=False) as router:
        anything = router.route()
        with pytest.raises(InvocationError) as raised:
            await call_agent(http, ctx)
    assert not anything.called
    assert raised.value.retryable is False
    assert raised.value.message == (
        f"cannot call agent-service for agent 'a1': the Idempotency-Key {key!r} "
        "is not printable ASCII"
    )


class Endless(httpx.AsyncByteStream):
    """A reply body that never ends; counts what was taken from it."""

    def __init__(self, chunk: bytes) -> None:
        self.chunk = chunk
        self.taken = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            self.taken += len(self.chunk)
            yield self.chunk

    async def aclose(self) -> None:
        self.closed = True


def padded_reply(size: int) -> bytes:
    """An agent reply of exactly `size` bytes."""
    empty = json.dumps(agent_reply(output="")).encode()
    return json.dumps(agent_reply(output="x" * (size - len(empty)))).encode()


async def test_a_reply_past_the_cap_is_refused_without_reading_the_rest(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    body = Endless(b"x" * 1000)
    router.post(AGENT_URL).mock(return_value=httpx.Response(200, stream=body))

    client = AgentClient(http, AGENT_BASE, max_reply_bytes=64 * 1024)
    with pytest.raises(InvocationError) as raised:
        await client.execute_agent("a1", "hi", CTX)

    assert raised.value.retryable is False
    assert raised.value.status_code == 200
    assert raised.value.message == (
        "agent-service sent a reply larger than the 64 KiB limit for agent 'a1'"
    )
    assert body.taken <= 64 * 1024 + 1000
    assert body.closed


async def test_the_cap_defaults_to_4_mib_and_applies_to_tools_too(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    body = Endless(b"x" * 65536)
    router.post(TOOL_URL).mock(return_value=httpx.Response(200, stream=body))

    with pytest.raises(InvocationError) as raised:
        await call_tool(http)

    assert DEFAULT_MAX_REPLY_BYTES == 4 * 1024 * 1024
    assert raised.value.message == (
        "tool-service sent a reply larger than the 4 MiB limit for tool 't1'"
    )
    assert body.taken <= DEFAULT_MAX_REPLY_BYTES + 65536


async def test_a_reply_of_exactly_the_cap_is_read(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    router.post(AGENT_URL).respond(200, content=padded_reply(5000))

    answer = await AgentClient(http, AGENT_BASE, max_reply_bytes=5000).execute_agent(
        "a1", "hi", CTX
    )
    assert answer.output == "x" * (5000 - len(json.dumps(agent_reply(output="")).encode()))

    with pytest.raises(InvocationError) as raised:
        await AgentClient(http, AGENT_BASE, max_reply_bytes=4999).execute_agent("a1", "hi", CTX)
    assert raised.value.message == (
        "agent-service sent a reply larger than the 4999 bytes limit for agent 'a1'"
    )


async def test_an_error_reply_past_the_cap_keeps_its_status_without_detail(
    http: httpx.AsyncClient, router: respx.MockRouter
) -> None:
    router.post(AGENT_URL).mock(return_value=httpx.Response(503, stream=Endless(b"x" * 1000)))

    with pytest.raises(InvocationError) as raised:
        await AgentClient(http, AGENT_BASE, max_reply_bytes=10_000).execute_agent("a1", "hi", CTX)
    assert raised.value.message == "agent-service returned 503 for agent 'a1'"
    assert (raised.value.retryable, raised.value.status_code) == (True, 503)


async def test_the_production_transport_stops_reading_an_endless_reply() -> None:
    """Against a real socket (aiohttp transport): the client gives up and drops the
    connection once past the cap, while the server is still sending."""
    dropped = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 65536
        try:
            while True:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
        except ConnectionError:
            dropped.set()
        finally:
            writer.close()

    server = await asyncio.start_server(endless, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with build_http_client() as http:
            client = AgentClient(http, f"http://127.0.0.1:{port}", max_reply_bytes=256 * 1024)
            with pytest.raises(InvocationError) as raised:
                await asyncio.wait_for(client.execute_agent("a1", "hi", BARE_CTX), timeout=30)
            await asyncio.wait_for(dropped.wait(), timeout=30)
    finally:
        server.close()
        await server.wait_closed()
    assert raised.value.message == (
        "agent-service sent a reply larger than the 256 KiB limit for agent 'a1'"
    )
