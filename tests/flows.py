"""Workflow definitions and HTTP helpers shared by the end-to-end tests and the benchmarks."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import httpx

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


def node(node_id: str, node_type: str, **config: Any) -> dict[str, Any]:
    """A node of a definition."""
    return {"id": node_id, "type": node_type, "config": config}


def edge(source: str, target: str, **extra: Any) -> dict[str, Any]:
    """An edge of a definition, its id made from its ends."""
    return {"id": f"{source}->{target}", "source": source, "target": target, **extra}


def chain(*nodes: dict[str, Any]) -> dict[str, Any]:
    """A linear definition: START, the nodes in order, END."""
    all_nodes = [node("start", "START"), *nodes, node("end", "END")]
    ids = [n["id"] for n in all_nodes]
    return {"nodes": all_nodes, "edges": [edge(a, b) for a, b in itertools.pairwise(ids)]}


def agents(count: int, agent_id: str = "echo", **config: Any) -> dict[str, Any]:
    """START, `count` AGENT nodes a1..aN in a row, END."""
    return chain(*(node(f"a{i}", "AGENT", agentId=agent_id, **config) for i in range(1, count + 1)))


async def create_active(
    client: httpx.AsyncClient, definition: dict[str, Any], name: str = "wf"
) -> str:
    """Create an ACTIVE workflow; returns its id."""
    response = await client.post(
        "/workflows", json={"name": name, "definition": definition, "status": "ACTIVE"}
    )
    assert response.status_code == 201, response.text
    workflow_id: str = response.json()["id"]
    return workflow_id


async def execute(
    client: httpx.AsyncClient, workflow_id: str, data: Any = None, key: str | None = None
) -> dict[str, Any]:
    """POST /workflows/execute; returns the 202 body."""
    headers = {"Idempotency-Key": key} if key else {}
    response = await client.post(
        "/workflows/execute", json={"workflowId": workflow_id, "input": data}, headers=headers
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def get_execution(client: httpx.AsyncClient, execution_id: str) -> dict[str, Any]:
    """GET one execution."""
    response = await client.get(f"/workflows/executions/{execution_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_until(
    client: httpx.AsyncClient,
    execution_id: str,
    statuses: set[str] | None = None,
    timeout: float = 30.0,
) -> dict[str, Any]:
    """Poll until the execution reaches one of `statuses` (default: any terminal status)."""
    wanted = statuses or TERMINAL
    deadline = time.monotonic() + timeout
    while True:
        body = await get_execution(client, execution_id)
        if body["status"] in wanted:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"execution stayed {body['status']}: {body}")
        await asyncio.sleep(0.05)


async def wait_node(
    client: httpx.AsyncClient, execution_id: str, node_id: str, status: str, timeout: float = 15.0
) -> dict[str, Any]:
    """Poll until a node reaches `status`; returns the execution."""
    deadline = time.monotonic() + timeout
    while True:
        body = await get_execution(client, execution_id)
        states = {n["nodeId"]: n["status"] for n in body["nodeExecutions"]}
        if states.get(node_id) == status:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"node {node_id} stayed {states.get(node_id)}: {body}")
        await asyncio.sleep(0.02)


def nodes_by_id(execution: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The node executions keyed by node id."""
    return {n["nodeId"]: n for n in execution["nodeExecutions"]}


async def calls_for(standin: httpx.AsyncClient, key: str) -> list[dict[str, Any]]:
    """The stand-in's log of calls made with this Idempotency-Key."""
    response = await standin.get("/_calls", params={"key": key})
    calls: list[dict[str, Any]] = response.json()["calls"]
    return calls
