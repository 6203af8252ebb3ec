"""Routes for agent-service, not browsers: its progress reports while an AGENT node runs.

Never under API_PREFIX. With INTERNAL_TOKEN set, a request needs `Authorization: Bearer
<INTERNAL_TOKEN>` (or `X-Internal-Token: <INTERNAL_TOKEN>`): 401 without it. Both routes answer
204 whatever becomes of the report: one about a node that does not run now is dropped and
counted (orchestrator_progress_reports_total{outcome="dropped"}), never an error for the agent.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Response, status
from pydantic import Field, StrictInt

from orchestrator.application.progress import report_progress, thinking_report, token_report
from orchestrator.presentation.api.deps import ContextDep
from orchestrator.presentation.api.schemas import Id, WireModel
from orchestrator.presentation.auth import Unauthenticated


async def internal_caller(
    context: ContextDep,
    authorization: Annotated[str | None, Header()] = None,
    x_internal_token: Annotated[str | None, Header()] = None,
) -> None:
    """With INTERNAL_TOKEN set, the request must carry it."""
    expected = context.settings.internal_token
    if expected is None:
        return
    given = x_internal_token
    if given is None and authorization is not None:
        scheme, _, value = authorization.partition(" ")
        given = value.strip() if scheme.lower() == "bearer" else None
    if given is None or not hmac.compare_digest(
        given.encode(), expected.get_secret_value().encode()
    ):
        raise Unauthenticated("a valid internal token is required (INTERNAL_TOKEN)")


router = APIRouter(prefix="/internal", tags=["internal"], dependencies=[Depends(internal_caller)])

Count = Annotated[StrictInt | None, Field(None, ge=0, le=10**12)]
Loop = Annotated[
    list[Annotated[StrictInt, Field(ge=0)]] | None,
    Field(None, max_length=20, description="The loop iteration path of the node execution"),
]
Attempt = Annotated[
    StrictInt | None, Field(None, ge=1, le=1000, description="The node's attempt (1-based)")
]


class TokenProgressIn(WireModel):
    """A token update: the counts of the node's current attempt so far."""

    execution_id: Id
    node_id: Id
    input_tokens: Count = None
    output_tokens: Count = None
    total_tokens: Count = None
    model: str | None = Field(None, max_length=200)
    iteration: StrictInt | None = Field(
        None, ge=0, le=10**9, description="The agent's own iteration (its reasoning loop)"
    )
    attempt: Attempt = None
    loop: Loop = None


class ThinkingStepIn(WireModel):
    """A step of the agent's reasoning."""

    execution_id: Id
    node_id: Id
    step: StrictInt = Field(ge=0, le=10**9)
    thought: str | None = Field(None, max_length=100_000)
    plan: Any = None
    tool_calls: Any = None
    attempt: Attempt = None
    loop: Loop = None


@router.post("/token-progress", status_code=status.HTTP_204_NO_CONTENT)
async def token_progress(body: TokenProgressIn, context: ContextDep) -> Response:
    """Relay a token update as `node:token-update` of the node's execution."""
    counts = {
        "inputTokens": body.input_tokens,
        "outputTokens": body.output_tokens,
        "totalTokens": body.total_tokens,
    }
    report = token_report(body.node_id, counts, body.model, body.iteration, body.attempt, body.loop)
    await report_progress(context.progress, body.execution_id, report)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/thinking-step", status_code=status.HTTP_204_NO_CONTENT)
async def thinking_step(body: ThinkingStepIn, context: ContextDep) -> Response:
    """Relay a thinking step as `node:thinking` of the node's execution."""
    report = thinking_report(
        body.node_id, body.step, body.thought, body.plan, body.tool_calls, body.attempt, body.loop
    )
    await report_progress(context.progress, body.execution_id, report)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
