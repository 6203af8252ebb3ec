"""Use cases of executions: execute, get, list, cancel, retry, and the events to catch up."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from orchestrator.application.access import visible
from orchestrator.application.events import render
from orchestrator.application.ports import (
    FULL_DETAIL,
    Clock,
    ConflictRetry,
    EventPublisher,
    ExecutionDetail,
    ExecutionEvent,
    Page,
    RunnerSignals,
    UnitOfWorkFactory,
)
from orchestrator.domain.errors import ConcurrentChange, Conflict, NotFound
from orchestrator.domain.execution import (
    ExecutionStatus,
    NodeExecution,
    NodeStatus,
    WorkflowExecution,
)
from orchestrator.domain.workflow import Definition

MAX_EVENTS_PAGE = 1000


@dataclass(frozen=True)
class ExecutionServices:
    """What the execution use cases call out to."""

    uow_factory: UnitOfWorkFactory
    clock: Clock
    publisher: EventPublisher
    signals: RunnerSignals
    retry_conflicts: ConflictRetry
    execution_timeout_s: float


def _new_execution(
    services: ExecutionServices,
    workflow_id: str,
    definition: Definition,
    node_input: Any,
    user_id: str | None,
    idempotency_key: str | None,
) -> WorkflowExecution:
    now = services.clock.now()
    return WorkflowExecution(
        id=str(uuid.uuid4()),
        workflow_id=workflow_id,
        workflow_version=definition.version,
        status=ExecutionStatus.PENDING,
        input=node_input,
        user_id=user_id,
        created_at=now,
        updated_at=now,
        deadline_at=now + dt.timedelta(seconds=services.execution_timeout_s),
        nodes={n.id: NodeExecution(n.id, n.type) for n in definition.nodes},
        idempotency_key=idempotency_key,
    )


def scoped_key(user_id: str | None, key: str | None) -> str | None:
    """Idempotency keys are per user: two users may pick the same key.

    Stored as a digest, so that any key and user id fit the column.
    """
    if key is None:
        return None
    return hashlib.sha256(f"{user_id or ''}\n{key}".encode()).hexdigest()


async def execute_workflow(
    services: ExecutionServices,
    workflow_id: str,
    node_input: Any,
    user_id: str | None,
    idempotency_key: str | None,
    disabled_node_types: Collection[str] = (),
) -> WorkflowExecution:
    """Start an execution of the workflow's current version; it runs in the background.

    The same Idempotency-Key gives back the execution it started the first time. A current
    version with a node of one of `disabled_node_types` is refused, naming those nodes.
    """
    key = scoped_key(user_id, idempotency_key)
    async with services.uow_factory() as uow:
        workflow = await uow.workflows.get(workflow_id)
        if workflow is None or not visible(workflow.user_id, user_id):
            raise NotFound("Workflow", workflow_id)
        workflow.ensure_executable()
        workflow.definition.ensure_types_enabled(disabled_node_types)
        candidate = _new_execution(
            services, workflow.id, workflow.definition, node_input, user_id, key
        )
        execution = await uow.executions.add(candidate)
        await uow.commit()
    if execution.workflow_id != workflow_id:
        raise Conflict("This Idempotency-Key was already used to execute another workflow")
    if execution.id == candidate.id:
        services.signals.created(execution, workflow.definition)
    return execution


async def get_execution(
    services: ExecutionServices, execution_id: str, user_id: str | None
) -> WorkflowExecution:
    """The execution with its node states, or NotFound."""
    async with services.uow_factory() as uow:
        execution = await uow.executions.get(execution_id)
    if execution is None or not visible(execution.user_id, user_id):
        raise NotFound("Execution", execution_id)
    return execution


async def list_executions(
    services: ExecutionServices,
    page: Page,
    workflow_id: str | None,
    status: ExecutionStatus | None,
    user_id: str | None,
    detail: ExecutionDetail = FULL_DETAIL,
) -> tuple[list[WorkflowExecution], int]:
    """One page of executions, newest first, with the total count; `detail` says what each
    carries."""
    async with services.uow_factory() as uow:
        return await uow.executions.list_page(page, workflow_id, status, user_id, detail)


async def cancel_execution(
    services: ExecutionServices, execution_id: str, user_id: str | None
) -> None:
    """Cancel at once: in-flight calls are abandoned and nothing after them runs.

    Cancelling a cancelled execution is fine; a COMPLETED or FAILED one is a Conflict. The
    write is fenced like a runner's step: if the runner wrote in between, it is decided again.
    """

    async def attempt() -> list[ExecutionEvent]:
        async with services.uow_factory() as uow:
            execution = await uow.executions.get(execution_id)
            if execution is None or not visible(execution.user_id, user_id):
                raise NotFound("Execution", execution_id)
            if execution.status == ExecutionStatus.CANCELLED:
                return []
            if execution.status.terminal:
                raise Conflict(f"Execution {execution_id} is already {execution.status}")
            previous_seq = execution.last_seq
            unfinished = [n for n in execution.nodes.values() if not n.status.terminal]
            definition = await uow.workflows.definition(
                execution.workflow_id, execution.workflow_version
            )
            names = {} if definition is None else definition.display_names()
            events = render(execution, execution.cancel(services.clock.now()), names)
            if not await uow.executions.write_step(execution, previous_seq, unfinished, events):
                raise ConcurrentChange(f"Execution {execution_id} changed while cancelling")
            await uow.commit()
            return events

    events = await services.retry_conflicts(attempt)
    services.signals.cancelled(execution_id)
    await services.publisher.publish(events)


async def retry_execution(
    services: ExecutionServices, execution_id: str, user_id: str | None
) -> WorkflowExecution:
    """Retry a FAILED execution from the node that failed.

    The failed execution stays FAILED (terminal statuses are final); a new execution of the
    same version takes over the nodes that had completed, without calling them again, and
    runs the rest.
    """
    async with services.uow_factory() as uow:
        failed = await uow.executions.get(execution_id)
        if failed is None or not visible(failed.user_id, user_id):
            raise NotFound("Execution", execution_id)
        if failed.status != ExecutionStatus.FAILED:
            raise Conflict(
                f"Only a FAILED execution can be retried; {execution_id} is {failed.status}"
            )
        definition = await uow.workflows.definition(failed.workflow_id, failed.workflow_version)
        if definition is None:
            raise NotFound("Workflow version", f"{failed.workflow_id}@{failed.workflow_version}")
        retry = _new_execution(
            services, failed.workflow_id, definition, failed.input, failed.user_id, None
        )
        retry.retry_of = failed.id
        for node_id, node in failed.nodes.items():
            if node.status in (NodeStatus.COMPLETED, NodeStatus.SKIPPED):
                retry.nodes[node_id] = node
        await uow.executions.add(retry)
        await uow.commit()
    services.signals.created(retry, definition)
    return retry


async def execution_events(
    services: ExecutionServices, execution_id: str, after_seq: int, limit: int, user_id: str | None
) -> list[ExecutionEvent]:
    """The events after `after_seq`, in order: what a reconnecting client missed."""
    async with services.uow_factory() as uow:
        execution = await uow.executions.get(execution_id)
        if execution is None or not visible(execution.user_id, user_id):
            raise NotFound("Execution", execution_id)
        return await uow.executions.events(execution_id, after_seq, min(limit, MAX_EVENTS_PAGE))
