"""Executions end to end: the real service on loopback calling the stand-in services."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import httpx

from tests.flows import (
    agents,
    calls_for,
    chain,
    create_active,
    edge,
    execute,
    get_execution,
    node,
    nodes_by_id,
    wait_node,
    wait_until,
)
from tests.processes import base_url, running, service_process


async def test_a_chain_of_transforms_completes_with_its_output(api: httpx.AsyncClient) -> None:
    definition = chain(
        node("double", "TRANSFORM", expression="{'n': input.n * 2}"),
        node("label", "TRANSFORM", template={"text": "n is {{ input.n }}", "n": "{{ input.n }}"}),
    )
    workflow_id = await create_active(api, definition)
    started = await execute(api, workflow_id, {"n": 21})
    assert started["status"] == "PENDING"
    assert started["workflowVersion"] == 1

    done = await wait_until(api, started["id"])
    assert done["status"] == "COMPLETED", done
    assert done["output"] == {"text": "n is 42", "n": 42}
    assert {n["status"] for n in done["nodeExecutions"]} == {"COMPLETED"}
    events = (await api.get(f"/workflows/executions/{done['id']}/events")).json()["events"]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["event"] == "execution:update"
    assert events[-1]["data"]["status"] == "COMPLETED"


async def test_agent_and_tool_outputs_flow_to_the_next_nodes(
    api: httpx.AsyncClient, calls: httpx.AsyncClient
) -> None:
    definition = chain(
        node("score", "AGENT", agentId="scorer"),
        node("lookup", "TOOL", toolId="echo", parameters={"q": "{{ input.score }}", "fixed": 1}),
    )
    workflow_id = await create_active(api, definition)
    started = await execute(api, workflow_id, "hello")
    done = await wait_until(api, started["id"])
    assert done["status"] == "COMPLETED", done
    score = nodes_by_id(done)["score"]["output"]
    assert set(score) == {"score", "ok", "input"}  # the agent's JSON text was parsed
    assert done["output"]["q"] == score["score"]
    assert done["output"]["fixed"] == 1
    agent_calls = await calls_for(calls, f"{started['id']}:score")
    assert len(agent_calls) == 1
    assert agent_calls[0]["body"]["input"] == "hello"
    assert agent_calls[0]["body"]["metadata"]["executionId"] == started["id"]


async def test_a_conditional_takes_one_branch_and_skips_the_other(api: httpx.AsyncClient) -> None:
    definition = {
        "nodes": [
            node("start", "START"),
            node("check", "CONDITIONAL", condition="input.score > 0.5 && input.ok"),
            node("high", "TRANSFORM", expression="'high'"),
            node("low", "TRANSFORM", expression="'low'"),
            node("after_low", "TRANSFORM", expression="'after low'"),
            node("end", "END"),
        ],
        "edges": [
            edge("start", "check"),
            edge("check", "high", sourceHandle="true"),
            edge("check", "low", sourceHandle="false"),
            edge("low", "after_low"),
            edge("high", "end"),
            edge("after_low", "end"),
        ],
    }
    workflow_id = await create_active(api, definition)

    high = await wait_until(
        api, (await execute(api, workflow_id, {"score": 0.9, "ok": True}))["id"]
    )
    states = {n["nodeId"]: n["status"] for n in high["nodeExecutions"]}
    assert states["high"] == "COMPLETED"
    assert states["low"] == states["after_low"] == "SKIPPED"
    assert high["output"] == {"high": "high"}  # END joins two branches: only one arrived

    low = await wait_until(api, (await execute(api, workflow_id, {"score": 1, "ok": False}))["id"])
    states = {n["nodeId"]: n["status"] for n in low["nodeExecutions"]}
    assert states["high"] == "SKIPPED"
    assert states["after_low"] == "COMPLETED"
    assert low["output"] == {"after_low": "after low"}


async def test_parallel_branches_run_at_once_and_join_once(
    api: httpx.AsyncClient, calls: httpx.AsyncClient
) -> None:
    definition = {
        "nodes": [
            node("start", "START"),
            node("left", "AGENT", agentId="slow", inputMapping={"delayMs": 700, "side": "L"}),
            node("right", "AGENT", agentId="slow", inputMapping={"delayMs": 700, "side": "R"}),
            node("join", "TRANSFORM", expression="[input.left.side, input.right.side]"),
            node("end", "END"),
        ],
        "edges": [
            edge("start", "left"),
            edge("start", "right"),
            edge("left", "join"),
            edge("right", "join"),
            edge("join", "end"),
        ],
    }
    workflow_id = await create_active(api, definition)
    started = await execute(api, workflow_id, {})
    done = await wait_until(api, started["id"])
    assert done["status"] == "COMPLETED", done
    assert done["output"] == ["L", "R"]
    left = (await calls_for(calls, f"{started['id']}:left"))[0]
    right = (await calls_for(calls, f"{started['id']}:right"))[0]
    # Concurrent: each call began before the other one was answered.
    assert left["receivedAt"] < right["answeredAt"]
    assert right["receivedAt"] < left["answeredAt"]
    join = nodes_by_id(done)["join"]
    assert join["retryCount"] == 0
    assert len(join["attempts"]) == 1


async def test_retryable_failures_are_retried_with_one_idempotency_key(
    api: httpx.AsyncClient, calls: httpx.AsyncClient
) -> None:
    retry = {"maxAttempts": 3, "initialDelayMs": 20, "jitter": False}
    definition = chain(
        node("flaky", "AGENT", agentId="flaky", retry=retry, inputMapping={"failTimes": 2})
    )
    workflow_id = await create_active(api, definition)
    started = await execute(api, workflow_id, {})
    done = await wait_until(api, started["id"])
    assert done["status"] == "COMPLETED", done
    flaky = nodes_by_id(done)["flaky"]
    assert flaky["retryCount"] == 2
    assert [a["attempt"] for a in flaky["attempts"]] == [1, 2, 3]
    assert [a["error"] is not None for a in flaky["attempts"]] == [True, True, False]
    log = await calls_for(calls, f"{started['id']}:flaky")
    assert [c["status"] for c in log] == [503, 503, 200]
    events = (await api.get(f"/workflows/executions/{done['id']}/events")).json()["events"]
    running = [
        (e["data"]["attempt"], e["data"]["data"]["input"])
        for e in events
        if e["event"] == "node:update"
        and e["data"]["nodeId"] == "flaky"
        and e["data"]["status"] == "RUNNING"
    ]
    # The node starts before its input mapping is resolved; the resolved input follows.
    assert running == [
        (1, None),
        (1, {"failTimes": 2}),
        (2, {"failTimes": 2}),
        (3, {"failTimes": 2}),
    ]


async def test_a_client_error_is_not_retried_and_fails_the_execution(
    api: httpx.AsyncClient, calls: httpx.AsyncClient
) -> None:
    definition = chain(node("bad", "TOOL", toolId="badrequest", retry=True))
    workflow_id = await create_active(api, definition)
    started = await execute(api, workflow_id, {})
    done = await wait_until(api, started["id"])
    assert done["status"] == "FAILED"
    assert "400" in done["error"]
    assert len(await calls_for(calls, f"{started['id']}:bad")) == 1
    assert nodes_by_id(done)["end"]["status"] == "PENDING"


async def test_success_false_and_failed_agents_fail_the_node(api: httpx.AsyncClient) -> None:
    tool_wf = await create_active(api, chain(node("t", "TOOL", toolId="failing")))
    agent_wf = await create_active(api, chain(node("a", "AGENT", agentId="failing")))
    tool = await wait_until(api, (await execute(api, tool_wf, {}))["id"])
    agent = await wait_until(api, (await execute(api, agent_wf, "x"))["id"])
    assert tool["status"] == agent["status"] == "FAILED"
    assert "tool failed on purpose" in tool["error"]
    assert "agent failed on purpose" in agent["error"]
    assert nodes_by_id(tool)["t"]["status"] == "FAILED"


async def test_a_node_timeout_fails_the_attempt(api: httpx.AsyncClient) -> None:
    definition = chain(
        node("slow", "AGENT", agentId="slow", timeoutMs=200, inputMapping={"delayMs": 3000})
    )
    workflow_id = await create_active(api, definition)
    done = await wait_until(api, (await execute(api, workflow_id, {}))["id"])
    assert done["status"] == "FAILED"
    assert "timed out" in done["error"]


async def test_cancel_abandons_the_call_and_nothing_after_it_runs(
    api: httpx.AsyncClient, calls: httpx.AsyncClient
) -> None:
    definition = chain(
        node("slow", "AGENT", agentId="slow", inputMapping={"delayMs": 2000}),
        node("after", "AGENT", agentId="echo"),
    )
    workflow_id = await create_active(api, definition)
    started = await execute(api, workflow_id, {})
    await wait_node(api, started["id"], "slow", "RUNNING")

    response = await api.post(f"/workflows/executions/{started['id']}/cancel")
    assert response.status_code == 204
    cancelled = await get_execution(api, started["id"])
    assert cancelled["status"] == "CANCELLED"
    assert nodes_by_id(cancelled)["slow"]["status"] == "CANCELLED"

    await asyncio.sleep(2.5)  # past the moment the slow call would have answered
    later = await get_execution(api, started["id"])
    assert later["status"] == "CANCELLED"
    assert nodes_by_id(later)["after"]["status"] == "CANCELLED"
    assert await calls_for(calls, f"{started['id']}:after") == []
    assert (await api.post(f"/workflows/executions/{started['id']}/cancel")).status_code == 204


async def test_cancelling_a_finished_execution_is_a_conflict(api: httpx.AsyncClient) -> None:
    workflow_id = await create_active(api, chain())
    done = await wait_until(api, (await execute(api, workflow_id, {}))["id"])
    response = await api.post(f"/workflows/executions/{done['id']}/cancel")
    assert response.status_code == 409
    assert response.json()["statusCode"] == 409
    unknown = await api.post(f"/workflows/executions/{uuid.uuid4()}/cancel")
    assert unknown.status_code == 404


async def test_an_execution_runs_the_version_it_started_with(api: httpx.AsyncClient) -> None:
    v1 = chain(
        node("wait", "AGENT", agentId="slow", inputMapping={"delayMs": 800}),
        node("mark", "TRANSFORM", expression="'v1'"),
    )
    workflow_id = await create_active(api, v1)
    started = await execute(api, workflow_id, {})
    v2 = chain(node("mark", "TRANSFORM", expression="'v2'"))
    patched = await api.patch(f"/workflows/{workflow_id}", json={"definition": v2})
    assert patched.json()["definition"]["version"] == 2

    first = await wait_until(api, started["id"])
    assert first["workflowVersion"] == 1
    assert first["output"] == "v1"
    second = await wait_until(api, (await execute(api, workflow_id, {}))["id"])
    assert second["workflowVersion"] == 2
    assert second["output"] == "v2"


async def test_the_same_idempotency_key_gives_the_same_execution(api: httpx.AsyncClient) -> None:
    workflow_id = await create_active(api, chain())
    key = f"order-{uuid.uuid4()}"
    first, second = await asyncio.gather(
        execute(api, workflow_id, {"a": 1}, key=key), execute(api, workflow_id, {"a": 1}, key=key)
    )
    assert first["id"] == second["id"]
    other = await execute(api, workflow_id, {"a": 1}, key=f"{key}-2")
    assert other["id"] != first["id"]
    listed = (await api.get("/workflows/executions", params={"workflowId": workflow_id})).json()
    assert listed["total"] == 2


async def test_retry_of_a_failed_execution_resumes_from_the_failed_node(
    api: httpx.AsyncClient, calls: httpx.AsyncClient
) -> None:
    flaky_key = str(uuid.uuid4())
    definition = chain(
        node("first", "AGENT", agentId="echo"),
        node("flaky", "TOOL", toolId="flaky", parameters={"failTimes": 1, "flakyKey": flaky_key}),
    )
    workflow_id = await create_active(api, definition)
    failed = await wait_until(api, (await execute(api, workflow_id, {"x": 1}))["id"])
    assert failed["status"] == "FAILED"

    response = await api.post(f"/workflows/executions/{failed['id']}/retry")
    assert response.status_code == 202, response.text
    retry = await wait_until(api, response.json()["id"])
    assert retry["status"] == "COMPLETED", retry
    assert retry["retryOf"] == failed["id"]
    assert nodes_by_id(retry)["first"]["output"] == nodes_by_id(failed)["first"]["output"]
    assert await calls_for(calls, f"{retry['id']}:first") == []  # not called again
    assert (await get_execution(api, failed["id"]))["status"] == "FAILED"  # terminal stays
    again = await api.post(f"/workflows/executions/{retry['id']}/retry")
    assert again.status_code == 409


async def test_listing_and_catching_up_on_events(api: httpx.AsyncClient) -> None:
    workflow_id = await create_active(api, agents(2))
    ids = [(await execute(api, workflow_id, {"i": i}))["id"] for i in range(3)]
    for execution_id in ids:
        await wait_until(api, execution_id)
    page = (
        await api.get(
            "/workflows/executions",
            params={"workflowId": workflow_id, "status": "COMPLETED", "limit": 2, "page": 1},
        )
    ).json()
    assert page["total"] == 3
    assert len(page["executions"]) == 2
    assert page["executions"][0]["id"] == ids[-1]  # newest first

    all_events = (await api.get(f"/workflows/executions/{ids[0]}/events")).json()
    tail = (await api.get(f"/workflows/executions/{ids[0]}/events", params={"afterSeq": 3})).json()
    assert tail["events"] == all_events["events"][3:]
    assert tail["lastSeq"] == all_events["lastSeq"]


async def test_execution_timeout_fails_a_long_execution(pg_url: str, standin: str) -> None:
    with running(service_process(pg_url, standin, EXECUTION_TIMEOUT="1500")) as service:
        async with httpx.AsyncClient(base_url=base_url(service), timeout=30) as client:
            definition = chain(
                node("slow", "AGENT", agentId="slow", inputMapping={"delayMs": 5000})
            )
            workflow_id = await create_active(client, definition)
            started = await execute(client, workflow_id, {})
            done = await wait_until(client, started["id"], timeout=10)
    assert done["status"] == "FAILED"
    assert "EXECUTION_TIMEOUT" in done["error"]
    elapsed = dt.datetime.fromisoformat(done["completedAt"]) - dt.datetime.fromisoformat(
        done["createdAt"]
    )
    assert elapsed < dt.timedelta(seconds=4)


async def test_an_output_the_database_refuses_fails_only_its_execution(
    api: httpx.AsyncClient,
) -> None:
    bad = await create_active(api, chain(node("nul", "TRANSFORM", expression=r"'a\u0000b'")))
    good = await create_active(api, agents(3))
    runs = await asyncio.gather(
        *(execute(api, bad, {}) for _ in range(3)), *(execute(api, good, {}) for _ in range(10))
    )
    done = [await wait_until(api, run["id"]) for run in runs]
    assert [d["status"] for d in done[:3]] == ["FAILED"] * 3
    assert all("refused a value" in d["error"] for d in done[:3])
    assert [d["status"] for d in done[3:]] == ["COMPLETED"] * 10
