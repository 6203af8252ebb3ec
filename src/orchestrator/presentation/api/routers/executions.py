"""Execution routes: execute, list, get, cancel, retry, events."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Query, Response, status

from orchestrator.application import executions as use
from orchestrator.application.views import execution_view
from orchestrator.domain.execution import ExecutionStatus
from orchestrator.presentation.api.deps import ContextDep, PageDep, UserIdDep
from orchestrator.presentation.api.schemas import (
    EventList,
    EventOut,
    ExecuteIn,
    ExecutionList,
    ExecutionOut,
)

router = APIRouter(prefix="/workflows", tags=["executions"])


def _json(content: Any, status_code: int = 200) -> Response:
    # The views are already wire-shaped: serialize them directly instead of validating them
    # again against the response model (which stays for the OpenAPI document).
    return Response(orjson.dumps(content), status_code, media_type="application/json")


IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=200, description="Same key, same execution"),
]


@router.post("/execute", status_code=status.HTTP_202_ACCEPTED, response_model=ExecutionOut)
async def execute_workflow(
    body: ExecuteIn, context: ContextDep, user_id: UserIdDep, idempotency_key: IdempotencyKey = None
) -> Response:
    """Start an execution of an ACTIVE workflow; it runs in the background."""
    execution = await use.execute_workflow(
        context.executions, body.workflow_id, body.input, user_id, idempotency_key
    )
    return _json(execution_view(execution), status.HTTP_202_ACCEPTED)


@router.get("/executions", response_model=ExecutionList)
async def list_executions(
    context: ContextDep,
    page: PageDep,
    user_id: UserIdDep,
    workflow_id: Annotated[str | None, Query(alias="workflowId", max_length=200)] = None,
    status_filter: Annotated[ExecutionStatus | None, Query(alias="status")] = None,
) -> Response:
    """A page of executions, newest first."""
    items, total = await use.list_executions(
        context.executions, page, workflow_id, status_filter, user_id
    )
    return _json(
        {
            "executions": [execution_view(e) for e in items],
            "total": total,
            "page": page.page,
            "limit": page.limit,
        }
    )


@router.get("/executions/{execution_id}", response_model=ExecutionOut)
async def get_execution(execution_id: str, context: ContextDep, user_id: UserIdDep) -> Response:
    """The execution with every node's state."""
    return _json(execution_view(await use.get_execution(context.executions, execution_id, user_id)))


@router.post("/executions/{execution_id}/cancel", status_code=status.HTTP_204_NO_CONTENT)
async def cancel_execution(execution_id: str, context: ContextDep, user_id: UserIdDep) -> Response:
    """Cancel now; 409 when it already COMPLETED or FAILED."""
    await use.cancel_execution(context.executions, execution_id, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/executions/{execution_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExecutionOut,
)
async def retry_execution(execution_id: str, context: ContextDep, user_id: UserIdDep) -> Response:
    """Retry a FAILED execution from the failed node, as a new execution (`retryOf` links them)."""
    execution = await use.retry_execution(context.executions, execution_id, user_id)
    return _json(execution_view(execution), status.HTTP_202_ACCEPTED)


@router.get("/executions/{execution_id}/events", response_model=EventList)
async def execution_events(
    execution_id: str,
    context: ContextDep,
    user_id: UserIdDep,
    after_seq: Annotated[int, Query(alias="afterSeq", ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=use.MAX_EVENTS_PAGE)] = 500,
) -> EventList:
    """The Socket.IO events after `afterSeq`, in order, to catch up after a disconnect."""
    events = await use.execution_events(context.executions, execution_id, after_seq, limit, user_id)
    return EventList(
        execution_id=execution_id,
        events=[EventOut(seq=e.seq, event=e.name, data=e.payload) for e in events],
        last_seq=events[-1].seq if events else after_seq,
    )
