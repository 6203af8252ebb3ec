"""Structured logs of a real service: JSON lines that carry the ids they concern."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.flows import chain, create_active, node, wait_until
from tests.processes import Process, base_url, running, service_process


@pytest.fixture(scope="module")
def logged(service_db: str, standin: str) -> Iterator[Process]:
    service = service_process(service_db, standin, LOG_FORMAT="json", LOG_LEVEL="INFO")
    with running(service) as process:
        yield process


def lines(process: Process) -> list[dict[str, Any]]:
    """Every log line of the process, each of which must be a JSON object."""
    parsed = []
    for text in process.log_since_start().splitlines():
        if text.strip():
            parsed.append(json.loads(text))
    return parsed


async def test_a_retried_node_logs_json_with_its_ids_and_requests_carry_an_id(
    logged: Process,
) -> None:
    async with httpx.AsyncClient(base_url=base_url(logged), timeout=30) as api:
        retry = {"maxAttempts": 2, "initialDelayMs": 20, "jitter": False}
        definition = chain(
            node("flaky", "AGENT", agentId="flaky", retry=retry, inputMapping={"failTimes": 1})
        )
        workflow_id = await create_active(api, definition)
        started = await api.post(
            "/workflows/execute",
            json={"workflowId": workflow_id, "input": {}},
            headers={"X-Request-ID": "req-42"},
        )
        assert started.headers["x-request-id"] == "req-42"
        fresh = await api.get("/health")
        assert len(fresh.headers["x-request-id"]) == 32
        execution_id = started.json()["id"]
        await wait_until(api, execution_id)
        deadline = time.monotonic() + 30
        while True:
            retried = [
                line
                for line in lines(logged)
                if line.get("nodeId") == "flaky" and "trying again" in line["event"]
            ]
            if retried or time.monotonic() > deadline:
                break
            await _yield()
    assert retried, logged.log_tail()
    (line,) = retried
    assert line["executionId"] == execution_id
    assert line["workflowId"] == workflow_id
    assert line["attempt"] == 1
    assert line["level"] == "info"
    assert "timestamp" in line
    access = [x for x in lines(logged) if x.get("requestId") == "req-42"]
    assert access, "the request's own lines carry its id"


async def test_a_token_in_a_url_is_never_logged(logged: Process) -> None:
    async with httpx.AsyncClient(base_url=base_url(logged), timeout=30) as api:
        await api.get("/workflows", params={"token": "s3cr3t-token-value"})
        deadline = time.monotonic() + 30
        while "/workflows?token=" not in logged.log_since_start():
            assert time.monotonic() < deadline, logged.log_tail()
            await _yield()
    assert "s3cr3t-token-value" not in logged.log_since_start()


async def _yield() -> None:
    import asyncio

    await asyncio.sleep(0.05)
