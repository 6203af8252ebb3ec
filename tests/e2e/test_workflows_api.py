"""Workflow routes over real HTTP: the running service as the seed's frontend sees it."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any
from unittest.mock import ANY

import httpx
import pytest

from tests.flows import wait_until

ENVELOPE_KEYS = {"statusCode", "error", "message", "path", "method", "timestamp"}
ONE_MIB = 1_048_576
# How pydantic writes a UTC datetime; every timestamp of every route is written so.
UTC_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z")


def user() -> str:
    """A user id of this test's own, so that list assertions see only its workflows."""
    return f"user-{uuid.uuid4().hex[:12]}"


def graph(*middle: dict[str, Any]) -> dict[str, Any]:
    """START -> middle... -> END."""
    nodes = [{"id": "start", "type": "START"}, *middle, {"id": "end", "type": "END"}]
    edges = [
        {"id": f"e{i}", "source": nodes[i]["id"], "target": nodes[i + 1]["id"]}
        for i in range(len(nodes) - 1)
    ]
    return {"nodes": nodes, "edges": edges}


def simple() -> dict[str, Any]:
    return graph({"id": "shape", "type": "TRANSFORM", "config": {"expression": "input"}})


async def create(
    api: httpx.AsyncClient,
    user_id: str,
    name: str = "flow",
    definition: dict[str, Any] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    response = await api.post(
        "/workflows",
        params={"userId": user_id},
        json={"name": name, "definition": definition or simple(), **fields},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def listed(api: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await api.get("/workflows", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_envelope(response: httpx.Response, status: int, method: str, path: str) -> Any:
    """The one error body of the contract; returns it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert ENVELOPE_KEYS <= set(body) <= ENVELOPE_KEYS | {"details"}
    assert body["statusCode"] == status
    assert isinstance(body["error"], str)
    assert body["error"]
    assert isinstance(body["message"], str)
    assert body["message"]
    assert body["path"] == path
    assert body["method"] == method
    assert dt.datetime.fromisoformat(body["timestamp"]).utcoffset() is not None
    text = response.text
    for leak in ("Traceback", 'File "', "sqlalchemy", "asyncpg", "127.0.0.1"):
        assert leak not in text
    return body


def nested(levels: int, leaf: Any = "leaf") -> Any:
    """`levels` containers, alternating objects and arrays, around `leaf`."""
    value = leaf
    for level in range(levels):
        value = {"k": value} if level % 2 else [value]
    return value


def parse_time(value: str) -> dt.datetime:
    parsed = dt.datetime.fromisoformat(value)
    assert parsed.utcoffset() is not None, value
    return parsed


# Create, read, list


async def test_create_returns_the_workflow_in_camel_case(api: httpx.AsyncClient) -> None:
    me = user()
    definition = graph(
        {
            "id": "shape",
            "type": "TRANSFORM",
            "name": "Shape it",
            "config": {"expression": "input", "inputMapping": {"n": "$variables.n"}},
            "position": {"x": 10, "y": 20.5},
        }
    )
    definition["edges"][0]["condition"] = "true"

    body = await create(api, me, "my flow", definition, description="does things")

    assert set(body) == {
        "id",
        "name",
        "description",
        "status",
        "definition",
        "problems",
        "userId",
        "createdAt",
        "updatedAt",
    }
    uuid.UUID(body["id"])
    assert body["problems"] == []
    assert body["name"] == "my flow"
    assert body["description"] == "does things"
    assert body["status"] == "DRAFT"
    assert body["userId"] == me
    assert body["definition"]["version"] == 1
    shape = body["definition"]["nodes"][1]
    assert shape == {
        "id": "shape",
        "type": "TRANSFORM",
        "name": "Shape it",
        "customName": None,
        "description": None,
        "config": {"expression": "input", "inputMapping": {"n": "$variables.n"}},
        "position": {"x": 10, "y": 20.5},
        "data": None,
    }
    assert body["definition"]["edges"][0] == {
        "id": "e0",
        "source": "start",
        "target": "shape",
        "condition": "true",
        "sourceHandle": None,
    }
    assert parse_time(body["createdAt"]) == parse_time(body["updatedAt"])

    fetched = await api.get(f"/workflows/{body['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == body


async def test_create_accepts_snake_case_and_a_status(api: httpx.AsyncClient) -> None:
    definition = {
        "nodes": [
            {"id": "start", "type": "START"},
            {"id": "check", "type": "CONDITIONAL", "config": {"condition": "input.ok"}},
            {"id": "yes", "type": "END"},
            {"id": "no", "type": "END"},
        ],
        "edges": [
            {"id": "e1", "source": "start", "target": "check"},
            {"id": "e2", "source": "check", "target": "yes", "source_handle": "true"},
            {"id": "e3", "source": "check", "target": "no", "sourceHandle": "false"},
        ],
    }

    body = await create(api, user(), definition=definition, status="ACTIVE")

    assert body["status"] == "ACTIVE"
    handles = {e["id"]: e["sourceHandle"] for e in body["definition"]["edges"]}
    assert handles == {"e1": None, "e2": "true", "e3": "false"}
    assert "source_handle" not in body["definition"]["edges"][1]


async def test_a_client_version_is_ignored_on_create(api: httpx.AsyncClient) -> None:
    definition = {**simple(), "version": 7}
    body = await create(api, user(), definition=definition)
    assert body["definition"]["version"] == 1


async def test_unknown_fields_are_refused_with_the_envelope(api: httpx.AsyncClient) -> None:
    me = user()
    top = {"name": "x", "definition": simple(), "color": "red"}
    nested = simple()
    nested["nodes"][1]["colour"] = "blue"

    for body in (top, {"name": "x", "definition": nested}):
        response = await api.post("/workflows", params={"userId": me}, json=body)
        problem = assert_envelope(response, 400, "POST", "/workflows")
        assert problem["details"]
        assert any(d["message"] == "unknown field" for d in problem["details"])
        assert any(d["path"].endswith(("color", "colour")) for d in problem["details"])

    assert (await listed(api, userId=me))["total"] == 0


async def test_a_malformed_body_is_a_400_envelope(api: httpx.AsyncClient) -> None:
    me = user()
    for content in (b"{not json", b"[]", b""):
        response = await api.post(
            "/workflows",
            params={"userId": me},
            content=content,
            headers={"content-type": "application/json"},
        )
        assert_envelope(response, 400, "POST", "/workflows")
    missing = await api.post("/workflows", json={"definition": simple()})
    body = assert_envelope(missing, 400, "POST", "/workflows")
    assert [d["path"] for d in body["details"]] == ["name"]
    bad_type = await api.post(
        "/workflows", json={"name": "x", "definition": graph({"id": "n", "type": "LOOP"})}
    )
    assert_envelope(bad_type, 400, "POST", "/workflows")
    assert (await listed(api, userId=me))["total"] == 0


async def test_an_invalid_definition_lists_every_problem_and_an_active_one_is_not_stored(
    api: httpx.AsyncClient,
) -> None:
    me = user()
    definition = {
        "nodes": [
            {"id": "s1", "type": "START"},
            {"id": "s2", "type": "START"},
            {"id": "ask", "type": "AGENT", "config": {}},
            {"id": "call", "type": "TOOL"},
            {"id": "ask", "type": "TRANSFORM", "config": {"expression": "input +"}},
        ],
        "edges": [
            {"id": "e1", "source": "s1", "target": "ghost"},
            {"id": "e1", "source": "s2", "target": "ask", "condition": "output.score >"},
        ],
    }

    response = await api.post(
        "/workflows",
        params={"userId": me},
        json={"name": "bad", "definition": definition, "status": "ACTIVE"},
    )

    body = assert_envelope(response, 400, "POST", "/workflows")
    details = body["details"]
    assert all(set(d) == {"path", "message"} for d in details)
    text = " | ".join(f"{d['path']}: {d['message']}" for d in details)
    for expected in (
        "exactly one START",
        "at least one END",
        "node id 'ask' is used more than once",
        "edge id 'e1' is used more than once",
        "unknown node 'ghost'",
        "definition.edges[1].condition: does not compile",
        "definition.nodes[2].config.agentId",
        "definition.nodes[3].config.toolId",
        "definition.nodes[4].config.expression: does not compile",
    ):
        assert expected in text, text
    assert (await listed(api, userId=me))["total"] == 0

    draft = await create(api, me, "bad draft", definition)
    assert draft["status"] == "DRAFT"
    assert draft["problems"] == details
    assert [n["id"] for n in draft["definition"]["nodes"]] == ["s1", "s2", "ask", "call", "ask"]
    assert (await api.get(f"/workflows/{draft['id']}")).json() == draft
    activate = await api.patch(f"/workflows/{draft['id']}", json={"status": "ACTIVE"})
    assert assert_envelope(activate, 400, "PATCH", f"/workflows/{draft['id']}")["details"] == (
        details
    )


async def test_an_unreachable_node_and_a_dead_end_are_reported(api: httpx.AsyncClient) -> None:
    definition = graph({"id": "mid", "type": "TRANSFORM", "config": {"expression": "1"}})
    definition["nodes"].append({"id": "island", "type": "TRANSFORM", "config": {"template": 1}})
    definition["nodes"].append({"id": "dead", "type": "TRANSFORM", "config": {"template": 1}})
    definition["edges"].append({"id": "to-dead", "source": "mid", "target": "dead"})

    response = await api.post(
        "/workflows", json={"name": "x", "definition": definition, "status": "ACTIVE"}
    )

    details = assert_envelope(response, 400, "POST", "/workflows")["details"]
    messages = [d["message"] for d in details]
    assert "node 'island' is not reachable from START" in messages
    assert "no END node is reachable from node 'island'" in messages
    assert "no END node is reachable from node 'dead'" in messages


async def test_an_empty_definition_is_a_draft_not_an_active_workflow(
    api: httpx.AsyncClient,
) -> None:
    empty: dict[str, Any] = {"nodes": []}
    response = await api.post(
        "/workflows", json={"name": "x", "definition": empty, "status": "ACTIVE"}
    )
    details = assert_envelope(response, 400, "POST", "/workflows")["details"]
    assert details == [
        {"path": "definition.nodes", "message": "a workflow needs at least one node"}
    ]
    for body in ({"name": "x", "definition": empty}, {"name": "by name only"}):
        draft = await api.post("/workflows", json=body)
        assert draft.status_code == 201, draft.text
        assert draft.json()["problems"] == details
        assert draft.json()["definition"]["nodes"] == []


async def test_creating_an_archived_workflow_is_refused(api: httpx.AsyncClient) -> None:
    me = user()
    response = await api.post(
        "/workflows",
        params={"userId": me},
        json={"name": "x", "definition": simple(), "status": "ARCHIVED"},
    )
    assert_envelope(response, 400, "POST", "/workflows")
    assert (await listed(api, userId=me))["total"] == 0


async def test_the_list_pages_newest_first_and_filters(api: httpx.AsyncClient) -> None:
    me = user()
    made = [await create(api, me, f"flow {i}") for i in range(3)]
    active = await create(api, me, "active one", status="ACTIVE")
    await create(api, user(), "someone else's")
    newest_first = [w["id"] for w in [active, *reversed(made)]]

    first = await listed(api, userId=me, page=1, limit=3)
    second = await listed(api, userId=me, page=2, limit=3)
    beyond = await listed(api, userId=me, page=3, limit=3)
    drafts = await listed(api, userId=me, status="DRAFT")
    actives = await listed(api, userId=me, status="ACTIVE")
    default = await listed(api, userId=me)

    assert set(first) == {"workflows", "data", "total", "page", "limit"}
    assert first["data"] == first["workflows"]
    assert (first["total"], first["page"], first["limit"]) == (4, 1, 3)
    assert [w["id"] for w in first["workflows"] + second["workflows"]] == newest_first
    assert (second["page"], len(second["workflows"])) == (2, 1)
    assert (beyond["workflows"], beyond["total"]) == ([], 4)
    assert drafts["total"] == 3
    assert {w["id"] for w in drafts["workflows"]} == {w["id"] for w in made}
    assert [w["id"] for w in actives["workflows"]] == [active["id"]]
    assert (default["page"], default["limit"]) == (1, 10)
    assert all(w["userId"] == me for w in default["workflows"])
    listed_one = next(w for w in default["workflows"] if w["id"] == active["id"])
    assert listed_one == active


@pytest.mark.parametrize(
    "params",
    [{"page": 0}, {"limit": 0}, {"limit": 101}, {"page": "x"}, {"status": "DONE"}],
)
async def test_bad_list_parameters_are_a_400_envelope(
    api: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    response = await api.get("/workflows", params=params)
    body = assert_envelope(response, 400, "GET", "/workflows")
    assert body["details"][0]["in"] == "query"


async def test_an_unknown_workflow_is_a_404_envelope(api: httpx.AsyncClient) -> None:
    missing = str(uuid.uuid4())
    for method, path, json in (
        ("GET", f"/workflows/{missing}", None),
        ("PATCH", f"/workflows/{missing}", {"name": "x"}),
        ("DELETE", f"/workflows/{missing}", None),
        ("GET", f"/workflows/{missing}/versions", None),
    ):
        response = await api.request(method, path, json=json)
        body = assert_envelope(response, 404, method, path)
        assert body["error"] == "Not Found"
        assert body["message"] == f"Workflow {missing} not found"
        assert "details" not in body


async def test_a_workflow_of_another_user_is_not_found(api: httpx.AsyncClient) -> None:
    workflow = await create(api, user())
    response = await api.get(f"/workflows/{workflow['id']}", params={"userId": user()})
    assert_envelope(response, 404, "GET", f"/workflows/{workflow['id']}")


async def test_an_unknown_route_is_a_404_envelope(api: httpx.AsyncClient) -> None:
    response = await api.get("/nothing/here")
    body = assert_envelope(response, 404, "GET", "/nothing/here")
    assert body["message"] == "Cannot GET /nothing/here"
    wrong_method = await api.put("/workflows")
    assert_envelope(wrong_method, 405, "PUT", "/workflows")


# The fixed paths beside /workflows/{id}


async def test_executions_and_validate_are_not_taken_for_a_workflow_id(
    api: httpx.AsyncClient,
) -> None:
    executions = await api.get("/workflows/executions", params={"userId": user()})
    assert executions.status_code == 200, executions.text
    assert executions.json() == {"executions": [], "total": 0, "page": 1, "limit": 10}

    validate = await api.post("/workflows/validate", json={"definition": simple()})
    assert validate.status_code == 200, validate.text
    assert validate.json() == {"valid": True, "problems": []}

    unknown = str(uuid.uuid4())
    path = f"/workflows/executions/{unknown}"
    body = assert_envelope(await api.get(path), 404, "GET", path)
    assert body["message"] == f"Execution {unknown} not found"


async def test_validate_reports_problems_without_storing(api: httpx.AsyncClient) -> None:
    me = user()
    definition = graph({"id": "ask", "type": "AGENT", "config": {}})
    definition["edges"].append({"id": "e0", "source": "ask", "target": "nowhere"})

    response = await api.post(
        "/workflows/validate", params={"userId": me}, json={"definition": definition}
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["valid"] is False
    paths = [p["path"] for p in body["problems"]]
    assert "definition.nodes[1].config.agentId" in paths
    assert "definition.edges[2].target" in paths
    assert any("used more than once" in p["message"] for p in body["problems"])
    assert (await listed(api, userId=me))["total"] == 0


async def test_validate_refuses_unknown_fields_and_snake_case_works(
    api: httpx.AsyncClient,
) -> None:
    extra = await api.post("/workflows/validate", json={"definition": simple(), "name": "x"})
    assert_envelope(extra, 400, "POST", "/workflows/validate")

    definition = {
        "nodes": [
            {"id": "start", "type": "START"},
            {"id": "check", "type": "CONDITIONAL", "config": {"condition": "input.ok"}},
            {"id": "end", "type": "END"},
        ],
        "edges": [
            {"id": "e1", "source": "start", "target": "check"},
            {"id": "e2", "source": "check", "target": "end", "source_handle": "maybe"},
        ],
    }
    response = await api.post("/workflows/validate", json={"definition": definition})
    assert response.json()["problems"] == [
        {
            "path": "definition.edges[1].sourceHandle",
            "message": 'a CONDITIONAL edge handle is "true" or "false"',
        }
    ]


# Update, versions, archive


async def test_a_new_definition_is_a_new_version_and_every_version_is_kept(
    api: httpx.AsyncClient,
) -> None:
    workflow = await create(api, user())
    changed = graph(
        {"id": "a", "type": "TRANSFORM", "config": {"expression": "input"}},
        {"id": "b", "type": "TRANSFORM", "config": {"template": {"x": 1}}},
    )

    response = await api.patch(f"/workflows/{workflow['id']}", json={"definition": changed})

    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["definition"]["version"] == 2
    assert [n["id"] for n in updated["definition"]["nodes"]] == ["start", "a", "b", "end"]
    assert updated["name"] == workflow["name"]
    assert updated["createdAt"] == workflow["createdAt"]
    assert parse_time(updated["updatedAt"]) > parse_time(workflow["updatedAt"])
    assert (await api.get(f"/workflows/{workflow['id']}")).json() == updated

    same = await api.patch(f"/workflows/{workflow['id']}", json={"definition": changed})
    assert same.json()["definition"]["version"] == 2

    versions = await api.get(f"/workflows/{workflow['id']}/versions")
    assert versions.status_code == 200, versions.text
    body = versions.json()
    assert body["workflowId"] == workflow["id"]
    assert [v["version"] for v in body["versions"]] == [1, 2]
    assert body["versions"][0]["definition"] == workflow["definition"]
    assert body["versions"][1]["definition"] == updated["definition"]
    for version in body["versions"]:
        assert set(version) == {"version", "definition", "createdAt"}
        parse_time(version["createdAt"])


async def test_patch_changes_name_and_description_without_a_new_version(
    api: httpx.AsyncClient,
) -> None:
    workflow = await create(api, user(), description="old")

    renamed = await api.patch(f"/workflows/{workflow['id']}", json={"name": "new name"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "new name"
    assert renamed.json()["description"] == "old"

    described = await api.patch(f"/workflows/{workflow['id']}", json={"description": "new"})
    assert described.json()["description"] == "new"
    assert described.json()["name"] == "new name"

    cleared = await api.patch(f"/workflows/{workflow['id']}", json={"description": None})
    assert cleared.json()["description"] is None
    assert cleared.json()["definition"]["version"] == 1

    versions = (await api.get(f"/workflows/{workflow['id']}/versions")).json()["versions"]
    assert len(versions) == 1


async def test_an_invalid_patch_of_an_active_workflow_changes_nothing(
    api: httpx.AsyncClient,
) -> None:
    workflow = await create(api, user(), status="ACTIVE")
    path = f"/workflows/{workflow['id']}"

    bad = await api.patch(
        path, json={"name": "x", "definition": {"nodes": [{"id": "a", "type": "END"}]}}
    )
    assert "START" in str(assert_envelope(bad, 400, "PATCH", path)["details"])
    unknown = await api.patch(path, json={"title": "x"})
    assert_envelope(unknown, 400, "PATCH", path)
    empty_name = await api.patch(path, json={"name": ""})
    assert_envelope(empty_name, 400, "PATCH", path)

    assert (await api.get(path)).json() == workflow


async def test_status_moves_through_the_lifecycle(api: httpx.AsyncClient) -> None:
    workflow = await create(api, user())
    path = f"/workflows/{workflow['id']}"

    illegal = await api.patch(path, json={"status": "INACTIVE"})
    assert "DRAFT" in assert_envelope(illegal, 409, "PATCH", path)["message"]
    assert (await api.get(path)).json()["status"] == "DRAFT"

    for status in ("ACTIVE", "INACTIVE", "ACTIVE", "ACTIVE", "INACTIVE"):
        response = await api.patch(path, json={"status": status})
        assert response.status_code == 200, response.text
        assert response.json()["status"] == status

    back_to_draft = await api.patch(path, json={"status": "DRAFT"})
    assert_envelope(back_to_draft, 409, "PATCH", path)
    unknown = await api.patch(path, json={"status": "PAUSED"})
    assert_envelope(unknown, 400, "PATCH", path)
    assert (await api.get(path)).json()["status"] == "INACTIVE"


async def test_delete_archives_and_an_archived_workflow_is_read_only(
    api: httpx.AsyncClient,
) -> None:
    me = user()
    workflow = await create(api, me, status="ACTIVE")
    path = f"/workflows/{workflow['id']}"

    deleted = await api.delete(path)

    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["status"] == "ARCHIVED"
    assert (await api.get(path)).json()["status"] == "ARCHIVED"
    assert (await listed(api, userId=me, status="ARCHIVED"))["total"] == 1
    for change in ({"name": "x"}, {"status": "ACTIVE"}, {"definition": simple()}):
        response = await api.patch(path, json=change)
        assert "archived" in assert_envelope(response, 409, "PATCH", path)["message"]
    again = await api.delete(path)
    assert again.status_code == 200
    assert again.json()["status"] == "ARCHIVED"
    assert (await api.get(f"{path}/versions")).status_code == 200
    execute = await api.post("/workflows/execute", json={"workflowId": workflow["id"]})
    assert_envelope(execute, 400, "POST", "/workflows/execute")


# Execute (what belongs to the workflow side of it)


async def test_only_an_active_workflow_can_be_executed(api: httpx.AsyncClient) -> None:
    me = user()
    draft = await create(api, me)

    response = await api.post(
        "/workflows/execute", params={"userId": me}, json={"workflow_id": draft["id"]}
    )

    body = assert_envelope(response, 400, "POST", "/workflows/execute")
    assert "ACTIVE" in body["message"]
    executions = await api.get("/workflows/executions", params={"workflowId": draft["id"]})
    assert executions.json()["total"] == 0


async def test_execute_of_an_unknown_workflow_is_a_404(api: httpx.AsyncClient) -> None:
    missing = str(uuid.uuid4())
    response = await api.post("/workflows/execute", json={"workflowId": missing, "input": {}})
    body = assert_envelope(response, 404, "POST", "/workflows/execute")
    assert body["message"] == f"Workflow {missing} not found"
    no_id = await api.post("/workflows/execute", json={"input": {}})
    assert_envelope(no_id, 400, "POST", "/workflows/execute")


# Bounds on stored values, summaries, and one timestamp format


async def test_a_config_nested_too_deep_is_refused_and_reads_keep_working(
    api: httpx.AsyncClient,
) -> None:
    me = user()
    deep = graph({"id": "deep", "type": "TRANSFORM", "config": {"template": nested(255)}})
    problem = {
        "path": "definition.nodes[1].config",
        "message": "config is nested deeper than MAX_VALUE_DEPTH (64 levels)",
    }

    response = await api.post(
        "/workflows", params={"userId": me}, json={"name": "deep", "definition": deep}
    )

    assert assert_envelope(response, 400, "POST", "/workflows")["details"] == [problem]
    assert (await listed(api, userId=me))["total"] == 0
    assert (await api.get("/workflows")).status_code == 200
    validated = await api.post("/workflows/validate", json={"definition": deep})
    assert validated.json() == {"valid": False, "problems": [problem]}
    workflow = await create(api, me)
    path = f"/workflows/{workflow['id']}"
    patched = await api.patch(path, json={"definition": deep})
    assert assert_envelope(patched, 400, "PATCH", path)["details"] == [problem]
    assert (await api.get(path)).json() == workflow
    at_the_bound = graph({"id": "t", "type": "TRANSFORM", "config": {"template": nested(63)}})
    kept = await api.patch(path, json={"definition": at_the_bound})
    assert kept.status_code == 200, kept.text
    assert kept.json()["definition"]["nodes"][1]["config"] == {"template": nested(63)}


async def test_an_input_nested_too_deep_is_refused_and_reads_keep_working(
    api: httpx.AsyncClient,
) -> None:
    me = user()
    workflow = await create(api, me, status="ACTIVE")

    response = await api.post(
        "/workflows/execute",
        params={"userId": me},
        json={"workflowId": workflow["id"], "input": nested(254)},
    )

    body = assert_envelope(response, 400, "POST", "/workflows/execute")
    assert body["message"] == "input is nested deeper than MAX_VALUE_DEPTH (64 levels)"
    everyone = await api.get("/workflows/executions")
    assert everyone.status_code == 200, everyone.text[:300]
    mine = await api.get("/workflows/executions", params={"workflowId": workflow["id"]})
    assert mine.json()["total"] == 0


async def test_the_execution_list_leaves_out_values_unless_included(
    api: httpx.AsyncClient,
) -> None:
    me = user()
    workflow = await create(api, me, status="ACTIVE")
    big = "v" * 100_000
    ids = []
    for _ in range(3):
        started = await api.post(
            "/workflows/execute",
            params={"userId": me},
            json={"workflowId": workflow["id"], "input": big},
        )
        assert started.status_code == 202, started.text[:300]
        ids.append(started.json()["id"])
    for execution_id in ids:
        assert (await wait_until(api, execution_id))["status"] == "COMPLETED"

    async def page(*include: str) -> httpx.Response:
        params = httpx.QueryParams([("userId", me), *(("include", i) for i in include)])
        response = await api.get("/workflows/executions", params=params)
        assert response.status_code == 200, response.text[:300]
        return response

    summary = await page()
    assert len(summary.content) < 20_000
    executions = summary.json()["executions"]
    assert [e["id"] for e in executions] == ids[::-1]
    for execution in executions:
        assert not {"input", "output"} & set(execution)
        assert execution["status"] == "COMPLETED"
        for node in execution["nodeExecutions"]:
            assert not {"input", "output", "attempts"} & set(node)
            assert (node["status"], node["retryCount"]) == ("COMPLETED", 0)
            parse_time(node["completedAt"])

    with_nodes = (await page("nodes")).json()["executions"][0]
    assert not {"input", "output"} & set(with_nodes)
    assert {n["nodeId"]: n["output"] for n in with_nodes["nodeExecutions"]}["shape"] == big
    assert all(len(n["attempts"]) == 1 for n in with_nodes["nodeExecutions"][1:-1])
    with_io = (await page("io")).json()["executions"][0]
    assert (with_io["input"], with_io["output"]) == (big, big)
    assert not {"input", "output", "attempts"} & set(with_io["nodeExecutions"][0])
    full = await api.get(f"/workflows/executions/{ids[-1]}")
    assert (await page("nodes,io")).json()["executions"][0] == full.json()
    assert (await page("io", "nodes")).json()["executions"][0] == full.json()

    for bad in ("everything", "nodes,bogus"):
        response = await api.get("/workflows/executions", params={"include": bad})
        body = assert_envelope(response, 400, "GET", "/workflows/executions")
        assert body["details"][0]["path"] == "include"
        assert body["details"][0]["in"] == "query"
        assert "expected nodes or io" in body["details"][0]["message"]


async def test_every_route_writes_times_alike_through_its_response_model(
    api: httpx.AsyncClient,
) -> None:
    me = user()
    workflow = await create(api, me, status="ACTIVE")
    started = await api.post(
        "/workflows/execute",
        params={"userId": me},
        json={"workflowId": workflow["id"], "input": {"n": 1}},
    )
    assert started.status_code == 202, started.text
    done = await wait_until(api, started.json()["id"])
    listed_one = (
        await api.get("/workflows/executions", params={"userId": me, "include": "nodes,io"})
    ).json()["executions"][0]
    events = (await api.get(f"/workflows/executions/{done['id']}/events")).json()["events"]
    schemas = (await api.get("/openapi.json")).json()["components"]["schemas"]

    times = [workflow["createdAt"], workflow["updatedAt"]]
    for execution in (started.json(), done, listed_one):
        assert set(execution) == set(schemas["ExecutionOut"]["properties"])
        times += [execution[k] for k in ("createdAt", "updatedAt", "deadlineAt")]
        for node in execution["nodeExecutions"]:
            assert set(node) == set(schemas["NodeExecutionOut"]["properties"])
            times += [a["startedAt"] for a in node["attempts"]]
    times += [done["startedAt"], done["completedAt"]]
    times += [e["data"]["timestamp"] for e in events]
    nodes = [n for e in events for n in e["data"].get("nodeExecutions", [])]
    times += [n["completedAt"] for n in nodes if n["status"] == "COMPLETED"]
    assert len(times) > 20
    for value in times:
        assert UTC_TIME.fullmatch(value), value
    assert listed_one == done
    required = set(schemas["ExecutionSummary"]["required"])
    assert {"id", "status", "nodeExecutions"} <= required
    assert not {"input", "output"} & required
    assert not {"input", "output", "attempts"} & set(schemas["NodeSummary"]["required"])


# Body limit


@pytest.mark.parametrize("size", [ONE_MIB + 1, 8 * ONE_MIB])
async def test_a_body_over_the_limit_with_content_length_is_a_413(
    api: httpx.AsyncClient, size: int
) -> None:
    payload = b'{"name": "' + b"x" * (size - 12) + b'"}'
    assert len(payload) == size
    response = await api.post(
        "/workflows", content=payload, headers={"content-type": "application/json"}
    )
    body = assert_envelope(response, 413, "POST", "/workflows")
    assert body["error"] in ("Content Too Large", "Request Entity Too Large")
    assert body["message"] == f"Request body is larger than {ONE_MIB} bytes"
    # The connection stays usable: the rest of the body was read and dropped.
    assert (await api.get("/health")).status_code == 200


async def test_a_chunked_body_over_the_limit_is_a_413(api: httpx.AsyncClient) -> None:
    me = user()
    chunk = b"x" * 65_536

    async def body() -> AsyncIterator[bytes]:
        yield b'{"name": "big", "definition": {"nodes": [], "edges": []}, "description": "'
        for _ in range(ONE_MIB // len(chunk) + 2):
            yield chunk
        yield b'"}'

    response = await api.post(
        "/workflows",
        params={"userId": me},
        content=body(),
        headers={"content-type": "application/json"},
    )

    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_envelope(response, 413, "POST", "/workflows")
    assert (await listed(api, userId=me))["total"] == 0


async def test_a_body_just_under_the_limit_is_read(api: httpx.AsyncClient) -> None:
    note = "y" * (ONE_MIB - 2_000)
    definition = graph(
        {"id": "big", "type": "TRANSFORM", "config": {"expression": "1", "note": note}}
    )
    response = await api.post("/workflows", json={"name": "fits", "definition": definition})
    assert len(response.request.content) <= ONE_MIB
    assert response.status_code == 201, response.text[:300]
    assert response.json()["definition"]["nodes"][1]["config"]["note"] == note


# Health and documentation


async def test_health_answers_in_the_seed_shape(api: httpx.AsyncClient) -> None:
    response = await api.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"status", "service", "timestamp"}
    assert body["status"] == "ok"
    assert body["service"] == "orchestration-service"
    stamp = parse_time(body["timestamp"])
    assert abs(dt.datetime.now(dt.UTC) - stamp) < dt.timedelta(minutes=1)


async def test_readiness_reports_the_database_and_the_runner(api: httpx.AsyncClient) -> None:
    response = await api.get("/health/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert {k: body[k] for k in ("status", "runner")} == {"status": "ok", "runner": "running"}
    assert body["checks"]["database"] == {"status": "up", "latencyMs": ANY, "gating": True}


async def test_openapi_and_docs_are_served(api: httpx.AsyncClient) -> None:
    spec = await api.get("/openapi.json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    for path, methods in {
        "/workflows": {"get", "post"},
        "/workflows/{workflow_id}": {"get", "patch", "delete"},
        "/workflows/{workflow_id}/versions": {"get"},
        "/workflows/validate": {"post"},
        "/workflows/execute": {"post"},
        "/workflows/executions": {"get"},
        "/workflows/executions/{execution_id}": {"get"},
        "/workflows/executions/{execution_id}/cancel": {"post"},
        "/health": {"get"},
        "/health/ready": {"get"},
    }.items():
        assert methods <= set(paths[path]), path
    create_body = paths["/workflows"]["post"]["requestBody"]["content"]["application/json"]
    assert create_body["schema"]

    docs = await api.get("/docs")
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "openapi.json" in docs.text


# Values and races that the database, not the models, would refuse


async def test_values_postgresql_cannot_store_are_a_400_not_a_500(api: httpx.AsyncClient) -> None:
    me = user()
    nul_name = await api.post(
        "/workflows", params={"userId": me}, json={"name": "a\x00b", "definition": simple()}
    )
    assert_envelope(nul_name, 400, "POST", "/workflows")
    nan_config = (
        b'{"name": "n", "definition": {"nodes": [{"id": "s", "type": "START", "config": '
        b'{"k": NaN}}, {"id": "e", "type": "END"}], "edges": [{"id": "x", "source": "s", '
        b'"target": "e"}]}}'
    )
    nan = await api.post(
        "/workflows",
        params={"userId": me},
        content=nan_config,
        headers={"content-type": "application/json"},
    )
    assert_envelope(nan, 400, "POST", "/workflows")
    # An id no row can hold names nothing: 404, as any unknown id.
    nul_id = await api.get("/workflows/%00")
    assert_envelope(nul_id, 404, "GET", "/workflows/\x00")
    nul_user = await api.get("/workflows", params={"userId": "a\x00"})
    assert_envelope(nul_user, 400, "GET", "/workflows")
    assert (await listed(api, userId=me))["total"] == 0

    workflow = await create(api, me, status="ACTIVE")
    nul_input = await api.post(
        "/workflows/execute", json={"workflowId": workflow["id"], "input": {"text": "\x00"}}
    )
    assert_envelope(nul_input, 400, "POST", "/workflows/execute")
    executions = await api.get("/workflows/executions", params={"workflowId": workflow["id"]})
    assert executions.json()["total"] == 0


async def test_concurrent_definition_changes_make_consecutive_versions(
    api: httpx.AsyncClient,
) -> None:
    workflow = await create(api, user())
    path = f"/workflows/{workflow['id']}"
    changes = [
        graph({"id": f"n{i}", "type": "TRANSFORM", "config": {"expression": str(i)}})
        for i in range(8)
    ]

    responses = await asyncio.gather(*(api.patch(path, json={"definition": c}) for c in changes))

    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 409}, [r.text for r in responses]
    accepted = statuses.count(200)
    assert accepted >= 1
    for response in responses:
        if response.status_code == 409:
            assert_envelope(response, 409, "PATCH", path)
    versions = (await api.get(f"{path}/versions")).json()["versions"]
    assert [v["version"] for v in versions] == list(range(1, accepted + 2))
    current = (await api.get(path)).json()
    assert current["definition"] == versions[-1]["definition"]


async def test_a_rename_racing_an_archive_never_revives_the_workflow(
    api: httpx.AsyncClient,
) -> None:
    for _ in range(5):
        workflow = await create(api, user(), status="ACTIVE")
        path = f"/workflows/{workflow['id']}"

        archive, *renames = await asyncio.gather(
            api.delete(path), *(api.patch(path, json={"name": f"r{i}"}) for i in range(4))
        )

        assert archive.status_code == 200, archive.text
        assert {r.status_code for r in renames} <= {200, 409}, [r.text for r in renames]
        assert (await api.get(path)).json()["status"] == "ARCHIVED"
