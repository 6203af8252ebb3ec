"""Use cases of workflows: create, read, list, update, archive, versions, validate."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.application.access import visible
from orchestrator.application.ports import Clock, Page, UnitOfWorkFactory, VersionRecord
from orchestrator.domain.errors import ConcurrentChange, NotFound, Problem, ValidationFailed
from orchestrator.domain.validation import validate_definition
from orchestrator.domain.workflow import Definition, Workflow, WorkflowStatus

UNSET: Any = object()
ARCHIVE_ATTEMPTS = 5


@dataclass(frozen=True)
class WorkflowChanges:
    """A partial update; fields left at None are not changed (description may be cleared)."""

    name: str | None = None
    description: str | None = UNSET
    definition: Definition | None = None
    status: WorkflowStatus | None = None


def check_definition(definition: Definition) -> None:
    """Raise ValidationFailed listing every problem of the definition."""
    problems = validate_definition(definition)
    if problems:
        raise ValidationFailed("Workflow definition is invalid", problems)


async def create_workflow(
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
    name: str,
    description: str | None,
    definition: Definition,
    status: WorkflowStatus | None,
    user_id: str | None,
) -> Workflow:
    """Validate and store a new workflow at version 1 (DRAFT unless told otherwise)."""
    check_definition(definition)
    if status == WorkflowStatus.ARCHIVED:
        raise ValidationFailed(
            "A workflow cannot be created ARCHIVED", [Problem("status", "must not be ARCHIVED")]
        )
    now = clock.now()
    workflow = Workflow(
        id=str(uuid.uuid4()),
        name=name,
        description=description,
        status=status or WorkflowStatus.DRAFT,
        definition=replace(definition, version=1),
        user_id=user_id,
        created_at=now,
        updated_at=now,
    )
    async with uow_factory() as uow:
        await uow.workflows.add(workflow)
        await uow.commit()
    return workflow


async def get_workflow(
    uow_factory: UnitOfWorkFactory, workflow_id: str, user_id: str | None
) -> Workflow:
    """The workflow, or NotFound (also when it belongs to another user)."""
    async with uow_factory() as uow:
        workflow = await uow.workflows.get(workflow_id)
    if workflow is None or not visible(workflow.user_id, user_id):
        raise NotFound("Workflow", workflow_id)
    return workflow


async def list_workflows(
    uow_factory: UnitOfWorkFactory, page: Page, user_id: str | None, status: WorkflowStatus | None
) -> tuple[list[Workflow], int]:
    """One page of workflows, newest first, with the total count."""
    async with uow_factory() as uow:
        return await uow.workflows.list_page(page, user_id, status)


async def update_workflow(
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
    workflow_id: str,
    changes: WorkflowChanges,
    user_id: str | None,
) -> Workflow:
    """Apply a partial update; a changed definition becomes the next version."""
    if changes.definition is not None:
        check_definition(changes.definition)
    async with uow_factory() as uow:
        workflow = await uow.workflows.get(workflow_id)
        if workflow is None or not visible(workflow.user_id, user_id):
            raise NotFound("Workflow", workflow_id)
        workflow.ensure_editable()
        now = clock.now()
        if changes.name is not None:
            workflow.name = changes.name
        if changes.description is not UNSET:
            workflow.description = changes.description
        new_version = False
        if changes.definition is not None:
            new_version = workflow.replace_definition(changes.definition, now)
        if changes.status is not None:
            workflow.change_status(changes.status, now)
        workflow.updated_at = now
        await uow.workflows.save(workflow, new_version)
        await uow.commit()
    return workflow


async def archive_workflow(
    uow_factory: UnitOfWorkFactory, clock: Clock, workflow_id: str, user_id: str | None
) -> Workflow:
    """DELETE archives: the workflow and its versions stay readable.

    An edit that lands between the read and the write does not make the archive fail: it is
    read again and archived.
    """
    attempt = 0
    while True:
        attempt += 1
        async with uow_factory() as uow:
            workflow = await uow.workflows.get(workflow_id)
            if workflow is None or not visible(workflow.user_id, user_id):
                raise NotFound("Workflow", workflow_id)
            if workflow.status == WorkflowStatus.ARCHIVED:
                return workflow
            workflow.change_status(WorkflowStatus.ARCHIVED, clock.now())
            try:
                await uow.workflows.save(workflow, new_version=False)
            except ConcurrentChange:
                if attempt == ARCHIVE_ATTEMPTS:
                    raise
                continue
            await uow.commit()
            return workflow


async def list_versions(
    uow_factory: UnitOfWorkFactory, workflow_id: str, user_id: str | None
) -> list[VersionRecord]:
    """Every stored version of the workflow, oldest first."""
    async with uow_factory() as uow:
        workflow = await uow.workflows.get(workflow_id)
        if workflow is None or not visible(workflow.user_id, user_id):
            raise NotFound("Workflow", workflow_id)
        return await uow.workflows.versions(workflow_id)
