"""Use cases of webhooks: HTTP triggers that start executions of a workflow.

A webhook's token is its credential: it is shown once (at creation and at each rotation) and
stored only as a SHA-256 digest. A webhook may also have a secret: each delivery must then be
signed (`X-Signature-256: sha256=<hex HMAC-SHA256 of the body>`, GitHub's form). Replays are
bounded two ways: a delivery that also sends `X-Signature-Timestamp` signs
`"<timestamp>.<body>"` and is refused more than SIGNATURE_TOLERANCE_S from now; and a signed
delivery without an Idempotency-Key is deduplicated by its signature, so an exact replay gives
back the execution the first delivery started and starts nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import uuid
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from orchestrator.application.access import Caller
from orchestrator.application.executions import ExecutionServices, execute_workflow
from orchestrator.application.ports import Clock, UnitOfWorkFactory
from orchestrator.application.workflows import get_workflow
from orchestrator.domain.errors import Conflict, DomainError, NotFound, Problem, ValidationFailed
from orchestrator.domain.execution import WorkflowExecution
from orchestrator.domain.values import ValueLimits
from orchestrator.domain.workflow import NotExecutable, WorkflowStatus

SIGNATURE_TOLERANCE_S = 300
MAX_WEBHOOKS_PER_WORKFLOW = 100
TOKEN_HINT_LENGTH = 8
SIGNATURE_PREFIX = "sha256="
_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")

# Headers a delivery's input carries besides the X-* ones (see `safe_headers`).
SAFE_HEADERS = frozenset({"content-type", "user-agent"})
# An X-* header whose name holds one of these may carry a credential, a signature or what a
# proxy says about the client: it is never stored.
UNSAFE_FRAGMENTS = (
    "auth",
    "token",
    "secret",
    "signature",
    "key",
    "cookie",
    "session",
    "password",
    "passwd",
    "credential",
    "csrf",
    "xsrf",
    "forwarded",
    "real-ip",
    "client-ip",
    "proxy",
    "gateway",
    "user-id",
)


@dataclass
class Webhook:
    """An HTTP trigger of a workflow; its executions belong to `user_id`."""

    id: str
    workflow_id: str
    user_id: str | None
    name: str | None
    token_hash: str
    token_hint: str
    secret: str | None
    enabled: bool
    last_used_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


@dataclass(frozen=True)
class Issued:
    """A webhook with what is shown only now: its token, and its secret when generated."""

    webhook: Webhook
    token: str
    secret: str | None = None


class WebhookRepository(Protocol):
    """Webhooks, in one transaction (committed when the store's context exits cleanly)."""

    async def add(self, webhook: Webhook) -> None: ...

    async def get(self, webhook_id: str) -> Webhook | None: ...

    async def by_token(self, token_hash: str) -> Webhook | None:
        """The webhook whose token has this digest."""
        ...

    async def of_workflow(self, workflow_id: str, user_id: str | None) -> list[Webhook]:
        """The workflow's webhooks (only `user_id`'s unless None), oldest first."""
        ...

    async def count(self, workflow_id: str) -> int: ...

    async def save(self, webhook: Webhook) -> None:
        """Store the webhook's name, token, secret, enabled flag and updated_at."""
        ...

    async def delete(self, webhook_id: str) -> None: ...

    async def used(self, webhook_id: str, at: dt.datetime) -> None:
        """Note that a delivery started an execution at `at`."""
        ...


WebhookStore = Callable[[], AbstractAsyncContextManager[WebhookRepository]]
# Admits (or refuses, raising) a start by this caller: the fair-use limits.
Admit = Callable[[Caller], Awaitable[None]]


@dataclass(frozen=True)
class WebhookServices:
    """What the webhook use cases call out to."""

    store: WebhookStore
    uow_factory: UnitOfWorkFactory
    clock: Clock
    executions: ExecutionServices


class UnknownToken(NotFound):
    """A token no enabled webhook has: the same answer for unknown, revoked and disabled."""

    def __init__(self) -> None:
        DomainError.__init__(self, "No enabled webhook has this token")
        self.message = "No enabled webhook has this token"


class SignatureRejected(DomainError):
    """A delivery whose signature is missing, malformed, stale or wrong (401 on the wire)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Delivery:
    """One POST to a webhook's URL, as received."""

    token: str
    body: bytes
    content_type: str | None
    headers: dict[str, str]
    query: dict[str, str | list[str]]
    signature: str | None = None
    timestamp: str | None = None
    idempotency_key: str | None = None


def token_digest(token: str) -> str:
    """How a token is stored and looked up."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _new_token() -> tuple[str, str, str]:
    """A fresh token, its digest and its hint."""
    token = secrets.token_urlsafe(32)
    return token, token_digest(token), token[:TOKEN_HINT_LENGTH]


def new_secret() -> str:
    """A generated signing secret (64 hex digits)."""
    return secrets.token_hex(32)


async def create_webhook(
    services: WebhookServices,
    workflow_id: str,
    caller: Caller,
    name: str | None,
    secret: str | None,
    enabled: bool,
) -> Issued:
    """A new webhook of a workflow the caller may change (not an ARCHIVED one)."""
    workflow = await get_workflow(services.uow_factory, workflow_id, caller)
    if not caller.may_change(workflow.user_id):
        raise NotFound("Workflow", workflow_id)
    if workflow.status == WorkflowStatus.ARCHIVED:
        raise Conflict(f"Workflow {workflow_id} is ARCHIVED; it can have no new webhooks")
    token, digest, hint = _new_token()
    now = services.clock.now()
    webhook = Webhook(
        id=str(uuid.uuid4()),
        workflow_id=workflow_id,
        user_id=caller.user_id,
        name=name,
        token_hash=digest,
        token_hint=hint,
        secret=secret,
        enabled=enabled,
        last_used_at=None,
        created_at=now,
        updated_at=now,
    )
    async with services.store() as repository:
        if await repository.count(workflow_id) >= MAX_WEBHOOKS_PER_WORKFLOW:
            raise Conflict(
                f"Workflow {workflow_id} has {MAX_WEBHOOKS_PER_WORKFLOW} webhooks already, "
                "the most it may have; delete one first"
            )
        await repository.add(webhook)
    return Issued(webhook, token)


async def list_webhooks(
    services: WebhookServices, workflow_id: str, caller: Caller
) -> list[Webhook]:
    """The webhooks of a workflow the caller may see, that the caller may see."""
    await get_workflow(services.uow_factory, workflow_id, caller)
    async with services.store() as repository:
        return await repository.of_workflow(workflow_id, caller.only)


async def _own(
    repository: WebhookRepository, workflow_id: str, webhook_id: str, caller: Caller, change: bool
) -> Webhook:
    webhook = await repository.get(webhook_id)
    allowed = caller.may_change if change else caller.may_read
    if webhook is None or webhook.workflow_id != workflow_id or not allowed(webhook.user_id):
        raise NotFound("Webhook", webhook_id)
    return webhook


async def get_webhook(
    services: WebhookServices, workflow_id: str, webhook_id: str, caller: Caller
) -> Webhook:
    """One webhook of the workflow, or NotFound."""
    async with services.store() as repository:
        return await _own(repository, workflow_id, webhook_id, caller, change=False)


@dataclass(frozen=True)
class WebhookChanges:
    """What a PATCH changes: only what is not None (`name` is set when `rename`)."""

    rename: bool = False
    name: str | None = None
    enabled: bool | None = None


async def update_webhook(
    services: WebhookServices,
    workflow_id: str,
    webhook_id: str,
    changes: WebhookChanges,
    caller: Caller,
) -> Webhook:
    """Rename, enable or disable a webhook (a disabled one answers as an unknown one)."""
    async with services.store() as repository:
        webhook = await _own(repository, workflow_id, webhook_id, caller, change=True)
        if changes.rename:
            webhook.name = changes.name
        if changes.enabled is not None:
            webhook.enabled = changes.enabled
        webhook.updated_at = services.clock.now()
        await repository.save(webhook)
    return webhook


async def rotate_webhook(
    services: WebhookServices, workflow_id: str, webhook_id: str, with_secret: bool, caller: Caller
) -> Issued:
    """A new token (the old one stops working at once) and, when asked, a new secret."""
    async with services.store() as repository:
        webhook = await _own(repository, workflow_id, webhook_id, caller, change=True)
        token, webhook.token_hash, webhook.token_hint = _new_token()
        secret = new_secret() if with_secret else None
        if secret is not None:
            webhook.secret = secret
        webhook.updated_at = services.clock.now()
        await repository.save(webhook)
    return Issued(webhook, token, secret)


async def delete_webhook(
    services: WebhookServices, workflow_id: str, webhook_id: str, caller: Caller
) -> None:
    """Revoke the webhook: its token stops working at once."""
    async with services.store() as repository:
        await _own(repository, workflow_id, webhook_id, caller, change=True)
        await repository.delete(webhook_id)


def verify_signature(
    secret: str, body: bytes, signature: str | None, timestamp: str | None, now: dt.datetime
) -> str:
    """The signature's hex digest if it signs the body (and the timestamp, when sent) with
    `secret`; else SignatureRejected saying why."""
    if signature is None:
        raise SignatureRejected(
            "This webhook has a secret: send X-Signature-256: sha256=<hex HMAC-SHA256 of the "
            "body with the secret>"
        )
    digest = signature.strip().removeprefix(SIGNATURE_PREFIX)
    if not signature.strip().startswith(SIGNATURE_PREFIX) or not _HEX_DIGEST.fullmatch(digest):
        raise SignatureRejected("X-Signature-256 must be sha256= followed by 64 hex digits")
    message = body
    if timestamp is not None:
        _check_timestamp(timestamp, now)
        message = timestamp.strip().encode() + b"." + body
    expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, digest.lower()):
        signed = '"<timestamp>.<body>"' if timestamp is not None else "the body"
        raise SignatureRejected(
            f"X-Signature-256 does not match: it must be the HMAC-SHA256 of {signed} "
            "with the webhook's secret"
        )
    return expected


def _check_timestamp(timestamp: str, now: dt.datetime) -> None:
    text = timestamp.strip()
    if not _TIMESTAMP.fullmatch(text):
        raise SignatureRejected("X-Signature-Timestamp must be a Unix time in whole seconds")
    skew = abs(now.timestamp() - int(text))
    if skew > SIGNATURE_TOLERANCE_S:
        raise SignatureRejected(
            f"X-Signature-Timestamp is {int(skew)} s from now; at most "
            f"{SIGNATURE_TOLERANCE_S} s is accepted (a replayed or delayed delivery)"
        )


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def parse_body(body: bytes, content_type: str | None) -> Any:
    """The body as the execution's input holds it: parsed JSON for a JSON content type, else
    the text (None when empty). Malformed JSON is ValidationFailed."""
    if not body:
        return None
    if _is_json(content_type):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise ValidationFailed(
                f"body: not valid JSON ({exc})", [Problem("body", "not valid JSON")]
            ) from exc
    return body.decode("utf-8", "replace")


def safe_headers(headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The headers a delivery's input carries: Content-Type, User-Agent and the X-* headers
    that carry no credential, signature or proxy information (see UNSAFE_FRAGMENTS). Names
    lowercase; repeated headers joined with ", "."""
    kept: dict[str, str] = {}
    for raw_name, value in headers:
        name = raw_name.lower()
        if name in SAFE_HEADERS or (
            name.startswith("x-") and not any(part in name for part in UNSAFE_FRAGMENTS)
        ):
            kept[name] = f"{kept[name]}, {value}" if name in kept else value
    return kept


def _dedupe_key(webhook: Webhook, delivery: Delivery, signature: str | None) -> str | None:
    """The execution's idempotency key: the sender's (scoped to this webhook), or for a signed
    delivery without one, its signature (an exact replay starts nothing)."""
    if delivery.idempotency_key is not None:
        return f"webhook:{webhook.id}:key:{delivery.idempotency_key}"
    if signature is not None:
        return f"webhook:{webhook.id}:signature:{signature}"
    return None


async def trigger_webhook(
    services: WebhookServices,
    delivery: Delivery,
    limits: ValueLimits,
    scoped: bool,
    admit: Admit | None = None,
    trace_parent: str | None = None,
) -> WorkflowExecution:
    """Start an execution of the webhook's workflow with {body, headers, query} as input.

    UnknownToken for a token no enabled webhook has; SignatureRejected for a bad signature;
    Conflict when the workflow is not ACTIVE; ValidationFailed or ValueTooLarge for a body
    that is malformed or over the value limits. The execution belongs to the webhook's owner.
    """
    async with services.store() as repository:
        webhook = await repository.by_token(token_digest(delivery.token))
    if webhook is None or not webhook.enabled:
        raise UnknownToken
    signature = None
    if webhook.secret is not None:
        signature = verify_signature(
            webhook.secret,
            delivery.body,
            delivery.signature,
            delivery.timestamp,
            services.clock.now(),
        )
    node_input = {
        "body": parse_body(delivery.body, delivery.content_type),
        "headers": delivery.headers,
        "query": delivery.query,
    }
    limits.check(node_input, "the webhook's input")
    owner = Caller(webhook.user_id, scoped=scoped)
    if admit is not None:
        await admit(owner)
    try:
        execution = await execute_workflow(
            services.executions,
            webhook.workflow_id,
            node_input,
            owner,
            _dedupe_key(webhook, delivery, signature),
            trace_parent=trace_parent,
            trigger={"type": "webhook", "webhookId": webhook.id},
        )
    except NotExecutable as exc:
        raise Conflict(exc.message) from exc
    except NotFound as exc:  # the owner may no longer run it: no more than an unknown token
        raise UnknownToken from exc
    async with services.store() as repository:
        await repository.used(webhook.id, services.clock.now())
    return execution
