"""Use cases of workflows: create, read, list, update, archive, versions, validate."""

from __future__ import annotations

import datetime as dt
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from orchestrator.application.access import Caller
from orchestrator.application.ports import Clock, Page, UnitOfWorkFactory, VersionRecord
from orchestrator.domain.errors import NotFound, Problem, ValidationFailed
from orchestrator.domain.validation import validate_definition
from orchestrator.domain.values import ValueLimits, ValueTooLarge
from orchestrator.domain.workflow import Definition, NodeType, Workflow, WorkflowStatus

UNSET: Any = object()
DEFAULT_LIMITS = ValueLimits()


@dataclass(frozen=True)
class WorkflowChanges:
    """A partial update; fields left at None are not changed (description may be cleared)."""

    name: str | None = None
    description: str | None = UNSET
    definition: Definition | None = None
    status: WorkflowStatus | None = None


EMPTY = Definition(nodes=(), edges=())


def bounds_problems(definition: Definition, limits: ValueLimits) -> list[Problem]:
    """The configs and schemas over the value bounds: never stored, not even in a draft."""
    bounded: list[tuple[str, Any]] = [
        (f"definition.nodes[{i}].config", n.config) for i, n in enumerate(definition.nodes)
    ]
    bounded += [(f"definition.nodes[{i}].data", n.data) for i, n in enumerate(definition.nodes)]
    bounded += [
        ("definition.inputSchema", definition.input_schema),
        ("definition.outputSchema", definition.output_schema),
    ]
    problems = []
    for path, value in bounded:
        try:
            limits.check(value, path.rsplit(".", 1)[-1])
        except ValueTooLarge as exc:
            problems.append(Problem(path, exc.message))
    return problems


def definition_problems(definition: Definition, limits: ValueLimits) -> list[Problem]:
    """Every problem of the definition; an empty list means it may run.

    A config or schema over the value bounds is reported alone: the other rules walk the configs.
    """
    return bounds_problems(definition, limits) or validate_definition(definition)


_PROBLEMS: OrderedDict[tuple[str, int], tuple[Definition, list[Problem]]] = OrderedDict()
PROBLEMS_CACHE_SIZE = 4096


def workflow_problems(workflow: Workflow) -> list[Problem]:
    """What keeps the workflow's current version from running (a draft may be incomplete);
    found once per stored version."""
    key = (workflow.id, workflow.version)
    cached = _PROBLEMS.get(key)
    if cached is not None and cached[0] == workflow.definition:
        _PROBLEMS.move_to_end(key)
        return list(cached[1])
    problems = validate_definition(workflow.definition)
    _PROBLEMS[key] = (workflow.definition, problems)
    if len(_PROBLEMS) > PROBLEMS_CACHE_SIZE:
        _PROBLEMS.popitem(last=False)
    return list(problems)


def _check(workflow: Workflow, definition: Definition, limits: ValueLimits) -> None:
    """Bounds always; an ACTIVE workflow's definition must be able to run. Raises
    ValidationFailed listing every problem."""
    problems = bounds_problems(definition, limits)
    if not problems and workflow.status == WorkflowStatus.ACTIVE:
        problems = validate_definition(definition)
        if problems:
            raise ValidationFailed(
                "An ACTIVE workflow's definition must be valid (save it as a DRAFT or "
                "INACTIVE workflow to keep it incomplete)",
                problems,
            )
    if problems:
        raise ValidationFailed("Workflow definition is invalid", problems)
    _refuse_self_calls(workflow.id, definition)


def check_definition(definition: Definition, limits: ValueLimits) -> None:
    """Raise ValidationFailed listing every problem of the definition."""
    problems = definition_problems(definition, limits)
    if problems:
        raise ValidationFailed("Workflow definition is invalid", problems)


def _refuse_self_calls(workflow_id: str, definition: Definition) -> None:
    """A SUBWORKFLOW node may not run the workflow it is in (longer cycles through other
    workflows are refused when they run)."""
    problems = [
        Problem(
            f"definition.nodes[{i}].config.workflowId",
            f"SUBWORKFLOW node {node.id!r} would run workflow {workflow_id}, the one it is in",
        )
        for i, node in enumerate(definition.nodes)
        if node.type == NodeType.SUBWORKFLOW and node.config.get("workflowId") == workflow_id
    ]
    if problems:
        raise ValidationFailed("Workflow definition is invalid", problems)


