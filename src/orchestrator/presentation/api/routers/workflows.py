"""Workflow routes: /workflows, /workflows/validate, /workflows/{id} with its versions, its
nodes and edges (the platform editor builds a graph one node and one edge at a time) and its
execution history."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status

from orchestrator.application import workflows as use
from orchestrator.application.access import Caller
from orchestrator.domain.workflow import Definition
from orchestrator.presentation.api.deps import (
    AppContext,
    CallerDep,
    ContextDep,
    EdgeId,
    NodeId,
    WorkflowId,
    WorkflowPageDep,
    get_caller,
    unstorable_ids_are_unknown,
)
from orchestrator.presentation.api.readable import ReadableRoute
from orchestrator.presentation.api.schemas import (
    EdgeIn,
    NodeIn,
    NodePatch,
    Problem,
    StatusName,
    ValidateIn,
    ValidationResult,
    VersionList,
    VersionOut,
    WorkflowCreate,
    WorkflowList,
    WorkflowOut,
    WorkflowPatch,
)

router = APIRouter(
    prefix="/workflows",
    tags=["workflows"],
    route_class=ReadableRoute,
    dependencies=[Depends(unstorable_ids_are_unknown)],
)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WorkflowOut)
async def create_workflow(
    body: WorkflowCreate, context: ContextDep, caller: CallerDep
) -> WorkflowOut:
    """Create a workflow (DRAFT unless `status` says otherwise).

    A DRAFT may be incomplete, even without a definition: `problems` lists what keeps it from
    running. An ACTIVE one must be valid: 400 lists every problem.
    """
    workflow = await use.create_workflow(
        context.uow_factory,
        context.clock,
        body.name,
        body.description,
        body.definition.to_domain() if body.definition is not None else None,
        body.status,
        caller,
        context.value_limits,
    )
    return WorkflowOut.of(workflow)


@router.get("", response_model=WorkflowList)
async def list_workflows(
    context: ContextDep,
    page: WorkflowPageDep,
    caller: CallerDep,
    status_filter: Annotated[StatusName | None, Query(alias="status")] = None,
) -> WorkflowList:
    """A page of workflows, newest first."""
    items, total = await use.list_workflows(context.uow_factory, page, caller, status_filter)
    shown = [WorkflowOut.of(w) for w in items]
    return WorkflowList(workflows=shown, data=shown, total=total, page=page.page, limit=page.limit)


@router.post("/validate", response_model=ValidationResult, dependencies=[Depends(get_caller)])
async def validate_workflow(body: ValidateIn, context: ContextDep) -> ValidationResult:
    """Check a definition without storing it: every problem that POST /workflows would refuse."""
    problems = use.definition_problems(body.definition.to_domain(), context.value_limits)
    return ValidationResult(
        valid=not problems, problems=[Problem(path=p.path, message=p.message) for p in problems]
    )


@router.get("/{workflow_id}", response_model=WorkflowOut)
async def get_workflow(
    workflow_id: WorkflowId, context: ContextDep, caller: CallerDep
) -> WorkflowOut:
    """One workflow with its current definition."""
    return WorkflowOut.of(await use.get_workflow(context.uow_factory, workflow_id, caller))


@router.put("/{workflow_id}", response_model=WorkflowOut)
@router.patch("/{workflow_id}", response_model=WorkflowOut)
async def update_workflow(
    workflow_id: WorkflowId, body: WorkflowPatch, context: ContextDep, caller: CallerDep
) -> WorkflowOut:
    """Change name, description, definition (a new version) or status; PUT is the editor's save
    and replaces the fields it sends. Activating needs a valid definition (400 lists every
    problem); an ACTIVE workflow's definition stays valid."""
    fields = body.model_fields_set
    changes = use.WorkflowChanges(
        name=body.name,
        description=body.description if "description" in fields else use.UNSET,
        definition=body.definition.to_domain() if body.definition else None,
        status=body.status,
    )
    workflow = await use.update_workflow(
        context.uow_factory, context.clock, workflow_id, changes, caller, context.value_limits
    )
    return WorkflowOut.of(workflow)


@router.delete("/{workflow_id}", response_model=WorkflowOut)
async def archive_workflow(
    workflow_id: WorkflowId, context: ContextDep, caller: CallerDep
) -> WorkflowOut:
    """Archive the workflow: it stays readable, and can no longer be edited or executed."""
    workflow = await use.archive_workflow(context.uow_factory, context.clock, workflow_id, caller)
    return WorkflowOut.of(workflow)


@router.get("/{workflow_id}/versions", response_model=VersionList)
async def list_versions(
    workflow_id: WorkflowId, context: ContextDep, caller: CallerDep
) -> VersionList:
    """Every version of the workflow's definition, oldest first."""
    records = await use.list_versions(context.uow_factory, workflow_id, caller)
    return VersionList(workflow_id=workflow_id, versions=[VersionOut.of(r) for r in records])


@router.post(
    "/{workflow_id}/nodes", status_code=status.HTTP_201_CREATED, response_model=WorkflowOut
)
async def add_node(
    workflow_id: WorkflowId, body: NodeIn, context: ContextDep, caller: CallerDep
) -> WorkflowOut:
    """Add a node: a new version; 409 when its id is taken."""
    node = body.to_domain()
    return await _edit(context, workflow_id, caller, lambda d: d.with_node(node))


@router.put("/{workflow_id}/nodes/{node_id}", response_model=WorkflowOut)
async def change_node(
    workflow_id: WorkflowId,
    node_id: NodeId,
    body: NodePatch,
    context: ContextDep,
    caller: CallerDep,
) -> WorkflowOut:
    """Change the fields of a node that are sent: a new version; 404 for an unknown node."""
    return await _edit(
        context,
        workflow_id,
        caller,
        lambda d: d.with_node_changed(body.apply(d.node_or_not_found(node_id))),
    )


@router.delete("/{workflow_id}/nodes/{node_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_node(
    workflow_id: WorkflowId, node_id: NodeId, context: ContextDep, caller: CallerDep
) -> Response:
    """Delete a node and every edge into or out of it: a new version."""
    await _edit(context, workflow_id, caller, lambda d: d.without_node(node_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{workflow_id}/edges", status_code=status.HTTP_201_CREATED, response_model=WorkflowOut
)
async def add_edge(
    workflow_id: WorkflowId, body: EdgeIn, context: ContextDep, caller: CallerDep
) -> WorkflowOut:
    """Add an edge: a new version; 409 when its id is taken."""
    edge = body.to_domain()
    return await _edit(context, workflow_id, caller, lambda d: d.with_edge(edge))


@router.delete("/{workflow_id}/edges/{edge_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_edge(
    workflow_id: WorkflowId, edge_id: EdgeId, context: ContextDep, caller: CallerDep
) -> Response:
    """Delete an edge: a new version; 404 for an unknown edge."""
    await _edit(context, workflow_id, caller, lambda d: d.without_edge(edge_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _edit(
    context: AppContext,
    workflow_id: str,
    caller: Caller,
    edit: Callable[[Definition], Definition],
) -> WorkflowOut:
    workflow = await use.edit_graph(
        context.uow_factory, context.clock, workflow_id, edit, caller, context.value_limits
    )
    return WorkflowOut.of(workflow)
