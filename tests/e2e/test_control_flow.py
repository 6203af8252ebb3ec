"""Control flow end to end on PostgreSQL: waits that survive every process, resume races,
loops, SWITCH and sub-workflows three levels deep."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.flows import (
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

FAST_LEASES = {"LEASE_SECONDS": "3", "HEARTBEAT_SECONDS": "1"}


def approval(**config: Any) -> dict[str, Any]:
    """START -> PROMPT "Publish {{title}}?" -> END."""
    return {
        "nodes": [
            node("start", "START"),
            node("ask", "PROMPT", prompt="Publish {{title}}?", **config),
            node("end", "END"),
        ],
        "edges": [edge("start", "ask"), edge("ask", "end")],
    }


async def resume(client: httpx.AsyncClient, execution_id: str, node_id: str, answer: Any) -> Any:
    return await client.post(
        f"/workflows/executions/{execution_id}/nodes/{node_id}/resume", json={"input": answer}
    )


async def test_an_approval_waits_through_kill_9_of_every_process_and_resumes_elsewhere(
    pg_url: str, standin: str
) -> None:
    first = service_process(pg_url, standin, **FAST_LEASES)
    second = service_process(pg_url, standin, **FAST_LEASES)
    with running(first), running(second):
        async with httpx.AsyncClient(base_url=base_url(first), timeout=30) as client:
            workflow_id = await create_active(client, approval())
            execution_id = (await execute(client, workflow_id, {"title": "Q3"}))["id"]
            waiting = await wait_node(client, execution_id, "ask", "WAITING_INPUT")
            ask = nodes_by_id(waiting)["ask"]
            assert ask["wait"] == {"for": "input", "prompt": "Publish Q3?"}
            assert waiting["status"] == "RUNNING"
        first.kill()
        second.kill()

    third = service_process(pg_url, standin, **FAST_LEASES)
    fourth = service_process(pg_url, standin, **FAST_LEASES)
    with running(third), running(fourth):
        async with (
            httpx.AsyncClient(base_url=base_url(third), timeout=30) as reader,
            httpx.AsyncClient(base_url=base_url(fourth), timeout=30) as answerer,
        ):
            still = await get_execution(reader, execution_id)
            assert nodes_by_id(still)["ask"]["status"] == "WAITING_INPUT"
            answered = await resume(answerer, execution_id, "ask", "yes, ship it")
            assert answered.status_code == 200, answered.text
            assert answered.json() == {"success": True}
            done = await wait_until(reader, execution_id, timeout=60)
    assert done["status"] == "COMPLETED", done
    assert done["output"] == {"prompt": "Publish Q3?", "response": "yes, ship it"}


async def test_of_two_resumes_at_once_exactly_one_wins(api: httpx.AsyncClient) -> None:
    workflow_id = await create_active(api, approval())
    for _ in range(5):
        execution_id = (await execute(api, workflow_id, {"title": "x"}))["id"]
        await wait_node(api, execution_id, "ask", "WAITING_INPUT")
        answers = await asyncio.gather(
            resume(api, execution_id, "ask", "first"), resume(api, execution_id, "ask", "second")
        )
        assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
        winner = "first" if answers[0].status_code == 200 else "second"
        done = await wait_until(api, execution_id)
        assert done["output"]["response"] == winner
        late = await resume(api, execution_id, "ask", "third")
        assert late.status_code == 409


async def test_resume_refuses_what_does_not_wait(api: httpx.AsyncClient) -> None:
    workflow_id = await create_active(api, approval())
    execution_id = (await execute(api, workflow_id, {"title": "x"}))["id"]
    await wait_node(api, execution_id, "ask", "WAITING_INPUT")

    assert (await resume(api, execution_id, "nope", "a")).status_code == 404
    assert (await resume(api, "no-such-execution", "ask", "a")).status_code == 404
    assert (await resume(api, execution_id, "start", "a")).status_code == 409
    assert (await resume(api, execution_id, "ask", None)).status_code == 400
    deep: Any = "x"
    for _ in range(100):
        deep = [deep]
    assert (await resume(api, execution_id, "ask", deep)).status_code == 400

    cancelled = await api.post(f"/workflows/executions/{execution_id}/cancel")
    assert cancelled.status_code == 204
    done = await get_execution(api, execution_id)
    assert done["status"] == "CANCELLED"
    assert nodes_by_id(done)["ask"]["status"] == "CANCELLED"
    assert (await resume(api, execution_id, "ask", "a")).status_code == 409


async def test_a_wait_times_out_along_its_timeout_edge(api: httpx.AsyncClient) -> None:
    definition = {
        "nodes": [
            node("start", "START"),
            node("ask", "PROMPT", prompt="ok?", timeoutMs=300),
            node("late", "TRANSFORM", expression="'nobody answered'"),
            node("end", "END"),
        ],
        "edges": [
            edge("start", "ask"),
            edge("ask", "end"),
            edge("ask", "late", sourceHandle="timeout"),
            edge("late", "end"),
        ],
    }
    workflow_id = await create_active(api, definition)
    execution_id = (await execute(api, workflow_id))["id"]
    done = await wait_until(api, execution_id, timeout=30)
    assert done["status"] == "COMPLETED", done
    assert done["output"] == {"late": "nobody answered"}


def counter(condition: str, max_iterations: int) -> dict[str, Any]:
    return {
        "nodes": [
            node("start", "START"),
            node("loop", "WHILE", condition=condition, maxIterations=max_iterations),
            node("step", "TRANSFORM", expression='{"n": input.n + 1}'),
            node("end", "END"),
        ],
        "edges": [
            edge("start", "loop"),
            edge("loop", "step", sourceHandle="loop"),
            edge("step", "loop"),
            edge("loop", "end", sourceHandle="exit"),
        ],
    }


async def test_a_while_loop_stops_at_its_condition(api: httpx.AsyncClient) -> None:
    workflow_id = await create_active(api, counter("input.n < 4", 10))
    done = await wait_until(api, (await execute(api, workflow_id, {"n": 0}))["id"])
    assert done["status"] == "COMPLETED", done
    assert done["output"] == {"n": 4}
    steps = [n for n in done["nodeExecutions"] if n["nodeId"] == "step"]
    assert [(s["iteration"], s["output"]) for s in steps] == [([i], {"n": i + 1}) for i in range(4)]


async def test_a_while_loop_fails_at_max_iterations(api: httpx.AsyncClient) -> None:
    workflow_id = await create_active(api, counter("input.n >= 0", 3))
    done = await wait_until(api, (await execute(api, workflow_id, {"n": 0}))["id"])
    assert done["status"] == "FAILED"
    assert "reached maxIterations (3)" in done["error"]


async def test_a_for_each_over_a_thousand_items_ten_at_a_time(api: httpx.AsyncClient) -> None:
    definition = {
        "nodes": [
            node("start", "START"),
            node("each", "FOR_EACH", collection="input.items", concurrency=10, maxItems=1000),
            node("double", "TRANSFORM", expression="item * 2"),
            node("end", "END"),
        ],
        "edges": [
            edge("start", "each"),
            edge("each", "double", sourceHandle="body"),
            edge("each", "end", sourceHandle="exit"),
        ],
    }
    workflow_id = await create_active(api, definition)
    execution_id = (await execute(api, workflow_id, {"items": list(range(1000))}))["id"]
    done = await wait_until(api, execution_id, timeout=180)
    assert done["status"] == "COMPLETED", done["error"]
    assert done["output"] == [i * 2 for i in range(1000)]
    assert len([n for n in done["nodeExecutions"] if n["nodeId"] == "double"]) == 1000


async def test_a_switch_follows_its_case(api: httpx.AsyncClient) -> None:
    definition = {
        "nodes": [
            node("start", "START"),
            node("route", "SWITCH", switchOn="input.kind", cases=[{"value": "bug"}, {"value": 2}]),
            node("bug", "TRANSFORM", expression="'to engineering'"),
            node("two", "TRANSFORM", expression="'the second case'"),
            node("other", "TRANSFORM", expression="'to support'"),
            node("end", "END"),
        ],
        "edges": [
            edge("start", "route"),
            edge("route", "bug", sourceHandle="case_0"),
            edge("route", "two", sourceHandle="case_1"),
            edge("route", "other", sourceHandle="default"),
            edge("bug", "end"),
            edge("two", "end"),
            edge("other", "end"),
        ],
    }
    workflow_id = await create_active(api, definition)
    outputs = []
    for kind in ("bug", 2, "question"):
        done = await wait_until(api, (await execute(api, workflow_id, {"kind": kind}))["id"])
        outputs.append(done["output"])
    assert outputs == [
        {"bug": "to engineering"},
        {"two": "the second case"},
        {"other": "to support"},
    ]


def calls(child_id: str, before: dict[str, Any] | None = None) -> dict[str, Any]:
    """START -> [before] -> SUBWORKFLOW child -> END."""
    nodes = [node("start", "START"), node("child", "SUBWORKFLOW", workflowId=child_id)]
    edges = [edge("start", "child"), edge("child", "end")]
    return {"nodes": [*nodes, node("end", "END")], "edges": edges, **(before or {})}


async def children_of(api: httpx.AsyncClient, workflow_id: str) -> list[dict[str, Any]]:
    response = await api.get("/workflows/executions", params={"workflowId": workflow_id})
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["executions"]
    return found


async def test_sub_workflows_three_levels_deep_complete_and_cancel_cascades(
    api: httpx.AsyncClient,
) -> None:
    leaf = await create_active(
        api,
        {
            "nodes": [
                node("start", "START"),
                node("shout", "TRANSFORM", expression='{"text": input.text + "!"}'),
                node("end", "END"),
            ],
            "edges": [edge("start", "shout"), edge("shout", "end")],
        },
        name="leaf",
    )
    middle = await create_active(api, calls(leaf), name="middle")
    top = await create_active(api, calls(middle), name="top")

    done = await wait_until(api, (await execute(api, top, {"text": "hi"}))["id"], timeout=60)
    assert done["status"] == "COMPLETED", done
    assert done["output"]["text"] == "hi!"
    assert done["output"]["_subWorkflowId"] == middle
    (middle_run,) = await children_of(api, middle)
    assert middle_run["parentExecutionId"] == done["id"]
    assert middle_run["parentNodeId"] == "child"
    assert done["output"]["_subExecutionId"] == middle_run["id"]
    (leaf_run,) = await children_of(api, leaf)
    assert leaf_run["parentExecutionId"] == middle_run["id"]

    waiting_leaf = await create_active(api, approval(), name="waiting leaf")
    waiting_middle = await create_active(api, calls(waiting_leaf), name="waiting middle")
    waiting_top = await create_active(api, calls(waiting_middle), name="waiting top")
    top_id = (await execute(api, waiting_top, {"title": "t"}))["id"]
    for _ in range(300):
        leaves = await children_of(api, waiting_leaf)
        if leaves and nodes_by_id(await get_execution(api, leaves[0]["id"]))["ask"]["status"] == (
            "WAITING_INPUT"
        ):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the leaf never waited")
    (middle_id,) = [x["id"] for x in await children_of(api, waiting_middle)]

    assert (await api.post(f"/workflows/executions/{top_id}/cancel")).status_code == 204

    for execution_id in (top_id, middle_id, leaves[0]["id"]):
        assert (await get_execution(api, execution_id))["status"] == "CANCELLED"


async def test_a_workflow_that_calls_itself_through_another_fails_clearly(
    api: httpx.AsyncClient,
) -> None:
    first = await create_active(api, calls("00000000-0000-0000-0000-000000000000"), name="a")
    second = await create_active(api, calls(first), name="b")
    changed = await api.patch(f"/workflows/{first}", json={"definition": calls(second)})
    assert changed.status_code == 200, changed.text
    itself = await api.patch(f"/workflows/{first}", json={"definition": calls(first)})
    assert itself.status_code == 400
    assert "the one it is in" in itself.text

    done = await wait_until(api, (await execute(api, first))["id"], timeout=60)
    assert done["status"] == "FAILED"
    assert f"workflow {first} would call itself: {first} -> {second} -> {first}" in done["error"]


async def test_a_child_cancelled_on_its_own_fails_its_parent_node(api: httpx.AsyncClient) -> None:
    leaf = await create_active(api, approval(), name="lonely leaf")
    parent = await create_active(api, calls(leaf), name="parent")
    parent_id = (await execute(api, parent, {"title": "t"}))["id"]
    for _ in range(300):
        leaves = await children_of(api, leaf)
        if leaves:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("no child started")
    child_id = leaves[0]["id"]
    await wait_node(api, child_id, "ask", "WAITING_INPUT")
    waiting = nodes_by_id(await get_execution(api, parent_id))["child"]
    assert waiting["status"] == "RUNNING"
    assert waiting["wait"]["for"] == "child"
    assert waiting["wait"]["subExecutionId"] == child_id

    assert (await api.post(f"/workflows/executions/{child_id}/cancel")).status_code == 204

    done = await wait_until(api, parent_id, timeout=30)
    assert done["status"] == "FAILED"
    assert f"sub-workflow execution {child_id} ended CANCELLED" in done["error"]


async def test_on_the_embedded_sqlite_a_wait_survives_a_restart_and_loops_run(
    tmp_path: Path, standin: str
) -> None:
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    first = service_process(url, standin)
    with running(first):
        async with httpx.AsyncClient(base_url=base_url(first), timeout=30) as client:
            workflow_id = await create_active(client, approval())
            execution_id = (await execute(client, workflow_id, {"title": "Q4"}))["id"]
            await wait_node(client, execution_id, "ask", "WAITING_INPUT")
            loop_id = await create_active(client, counter("input.n < 3", 5))
            looped = await wait_until(client, (await execute(client, loop_id, {"n": 0}))["id"])
            assert looped["output"] == {"n": 3}, looped
        first.kill()

    second = service_process(url, standin)
    with running(second):
        async with httpx.AsyncClient(base_url=base_url(second), timeout=30) as client:
            answered = await resume(client, execution_id, "ask", "go")
            assert answered.status_code == 200, answered.text
            again = await resume(client, execution_id, "ask", "go again")
            assert again.status_code == 409
            done = await wait_until(client, execution_id, timeout=60)
    assert done["output"] == {"prompt": "Publish Q4?", "response": "go"}
