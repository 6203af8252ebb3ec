"""Routes of webhooks: managing them (`router`) and the public trigger (`hooks`).

POST /hooks/{token} takes no user credentials: the token is the credential, and the
execution it starts belongs to the webhook's owner. See docs/webhooks.md.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request, Response, status
from pydantic import ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException

from orchestrator.application import webhooks as use
from orchestrator.infrastructure import tracing
from orchestrator.infrastructure.db.webhooks import SqlWebhookStore
from orchestrator.presentation.api.deps import (
    NO_NUL,
    AppContext,
    CallerDep,
    ContextDep,
    WorkflowId,
    unstorable_ids_are_unknown,
)
from orchestrator.presentation.api.schemas import WireModel

router = APIRouter(
    prefix="/workflows",
    tags=["webhooks"],
    dependencies=[Depends(unstorable_ids_are_unknown)],
)
hooks = APIRouter(tags=["webhooks"])

WebhookId = Annotated[str, Path()]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=NO_NUL)]
Secret = Annotated[
    str,
    Field(
        min_length=16,
        max_length=200,
        pattern=NO_NUL,
        description="The HMAC-SHA256 key deliveries are signed with (X-Signature-256)",
    ),
]


class WebhookIn(WireModel):
    """A new webhook: give `secret`, or `generateSecret: true`, to have deliveries signed."""

    # Both at once is refused; the schema says so too.
    model_config = ConfigDict(
        json_schema_extra={
            "not": {
                "required": ["secret", "generateSecret"],
                "properties": {"secret": {"type": "string"}, "generateSecret": {"const": True}},
            }
        }
    )

    name: Name | None = None
    secret: Secret | None = None
    generate_secret: bool = Field(
        False, description="Generate a secret (shown once, in this answer); not with `secret`"
    )
    enabled: bool = True

    @model_validator(mode="after")
    def _one_secret(self) -> WebhookIn:
        if self.secret is not None and self.generate_secret:
            raise ValueError("give either secret or generateSecret, not both")
        return self


class WebhookPatch(WireModel):
    """What a PATCH changes: the fields sent (`enabled: null` leaves it as it is)."""

    name: Name | None = Field(None, description="null clears it")
    enabled: bool | None = None


class RotateIn(WireModel):
    """A rotation: a new token always, and a new generated secret when `secret` is true."""

    secret: bool = Field(False, description="Also generate a new secret (shown once)")


class WebhookOut(WireModel):
    """A webhook as listed: never its token or secret."""

    id: str
    workflow_id: str
    name: str | None
    token_hint: str = Field(description="The token's first characters, to tell tokens apart")
    has_secret: bool = Field(description="Deliveries must be signed (X-Signature-256)")
    enabled: bool
    last_used_at: dt.datetime | None = Field(description="When a delivery last started a run")
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def fields_of(cls, webhook: use.Webhook) -> dict[str, Any]:
        """The fields from the webhook."""
        return {
            "id": webhook.id,
            "workflow_id": webhook.workflow_id,
            "name": webhook.name,
            "token_hint": webhook.token_hint,
            "has_secret": webhook.secret is not None,
            "enabled": webhook.enabled,
            "last_used_at": webhook.last_used_at,
            "created_at": webhook.created_at,
            "updated_at": webhook.updated_at,
        }

    @classmethod
    def of(cls, webhook: use.Webhook) -> WebhookOut:
        """From the webhook."""
        return cls(**cls.fields_of(webhook))


class WebhookIssued(WebhookOut):
    """A webhook just created or rotated, with what is shown only now."""

    token: str = Field(description="The credential of POST /hooks/{token}: shown only now")
    url: str = Field(description="Where to deliver: POST here")
    secret: str | None = Field(
        None, description="Only when generated now: the signing secret, shown only now"
    )

    @classmethod
    def issued(cls, issued: use.Issued) -> WebhookIssued:
        """From a creation or rotation (`secret` present only when one was generated)."""
        fields = cls.fields_of(issued.webhook)
        fields.update(token=issued.token, url=f"/hooks/{issued.token}")
        if issued.secret is not None:
            fields["secret"] = issued.secret
        return cls(**fields)


class WebhookList(WireModel):
    """A workflow's webhooks, oldest first (at most MAX_WEBHOOKS_PER_WORKFLOW)."""

    webhooks: list[WebhookOut]
    total: int


class HookAccepted(WireModel):
    """A delivery that started (or, replayed, found) an execution."""

    execution_id: str
    status: str
    workflow_id: str


def _services(context: AppContext) -> use.WebhookServices:
    return use.WebhookServices(
        SqlWebhookStore(context.engine), context.uow_factory, context.clock, context.executions
    )


@router.post(
    "/{workflow_id}/webhooks",
    status_code=status.HTTP_201_CREATED,
    response_model=WebhookIssued,
    response_model_exclude_unset=True,
    responses={409: {"description": "The workflow is ARCHIVED, or has the most webhooks"}},
)
async def create_webhook(
    workflow_id: WorkflowId, body: WebhookIn, context: ContextDep, caller: CallerDep
) -> WebhookIssued:
    """Create a webhook: POST /hooks/{token} then starts an execution of the workflow.

    The token (and a generated secret) are shown only in this answer.
    """
    secret = use.new_secret() if body.generate_secret else body.secret
    issued = await use.create_webhook(
        _services(context), workflow_id, caller, body.name, secret, body.enabled
    )
    generated = secret if body.generate_secret else None
    return WebhookIssued.issued(use.Issued(issued.webhook, issued.token, generated))


