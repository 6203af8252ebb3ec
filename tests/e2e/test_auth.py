"""Authentication end to end: a real service per AUTH_MODE; who may reach which route.

jwt (HS256 with an audience): users A and B x every route x {own, other's, missing, no token,
expired, forged signature, wrong audience, alg none}. Another user's workflow or execution
answers 404 exactly like a missing one; nothing of B's ever shows in what A gets.
gateway (with a shared secret): a smaller matrix. Socket.IO handshakes and subscriptions.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
import socketio

from tests.databases import sync_database
from tests.flows import chain, node, wait_node
from tests.live import NAMESPACE, LiveClient, live
from tests.processes import Process, base_url, running, service_process

SECRET = "e2e-secret-" + "k" * 64
AUDIENCE = "orchestrator"
LEEWAY = 3  # JWT_LEEWAY_SECONDS of the jwt service
GATEWAY_SECRET = "gateway-secret"
ENVELOPE_KEYS = {"statusCode", "error", "message", "path", "method", "timestamp"}
RUN = uuid.uuid4().hex[:8]
ALICE, BOB, ROOT = f"alice-{RUN}", f"bob-{RUN}", f"root-{RUN}"
WAITING = chain(node("ask", "PROMPT", prompt="ok?"))
ASK_EDGE = "ask->end"


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(user: str, expires_in: float = 3600, **extra: Any) -> dict[str, Any]:
    return {"sub": user, "aud": AUDIENCE, "exp": int(time.time() + expires_in), **extra}


def token(user: str, expires_in: float = 3600, key: str = SECRET, **extra: Any) -> str:
    return jwt.encode(claims(user, expires_in, **extra), key, algorithm="HS256")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


# What each failing credential sends (all of them for ALICE).
BAD_CREDENTIALS: dict[str, Any] = {
    "no token": dict,
    "expired token": lambda: bearer(token(ALICE, expires_in=-3600)),
    "forged signature": lambda: bearer(token(ALICE, key="not-the-secret-" + "z" * 64)),
    "wrong audience": lambda: bearer(token(ALICE, aud="another-service")),
    "alg none": lambda: bearer(f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims(ALICE))}."),
}


@dataclass(frozen=True)
class Owned:
    """A user's workflow (START -> ask (PROMPT) -> END) and an execution waiting at `ask`."""

    workflow_id: str
    execution_id: str


async def make_owned(client: httpx.AsyncClient) -> Owned:
    response = await client.post(
        "/workflows", json={"name": "auth", "definition": WAITING, "status": "ACTIVE"}
    )
    assert response.status_code == 201, response.text
    workflow_id = response.json()["id"]
    response = await client.post("/workflows/execute", json={"workflowId": workflow_id})
    assert response.status_code == 202, response.text
    execution_id = response.json()["id"]
    await wait_node(client, execution_id, "ask", "WAITING_INPUT")
    return Owned(workflow_id, execution_id)


@dataclass(frozen=True)
class Route:
    """A route; `{w}` and `{e}` in its path and body stand for a workflow and an execution."""

    name: str
    method: str
    path: str
    body: Any = None
    own: int = 200  # the status when the caller owns the target
    targeted: bool = True  # names a workflow or execution

    def request(self, workflow_id: str, execution_id: str) -> tuple[str, Any]:
        def fill(text: str) -> str:
            return text.replace("{w}", workflow_id).replace("{e}", execution_id)

        body = None if self.body is None else json.loads(fill(json.dumps(self.body)))
        return fill(self.path), body


