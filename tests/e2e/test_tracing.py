"""Traces: with an in-memory span exporter, a run's spans nest under the request's trace and
the agent stand-in receives a matching `traceparent`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import uvicorn
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from orchestrator.infrastructure import tracing
from orchestrator.main import create_app
from orchestrator.settings import Settings
from tests.flows import agents, calls_for, create_active, wait_until
from tests.processes import free_port

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.fixture
async def traced(
    pg_url: str, standin: str
) -> AsyncIterator[tuple[httpx.AsyncClient, InMemorySpanExporter]]:
    """The service in this process, its spans kept in memory."""
    exporter = InMemorySpanExporter()
    tracing.configure(exporter)
    try:
        settings = Settings(
            database_url=pg_url,
            agent_service_url=f"{standin}/api",
            tool_service_url=standin,
            redis_url=None,
            poll_interval_ms=200,
            auth_mode="none",
        )
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_config=None)
        )
        serving = asyncio.create_task(server.serve())
        await eventually(lambda: server.started or serving.done())
        assert server.started
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as api:
                yield api, exporter
        finally:
            server.should_exit = True
            await serving
    finally:
        tracing.shutdown()


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_a_run_nests_under_the_request_trace(
    traced: tuple[httpx.AsyncClient, InMemorySpanExporter], standin: str
) -> None:
    api, exporter = traced
    workflow_id = await create_active(api, agents(1))
    response = await api.post(
        "/workflows/execute",
        json={"workflowId": workflow_id, "input": "hi"},
        headers={"traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"},
    )
    assert response.status_code == 202, response.text
    execution_id = response.json()["id"]
    assert (await wait_until(api, execution_id))["status"] == "COMPLETED"

    def spans() -> list[ReadableSpan]:
        return list(exporter.get_finished_spans())

    def named(prefix: str) -> list[ReadableSpan]:
        return [s for s in spans() if s.name.startswith(prefix)]

    # The last step's span ends just after its commit, which GET may already have seen.
    await eventually(lambda: len(named("POST agent-service")) == 1)
    call = named("POST agent-service")[0]
    await eventually(
        lambda: any(
            s.context is not None and s.context.span_id == _parent_id(call) for s in spans()
        )
    )

    [request] = named("POST /workflows/execute")
    assert request.context is not None
    assert request.context.trace_id == int(TRACE_ID, 16)
    assert _parent_id(request) == int(CALLER_SPAN, 16)

    steps = [s for s in named("step ") if (s.attributes or {}).get("executionId") == execution_id]
    assert steps
    for step in steps:
        assert step.context is not None
        assert step.context.trace_id == int(TRACE_ID, 16)
        assert _parent_id(step) == request.context.span_id
    assert call.context is not None
    assert call.context.trace_id == int(TRACE_ID, 16)
    assert _parent_id(call) in {s.context.span_id for s in steps if s.context is not None}
    assert (call.attributes or {}).get("nodeId") == "a1"

    async with httpx.AsyncClient(base_url=standin, timeout=30) as calls:
        [received] = await calls_for(calls, f"{execution_id}:a1")
    assert received["traceparent"] == f"00-{TRACE_ID}-{call.context.span_id:016x}-01"


def test_only_a_w3c_traceparent_is_kept() -> None:
    assert tracing.valid_traceparent(f"00-{TRACE_ID}-{CALLER_SPAN}-01") is not None
    for invalid in (
        None,
        "",
        f"00-{TRACE_ID}-{CALLER_SPAN}",
        f"00-{'0' * 32}-{CALLER_SPAN}-01",
        f"00-{TRACE_ID}-{'0' * 16}-01",
        f"00-{TRACE_ID.upper()}-{CALLER_SPAN}-01",
    ):
        assert tracing.valid_traceparent(invalid) is None