@router.get("/{workflow_id}/webhooks", response_model=WebhookList)
async def list_webhooks(
    workflow_id: WorkflowId, context: ContextDep, caller: CallerDep
) -> WebhookList:
    """The workflow's webhooks, without tokens or secrets."""
    items = await use.list_webhooks(_services(context), workflow_id, caller)
    return WebhookList(webhooks=[WebhookOut.of(w) for w in items], total=len(items))


@router.get("/{workflow_id}/webhooks/{webhook_id}", response_model=WebhookOut)
async def get_webhook(
    workflow_id: WorkflowId, webhook_id: WebhookId, context: ContextDep, caller: CallerDep
) -> WebhookOut:
    """One webhook, without its token or secret."""
    webhook = await use.get_webhook(_services(context), workflow_id, webhook_id, caller)
    return WebhookOut.of(webhook)


@router.patch("/{workflow_id}/webhooks/{webhook_id}", response_model=WebhookOut)
async def update_webhook(
    workflow_id: WorkflowId,
    webhook_id: WebhookId,
    body: WebhookPatch,
    context: ContextDep,
    caller: CallerDep,
) -> WebhookOut:
    """Rename (`name: null` clears it), enable or disable; a disabled webhook's URL answers
    404 as an unknown one."""
    changes = use.WebhookChanges(
        rename="name" in body.model_fields_set, name=body.name, enabled=body.enabled
    )
    webhook = await use.update_webhook(_services(context), workflow_id, webhook_id, changes, caller)
    return WebhookOut.of(webhook)


@router.delete("/{workflow_id}/webhooks/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_webhook(
    workflow_id: WorkflowId, webhook_id: WebhookId, context: ContextDep, caller: CallerDep
) -> Response:
    """Revoke the webhook: its URL answers 404 from now on."""
    await use.delete_webhook(_services(context), workflow_id, webhook_id, caller)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{workflow_id}/webhooks/{webhook_id}/rotate",
    response_model=WebhookIssued,
    response_model_exclude_unset=True,
)
async def rotate_webhook(
    workflow_id: WorkflowId,
    webhook_id: WebhookId,
    context: ContextDep,
    caller: CallerDep,
    body: RotateIn | None = None,
) -> WebhookIssued:
    """A new token, shown only in this answer: the old one stops working at once. With
    `secret: true`, a new generated secret too (the old one stops verifying at once)."""
    with_secret = body is not None and body.secret
    issued = await use.rotate_webhook(
        _services(context), workflow_id, webhook_id, with_secret, caller
    )
    return WebhookIssued.issued(issued)


SIGNATURE_HEADER = "X-Signature-256"
TIMESTAMP_HEADER = "X-Signature-Timestamp"

HOOK_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "The webhook has a secret and the signature is missing, bad or stale"},
    404: {"description": "No enabled webhook has this token (unknown, revoked or disabled)"},
    409: {"description": "The workflow is not ACTIVE"},
    429: {"description": "Over a fair-use limit of the webhook's owner"},
}
HOOK_BODY: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "content": {
            "application/json": {"schema": {}},
            "text/plain": {"schema": {"type": "string"}},
        },
    }
}


@hooks.post(
    "/hooks/{token}",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=HookAccepted,
    responses=HOOK_ERRORS,
    openapi_extra=HOOK_BODY,
)
async def deliver(
    token: Annotated[str, Path(description="The webhook's token")],
    request: Request,
    context: ContextDep,
    idempotency_key: Annotated[
        str | None,
        Header(alias="Idempotency-Key", max_length=200, description="Same key, same execution"),
    ] = None,
    signature: Annotated[
        str | None,
        Header(
            alias=SIGNATURE_HEADER,
            max_length=200,
            description="sha256=<hex HMAC-SHA256 of the body, or of '<timestamp>.<body>'>",
        ),
    ] = None,
    timestamp: Annotated[
        str | None,
        Header(
            alias=TIMESTAMP_HEADER,
            max_length=20,
            description=f"Unix seconds; signed with the body, accepted within "
            f"{use.SIGNATURE_TOLERANCE_S} s of now",
        ),
    ] = None,
) -> HookAccepted:
    """Start an execution of the webhook's workflow with {body, headers, query} as input.

    `body` is the parsed JSON for a JSON content type (malformed JSON is a 400), else the
    text; `headers` holds Content-Type, User-Agent and X-* headers that carry no credential.
    """
    delivery = use.Delivery(
        token=token,
        body=await request.body(),
        content_type=request.headers.get("content-type"),
        headers=use.safe_headers(request.headers.items()),
        query=_query(request),
        signature=signature,
        timestamp=timestamp,
        idempotency_key=idempotency_key,
    )
    fair_use = context.fair_use
    try:
        execution = await use.trigger_webhook(
            _services(context),
            delivery,
            context.value_limits,
            context.authenticator.scoped,
            fair_use.check_start if fair_use is not None else None,
            tracing.current_traceparent() if tracing.enabled() else None,
        )
    except use.SignatureRejected as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, exc.message) from exc
    return HookAccepted(
        execution_id=execution.id,
        status=execution.status.value,
        workflow_id=execution.workflow_id,
    )


def _query(request: Request) -> dict[str, str | list[str]]:
    """The query parameters: a repeated one as a list of its values."""
    query: dict[str, str | list[str]] = {}
    for name, value in request.query_params.multi_items():
        held = query.get(name)
        if held is None:
            query[name] = value
        elif isinstance(held, list):
            held.append(value)
        else:
            query[name] = [held, value]
    return query
