"""Execution routes: execute, list, get, cancel, resume, budget, retry, events."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Response, status

from orchestrator.application import executions as use
from orchestrator.application.access import Caller
from orchestrator.application.ports import ExecutionOrder, SortField
from orchestrator.domain.execution import ExecutionStatus
from orchestrator.infrastructure import tracing
from orchestrator.presentation.api.deps import (
    NO_NUL,
    AppContext,
    CallerDep,
    ContextDep,
    DetailDep,
    ExecutionId,
    NodeId,
    PageDep,
    WorkflowId,
    unstorable_ids_are_unknown,
)
from orchestrator.presentation.api.readable import ReadableRoute
from orchestrator.presentation.api.schemas import (
    Budget,
    EventList,
    EventOut,
    ExecuteIn,
    ExecuteWorkflowIn,
    ExecutionList,
    ExecutionOut,
    ExecutionSummary,
    HistoryItem,
    HistoryPage,
    ResumeIn,
    ResumeOut,
)

router = APIRouter(
    prefix="/workflows",
    tags=["executions"],
    route_class=ReadableRoute,
    dependencies=[Depends(unstorable_ids_are_unknown)],
)

# What a start over the caller's fair-use limits answers (see presentation/fair_use.py).
LIMITED: dict[int | str, dict[str, Any]] = {
    429: {
        "description": "Over a fair-use limit of the caller (USER_EXECUTIONS_PER_MINUTE or "
        "USER_RUNNING_EXECUTIONS)",
        "headers": {
            "Retry-After": {
                "description": "Seconds to wait before trying again",
                "schema": {"type": "integer", "minimum": 1},
            }
        },
    }
}

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=200, description="Same key, same execution"),
]


@router.post(
    "/execute",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExecutionOut,
    responses=LIMITED,
)
async def execute_workflow(
    body: ExecuteIn, context: ContextDep, caller: CallerDep, idempotency_key: IdempotencyKey = None
) -> ExecutionOut:
    """Start an execution of an ACTIVE workflow; it runs in the background.

    An input over MAX_VALUE_DEPTH or MAX_NODE_OUTPUT_BYTES is a 400, and nothing is stored;
    so is a workflow using a node type named in `disabledNodeTypes`. Over the caller's
    fair-use limits (USER_EXECUTIONS_PER_MINUTE, USER_RUNNING_EXECUTIONS): 429 with Retry-After.
    """
    return await _execute(context, body.workflow_id, body, caller, idempotency_key)


@router.post(
    "/{workflow_id}/execute",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExecutionOut,
    responses=LIMITED,
)
async def execute_workflow_by_id(
    workflow_id: WorkflowId,
    body: ExecuteWorkflowIn,
    context: ContextDep,
    caller: CallerDep,
    idempotency_key: IdempotencyKey = None,
) -> ExecutionOut:
    """Start an execution of this ACTIVE workflow, as POST /workflows/execute does."""
    return await _execute(context, workflow_id, body, caller, idempotency_key)


async def _execute(
    context: AppContext,
    workflow_id: str,
    body: ExecuteWorkflowIn,
    caller: Caller,
    idempotency_key: str | None,
) -> ExecutionOut:
    context.value_limits.check(body.input, "input")
    if context.fair_use is not None:
        await context.fair_use.check_start(caller)
    execution = await use.execute_workflow(
        context.executions,
        workflow_id,
        body.input,
        caller,
        idempotency_key,
        body.disabled_node_types,
        # The request's span (traces on): the run's steps nest under it.
        tracing.current_traceparent() if tracing.enabled() else None,
        budget=None if body.budget is None else body.budget.to_domain(),
    )
    return ExecutionOut.of(execution)


@router.get("/executions", response_model=ExecutionList, response_model_exclude_unset=True)
async def list_executions(
    context: ContextDep,
    page: PageDep,
    caller: CallerDep,
    detail: DetailDep,
    workflow_id: Annotated[
        str | None, Query(alias="workflowId", max_length=200, pattern=NO_NUL)
    ] = None,
    status_filter: Annotated[ExecutionStatus | None, Query(alias="status")] = None,
) -> ExecutionList:
    """A page of executions, newest first, as summaries: inputs, outputs and attempts are left
    out unless `include` asks for them."""
    items, total = await use.list_executions(
        context.executions, page, workflow_id, status_filter, caller, detail
    )
    return ExecutionList(
        executions=[ExecutionSummary.of(e, detail) for e in items],
        total=total,
        page=page.page,
        limit=page.limit,
    )


@router.get("/{workflow_id}/executions", response_model=HistoryPage)
async def workflow_history(
    workflow_id: WorkflowId,
    context: ContextDep,
    page: PageDep,
    caller: CallerDep,
    sort_by: Annotated[SortField, Query(alias="sortBy")] = "createdAt",
    sort_order: Annotated[Literal["asc", "desc"], Query(alias="sortOrder")] = "desc",
) -> HistoryPage:
    """The workflow's executions, newest first unless `sortBy`/`sortOrder` say otherwise; each
    with its duration and the tokens its agents reported."""
    order = ExecutionOrder(by=sort_by, descending=sort_order == "desc")
    items, total = await use.workflow_history(context.executions, workflow_id, page, order, caller)
    return HistoryPage(
        data=[HistoryItem.of(x) for x in items], total=total, page=page.page, limit=page.limit
    )


@router.get("/executions/{execution_id}", response_model=ExecutionOut)
async def get_execution(
    execution_id: ExecutionId, context: ContextDep, caller: CallerDep
) -> ExecutionOut:
    """The execution with every node's state."""
    return ExecutionOut.of(await use.get_execution(context.executions, execution_id, caller))


