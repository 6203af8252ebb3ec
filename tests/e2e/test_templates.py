"""Templates end to end: every built-in template made into a workflow over HTTP, activated,
run against the stand-ins (its waits answered) to COMPLETED; parameter errors; users' own
templates seen only by their owner (AUTH_MODE=gateway); the repository on both databases."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.domain.templates import Parameter, Template
from orchestrator.domain.workflow import Definition, Edge, Node, NodeType
from orchestrator.infrastructure.db.templates import SqlTemplateRepository
from tests.databases import sync_database
from tests.flows import calls_for, chain, execute, node, nodes_by_id, wait_node, wait_until
from tests.processes import Process, base_url, running, service_process

BUILT_IN_IDS = {
    "agent-then-tool",
    "route-by-condition",
    "fan-out-join",
    "human-approval",
    "for-each-loop",
    "while-loop",
}
GATEWAY_SECRET = "templates-gateway-secret"
RUN = uuid.uuid4().hex[:8]
ALICE, BOB = f"alice-{RUN}", f"bob-{RUN}"


async def from_template(
    client: httpx.AsyncClient, template_id: str, **parameters: Any
) -> dict[str, Any]:
    """POST /workflows/from-template; returns the new workflow (asserting a 201)."""
    response = await client.post(
        "/workflows/from-template",
        json={"templateId": template_id, "name": f"from {template_id}", "parameters": parameters},
    )
    assert response.status_code == 201, response.text
    workflow: dict[str, Any] = response.json()
    return workflow


async def run_template(
    client: httpx.AsyncClient, template_id: str, data: Any, **parameters: Any
) -> str:
    """Make a workflow from the template, check it is a runnable DRAFT, activate it and start
    an execution; returns the execution id."""
    workflow = await from_template(client, template_id, **parameters)
    assert workflow["status"] == "DRAFT"
    assert workflow["problems"] == []
    assert workflow["definition"]["version"] == 1
    activated = await client.put(f"/workflows/{workflow['id']}", json={"status": "ACTIVE"})
    assert activated.status_code == 200, activated.text
    started = await execute(client, workflow["id"], data)
    execution_id: str = started["id"]
    return execution_id


async def completed(client: httpx.AsyncClient, execution_id: str) -> dict[str, Any]:
    done = await wait_until(client, execution_id, timeout=60)
    assert done["status"] == "COMPLETED", done
    return done


async def answer(
    client: httpx.AsyncClient, execution_id: str, node_id: str, reply: Any
) -> dict[str, Any]:
    """Wait until the node waits for a person, then answer it; returns the waiting node."""
    waiting = nodes_by_id(await wait_node(client, execution_id, node_id, "WAITING_INPUT"))
    response = await client.post(
        f"/workflows/executions/{execution_id}/nodes/{node_id}/resume", json={"input": reply}
    )
    assert response.status_code == 200, response.text
    return waiting[node_id]


# Every built-in template, run ------------------------------------------------------------


async def run_agent_then_tool(api: httpx.AsyncClient, calls: httpx.AsyncClient) -> None:
    execution_id = await run_template(api, "agent-then-tool", {"topic": f"tea-{RUN}"})
    done = await completed(api, execution_id)
    assert done["output"] == {"topic": f"tea-{RUN}"}
    agent_calls = await calls_for(calls, f"{execution_id}:agent")
    tool_calls = await calls_for(calls, f"{execution_id}:tool")
    assert [(c["service"], c["id"]) for c in agent_calls] == [("agent", "echo")]
    assert [(c["service"], c["id"]) for c in tool_calls] == [("tool", "echo")]


async def run_route_by_condition(api: httpx.AsyncClient, calls: httpx.AsyncClient) -> None:
    decisions = {}
    for threshold, expected in ((0, "accepted"), (1, "review")):
        execution_id = await run_template(
            api, "route-by-condition", {"case": RUN}, threshold=threshold
        )
        done = await completed(api, execution_id)
        assert done["output"]["decision"] == expected, done
        assert 0 <= done["output"]["score"] < 1
        skipped = "review" if expected == "accepted" else "accept"
        assert nodes_by_id(done)[skipped]["status"] == "SKIPPED"
        decisions[threshold] = done["output"]["decision"]
    assert decisions == {0: "accepted", 1: "review"}


async def run_fan_out_join(api: httpx.AsyncClient, calls: httpx.AsyncClient) -> None:
    execution_id = await run_template(api, "fan-out-join", {"q": RUN}, secondAgentId="scorer")
    done = await completed(api, execution_id)
    assert done["output"]["first"] == {"q": RUN}
    assert set(done["output"]["second"]) == {"score", "ok", "input"}
    second = await calls_for(calls, f"{execution_id}:second")
    assert [c["id"] for c in second] == ["scorer"]


async def run_human_approval(api: httpx.AsyncClient, calls: httpx.AsyncClient) -> None:
    approved = await run_template(
        api, "human-approval", {"title": "Q3"}, question="Publish {{title}}?"
    )
    ask = await answer(api, approved, "ask", "yes")
    assert ask["wait"]["prompt"] == "Publish Q3?"
    assert ask["wait"]["timeoutAt"] is not None
    done = await completed(api, approved)
    assert done["output"]["approved"] is True
    assert done["output"]["draft"] == {"title": "Q3"}
    assert done["output"]["response"] == "yes"
    assert len(await calls_for(calls, f"{approved}:publish")) == 1

    rejected = await run_template(api, "human-approval", {"title": "Q4"})
    ask = await answer(api, rejected, "ask", "not yet")
    assert ask["wait"]["prompt"] == 'Publish this draft? Answer "yes" to approve.'
    done = await completed(api, rejected)
    assert done["output"] == {"published": False, "response": "not yet"}
    assert nodes_by_id(done)["publish"]["status"] == "SKIPPED"

    expired = await run_template(api, "human-approval", {"title": "Q5"}, timeoutMs=1)
    done = await completed(api, expired)
    assert done["output"] == {"published": False, "reason": "nobody answered in time"}


async def run_for_each_loop(api: httpx.AsyncClient, calls: httpx.AsyncClient) -> None:
    items = [{"n": i, "run": RUN} for i in range(5)]
    execution_id = await run_template(api, "for-each-loop", {"items": items}, concurrency=2)
    done = await completed(api, execution_id)
    assert done["output"] == items
    handled = [n for n in done["nodeExecutions"] if n["nodeId"] == "handle"]
    assert sorted(n["iteration"] for n in handled) == [[i] for i in range(5)]


async def run_while_loop(api: httpx.AsyncClient, calls: httpx.AsyncClient) -> None:
    execution_id = await run_template(api, "while-loop", f"draft {RUN}", rounds=2)
    done = await completed(api, execution_id)
    assert done["output"] == {"round": 2, "draft": f"draft {RUN}"}
    refined = [n for n in done["nodeExecutions"] if n["nodeId"] == "refine"]
    assert sorted(n["iteration"] for n in refined) == [[0], [1]]
    assert sorted(n["input"]["round"] for n in refined) == [0, 1]


RUNS: dict[str, Callable[[httpx.AsyncClient, httpx.AsyncClient], Awaitable[None]]] = {
    "agent-then-tool": run_agent_then_tool,
    "route-by-condition": run_route_by_condition,
    "fan-out-join": run_fan_out_join,
    "human-approval": run_human_approval,
    "for-each-loop": run_for_each_loop,
    "while-loop": run_while_loop,
}


async def test_every_built_in_template_has_a_run_here(api: httpx.AsyncClient) -> None:
    response = await api.get("/templates")
    assert response.status_code == 200, response.text
    body = response.json()
    built_in = {t["id"] for t in body["templates"] if t["builtIn"]}
    assert built_in == BUILT_IN_IDS == set(RUNS)
    assert body["total"] == len(body["templates"])


@pytest.mark.parametrize("template_id", sorted(RUNS))
async def test_a_built_in_template_runs_to_completed_against_the_stand_ins(
    template_id: str, api: httpx.AsyncClient, calls: httpx.AsyncClient
) -> None:
    await RUNS[template_id](api, calls)


# The catalog and its errors --------------------------------------------------------------


async def test_the_catalog_answers_one_template_and_filters_by_category(
    api: httpx.AsyncClient,
) -> None:
    one = await api.get("/templates/human-approval")
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["builtIn"] is True
    assert body["userId"] is None
    assert body["category"]
    assert {p["name"]: (p["type"], p["required"]) for p in body["parameters"]} == {
        "agentId": ("string", False),
        "toolId": ("string", False),
        "question": ("string", False),
        "timeoutMs": ("number", False),
    }
    assert any(n["type"] == "PROMPT" for n in body["definition"]["nodes"])
    loops = (await api.get("/templates", params={"category": "loops"})).json()
    assert {t["id"] for t in loops["templates"]} == {"for-each-loop", "while-loop"}
    none = (await api.get("/templates", params={"category": f"nothing-{RUN}"})).json()
    assert none["templates"] == []
    assert none["total"] == 0
    paged = (await api.get("/templates", params={"limit": 2, "page": 2})).json()
    assert len(paged["templates"]) == 2
    assert paged["total"] >= len(BUILT_IN_IDS)


async def test_unknown_and_built_in_templates_answer_404_and_409(api: httpx.AsyncClient) -> None:
    missing = await api.get(f"/templates/nothing-{RUN}")
    assert missing.status_code == 404
    assert missing.json()["message"] == f"Template nothing-{RUN} not found"
    refused = await api.delete("/templates/agent-then-tool")
    assert refused.status_code == 409, refused.text
    assert "built in" in refused.json()["message"]
    assert (await api.get("/templates/agent-then-tool")).status_code == 200
    unknown = await api.post(
        "/workflows/from-template", json={"templateId": f"nothing-{RUN}", "name": "x"}
    )
    assert unknown.status_code == 404, unknown.text


@pytest.mark.parametrize(
    ("parameters", "paths", "words"),
    [
        ({"agentID": "echo"}, ["parameters.agentID"], "has no parameter 'agentID'"),
        ({"concurrency": "4"}, ["parameters.concurrency"], "must be a number, got string"),
        ({"agentId": 7, "collection": True}, ["parameters.agentId", "parameters.collection"], ""),
        (
            {"concurrency": 0, "agentId": "a/b"},
            ["definition.nodes[1].config.concurrency", "definition.nodes[2].config.agentId"],
            "make template for-each-loop's definition invalid",
        ),
    ],
)
async def test_bad_parameters_are_a_400_naming_them_and_nothing_is_stored(
    api: httpx.AsyncClient, parameters: dict[str, Any], paths: list[str], words: str
) -> None:
    name = f"refused-{uuid.uuid4().hex}"
    response = await api.post(
        "/workflows/from-template",
        json={"templateId": "for-each-loop", "name": name, "parameters": parameters},
    )
    assert response.status_code == 400, response.text
    body = response.json()
    assert words in body["message"] or any(words in p["message"] for p in body["details"])
    assert sorted(p["path"] for p in body["details"]) == sorted(paths)
    listed = await api.get("/workflows", params={"limit": 100})
    assert name not in listed.text


async def test_a_workflow_from_a_template_is_an_ordinary_editable_draft(
    api: httpx.AsyncClient,
) -> None:
    response = await api.post(
        "/workflows/from-template",
        json={
            "templateId": "agent-then-tool",
            "name": "mine",
            "description": "my words",
            "parameters": {"agentId": "writer", "toolId": "search"},
        },
    )
    assert response.status_code == 201, response.text
    workflow = response.json()
    assert workflow["name"] == "mine"
    assert workflow["description"] == "my words"
    configs = {n["id"]: n["config"] for n in workflow["definition"]["nodes"]}
    assert configs["agent"] == {"agentId": "writer"}
    assert configs["tool"] == {"toolId": "search"}
    fetched = await api.get(f"/workflows/{workflow['id']}")
    assert fetched.json()["definition"] == workflow["definition"]
    edited = await api.put(
        f"/workflows/{workflow['id']}/nodes/agent", json={"config": {"agentId": "echo"}}
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["definition"]["version"] == 2


# Users' own templates (AUTH_MODE=gateway) ---------------------------------------------------


@pytest.fixture(scope="module")
def gateway_service(template_database: str, standin: str) -> Iterator[Process]:
    with (
        sync_database(template_database) as url,
        running(
            service_process(url, standin, AUTH_MODE="gateway", GATEWAY_SHARED_SECRET=GATEWAY_SECRET)
        ) as process,
    ):
        yield process


@dataclass
class Users:
    alice: httpx.AsyncClient
    bob: httpx.AsyncClient


@pytest.fixture
async def users(gateway_service: Process) -> AsyncIterator[Users]:
    def client(user: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=base_url(gateway_service),
            headers={"X-Gateway-Secret": GATEWAY_SECRET, "X-User-Id": user},
            timeout=30,
        )

    async with client(ALICE) as alice, client(BOB) as bob:
        yield Users(alice, bob)


async def alices_template(alice: httpx.AsyncClient) -> tuple[str, dict[str, Any]]:
    """Alice's workflow (an AGENT whose agentId is a placeholder) and her template of it."""
    definition = chain(node("work", "AGENT", agentId="{{agent}}"))
    created = await alice.post(
        "/workflows", json={"name": "alice's", "description": "hers", "definition": definition}
    )
    assert created.status_code == 201, created.text
    workflow_id = created.json()["id"]
    saved = await alice.post(
        f"/workflows/{workflow_id}/template",
        json={
            "category": f"mine-{RUN}",
            "parameters": [{"name": "agent", "type": "string", "default": "echo"}],
        },
    )
    assert saved.status_code == 201, saved.text
    template: dict[str, Any] = saved.json()
    return workflow_id, template


