"""Bounds on stored values end to end: the settings refuse values at the API, and rows stored
before the bounds existed still read, each value a response cannot carry shown as a marker."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.application.events import node_update, snapshot
from orchestrator.application.executions import scoped_key
from orchestrator.domain.execution import (
    Attempt,
    ExecutionStatus,
    NodeExecution,
    NodeStatus,
    WorkflowExecution,
)
from orchestrator.domain.workflow import Definition, Edge, Node, NodeType
from orchestrator.infrastructure.db.engine import create_engine
from orchestrator.infrastructure.db.mappers import definition_to_json, execution_row, node_row
from orchestrator.infrastructure.db.tables import (
    execution_events,
    executions,
    node_executions,
    workflow_versions,
    workflows,
)
from orchestrator.settings import async_database_url
from tests.e2e.test_workflows_api import assert_envelope, graph, nested, user
from tests.processes import Process, base_url, running, service_process

MAX_DEPTH = 16
MAX_BYTES = 4096
READABLE_DEPTH = 200
T0 = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
TOO_DEEP = {"_unreadable": f"value nested deeper than {READABLE_DEPTH} levels"}


@pytest.fixture(scope="module")
def service(service_db: str, standin: str) -> Iterator[Process]:
    """The service with small bounds, so that each is easy to reach."""
    process = service_process(
        service_db,
        standin,
        MAX_VALUE_DEPTH=str(MAX_DEPTH),
        MAX_NODE_OUTPUT_BYTES=str(MAX_BYTES),
    )
    with running(process):
        yield process


async def active_workflow(api: httpx.AsyncClient, me: str) -> str:
    response = await api.post(
        "/workflows",
        params={"userId": me},
        json={"name": "bounded", "definition": graph(), "status": "ACTIVE"},
    )
    assert response.status_code == 201, response.text
    workflow_id: str = response.json()["id"]
    return workflow_id


# The settings bound what is stored


async def test_a_config_over_the_bounds_is_refused_everywhere_a_definition_is_taken(
    api: httpx.AsyncClient,
) -> None:
    me = user()
    too_deep = {"template": nested(MAX_DEPTH)}
    too_large = {"template": "x" * MAX_BYTES}
    fits = {"template": nested(MAX_DEPTH - 1)}
    for config, message in (
        (too_deep, f"config is nested deeper than MAX_VALUE_DEPTH ({MAX_DEPTH} levels)"),
        (
            too_large,
            f"config is larger than MAX_NODE_OUTPUT_BYTES ({MAX_BYTES + 15} bytes, "
            f"at most {MAX_BYTES})",
        ),
    ):
        definition = graph({"id": "t", "type": "TRANSFORM", "config": config})
        problem = [{"path": "definition.nodes[1].config", "message": message}]

        created = await api.post(
            "/workflows", params={"userId": me}, json={"name": "x", "definition": definition}
        )
        assert assert_envelope(created, 400, "POST", "/workflows")["details"] == problem
        validated = await api.post("/workflows/validate", json={"definition": definition})
        assert validated.status_code == 200, validated.text
        assert validated.json() == {"valid": False, "problems": problem}

    kept = await api.post(
        "/workflows",
        params={"userId": me},
        json={"name": "x", "definition": graph({"id": "t", "type": "TRANSFORM", "config": fits})},
    )
    assert kept.status_code == 201, kept.text
    path = f"/workflows/{kept.json()['id']}"
    refused = await api.patch(
        path,
        json={"definition": graph({"id": "t", "type": "TRANSFORM", "config": too_deep})},
    )
    assert_envelope(refused, 400, "PATCH", path)
    versions = (await api.get(f"{path}/versions")).json()["versions"]
    assert [v["version"] for v in versions] == [1]
    listed = (await api.get("/workflows", params={"userId": me})).json()
    assert [w["id"] for w in listed["workflows"]] == [kept.json()["id"]]


async def test_an_input_over_the_bounds_is_refused_and_not_stored(api: httpx.AsyncClient) -> None:
    me = user()
    workflow_id = await active_workflow(api, me)
    body = '{"workflowId": "%s", "input": %s}'
    for raw_input, message in (
        (
            json.dumps(nested(MAX_DEPTH + 1)),
            f"input is nested deeper than MAX_VALUE_DEPTH ({MAX_DEPTH} levels)",
        ),
        (
            f'"{"y" * MAX_BYTES}"',
            f"input is larger than MAX_NODE_OUTPUT_BYTES ({MAX_BYTES + 2} bytes, "
            f"at most {MAX_BYTES})",
        ),
        (
            r'{"text": "\ud800"}',
            "input cannot be stored as JSON: str is not valid UTF-8: surrogates not allowed",
        ),
    ):
        response = await api.post(
            "/workflows/execute",
            params={"userId": me},
            content=body % (workflow_id, raw_input),
            headers={"content-type": "application/json"},
        )
        assert assert_envelope(response, 400, "POST", "/workflows/execute")["message"] == message

    listed = await api.get(
        "/workflows/executions", params={"userId": me, "workflowId": workflow_id}
    )
    assert listed.status_code == 200, listed.text
    assert listed.json()["total"] == 0
    fits = await api.post(
        "/workflows/execute",
        params={"userId": me},
        json={"workflowId": workflow_id, "input": nested(MAX_DEPTH)},
    )
    assert fits.status_code == 202, fits.text
    assert fits.json()["input"] == nested(MAX_DEPTH)


# Rows stored before the bounds


def old_definition(deep: Any, fine: Any) -> Definition:
    return Definition(
        nodes=(
            Node("start", NodeType.START),
            Node("deep", NodeType.TRANSFORM, {"template": deep}),
            Node("fine", NodeType.TRANSFORM, {"template": fine}),
            Node("end", NodeType.END),
        ),
        edges=(
            Edge("e1", "start", "deep"),
            Edge("e2", "deep", "fine"),
            Edge("e3", "fine", "end"),
        ),
    )


def old_execution(
    workflow_id: str, user_id: str, deep: Any, fine: Any, key: str | None
) -> WorkflowExecution:
    """A COMPLETED execution (so no runner takes it) holding `deep` wherever a value goes."""
    done = T0 + dt.timedelta(seconds=1)
    nodes = {
        node_id: NodeExecution(
            node_id,
            node_type,
            NodeStatus.COMPLETED,
            input=deep,
            output=value,
            started_at=T0,
            completed_at=done,
            attempts=[Attempt(1, T0, done, None)],
            finished_order=position,
            position=position,
        )
        for position, (node_id, node_type, value) in enumerate(
            [
                ("start", NodeType.START, deep),
                ("deep", NodeType.TRANSFORM, deep),
                ("fine", NodeType.TRANSFORM, fine),
                ("end", NodeType.END, deep),
            ]
        )
    }
    return WorkflowExecution(
        id=str(uuid.uuid4()),
        workflow_id=workflow_id,
        workflow_version=1,
        status=ExecutionStatus.COMPLETED,
        input=deep,
        user_id=user_id,
        created_at=T0,
        updated_at=done,
        deadline_at=T0 + dt.timedelta(minutes=5),
        nodes=nodes,
        output=deep,
        started_at=T0,
        completed_at=done,
        idempotency_key=key,
        last_seq=2,
    )


async def store_old_rows(
    connection: AsyncConnection, user_id: str, deep: Any, fine: Any, key: str | None = None
) -> tuple[str, str]:
    """A workflow and one execution of it, written past the API as an older version would
    have; returns their ids."""
    workflow_id = str(uuid.uuid4())
    await connection.execute(
        insert(workflows).values(
            id=workflow_id,
            name="old",
            description=None,
            status="ACTIVE",
            version=1,
            user_id=user_id,
            created_at=T0,
            updated_at=T0,
        )
    )
    await connection.execute(
        insert(workflow_versions).values(
            workflow_id=workflow_id,
            version=1,
            definition=definition_to_json(old_definition(deep, fine)),
            created_at=T0,
        )
    )
    execution = old_execution(workflow_id, user_id, deep, fine, key)
    await connection.execute(insert(executions).values(execution_row(execution)))
    await connection.execute(
        insert(node_executions),
        [node_row(execution.id, n) for n in execution.nodes.values()],
    )
    payloads = [
        ("node:update", node_update(execution.id, execution.nodes["deep"], 1, T0, {})),
        ("execution:update", snapshot(execution, T0, {})),
    ]
    await connection.execute(
        insert(execution_events),
        [
            {
                "execution_id": execution.id,
                "seq": seq,
                "event": name,
                "payload": payload,
                "created_at": T0,
            }
            for seq, (name, payload) in enumerate(payloads, start=1)
        ],
    )
    return workflow_id, execution.id


async def store_old(
    database_url: str, user_id: str, deep: Any, fine: Any, key: str | None
) -> tuple[str, str]:
    engine = create_engine(async_database_url(database_url))
    try:
        async with engine.begin() as connection:
            return await store_old_rows(connection, user_id, deep, fine, key)
    finally:
        await engine.dispose()


def configs(workflow: dict[str, Any]) -> dict[str, Any]:
    return {n["id"]: n["config"] for n in workflow["definition"]["nodes"]}


async def ok(api: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await api.request(method, path, **kwargs)
    assert response.status_code in (200, 202), f"{method} {path}: {response.text[:500]}"
    return response.json()


async def test_rows_stored_too_deep_still_read_with_markers(
    api: httpx.AsyncClient, service_db: str
) -> None:
    me = user()
    deep, fine = nested(300), nested(100)
    workflow_id, execution_id = await store_old(
        service_db, me, deep, fine, scoped_key(me, "old-key")
    )
    shown = {"start": {}, "deep": TOO_DEEP, "fine": {"template": fine}, "end": {}}

    listed = await ok(api, "GET", "/workflows", params={"userId": me})
    assert [configs(w) for w in listed["workflows"]] == [shown]
    one = await ok(api, "GET", f"/workflows/{workflow_id}")
    assert (one["id"], one["name"], one["createdAt"]) == (
        workflow_id,
        "old",
        "2026-01-02T03:04:05.678000Z",
    )
    assert configs(one) == shown
    versions = await ok(api, "GET", f"/workflows/{workflow_id}/versions")
    assert [configs(v) for v in versions["versions"]] == [shown]

    summaries = await ok(api, "GET", "/workflows/executions", params={"userId": me})
    assert [e["id"] for e in summaries["executions"]] == [execution_id]
    assert "input" not in summaries["executions"][0]
    detailed = await ok(
        api, "GET", "/workflows/executions", params={"userId": me, "include": "nodes,io"}
    )
    execution = await ok(api, "GET", f"/workflows/executions/{execution_id}")
    for body in (detailed["executions"][0], execution):
        assert (body["id"], body["status"], body["lastSeq"]) == (execution_id, "COMPLETED", 2)
        assert body["input"] == body["output"] == TOO_DEEP
        nodes = {n["nodeId"]: n for n in body["nodeExecutions"]}
        assert nodes["fine"]["output"] == fine
        assert nodes["deep"]["output"] == nodes["deep"]["input"] == TOO_DEEP
        assert nodes["deep"]["attempts"][0]["completedAt"] == "2026-01-02T03:04:06.678000Z"

    events = await ok(api, "GET", f"/workflows/executions/{execution_id}/events")
    node_event, execution_event = (e["data"] for e in events["events"])
    assert node_event["executionId"] == execution_event["executionId"] == execution_id
    assert node_event["data"]["input"] == node_event["data"]["output"] == TOO_DEEP
    assert node_event["status"] == "COMPLETED"
    assert execution_event["output"] == TOO_DEEP
    assert execution_event["status"] == "COMPLETED"
    outputs = {n["nodeId"]: n["output"] for n in execution_event["nodeExecutions"]}
    assert outputs == {"start": TOO_DEEP, "deep": TOO_DEEP, "fine": fine, "end": TOO_DEEP}

    again = await ok(
        api,
        "POST",
        "/workflows/execute",
        params={"userId": me},
        json={"workflowId": workflow_id, "input": 1},
        headers={"Idempotency-Key": "old-key"},
    )
    assert (again["id"], again["input"]) == (execution_id, TOO_DEEP)
    renamed = await ok(api, "PATCH", f"/workflows/{workflow_id}", json={"name": "renamed"})
    assert (renamed["name"], configs(renamed)) == ("renamed", shown)
    archived = await ok(api, "DELETE", f"/workflows/{workflow_id}")
    assert (archived["status"], configs(archived)) == ("ARCHIVED", shown)


async def test_a_value_sqlite_kept_that_json_cannot_carry_reads_as_a_marker(
    tmp_path: Path, standin: str
) -> None:
    me = user()
    url = f"sqlite:///{tmp_path / 'old.db'}"
    unwritable = {"text": "\ud800"}
    marker = {
        "_unreadable": "value cannot be written as JSON: "
        "str is not valid UTF-8: surrogates not allowed"
    }
    with running(service_process(url, standin)) as service:
        workflow_id, execution_id = await store_old(url, me, unwritable, 1, "k")
        async with httpx.AsyncClient(base_url=base_url(service), timeout=30) as client:
            workflow = await ok(client, "GET", f"/workflows/{workflow_id}")
            execution = await ok(client, "GET", f"/workflows/executions/{execution_id}")
    assert configs(workflow)["deep"] == marker
    assert execution["input"] == execution["output"] == marker
    assert {n["nodeId"]: n["output"] for n in execution["nodeExecutions"]}["fine"] == 1
