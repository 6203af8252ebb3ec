"""One execution's trouble stays its own: a heavy expression, an exploding value, a growing state.

The service runs with small limits here, so that each scenario crosses them quickly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.flows import chain, create_active, edge, execute, node, nodes_by_id, wait_until
from tests.processes import Process, base_url, running, service_process

LIMITS = {
    "EXPRESSION_TIMEOUT_MS": "1000",
    "MAX_NODE_OUTPUT_BYTES": "1048576",
    "MAX_EXECUTION_STATE_BYTES": "300000",
}
# Two levels of comprehension, as allowed: quadratic in the list (25 million steps here).
HEAVY = "input.exists(a, input.exists(b, a + b < 0))"


@pytest.fixture(scope="module")
def limited(service_db: str, standin: str) -> Iterator[Process]:
    with running(service_process(service_db, standin, **LIMITS)) as process:
        yield process


@pytest.fixture
async def client(limited: Process) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url(limited), timeout=60) as http:
        yield http


async def test_a_comprehension_hidden_behind_string_literals_is_refused_at_validation(
    client: httpx.AsyncClient,
) -> None:
    hidden = (
        'input.exists(a, ")" == ")" && input.exists(b, ")" == ")" && '
        'input.exists(c, ")" == ")" && input.exists(d, a+b+c+d < 0))))'
    )
    definition = chain(node("t", "TRANSFORM", expression=hidden))
    answer = (await client.post("/workflows/validate", json={"definition": definition})).json()
    assert answer["valid"] is False
    assert "nests comprehensions deeper than 2" in str(answer["problems"])


async def test_a_heavy_expression_fails_only_its_node_while_the_service_keeps_serving(
    client: httpx.AsyncClient,
) -> None:
    heavy = await create_active(client, chain(node("t", "TRANSFORM", expression=HEAVY)), "heavy")
    slow = await create_active(
        client, chain(node("s", "AGENT", agentId="slow", inputMapping={"delayMs": 1500})), "slow"
    )
    others = [(await execute(client, slow, {}))["id"] for _ in range(5)]
    started = time.monotonic()
    stuck = (await execute(client, heavy, list(range(5000))))["id"]

    # /health answers all along, and no answer waits for the expression.
    slowest = 0.0
    while time.monotonic() - started < 2.5:
        probe = time.monotonic()
        assert (await client.get("/health")).status_code == 200
        slowest = max(slowest, time.monotonic() - probe)
        await asyncio.sleep(0.05)

    failed = await wait_until(client, stuck)
    assert failed["status"] == "FAILED"
    assert "EXPRESSION_TIMEOUT_MS (1000 ms)" in nodes_by_id(failed)["t"]["error"]
    for execution_id in others:
        assert (await wait_until(client, execution_id))["status"] == "COMPLETED"
    # The expression alone takes seconds; a probe that waited for it would show it.
    assert slowest < 2.0, f"/health took {slowest:.2f} s while the expression ran"


async def test_a_transform_that_explodes_its_input_fails_naming_a_limit(
    client: httpx.AsyncClient,
) -> None:
    explode = "input.l.map(a, input.l.map(b, input.s))"
    workflow = await create_active(client, chain(node("t", "TRANSFORM", expression=explode)))
    run = await execute(client, workflow, {"l": list(range(100)), "s": "x" * 1000})

    failed = await wait_until(client, run["id"])

    assert failed["status"] == "FAILED"
    error = nodes_by_id(failed)["t"]["error"]
    assert any(
        limit in error
        for limit in ("MAX_NODE_OUTPUT_BYTES", "EXPRESSION_MEMORY_MB", "EXPRESSION_TIMEOUT_MS")
    ), error


def diamonds(layers: int) -> dict[str, Any]:
    """START, then `layers` diamonds of TRANSFORMs that pass their input on: each join
    doubles the data."""
    nodes = [node("start", "START")]
    edges = []
    previous = "start"
    for i in range(layers):
        left, right, join = f"l{i}", f"r{i}", f"j{i}"
        nodes += [node(n, "TRANSFORM", expression="input") for n in (left, right, join)]
        edges += [edge(previous, left), edge(previous, right), edge(left, join), edge(right, join)]
        previous = join
    nodes.append(node("end", "END"))
    edges.append(edge(previous, "end"))
    return {"nodes": nodes, "edges": edges}


async def test_a_state_that_doubles_at_each_join_is_stopped_at_the_cap(
    client: httpx.AsyncClient,
) -> None:
    workflow = await create_active(client, diamonds(17))
    run = await execute(client, workflow, "x" * 1000)

    failed = await wait_until(client, run["id"])

    assert failed["status"] == "FAILED"
    assert "MAX_EXECUTION_STATE_BYTES" in failed["error"]
    listed = await client.get("/workflows/executions", params={"limit": 100})
    assert listed.status_code == 200