async def test_a_users_template_is_theirs_alone(users: Users) -> None:
    workflow_id, template = await alices_template(users.alice)
    assert template["builtIn"] is False
    assert template["userId"] == ALICE
    assert template["sourceWorkflowId"] == workflow_id
    assert (template["name"], template["description"]) == ("alice's", "hers")
    assert template["parameters"] == [
        {"name": "agent", "type": "string", "description": "", "required": False, "default": "echo"}
    ]
    template_id = template["id"]

    listed = (await users.alice.get("/templates", params={"category": f"mine-{RUN}"})).json()
    assert [t["id"] for t in listed["templates"]] == [template_id]
    across = (await users.alice.get("/templates", params={"limit": 5, "page": 2})).json()
    assert [t["id"] for t in across["templates"][:2]] == ["while-loop", template_id]
    assert (await users.alice.get(f"/templates/{template_id}")).status_code == 200

    bobs_list = await users.bob.get("/templates", params={"limit": 100})
    assert bobs_list.status_code == 200
    assert template_id not in bobs_list.text
    assert {t["id"] for t in bobs_list.json()["templates"]} == BUILT_IN_IDS
    for response in (
        await users.bob.get(f"/templates/{template_id}"),
        await users.bob.delete(f"/templates/{template_id}"),
        await users.bob.post(
            "/workflows/from-template", json={"templateId": template_id, "name": "stolen"}
        ),
        await users.bob.post(f"/workflows/{workflow_id}/template", json={}),
    ):
        assert response.status_code == 404, response.text

    made = await users.alice.post(
        "/workflows/from-template",
        json={"templateId": template_id, "name": "again", "parameters": {"agent": "scorer"}},
    )
    assert made.status_code == 201, made.text
    assert made.json()["userId"] == ALICE
    assert nodes_of(made.json())["work"]["config"] == {"agentId": "scorer"}
    assert (await users.bob.get(f"/workflows/{made.json()['id']}")).status_code == 404

    deleted = await users.alice.delete(f"/templates/{template_id}")
    assert deleted.status_code == 204, deleted.text
    assert (await users.alice.get(f"/templates/{template_id}")).status_code == 404


