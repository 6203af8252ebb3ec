"""Workflow routes: /workflows, /workflows/validate, /workflows/{id}, /workflows/{id}/versions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from orchestrator.application import workflows as use
from orchestrator.domain.workflow import WorkflowStatus
from orchestrator.presentation.api.deps import ContextDep, UserIdDep, WorkflowPageDep
from orchestrator.presentation.api.readable import ReadableRoute
from orchestrator.presentation.api.schemas import (
    Problem,
    ValidateIn,
    ValidationResult,
    VersionList,
    VersionOut,
    WorkflowCreate,
    WorkflowList,
    WorkflowOut,
    WorkflowPatch,
)

router = APIRouter(prefix="/workflows", tags=["workflows"], route_class=ReadableRoute)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WorkflowOut)
async def create_workflow(
    body: WorkflowCreate, context: ContextDep, user_id: UserIdDep
) -> WorkflowOut:
    """Create a workflow (DRAFT unless `status` says otherwise); 400 lists every problem."""
    workflow = await use.create_workflow(
        context.uow_factory,
        context.clock,
        body.name,
        body.description,
        body.definition.to_domain(),
        body.status,
        user_id,
        context.value_limits,
    )
    return WorkflowOut.of(workflow)


@router.get("", response_model=WorkflowList)
async def list_workflows(
    context: ContextDep,
    page: WorkflowPageDep,
    user_id: UserIdDep,
    status_filter: Annotated[WorkflowStatus | None, Query(alias="status")] = None,
) -> WorkflowList:
    """A page of workflows, newest first."""
    items, total = await use.list_workflows(context.uow_factory, page, user_id, status_filter)
    shown = [WorkflowOut.of(w) for w in items]
    return WorkflowList(workflows=shown, data=shown, total=total, page=page.page, limit=page.limit)


@router.post("/validate", response_model=ValidationResult)
async def validate_workflow(body: ValidateIn, context: ContextDep) -> ValidationResult:
    """Check a definition without storing it: every problem that POST /workflows would refuse."""
    problems = use.definition_problems(body.definition.to_domain(), context.value_limits)
    return ValidationResult(
        valid=not problems, problems=[Problem(path=p.path, message=p.message) for p in problems]
    )


@router.get("/{workflow_id}", response_model=WorkflowOut)
async def get_workflow(workflow_id: str, context: ContextDep, user_id: UserIdDep) -> WorkflowOut:
    """One workflow with its current definition."""
    return WorkflowOut.of(await use.get_workflow(context.uow_factory, workflow_id, user_id))


@router.put("/{workflow_id}", response_model=WorkflowOut)
@router.patch("/{workflow_id}", response_model=WorkflowOut)
async def update_workflow(
    workflow_id: str, body: WorkflowPatch, context: ContextDep, user_id: UserIdDep
) -> WorkflowOut:
    """Change name, description, definition (a new version) or status; PUT is the editor's save
    and replaces the fields it sends."""
    fields = body.model_fields_set
    changes = use.WorkflowChanges(
        name=body.name,
        description=body.description if "description" in fields else use.UNSET,
        definition=body.definition.to_domain() if body.definition else None,
        status=body.status,
    )
    workflow = await use.update_workflow(
        context.uow_factory, context.clock, workflow_id, changes, user_id, context.value_limits
    )
    return WorkflowOut.of(workflow)


@router.delete("/{workflow_id}", response_model=WorkflowOut)
async def archive_workflow(
    workflow_id: str, context: ContextDep, user_id: UserIdDep
) -> WorkflowOut:
    """Archive the workflow: it stays readable, and can no longer be edited or executed."""
    workflow = await use.archive_workflow(context.uow_factory, context.clock, workflow_id, user_id)
    return WorkflowOut.of(workflow)


@router.get("/{workflow_id}/versions", response_model=VersionList)
async def list_versions(workflow_id: str, context: ContextDep, user_id: UserIdDep) -> VersionList:
    """Every version of the workflow's definition, oldest first."""
    records = await use.list_versions(context.uow_factory, workflow_id, user_id)
    return VersionList(workflow_id=workflow_id, versions=[VersionOut.of(r) for r in records])
