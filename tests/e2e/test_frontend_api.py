"""The platform frontend's REST calls over real HTTP, on a service run with API_PREFIX=/api."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from tests.flows import agents, chain, node, wait_until
from tests.processes import Process, base_url, running, service_process

PREFIXES = ["", "/api"]
INPUT_SCHEMA = {"type": "object", "properties": {"topic": {"type": "string"}}}
OUTPUT_SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"}}}


@pytest.fixture(scope="module")
def prefixed(service_db: str, standin: str) -> Iterator[Process]:
    with running(service_process(service_db, standin, API_PREFIX="/api")) as process:
        yield process


@pytest.fixture
async def client(prefixed: Process) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url(prefixed), timeout=30) as http:
        yield http


def user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


async def create(
    client: httpx.AsyncClient,
    definition: dict[str, Any],
    prefix: str = "/api",
    user_id: str | None = None,
    status: str = "ACTIVE",
) -> dict[str, Any]:
    response = await client.post(
        f"{prefix}/workflows",
        params={"userId": user_id} if user_id else {},
        json={"name": "wf", "definition": definition, "status": status},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_400(response: httpx.Response, path: str, message: str) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    body: dict[str, Any] = response.json()
    assert body["statusCode"] == 400
    assert body["path"] == path
    assert message in body["message"] + str(body.get("details"))
    return body


async def test_every_route_answers_with_and_without_the_prefix(client: httpx.AsyncClient) -> None:
    for path in ("/health", "/health/ready"):
        plain, prefixed = await client.get(path), await client.get(f"/api{path}")
        assert plain.status_code == prefixed.status_code == 200
        assert plain.json()["status"] == prefixed.json()["status"] == "ok"

    workflow = await create(client, chain(node("t", "TRANSFORM", expression="input")), "")
    for prefix in PREFIXES:
        got = await client.get(f"{prefix}/workflows/{workflow['id']}")
        assert got.status_code == 200
        assert got.json() == workflow
        started = await client.post(
            f"{prefix}/workflows/execute", json={"workflowId": workflow["id"], "input": 1}
        )
        assert started.status_code == 202, started.text
        done = await client.get(f"{prefix}/workflows/executions/{started.json()['id']}")
        assert done.status_code == 200
        listed = await client.get(f"{prefix}/workflows/executions", params={"limit": 1})
        assert listed.status_code == 200
    missing = await client.get(f"/api/workflows/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.json()["path"].startswith("/api/workflows/")


async def test_openapi_lists_each_route_once_without_the_prefix(
    client: httpx.AsyncClient,
) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert not [path for path in paths if path.startswith("/api")]
    assert {"/health", "/health/ready", "/workflows", "/workflows/{workflow_id}"} <= set(paths)
    assert set(paths["/workflows/{workflow_id}"]) == {"get", "put", "patch", "delete"}
    assert "post" in paths["/workflows/{workflow_id}/execute"]
    operation_ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(operation_ids) == len(set(operation_ids))


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_the_list_answers_data_and_takes_page_size(
    client: httpx.AsyncClient, prefix: str
) -> None:
    owner = user()
    ids = [(await create(client, chain(), prefix, owner))["id"] for _ in range(3)]

    response = await client.get(f"{prefix}/workflows", params={"userId": owner, "pageSize": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [w["id"] for w in body["data"]] == ids[::-1][:2]
    assert body["workflows"] == body["data"]
    assert (body["total"], body["page"], body["limit"]) == (3, 1, 2)

    second = await client.get(
        f"{prefix}/workflows", params={"userId": owner, "limit": 2, "page": 2}
    )
    assert [w["id"] for w in second.json()["data"]] == ids[:1]

    both = await client.get(f"{prefix}/workflows", params={"limit": 2, "pageSize": 2})
    assert_400(both, f"{prefix}/workflows", "either limit or pageSize")
    too_big = await client.get(f"{prefix}/workflows", params={"pageSize": 101})
    assert too_big.status_code == 400


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_put_saves_the_editor_definition_with_its_schemas(
    client: httpx.AsyncClient, prefix: str
) -> None:
    workflow = await create(client, chain(), prefix, status="DRAFT")
    assert workflow["definition"]["inputSchema"] is None
    definition = {
        **chain(node("t", "TRANSFORM", template={"summary": "{{ input.topic }}"})),
        "version": 7,
        "inputSchema": INPUT_SCHEMA,
        "outputSchema": OUTPUT_SCHEMA,
    }
    save = {"name": "renamed", "description": "saved", "definition": definition, "status": "ACTIVE"}

    response = await client.put(f"{prefix}/workflows/{workflow['id']}", json=save)
    assert response.status_code == 200, response.text
    saved = response.json()
    assert (saved["name"], saved["description"], saved["status"]) == ("renamed", "saved", "ACTIVE")
    assert saved["definition"]["version"] == 2
    assert saved["definition"]["inputSchema"] == INPUT_SCHEMA
    assert saved["definition"]["outputSchema"] == OUTPUT_SCHEMA
    assert [n["id"] for n in saved["definition"]["nodes"]] == ["start", "t", "end"]
    assert (await client.get(f"/workflows/{workflow['id']}")).json() == saved

    again = await client.put(f"{prefix}/workflows/{workflow['id']}", json=save)
    assert again.json()["definition"]["version"] == 2

    new_schema = {**definition, "outputSchema": {"type": "string"}}
    changed = await client.put(
        f"{prefix}/workflows/{workflow['id']}", json={**save, "definition": new_schema}
    )
    assert changed.json()["definition"]["version"] == 3
    versions = (await client.get(f"{prefix}/workflows/{workflow['id']}/versions")).json()
    assert [v["definition"]["outputSchema"] for v in versions["versions"]] == [
        None,
        OUTPUT_SCHEMA,
        {"type": "string"},
    ]

    deep: Any = "leaf"
    for _ in range(80):
        deep = {"d": deep}
    too_deep = await client.put(
        f"{prefix}/workflows/{workflow['id']}",
        json={**save, "definition": {**definition, "inputSchema": deep}},
    )
    body = assert_400(too_deep, f"{prefix}/workflows/{workflow['id']}", "MAX_VALUE_DEPTH")
    assert body["details"][0]["path"] == "definition.inputSchema"
    not_an_object = await client.put(
        f"{prefix}/workflows/{workflow['id']}",
        json={**save, "definition": {**definition, "inputSchema": [1]}},
    )
    assert not_an_object.status_code == 400


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_execute_by_id_runs_the_workflow(client: httpx.AsyncClient, prefix: str) -> None:
    workflow = await create(client, chain(node("t", "TRANSFORM", expression="input")), prefix)

    response = await client.post(
        f"{prefix}/workflows/{workflow['id']}/execute", json={"input": {"n": 1}}
    )
    assert response.status_code == 202, response.text
    started = response.json()
    assert (started["workflowId"], started["input"]) == (workflow["id"], {"n": 1})
    done = await wait_until(client, started["id"])
    assert (done["status"], done["output"]) == ("COMPLETED", {"n": 1})

    missing = await client.post(f"{prefix}/workflows/{uuid.uuid4()}/execute", json={})
    assert missing.status_code == 404
    unknown = await client.post(f"{prefix}/workflows/{workflow['id']}/execute", json={"inputs": 1})
    assert unknown.status_code == 400


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_disabled_node_types_refuse_an_execution_naming_the_nodes(
    client: httpx.AsyncClient, prefix: str
) -> None:
    workflow = await create(client, agents(2), prefix)
    by_id = f"{prefix}/workflows/{workflow['id']}/execute"
    message = "Node types disabled for this execution: AGENT (nodes a1, a2)"

    refused = await client.post(by_id, json={"disabledNodeTypes": ["tool", "agent"]})
    body = assert_400(refused, by_id, message)
    assert body["message"] == message
    assert [d["path"] for d in body["details"]] == ["disabledNodeTypes"] * 2

    execute = f"{prefix}/workflows/execute"
    refused_too = await client.post(
        execute, json={"workflowId": workflow["id"], "disabledNodeTypes": ["Agent"]}
    )
    assert assert_400(refused_too, execute, message)["message"] == message
    executions = await client.get(
        f"{prefix}/workflows/executions", params={"workflowId": workflow["id"]}
    )
    assert executions.json()["total"] == 0

    for body_of_call, url in (
        ({"disabledNodeTypes": []}, by_id),
        ({"disabledNodeTypes": ["TOOL"]}, by_id),
        ({"workflowId": workflow["id"], "disabledNodeTypes": []}, execute),
    ):
        allowed = await client.post(url, json={"input": "hi", **body_of_call})
        assert allowed.status_code == 202, allowed.text
        assert (await wait_until(client, allowed.json()["id"]))["status"] == "COMPLETED"


async def test_the_editor_builds_runs_and_reads_a_workflow_as_the_frontend_does(
    client: httpx.AsyncClient,
) -> None:
    """The frontend's calls in the order its pages make them, under /api, with ?userId= as
    the gateway appends it; every field it reads is checked."""
    me = {"userId": user()}
    made = await client.post("/api/workflows", params=me, json={"name": "Newsletter"})
    assert made.status_code == 201, made.text
    workflow = made.json()
    path = f"/api/workflows/{workflow['id']}"
    assert workflow["status"] == "DRAFT"
    assert workflow["definition"]["nodes"] == []
    assert workflow["problems"] == [
        {"path": "definition.nodes", "message": "a workflow needs at least one node"}
    ]

    # The editor adds nodes one by one, in React Flow's shapes (lowercase types included).
    nodes = [
        {"id": "start", "type": "start", "position": {"x": 0, "y": 0}, "data": {"label": "Start"}},
        {
            "id": "writer",
            "type": "AGENT",
            "customName": "Writer",
            "description": "writes the draft",
            "position": {"x": 200, "y": 0},
            "data": {
                "label": "Agent",
                "nodeType": "AGENT",
                "config": {"agentId": "slow", "inputMapping": {"delayMs": 400}},
            },
        },
        {"id": "end", "position": {"x": 400, "y": 0}, "data": {"nodeType": "end"}},
    ]
    for body in nodes:
        added = await client.post(f"{path}/nodes", params=me, json=body)
        assert added.status_code == 201, added.text
    shown = added.json()
    assert [n["id"] for n in shown["definition"]["nodes"]] == ["start", "writer", "end"]
    writer = shown["definition"]["nodes"][1]
    assert writer["type"] == "AGENT"
    assert writer["customName"] == "Writer"
    assert writer["description"] == "writes the draft"
    assert writer["config"] == {"agentId": "slow", "inputMapping": {"delayMs": 400}}
    assert writer["data"] == {"label": "Agent"}
    assert shown["definition"]["nodes"][2]["type"] == "END"
    assert shown["definition"]["version"] == 4
    assert "node 'writer' is not reachable from START" in str(shown["problems"])

    duplicate = await client.post(f"{path}/nodes", params=me, json=nodes[0])
    assert duplicate.status_code == 409
    for source, target in (("start", "writer"), ("writer", "end"), ("start", "end")):
        edge = {"id": f"{source}-{target}", "source": source, "target": target}
        linked = await client.post(f"{path}/edges", params=me, json=edge)
        assert linked.status_code == 201, linked.text
    assert (await client.delete(f"{path}/edges/start-end", params=me)).status_code == 204
    assert (await client.delete(f"{path}/edges/start-end", params=me)).status_code == 404
    renamed = await client.put(f"{path}/nodes/writer", params=me, json={"customName": "Copywriter"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["definition"]["nodes"][1]["customName"] == "Copywriter"
    assert renamed.json()["definition"]["nodes"][1]["config"]["agentId"] == "slow"
    assert renamed.json()["problems"] == []
    extra = {"id": "note", "type": "TRANSFORM", "position": {"x": 9, "y": 9}}
    assert (await client.post(f"{path}/nodes", params=me, json=extra)).status_code == 201
    await client.post(
        f"{path}/edges", params=me, json={"id": "w-note", "source": "writer", "target": "note"}
    )
    assert (await client.delete(f"{path}/nodes/note", params=me)).status_code == 204
    current = (await client.get(path, params=me)).json()
    assert [e["id"] for e in current["definition"]["edges"]] == ["start-writer", "writer-end"]

    # The editor's save: PUT of the whole workflow, schemas and lowercase status included.
    saved = await client.put(
        path,
        params=me,
        json={
            "name": "Newsletter",
            "description": "weekly",
            "definition": {
                **{k: current["definition"][k] for k in ("nodes", "edges", "version")},
                "inputSchema": INPUT_SCHEMA,
                "outputSchema": OUTPUT_SCHEMA,
            },
            "status": "active",
        },
    )
    assert saved.status_code == 200, saved.text
    assert saved.json()["status"] == "ACTIVE"
    assert saved.json()["definition"]["inputSchema"] == INPUT_SCHEMA

    listed = await client.get("/api/workflows", params={**me, "page": 1, "pageSize": 20})
    assert listed.status_code == 200
    page = listed.json()
    assert (page["total"], page["page"], page["limit"]) == (1, 1, 20)
    assert [w["id"] for w in page["data"]] == [workflow["id"]]

    runs = []
    for _ in range(2):
        started = await client.post(
            f"{path}/execute", params=me, json={"input": {"topic": "AI"}, "disabledNodeTypes": []}
        )
        assert started.status_code == 202, started.text
        runs.append(started.json()["id"])
    cancelled = await client.post(f"/api/workflows/executions/{runs[1]}/cancel", params=me)
    assert cancelled.status_code == 204
    async with client_at(client, "/api") as api:
        done = await wait_until(api, runs[0], timeout=60)
    assert done["status"] == "COMPLETED"
    assert {n["nodeId"]: n["status"] for n in done["nodeExecutions"]} == {
        "start": "COMPLETED",
        "writer": "COMPLETED",
        "end": "COMPLETED",
    }
    polled = (await client.get(f"/api/workflows/executions/{runs[1]}", params=me)).json()
    assert polled["status"] == "CANCELLED"

    history = await client.get(
        f"{path}/executions",
        params={**me, "page": 1, "limit": 10, "sortBy": "createdAt", "sortOrder": "asc"},
    )
    assert history.status_code == 200, history.text
    rows = history.json()
    assert (rows["total"], rows["page"], rows["limit"]) == (2, 1, 10)
    first, second = rows["data"]
    assert [first["executionId"], second["executionId"]] == runs
    assert first["status"] == "COMPLETED"
    assert first["duration"] >= 400
    assert first["totalTokens"] > 0  # the stand-in agent reports its tokens
    # It reports a total only: no split into input and output.
    assert (first["inputTokens"], first["outputTokens"]) == (0, 0)
    assert first["error"] is None
    assert [n["nodeId"] for n in first["nodeExecutions"]] == ["start", "writer", "end"]
    assert second["status"] == "CANCELLED"
    assert second["duration"] is not None
    assert second["totalTokens"] is None
    assert set(first) >= {"startedAt", "completedAt", "createdAt"}
    newest = await client.get(f"{path}/executions", params={**me, "sortBy": "status"})
    assert [r["status"] for r in newest.json()["data"]] == ["COMPLETED", "CANCELLED"]
    unknown = await client.get("/api/workflows/nope/executions", params=me)
    assert unknown.status_code == 404
    bad_sort = await client.get(f"{path}/executions", params={**me, "sortBy": "name"})
    assert bad_sort.status_code == 400


def client_at(client: httpx.AsyncClient, prefix: str) -> httpx.AsyncClient:
    """The same service with every path under `prefix`."""
    return httpx.AsyncClient(base_url=f"{client.base_url}{prefix}", timeout=30)