async def test_a_users_template_runs_like_a_built_in_one(users: Users) -> None:
    _, template = await alices_template(users.alice)
    execution_id = await run_template(users.alice, template["id"], {"x": RUN}, agent="instant")
    done = await completed(users.alice, execution_id)
    assert done["output"] == {"x": RUN}


async def test_declared_parameters_are_checked_when_saving(users: Users) -> None:
    created = await users.alice.post(
        "/workflows",
        json={"name": "plain", "definition": chain(node("a", "AGENT", agentId="echo"))},
    )
    workflow_id = created.json()["id"]
    refused = await users.alice.post(
        f"/workflows/{workflow_id}/template",
        json={"parameters": [{"name": "agentId", "type": "string"}], "name": "x" * 201},
    )
    assert refused.status_code == 400, refused.text
    refused = await users.alice.post(
        f"/workflows/{workflow_id}/template",
        json={"parameters": [{"name": "agentId", "type": "string"}]},
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["details"] == [
        {
            "path": "parameters[0].name",
            "message": "the definition has no placeholder {{agentId}} to fill",
        }
    ]
    listed = (await users.alice.get("/templates", params={"limit": 100})).json()
    assert all(t["sourceWorkflowId"] != workflow_id for t in listed["templates"])


def nodes_of(workflow: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n["id"]: n for n in workflow["definition"]["nodes"]}


# The repository, on PostgreSQL and SQLite ---------------------------------------------------


async def test_the_repository_keeps_templates_on_both_databases(engine: AsyncEngine) -> None:
    repository = SqlTemplateRepository(engine)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    definition = Definition(
        nodes=(Node("s", NodeType.START), Node("e", NodeType.END, name="{{label}}")),
        edges=(Edge("s->e", "s", "e"),),
    )

    def template(n: int, owner: str, category: str | None) -> Template:
        return Template(
            id=str(uuid.uuid4()),
            name=f"t{n}",
            description=None,
            category=category,
            parameters=(Parameter("label", "string", "the end's name", "done"),),
            definition=definition,
            user_id=owner,
            source_workflow_id=str(uuid.uuid4()),
            created_at=now + dt.timedelta(minutes=n),
        )

    made = [template(0, "a", "x"), template(1, "a", None), template(2, "b", "x")]
    for item in made:
        await repository.add(item)
    assert await repository.get(made[0].id) == made[0]
    assert await repository.get(str(uuid.uuid4())) is None
    page, total = await repository.list_page("a", None, 0, 10)
    assert ([t.name for t in page], total) == (["t1", "t0"], 2)
    page, total = await repository.list_page(None, "x", 1, 10)
    assert ([t.name for t in page], total) == (["t0"], 2)
    assert await repository.list_page(None, None, 0, 0) == ([], 3)
    assert await repository.delete(made[1].id) is True
    assert await repository.delete(made[1].id) is False
    assert await repository.get(made[1].id) is None