@router.post("/executions/{execution_id}/cancel", status_code=status.HTTP_204_NO_CONTENT)
async def cancel_execution(
    execution_id: ExecutionId, context: ContextDep, caller: CallerDep
) -> Response:
    """Cancel now; 409 when it already COMPLETED or FAILED."""
    await use.cancel_execution(context.executions, execution_id, caller)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/executions/{execution_id}/budget", response_model=ExecutionOut)
async def raise_budget(
    execution_id: ExecutionId, body: Budget, context: ContextDep, caller: CallerDep
) -> ExecutionOut:
    """Give an execution paused by its budget (onExceed "pause") a new budget: it goes on at
    once if the new one allows, else stays paused. 409 unless it is paused."""
    execution = await use.raise_budget(context.executions, execution_id, body.to_domain(), caller)
    return ExecutionOut.of(execution)


@router.post("/executions/{execution_id}/nodes/{node_id}/resume", response_model=ResumeOut)
async def resume_node(
    execution_id: ExecutionId,
    node_id: NodeId,
    body: ResumeIn,
    context: ContextDep,
    caller: CallerDep,
) -> ResumeOut:
    """Answer a node that waits for a person (WAITING_INPUT); the execution goes on.

    404 for an unknown execution or node; 409 when the node does not wait or was answered
    already (of two resumes at once, exactly one wins).
    """
    iteration = None if body.iteration is None else tuple(body.iteration)
    await use.resume_node(
        context.executions,
        execution_id,
        node_id,
        body.input,
        iteration,
        caller,
        context.value_limits,
    )
    return ResumeOut()


@router.post(
    "/executions/{execution_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ExecutionOut,
    responses=LIMITED,
)
async def retry_execution(
    execution_id: ExecutionId, context: ContextDep, caller: CallerDep
) -> ExecutionOut:
    """Retry a FAILED execution from the failed node, as a new execution (`retryOf` links them).

    429 with Retry-After over the caller's fair-use limits, as execute.
    """
    if context.fair_use is not None:
        await context.fair_use.check_start(caller)
    return ExecutionOut.of(await use.retry_execution(context.executions, execution_id, caller))


@router.get("/executions/{execution_id}/events", response_model=EventList)
async def execution_events(
    execution_id: ExecutionId,
    context: ContextDep,
    caller: CallerDep,
    after_seq: Annotated[int, Query(alias="afterSeq", ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=use.MAX_EVENTS_PAGE)] = 500,
) -> EventList:
    """The Socket.IO events after `afterSeq`, in order, to catch up after a disconnect."""
    events = await use.execution_events(context.executions, execution_id, after_seq, limit, caller)
    return EventList(
        execution_id=execution_id,
        events=[EventOut(seq=e.seq, event=e.name, data=e.payload) for e in events],
        last_seq=events[-1].seq if events else after_seq,
    )
