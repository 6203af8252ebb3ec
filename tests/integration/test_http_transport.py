"""The production HTTP client (aiohttp transport) maps real network failures like httpx does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from orchestrator.application.ports import CallContext, InvocationError
from orchestrator.infrastructure.clients.http import AgentClient, ToolClient, build_http_client
from tests.processes import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def context(timeout_s: float | None = None) -> CallContext:
    """A call context for one node."""
    return CallContext("e-1", "w-1", "n-1", None, "e-1:n-1", timeout_s)


async def serve(handler: Handler) -> AsyncIterator[str]:
    """A raw TCP server on loopback; yields its base URL."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def silent() -> AsyncIterator[str]:
    """A server that reads the request and never answers."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(10)
        writer.close()

    async for url in serve(handler):
        yield url


@pytest.fixture
async def unavailable() -> AsyncIterator[str]:
    """A server that answers 503 with a JSON message."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"message": "down for maintenance"}'
        writer.write(
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        await writer.drain()
        writer.close()

    async for url in serve(handler):
        yield url


async def test_connection_refused_is_retryable() -> None:
    async with build_http_client() as http:
        client = AgentClient(http, f"http://127.0.0.1:{free_port()}/api")
        with pytest.raises(InvocationError) as caught:
            await client.execute_agent("a1", "hi", context())
    assert caught.value.retryable
    assert "agent-service" in caught.value.message


async def test_a_silent_service_times_out_and_is_retryable(silent: str) -> None:
    async with build_http_client() as http:
        client = ToolClient(http, silent)
        with pytest.raises(InvocationError) as caught:
            await client.execute_tool("t1", {}, context(timeout_s=0.3))
    assert caught.value.retryable
    assert "timed out" in caught.value.message


async def test_a_503_is_retryable_with_the_services_message(unavailable: str) -> None:
    async with build_http_client() as http:
        client = AgentClient(http, unavailable)
        with pytest.raises(InvocationError) as caught:
            await client.execute_agent("a1", "hi", context())
    assert caught.value.retryable
    assert caught.value.status_code == 503
    assert "down for maintenance" in caught.value.message