async def create_workflow(
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
    name: str,
    description: str | None,
    definition: Definition | None,
    status: WorkflowStatus | None,
    caller: Caller,
    limits: ValueLimits = DEFAULT_LIMITS,
) -> Workflow:
    """Store a new workflow at version 1, DRAFT unless told otherwise.

    A DRAFT (or INACTIVE) workflow may be incomplete, its definition even empty: GET reports
    its problems. One created ACTIVE must be valid. Values over the bounds are never stored.
    """
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
        definition=replace(definition or EMPTY, version=1),
        user_id=caller.user_id,
        created_at=now,
        updated_at=now,
    )
    _check(workflow, workflow.definition, limits)
    async with uow_factory() as uow:
        await uow.workflows.add(workflow)
        await uow.commit()
    return workflow


async def get_workflow(
    uow_factory: UnitOfWorkFactory, workflow_id: str, caller: Caller
) -> Workflow:
    """The workflow, or NotFound (also when it belongs to another user)."""
    async with uow_factory() as uow:
        workflow = await uow.workflows.get(workflow_id)
    if workflow is None or not caller.may_read(workflow.user_id):
        raise NotFound("Workflow", workflow_id)
    return workflow


async def list_workflows(
    uow_factory: UnitOfWorkFactory, page: Page, caller: Caller, status: WorkflowStatus | None
) -> tuple[list[Workflow], int]:
    """One page of the caller's workflows, newest first, with the total count."""
    async with uow_factory() as uow:
        return await uow.workflows.list_page(page, caller.only, status)


async def update_workflow(
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
    workflow_id: str,
    changes: WorkflowChanges,
    caller: Caller,
    limits: ValueLimits = DEFAULT_LIMITS,
) -> Workflow:
    """Apply a partial update; a changed definition becomes the next version.

    Activating needs a valid definition: 400 lists every problem.
    """

    def change(workflow: Workflow, now: dt.datetime) -> bool:
        if changes.name is not None:
            workflow.name = changes.name
        if changes.description is not UNSET:
            workflow.description = changes.description
        new_version = False
        if changes.definition is not None:
            new_version = workflow.replace_definition(changes.definition, now)
        if changes.status is not None:
            workflow.change_status(changes.status, now)
        return new_version

    return await _change(uow_factory, clock, workflow_id, caller, limits, change)


async def edit_graph(
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
    workflow_id: str,
    edit: Callable[[Definition], Definition],
    caller: Caller,
    limits: ValueLimits = DEFAULT_LIMITS,
) -> Workflow:
    """One edit of the graph (a node or an edge added, changed or removed): the next version.

    NotFound or Conflict come from the edit itself (an unknown node, an id already taken).
    """

    def change(workflow: Workflow, now: dt.datetime) -> bool:
        return workflow.replace_definition(edit(workflow.definition), now)

    return await _change(uow_factory, clock, workflow_id, caller, limits, change)


async def _change(
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
    workflow_id: str,
    caller: Caller,
    limits: ValueLimits,
    change: Callable[[Workflow, dt.datetime], bool],
) -> Workflow:
    async with uow_factory() as uow:
        workflow = await uow.workflows.get(workflow_id)
        if workflow is None or not caller.may_change(workflow.user_id):
            raise NotFound("Workflow", workflow_id)
        workflow.ensure_editable()
        was = (workflow.status, workflow.version)
        now = clock.now()
        new_version = change(workflow, now)
        if (workflow.status, workflow.version) != was:
            _check(workflow, workflow.definition, limits)
        workflow.updated_at = now
        await uow.workflows.save(workflow, new_version)
        await uow.commit()
    return workflow


async def archive_workflow(
    uow_factory: UnitOfWorkFactory, clock: Clock, workflow_id: str, caller: Caller
) -> Workflow:
    """DELETE archives: the workflow and its versions stay readable.

    The repository archives in one statement, so an edit landing meanwhile cannot make it fail.
    """
    async with uow_factory() as uow:
        workflow = await uow.workflows.get(workflow_id)
        if workflow is None or not caller.may_change(workflow.user_id):
            raise NotFound("Workflow", workflow_id)
        if workflow.status == WorkflowStatus.ARCHIVED:
            return workflow
        archived = await uow.workflows.archive(workflow_id, clock.now())
        if archived is None:
            raise NotFound("Workflow", workflow_id)
        await uow.commit()
    return archived


async def list_versions(
    uow_factory: UnitOfWorkFactory, workflow_id: str, caller: Caller
) -> list[VersionRecord]:
    """Every stored version of the workflow, oldest first."""
    async with uow_factory() as uow:
        workflow = await uow.workflows.get(workflow_id)
        if workflow is None or not caller.may_read(workflow.user_id):
            raise NotFound("Workflow", workflow_id)
        return await uow.workflows.versions(workflow_id)