ROUTES = [
    Route("create", "POST", "/workflows", {"name": "n", "definition": WAITING}, 201, False),
    Route("list", "GET", "/workflows", targeted=False),
    Route("get", "GET", "/workflows/{w}"),
    Route("patch", "PATCH", "/workflows/{w}", {"name": "renamed"}),
    Route("put", "PUT", "/workflows/{w}", {"description": "changed"}),
    Route("archive", "DELETE", "/workflows/{w}"),
    Route("versions", "GET", "/workflows/{w}/versions"),
    Route(
        "add node",
        "POST",
        "/workflows/{w}/nodes",
        {"id": "extra", "type": "PROMPT", "config": {"prompt": "more?"}},
        201,
    ),
    Route("change node", "PUT", "/workflows/{w}/nodes/ask", {"config": {"prompt": "sure?"}}),
    Route("delete node", "DELETE", "/workflows/{w}/nodes/ask", own=204),
    Route(
        "add edge",
        "POST",
        "/workflows/{w}/edges",
        {"id": "skip", "source": "start", "target": "end"},
        201,
    ),
    Route("delete edge", "DELETE", f"/workflows/{{w}}/edges/{ASK_EDGE}", own=204),
    Route("execute", "POST", "/workflows/execute", {"workflowId": "{w}", "input": 1}, 202),
    Route("execute by id", "POST", "/workflows/{w}/execute", {"input": 1}, 202),
    Route("executions", "GET", "/workflows/executions", targeted=False),
    Route("execution", "GET", "/workflows/executions/{e}"),
    Route("cancel", "POST", "/workflows/executions/{e}/cancel", own=204),
    Route("retry", "POST", "/workflows/executions/{e}/retry", own=409),  # it is not FAILED
    Route("events", "GET", "/workflows/executions/{e}/events"),
    Route("resume", "POST", "/workflows/executions/{e}/nodes/ask/resume", {"input": "yes"}),
    Route("history", "GET", "/workflows/{w}/executions"),
]
TARGETED = [r for r in ROUTES if r.targeted]
# Edits that leave the definition invalid, which an ACTIVE workflow refuses (400).
STRUCTURAL = {"add node", "delete node", "delete edge"}


def assert_envelope(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) >= ENVELOPE_KEYS, body
    assert body["statusCode"] == status
    assert body["path"] == response.request.url.path
    assert body["method"] == response.request.method
    return body


def assert_nothing_of(owned: Owned, response: httpx.Response) -> None:
    """Nothing in the body names `owned`'s ids (but the echo of the request's own path)."""
    body = response.json() if response.content else None
    if isinstance(body, dict) and "path" in body and "statusCode" in body:
        body = {k: v for k, v in body.items() if k != "path"}
    text = json.dumps(body)
    assert owned.workflow_id not in text, response.text
    assert owned.execution_id not in text, response.text


# The jwt service ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jwt_service(template_database: str, standin: str) -> Iterator[Process]:
    with (
        sync_database(template_database) as url,
        running(
            service_process(
                url,
                standin,
                AUTH_MODE="jwt",
                JWT_SECRET=SECRET,
                JWT_AUDIENCE=AUDIENCE,
                JWT_LEEWAY_SECONDS=str(LEEWAY),
                ADMIN_CLAIM="roles",
                ADMIN_VALUE="admin",
            )
        ) as process,
    ):
        yield process


def client_for(process: Process, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url(process), headers=headers or {}, timeout=30)


@pytest.fixture(scope="module")
async def alice(jwt_service: Process) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(jwt_service, bearer(token(ALICE))) as client:
        yield client


@pytest.fixture(scope="module")
async def bob(jwt_service: Process) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(jwt_service, bearer(token(BOB))) as client:
        yield client


@pytest.fixture(scope="module")
async def anonymous(jwt_service: Process) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(jwt_service) as client:
        yield client


@pytest.fixture(scope="module")
async def alices(alice: httpx.AsyncClient) -> Owned:
    """ALICE's shared workflow and execution: the target of every refused credential."""
    return await make_owned(alice)


@pytest.fixture(scope="module")
async def bobs(bob: httpx.AsyncClient) -> Owned:
    """BOB's workflow and execution: what ALICE tries to reach."""
    return await make_owned(bob)


