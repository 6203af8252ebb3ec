"""Webhooks end to end: a real service process on PostgreSQL with the stand-ins, over HTTP.

Managing webhooks (create, list, get, patch, rotate, revoke), deliveries to POST /hooks/{token}
(the input's shape, signatures good, bad, missing, stale and replayed, Idempotency-Key, body
limits, archived workflows) and, in AUTH_MODE=gateway, who sees what and whose the executions
are.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.databases import sync_database
from tests.flows import chain, create_active, get_execution, node, wait_until
from tests.processes import Process, base_url, running, service_process

DOUBLE = chain(node("double", "TRANSFORM", expression="{'n': input.body.n * 2}"))
MAX_BODY_BYTES = 1_048_576  # the service's default
SECRET = "s3cret-" + "x" * 20
GATEWAY_SECRET = "webhooks-gateway-secret"
PER_MINUTE = 3


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """X-Signature-256 as a sender computes it."""
    message = body if timestamp is None else f"{timestamp}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


async def create_hook(client: httpx.AsyncClient, workflow_id: str, **fields: Any) -> dict[str, Any]:
    """POST /workflows/{id}/webhooks; returns the 201 body."""
    response = await client.post(f"/workflows/{workflow_id}/webhooks", json=fields)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def deliver(
    client: httpx.AsyncClient,
    url: str,
    payload: Any = None,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
) -> httpx.Response:
    """POST to a webhook's URL: `payload` as JSON, or `content` as it is."""
    if content is None and payload is not None:
        content = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    return await client.post(url, content=content, headers=headers or {})


async def run_count(client: httpx.AsyncClient, workflow_id: str) -> int:
    """How many executions the workflow has."""
    response = await client.get(f"/workflows/{workflow_id}/executions")
    assert response.status_code == 200, response.text
    total: int = response.json()["total"]
    return total


