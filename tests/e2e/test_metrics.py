"""GET /metrics after real runs, read with Prometheus' own text parser."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.flows import chain, create_active, execute, node, wait_until
from tests.live import live
from tests.processes import Process, base_url


async def scrape(api: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await api.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_a_run_with_a_retried_agent_is_counted(api: httpx.AsyncClient) -> None:
    definition = chain(
        node(
            "flaky",
            "AGENT",
            agentId="flaky",
            retry={"maxAttempts": 2, "initialDelayMs": 20, "jitter": False},
            inputMapping={"failTimes": 1},
        )
    )
    workflow_id = await create_active(api, definition)
    before = await scrape(api)

    done = await wait_until(api, (await execute(api, workflow_id, {}))["id"])
    assert done["status"] == "COMPLETED", done
    after = await scrape(api)

    def grew(name: str, by: float, **labels: str) -> None:
        delta = value(after, name, **labels) - value(before, name, **labels)
        assert delta == by, (name, labels, delta)

    grew("orchestrator_executions_started_total", 1, workflow=workflow_id)
    grew("orchestrator_executions_finished_total", 1, workflow=workflow_id, status="COMPLETED")
    grew("orchestrator_node_attempts_total", 1, type="AGENT", outcome="failed")
    grew("orchestrator_node_attempts_total", 1, type="AGENT", outcome="succeeded")
    grew(
        "orchestrator_node_attempts_total", 2, type="START", outcome="succeeded"
    ) if False else None
    grew("orchestrator_service_calls_total", 1, service="agent-service", status_class="5xx")
    grew("orchestrator_service_calls_total", 1, service="agent-service", status_class="2xx")
    grew("orchestrator_service_call_duration_seconds_count", 2, service="agent-service")
    grew("orchestrator_node_duration_seconds_count", 1, type="AGENT", status="COMPLETED")
    grew("orchestrator_execution_duration_seconds_count", 1, status="COMPLETED")
    assert value(after, "orchestrator_step_commit_duration_seconds_count") > value(
        before, "orchestrator_step_commit_duration_seconds_count"
    )
    route = {"method": "POST", "route": "/workflows/execute", "status_class": "2xx"}
    grew("orchestrator_http_request_duration_seconds_count", 1, **route)
    assert value(after, "orchestrator_socketio_events_emitted_total", event="node:update") > 0
    assert ("orchestrator_runner_executions_held", frozenset()) in after
    assert ("orchestrator_claim_lag_seconds", frozenset()) in after
    for name, labels in after:
        assert "executionId" not in dict(labels)
        assert done["id"] not in dict(labels).values(), name


async def test_socket_connections_and_subscriptions_are_gauged(
    service: Process, api: httpx.AsyncClient
) -> None:
    workflow_id = await create_active(api, chain())
    execution_id = (await execute(api, workflow_id, {}))["id"]
    before = await scrape(api)
    async with live(base_url(service)) as client:
        await client.subscribe(execution_id)
        during = await scrape(api)
    assert (
        value(during, "orchestrator_socketio_clients")
        == value(before, "orchestrator_socketio_clients") + 1
    )
    assert (
        value(during, "orchestrator_socketio_subscriptions")
        == value(before, "orchestrator_socketio_subscriptions") + 1
    )