async def send(
    client: httpx.AsyncClient,
    route: Route,
    target: Owned,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    path, body = route.request(target.workflow_id, target.execution_id)
    return await client.request(route.method, path, json=body, headers=headers)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
async def test_own(route: Route, alice: httpx.AsyncClient, alices: Owned, bobs: Owned) -> None:
    # A fresh target of ALICE's own: the route changes it.
    target = await make_owned(alice)
    if route.name in STRUCTURAL:
        # Off ACTIVE, so that the definition may be incomplete for a while.
        response = await alice.patch(
            f"/workflows/{target.workflow_id}", json={"status": "INACTIVE"}
        )
        assert response.status_code == 200, response.text
    response = await send(alice, route, target)
    assert response.status_code == route.own, response.text
    assert_nothing_of(bobs, response)


@pytest.mark.parametrize("route", TARGETED, ids=lambda r: r.name)
async def test_other_users_answers_like_missing(
    route: Route, alice: httpx.AsyncClient, alices: Owned, bobs: Owned
) -> None:
    other = await send(alice, route, bobs)
    missing_target = Owned(str(uuid.uuid4()), str(uuid.uuid4()))
    missing = await send(alice, route, missing_target)
    other_body = assert_envelope(other, 404)
    missing_body = assert_envelope(missing, 404)

    def shape(body: dict[str, Any], target: Owned) -> dict[str, Any]:
        text = json.dumps({k: body[k] for k in ("statusCode", "error", "message")})
        text = text.replace(target.workflow_id, "ID").replace(target.execution_id, "ID")
        result: dict[str, Any] = json.loads(text)
        return result

    assert shape(other_body, bobs) == shape(missing_body, missing_target)
    assert set(other.headers) - {"date", "content-length"} == set(missing.headers) - {
        "date",
        "content-length",
    }


@pytest.mark.parametrize("credentials", list(BAD_CREDENTIALS), ids=str)
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.name)
async def test_refused_credentials(
    route: Route,
    credentials: str,
    anonymous: httpx.AsyncClient,
    alices: Owned,
    bobs: Owned,
) -> None:
    response = await send(anonymous, route, alices, BAD_CREDENTIALS[credentials]())
    body = assert_envelope(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    assert body["error"]
    assert_nothing_of(alices, response)
    assert_nothing_of(bobs, response)


async def test_nothing_refused_changed_anything(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient, alices: Owned, bobs: Owned
) -> None:
    """After the matrix: the shared workflows and executions are as they were made."""
    for client, owned in ((alice, alices), (bob, bobs)):
        workflow = (await client.get(f"/workflows/{owned.workflow_id}")).json()
        assert workflow["name"] == "auth"
        assert workflow["status"] == "ACTIVE"
        assert workflow.get("description") in (None, "")
        versions = (await client.get(f"/workflows/{owned.workflow_id}/versions")).json()
        assert len(versions["versions"]) == 1, versions
        execution = (await client.get(f"/workflows/executions/{owned.execution_id}")).json()
        assert execution["status"] == "RUNNING"
        states = {n["nodeId"]: n["status"] for n in execution["nodeExecutions"]}
        assert states["ask"] == "WAITING_INPUT"
        history = (await client.get(f"/workflows/{owned.workflow_id}/executions")).json()
        assert history["total"] == 1, history


async def test_lists_show_only_the_callers_own(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient, alices: Owned, bobs: Owned
) -> None:
    for client, mine, theirs in ((alice, alices, bobs), (bob, bobs, alices)):
        workflows = await client.get("/workflows", params={"limit": 100})
        assert workflows.status_code == 200
        assert mine.workflow_id in {w["id"] for w in workflows.json()["workflows"]}
        assert_nothing_of(theirs, workflows)
        executions = await client.get("/workflows/executions", params={"limit": 100})
        assert executions.status_code == 200
        assert mine.execution_id in executions.text
        assert_nothing_of(theirs, executions)
        narrowed = await client.get(
            "/workflows/executions", params={"workflowId": theirs.workflow_id}
        )
        assert narrowed.status_code == 200
        assert narrowed.json()["total"] == 0
        assert_nothing_of(theirs, narrowed)


async def test_a_user_id_other_than_the_tokens_is_forbidden(alice: httpx.AsyncClient) -> None:
    assert (await alice.get("/workflows", params={"userId": ALICE})).status_code == 200
    response = await alice.get("/workflows", params={"userId": BOB})
    assert_envelope(response, 403)


async def test_health_stays_open_and_validate_needs_a_caller(
    anonymous: httpx.AsyncClient,
) -> None:
    assert (await anonymous.get("/health")).status_code == 200
    assert (await anonymous.get("/health/ready")).status_code == 200
    response = await anonymous.post("/workflows/validate", json={"definition": WAITING})
    # It stores nothing, but compiling expressions costs CPU: only for callers.
    assert response.status_code == 401, response.text


async def test_idempotency_keys_are_per_user(
    alice: httpx.AsyncClient, bob: httpx.AsyncClient, alices: Owned, bobs: Owned
) -> None:
    key = {"Idempotency-Key": f"same-{RUN}"}
    first = await alice.post(
        "/workflows/execute", json={"workflowId": alices.workflow_id}, headers=key
    )
    again = await alice.post(
        "/workflows/execute", json={"workflowId": alices.workflow_id}, headers=key
    )
    bobs_run = await bob.post(
        "/workflows/execute", json={"workflowId": bobs.workflow_id}, headers=key
    )
    assert first.status_code == again.status_code == bobs_run.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert bobs_run.json()["id"] != first.json()["id"]
    assert bobs_run.json()["workflowId"] == bobs.workflow_id
    for client, response in ((alice, first), (bob, bobs_run)):
        await client.post(f"/workflows/executions/{response.json()['id']}/cancel")


async def test_an_admin_reads_everything_but_changes_only_their_own(
    jwt_service: Process, bobs: Owned
) -> None:
    async with client_for(jwt_service, bearer(token(ROOT, roles=["admin"]))) as root:
        assert (await root.get(f"/workflows/{bobs.workflow_id}")).status_code == 200
        execution = await root.get(f"/workflows/executions/{bobs.execution_id}")
        assert execution.status_code == 200
        listed = await root.get("/workflows", params={"limit": 100})
        assert bobs.workflow_id in listed.text
        response = await root.patch(f"/workflows/{bobs.workflow_id}", json={"name": "mine"})
        assert_envelope(response, 404)
        response = await root.post(f"/workflows/executions/{bobs.execution_id}/cancel")
        assert_envelope(response, 404)


# Socket.IO in jwt mode ----------------------------------------------------------------------


async def refused_handshake(url: str, **connect: Any) -> None:
    client = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(
            url, namespaces=[NAMESPACE], transports=["websocket"], wait_timeout=10, **connect
        )
    await client.disconnect()


async def test_a_handshake_without_a_valid_token_is_refused(jwt_service: Process) -> None:
    url = base_url(jwt_service)
    await refused_handshake(url)
    for credentials in BAD_CREDENTIALS.values():
        await refused_handshake(url, headers=credentials())
    expired = token(ALICE, expires_in=-3600)
    await refused_handshake(url, auth={"token": expired})
    await refused_handshake(f"{url}?token={expired}")


async def subscribe_answer(client: LiveClient, execution_id: str) -> tuple[Any, list[Any]]:
    """The ack of a subscribe and the `error` events it brought."""
    before = len(client.received)
    ack = await client.call("subscribe", {"executionId": execution_id})
    if not (isinstance(ack, dict) and ack.get("ok")):
        await client.wait_for(lambda r: r.name == "error" and r in client.received[before:])
    return ack, [r.data for r in client.received[before:] if r.name == "error"]


async def test_subscriptions_reach_only_the_callers_own(
    jwt_service: Process, alices: Owned, bobs: Owned
) -> None:
    async with live(base_url(jwt_service), bearer(token(ALICE))) as client:
        ack = await client.call("subscribe", {"executionId": alices.execution_id})
        assert ack["ok"] is True, ack
        for execution_id in (bobs.execution_id, str(uuid.uuid4())):
            ack, errors = await subscribe_answer(client, execution_id)
            message = f"Execution {execution_id} not found"
            assert ack == {"ok": False, "error": message}
            assert errors == [{"event": "subscribe", "executionId": execution_id, "error": message}]
        ack = await client.call("join", {"executionId": bobs.execution_id})
        assert ack == {"ok": False, "error": f"Execution {bobs.execution_id} not found"}
        assert not client.named("execution:update", execution_id=bobs.execution_id)


async def test_the_token_may_come_in_auth_or_the_query(jwt_service: Process, alices: Owned) -> None:
    url = base_url(jwt_service)
    for target, connect in (
        (url, {"auth": {"token": token(ALICE)}}),
        (f"{url}?token={token(ALICE)}", {}),
    ):
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(
            target, namespaces=[NAMESPACE], transports=["websocket"], wait_timeout=10, **connect
        )
        try:
            ack = await client.call(
                "subscribe", {"executionId": alices.execution_id}, namespace=NAMESPACE, timeout=15
            )
            assert ack["ok"] is True, ack
        finally:
            await client.disconnect()


async def test_a_token_that_expires_while_connected(
    jwt_service: Process, alice: httpx.AsyncClient
) -> None:
    first, second = await make_owned(alice), await make_owned(alice)
    short = claims(ALICE, expires_in=3)
    async with live(base_url(jwt_service), bearer(jwt.encode(short, SECRET))) as client:
        await client.subscribe(first.execution_id)
        # Wait for the condition itself: the token no longer holds, leeway included.
        await asyncio.sleep(max(0.0, short["exp"] + LEEWAY + 0.5 - time.time()))
        assert (
            await alice.get("/workflows", headers=bearer(jwt.encode(short, SECRET)))
        ).status_code == 401
        ack, _ = await subscribe_answer(client, second.execution_id)
        assert ack["ok"] is False
        assert "expired" in ack["error"]
        # What it followed goes on.
        resumed = await alice.post(
            f"/workflows/executions/{first.execution_id}/nodes/ask/resume", json={"input": "y"}
        )
        assert resumed.status_code == 200, resumed.text
        finished = await client.wait_finished(first.execution_id)
        assert finished.data["status"] == "COMPLETED"


async def test_a_token_within_the_leeway_may_subscribe(jwt_service: Process, alices: Owned) -> None:
    within = token(ALICE, expires_in=-1)  # expired a second ago; the leeway is LEEWAY s
    async with client_for(jwt_service, bearer(within)) as client:
        assert (await client.get(f"/workflows/{alices.workflow_id}")).status_code == 200
    async with live(base_url(jwt_service), bearer(within)) as live_client:
        ack = await live_client.call("subscribe", {"executionId": alices.execution_id})
        assert ack["ok"] is True, ack


# The gateway service ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway_service(template_database: str, standin: str) -> Iterator[Process]:
    with (
        sync_database(template_database) as url,
        running(
            service_process(url, standin, AUTH_MODE="gateway", GATEWAY_SHARED_SECRET=GATEWAY_SECRET)
        ) as process,
    ):
        yield process


@pytest.fixture(scope="module")
async def via_gateway(gateway_service: Process) -> AsyncIterator[httpx.AsyncClient]:
    """A client that sends the shared secret; each request names its user."""
    headers = {"X-Gateway-Secret": GATEWAY_SECRET}
    async with client_for(gateway_service, headers) as client:
        yield client


@pytest.fixture(scope="module")
async def gateway_owned(via_gateway: httpx.AsyncClient) -> dict[str, Owned]:
    owned = {}
    for user in (ALICE, BOB):
        via_gateway.params = httpx.QueryParams({"userId": user})
        owned[user] = await make_owned(via_gateway)
    via_gateway.params = httpx.QueryParams()
    return owned


GATEWAY_ROUTES = [r for r in TARGETED if r.method == "GET"] + [
    r for r in TARGETED if r.name in ("patch", "cancel", "resume")
]
GATEWAY_CASES = {
    # case: (user the target belongs to, query userId, headers, status)
    "own": (ALICE, {"userId": ALICE}, {}, 200),
    "own by header": (ALICE, {}, {"X-User-Id": ALICE}, 200),
    "other": (BOB, {"userId": ALICE}, {}, 404),
    "missing": (None, {"userId": ALICE}, {}, 404),
    "no userId": (ALICE, {}, {}, 401),
    "header and query differ": (ALICE, {"userId": ALICE}, {"X-User-Id": BOB}, 403),
    "secret wrong": (ALICE, {"userId": ALICE}, {"X-Gateway-Secret": "wrong"}, 401),
}


@pytest.mark.parametrize("case", list(GATEWAY_CASES), ids=str)
@pytest.mark.parametrize("route", GATEWAY_ROUTES, ids=lambda r: r.name)
async def test_gateway(
    route: Route,
    case: str,
    via_gateway: httpx.AsyncClient,
    gateway_owned: dict[str, Owned],
) -> None:
    owner, params, headers, status = GATEWAY_CASES[case]
    if owner is None:
        target = Owned(str(uuid.uuid4()), str(uuid.uuid4()))
    elif status == 200 and route.method != "GET":
        # A change: on a fresh target of ALICE's.
        via_gateway.params = httpx.QueryParams({"userId": ALICE})
        target = await make_owned(via_gateway)
        via_gateway.params = httpx.QueryParams()
    else:
        target = gateway_owned[owner]
    path, body = route.request(target.workflow_id, target.execution_id)
    response = await via_gateway.request(
        route.method, path, params=params, json=body, headers=headers
    )
    expected = route.own if status == 200 else status
    if status == 200:
        assert response.status_code == expected, response.text
    else:
        assert_envelope(response, expected)
    if owner == BOB:
        message = assert_envelope(response, 404)["message"]
        assert message.endswith(" not found"), message
    else:
        assert_nothing_of(gateway_owned[BOB], response)


async def test_gateway_without_the_secret_is_refused(gateway_service: Process) -> None:
    async with client_for(gateway_service) as client:
        response = await client.get("/workflows", params={"userId": ALICE})
        assert_envelope(response, 401)
        assert (await client.get("/health")).status_code == 200


async def test_gateway_lists_show_only_the_users_own(
    via_gateway: httpx.AsyncClient, gateway_owned: dict[str, Owned]
) -> None:
    response = await via_gateway.get("/workflows", params={"userId": ALICE, "limit": 100})
    assert gateway_owned[ALICE].workflow_id in response.text
    assert_nothing_of(gateway_owned[BOB], response)
    response = await via_gateway.get(
        "/workflows/executions", params={"userId": ALICE, "limit": 100}
    )
    assert gateway_owned[ALICE].execution_id in response.text
    assert_nothing_of(gateway_owned[BOB], response)


async def test_gateway_handshakes(
    gateway_service: Process, gateway_owned: dict[str, Owned]
) -> None:
    url = base_url(gateway_service)
    secret = {"X-Gateway-Secret": GATEWAY_SECRET}
    await refused_handshake(url, headers=secret)  # no user
    await refused_handshake(f"{url}?userId={ALICE}")  # no secret
    async with live(f"{url}?userId={ALICE}", secret) as client:
        await client.subscribe(gateway_owned[ALICE].execution_id)
        ack, _ = await subscribe_answer(client, gateway_owned[BOB].execution_id)
        assert ack == {
            "ok": False,
            "error": f"Execution {gateway_owned[BOB].execution_id} not found",
        }