async def test_a_delivery_runs_the_workflow_on_its_body_headers_and_query(
    api: httpx.AsyncClient,
) -> None:
    workflow_id = await create_active(api, DOUBLE)
    hook = await create_hook(api, workflow_id, name="github")
    token = hook["token"]
    assert hook["url"] == f"/hooks/{token}"
    assert len(token) >= 40
    assert hook["tokenHint"] == token[:8]
    assert (hook["workflowId"], hook["name"], hook["enabled"]) == (workflow_id, "github", True)
    assert hook["hasSecret"] is False
    assert "secret" not in hook
    assert hook["lastUsedAt"] is None

    response = await deliver(
        api,
        hook["url"] + "?ref=main&tag=a&tag=b",
        {"n": 21},
        {
            "User-Agent": "GitHub-Hookshot/1",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": "d-1",
            "X-Request-ID": "req-1",
            "Authorization": "Bearer hidden",
            "Cookie": "session=hidden",
            "X-Signature-256": "sha256=hidden",
            "X-Hub-Signature": "sha1=hidden",
            "X-Forwarded-For": "10.0.0.1",
            "X-Real-IP": "10.0.0.1",
            "X-Api-Key": "hidden",
            "X-Gateway-Secret": "hidden",
            "X-User-Id": "someone",
        },
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert set(accepted) == {"executionId", "status", "workflowId"}
    assert accepted["workflowId"] == workflow_id

    done = await wait_until(api, accepted["executionId"])
    assert done["status"] == "COMPLETED", done
    assert done["output"] == {"n": 42}
    assert done["trigger"] == {"type": "webhook", "webhookId": hook["id"]}
    assert done["input"] == {
        "body": {"n": 21},
        "headers": {
            "content-type": "application/json",
            "user-agent": "GitHub-Hookshot/1",
            "x-github-event": "push",
            "x-github-delivery": "d-1",
            "x-request-id": "req-1",
        },
        "query": {"ref": "main", "tag": ["a", "b"]},
    }
    assert "hidden" not in json.dumps(done)

    shown = (await api.get(f"/workflows/{workflow_id}/webhooks/{hook['id']}")).json()
    assert shown["lastUsedAt"] is not None
    assert "token" not in shown
    assert "secret" not in shown
    listed = (await api.get(f"/workflows/{workflow_id}/webhooks")).json()
    assert listed["total"] == 1
    assert [w["id"] for w in listed["webhooks"]] == [hook["id"]]
    assert token not in json.dumps(listed)


async def test_a_text_body_is_kept_as_text_and_malformed_json_is_refused(
    api: httpx.AsyncClient,
) -> None:
    workflow_id = await create_active(api, chain())
    hook = await create_hook(api, workflow_id)

    response = await deliver(
        api, hook["url"], content=b"a=1&b=2", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 202, response.text
    done = await wait_until(api, response.json()["executionId"])
    assert done["input"]["body"] == "a=1&b=2"

    response = await deliver(
        api, hook["url"], content=b'{"n": ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert "not valid JSON" in response.json()["message"]

    too_deep = b"[" * 100 + b"]" * 100
    response = await deliver(
        api, hook["url"], content=too_deep, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert "MAX_VALUE_DEPTH" in response.json()["message"]
    assert await run_count(api, workflow_id) == 1


async def test_a_body_over_max_body_bytes_is_413(api: httpx.AsyncClient) -> None:
    workflow_id = await create_active(api, chain())
    hook = await create_hook(api, workflow_id)
    response = await deliver(
        api,
        hook["url"],
        content=b"x" * (MAX_BODY_BYTES + 1),
        headers={"Content-Type": "text/plain"},
    )
    assert response.status_code == 413, response.text
    assert await run_count(api, workflow_id) == 0


async def test_signatures_good_bad_missing_and_replayed(api: httpx.AsyncClient) -> None:
    workflow_id = await create_active(api, DOUBLE)
    hook = await create_hook(api, workflow_id, generateSecret=True)
    secret = hook["secret"]
    assert hook["hasSecret"] is True
    assert len(secret) >= 32
    shown = (await api.get(f"/workflows/{workflow_id}/webhooks/{hook['id']}")).json()
    assert shown["hasSecret"] is True
    assert "secret" not in shown
    body = json.dumps({"n": 1}).encode()
    json_type = {"Content-Type": "application/json"}

    missing = await deliver(api, hook["url"], content=body, headers=json_type)
    assert missing.status_code == 401, missing.text
    assert "X-Signature-256" in missing.json()["message"]

    wrong_key = sign("another-secret-of-some-length", body)
    bad = await deliver(
        api, hook["url"], content=body, headers={**json_type, "X-Signature-256": wrong_key}
    )
    assert bad.status_code == 401, bad.text
    assert "does not match" in bad.json()["message"]

    malformed = await deliver(
        api, hook["url"], content=body, headers={**json_type, "X-Signature-256": "nonsense"}
    )
    assert malformed.status_code == 401, malformed.text

    tampered = await deliver(
        api,
        hook["url"],
        content=json.dumps({"n": 2}).encode(),
        headers={**json_type, "X-Signature-256": sign(secret, body)},
    )
    assert tampered.status_code == 401, tampered.text
    assert await run_count(api, workflow_id) == 0

    signed = {**json_type, "X-Signature-256": sign(secret, body)}
    good = await deliver(api, hook["url"], content=body, headers=signed)
    assert good.status_code == 202, good.text
    done = await wait_until(api, good.json()["executionId"])
    assert done["output"] == {"n": 2}

    replayed = await deliver(api, hook["url"], content=body, headers=signed)
    assert replayed.status_code == 202, replayed.text
    assert replayed.json()["executionId"] == good.json()["executionId"]
    assert await run_count(api, workflow_id) == 1


async def test_a_timestamped_signature_is_accepted_only_near_now(api: httpx.AsyncClient) -> None:
    workflow_id = await create_active(api, chain())
    hook = await create_hook(api, workflow_id, secret=SECRET)
    assert hook["hasSecret"] is True
    assert "secret" not in hook
    body = b'{"event": "ping"}'

    def headers(timestamp: int, signed_at: int | None = None) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "X-Signature-Timestamp": str(timestamp),
            "X-Signature-256": sign(SECRET, body, timestamp if signed_at is None else signed_at),
        }

    now = int(time.time())
    good = await deliver(api, hook["url"], content=body, headers=headers(now))
    assert good.status_code == 202, good.text
    replayed = await deliver(api, hook["url"], content=body, headers=headers(now))
    assert replayed.json()["executionId"] == good.json()["executionId"]

    stale = await deliver(api, hook["url"], content=body, headers=headers(now - 1000))
    assert stale.status_code == 401, stale.text
    assert "X-Signature-Timestamp" in stale.json()["message"]
    future = await deliver(api, hook["url"], content=body, headers=headers(now + 1000))
    assert future.status_code == 401, future.text

    # A timestamp changed after signing: the signature covers it.
    moved = await deliver(api, hook["url"], content=body, headers=headers(now + 1, now))
    assert moved.status_code == 401, moved.text
    # The body alone signed, with a timestamp sent: not what was asked.
    unsigned_time = {**headers(now), "X-Signature-256": sign(SECRET, body)}
    assert (await deliver(api, hook["url"], content=body, headers=unsigned_time)).status_code == 401
    assert await run_count(api, workflow_id) == 1


async def test_an_idempotency_key_dedupes_per_webhook(api: httpx.AsyncClient) -> None:
    workflow_id = await create_active(api, DOUBLE)
    first_hook = await create_hook(api, workflow_id)
    second_hook = await create_hook(api, workflow_id)
    key = {"Idempotency-Key": f"delivery-{uuid.uuid4()}"}

    first = await deliver(api, first_hook["url"], {"n": 1}, key)
    again = await deliver(api, first_hook["url"], {"n": 5}, key)
    assert first.status_code == again.status_code == 202, again.text
    assert again.json()["executionId"] == first.json()["executionId"]
    other_key = await deliver(api, first_hook["url"], {"n": 1}, {"Idempotency-Key": "other"})
    other_hook = await deliver(api, second_hook["url"], {"n": 1}, key)
    ids = {r.json()["executionId"] for r in (first, other_key, other_hook)}
    assert len(ids) == 3
    assert await run_count(api, workflow_id) == 3
    done = await wait_until(api, first.json()["executionId"])
    assert done["input"]["body"] == {"n": 1}


async def test_rotation_replaces_the_token_and_on_request_the_secret(
    api: httpx.AsyncClient,
) -> None:
    workflow_id = await create_active(api, chain())
    hook = await create_hook(api, workflow_id, generateSecret=True)
    path = f"/workflows/{workflow_id}/webhooks/{hook['id']}"
    body = b"{}"

    def signed(secret: str) -> dict[str, str]:
        return {"Content-Type": "application/json", "X-Signature-256": sign(secret, body)}

    rotated = await api.post(f"{path}/rotate")
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["token"] != hook["token"]
    assert new["url"] == f"/hooks/{new['token']}"
    assert new["tokenHint"] == new["token"][:8]
    assert "secret" not in new
    old = await deliver(api, hook["url"], content=body, headers=signed(hook["secret"]))
    assert old.status_code == 404, old.text
    works = await deliver(api, new["url"], content=body, headers=signed(hook["secret"]))
    assert works.status_code == 202, works.text

    again = await api.post(f"{path}/rotate", json={"secret": True})
    assert again.status_code == 200, again.text
    newest = again.json()
    assert newest["secret"] != hook["secret"]
    stale_secret = await deliver(api, newest["url"], content=body, headers=signed(hook["secret"]))
    assert stale_secret.status_code == 401, stale_secret.text
    fresh = await deliver(api, newest["url"], content=body, headers=signed(newest["secret"]))
    assert fresh.status_code == 202, fresh.text
    assert (await deliver(api, new["url"], content=body)).status_code == 404


async def test_revoked_disabled_and_unknown_tokens_answer_alike(api: httpx.AsyncClient) -> None:
    workflow_id = await create_active(api, chain())
    revoked = await create_hook(api, workflow_id)
    disabled = await create_hook(api, workflow_id, enabled=False)
    assert disabled["enabled"] is False

    deleted = await api.delete(f"/workflows/{workflow_id}/webhooks/{revoked['id']}")
    assert deleted.status_code == 204, deleted.text
    gone = await api.get(f"/workflows/{workflow_id}/webhooks/{revoked['id']}")
    assert gone.status_code == 404

    answers = [
        await deliver(api, url, {"n": 1})
        for url in (revoked["url"], disabled["url"], "/hooks/not-a-token")
    ]
    assert [a.status_code for a in answers] == [404, 404, 404]
    assert len({a.json()["message"] for a in answers}) == 1
    assert await run_count(api, workflow_id) == 0

    path = f"/workflows/{workflow_id}/webhooks/{disabled['id']}"
    enabled = await api.patch(path, json={"enabled": True, "name": "back"})
    assert enabled.status_code == 200, enabled.text
    assert (enabled.json()["enabled"], enabled.json()["name"]) == (True, "back")
    assert (await deliver(api, disabled["url"], {"n": 1})).status_code == 202
    cleared = await api.patch(path, json={"name": None})
    assert cleared.json()["name"] is None
    assert cleared.json()["enabled"] is True
    unchanged = await api.patch(path, json={"enabled": None})
    assert unchanged.status_code == 200, unchanged.text
    assert unchanged.json()["enabled"] is True


async def test_a_workflow_that_is_not_active_is_409(api: httpx.AsyncClient) -> None:
    workflow_id = await create_active(api, chain())
    hook = await create_hook(api, workflow_id)
    archived = await api.delete(f"/workflows/{workflow_id}")
    assert archived.status_code == 200, archived.text

    response = await deliver(api, hook["url"], {"n": 1})
    assert response.status_code == 409, response.text
    assert "ARCHIVED" in response.json()["message"]
    refused = await api.post(f"/workflows/{workflow_id}/webhooks", json={})
    assert refused.status_code == 409, refused.text
    assert await run_count(api, workflow_id) == 0


async def test_bad_webhook_requests_are_400_and_unknown_workflows_404(
    api: httpx.AsyncClient,
) -> None:
    workflow_id = await create_active(api, chain())
    base = f"/workflows/{workflow_id}/webhooks"
    for bad in (
        {"secret": SECRET, "generateSecret": True},
        {"secret": "short"},
        {"name": ""},
        {"token": "mine"},
    ):
        response = await api.post(base, json=bad)
        assert response.status_code == 400, (bad, response.text)
    assert (await api.get(base)).json()["total"] == 0
    missing = f"/workflows/{uuid.uuid4()}/webhooks"
    assert (await api.post(missing, json={})).status_code == 404
    assert (await api.get(missing)).status_code == 404
    assert (await api.get(f"{base}/{uuid.uuid4()}")).status_code == 404
    assert (await api.post(f"{base}/{uuid.uuid4()}/rotate")).status_code == 404


# AUTH_MODE=gateway -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway_service(template_database: str, standin: str) -> Iterator[Process]:
    """A service in AUTH_MODE=gateway with a small per-user start rate."""
    with (
        sync_database(template_database) as url,
        running(
            service_process(
                url,
                standin,
                AUTH_MODE="gateway",
                GATEWAY_SHARED_SECRET=GATEWAY_SECRET,
                USER_EXECUTIONS_PER_MINUTE=str(PER_MINUTE),
            )
        ) as process,
    ):
        yield process


def as_user(process: Process, user: str | None) -> httpx.AsyncClient:
    """A client through the gateway as `user`, or (None) an outside sender with no credentials."""
    if user is None:
        return httpx.AsyncClient(base_url=base_url(process), timeout=30)
    return httpx.AsyncClient(
        base_url=base_url(process),
        headers={"X-Gateway-Secret": GATEWAY_SECRET},
        params={"userId": user},
        timeout=30,
    )


async def test_only_the_owner_sees_a_webhook_and_its_runs_are_the_owners(
    gateway_service: Process,
) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
    async with (
        as_user(gateway_service, alice) as alices,
        as_user(gateway_service, bob) as bobs,
        as_user(gateway_service, None) as sender,
    ):
        workflow_id = await create_active(alices, DOUBLE)
        hook = await create_hook(alices, workflow_id)
        path = f"/workflows/{workflow_id}/webhooks"
        for method, url, body in (
            ("GET", path, None),
            ("POST", path, {}),
            ("GET", f"{path}/{hook['id']}", None),
            ("PATCH", f"{path}/{hook['id']}", {"enabled": False}),
            ("POST", f"{path}/{hook['id']}/rotate", None),
            ("DELETE", f"{path}/{hook['id']}", None),
        ):
            response = await bobs.request(method, url, json=body)
            assert response.status_code == 404, (method, url, response.text)
            assert hook["token"] not in response.text
        bobs_workflow = await create_active(bobs, chain())
        foreign = await bobs.get(f"/workflows/{bobs_workflow}/webhooks/{hook['id']}")
        assert foreign.status_code == 404
        assert (await sender.get(path)).status_code == 401

        delivered = await deliver(sender, hook["url"], {"n": 4})
        assert delivered.status_code == 202, delivered.text
        execution_id = delivered.json()["executionId"]
        done = await wait_until(alices, execution_id)
        assert done["userId"] == alice
        assert done["output"] == {"n": 8}
        assert (await bobs.get(f"/workflows/executions/{execution_id}")).status_code == 404
        assert (await alices.get(path)).json()["total"] == 1


async def test_deliveries_count_to_the_owners_start_rate(gateway_service: Process) -> None:
    owner = f"carol-{uuid.uuid4().hex[:8]}"
    async with as_user(gateway_service, owner) as client, as_user(gateway_service, None) as sender:
        workflow_id = await create_active(client, chain())
        hook = await create_hook(client, workflow_id)
        for _ in range(PER_MINUTE):
            response = await deliver(sender, hook["url"], {"n": 1})
            assert response.status_code == 202, response.text
        limited = await deliver(sender, hook["url"], {"n": 1})
        assert limited.status_code == 429, limited.text
        assert int(limited.headers["Retry-After"]) >= 1
        assert "USER_EXECUTIONS_PER_MINUTE" in limited.json()["message"]
        execution = await get_execution(client, response.json()["executionId"])
        assert execution["userId"] == owner
