"""Use cases of executions: execute, get, list, cancel, retry, and the events to catch up."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from orchestrator.application.access import ANYONE, Caller
from orchestrator.application.events import render
from orchestrator.application.ports import (
    FULL_DETAIL,
    ChildRef,
    ChildRefused,
    ChildResult,
    Clock,
    ConflictRetry,
    EventPublisher,
    ExecutionDetail,
    ExecutionEvent,
    ExecutionObserver,
    ExecutionOrder,
    ExecutionRepository,
    Page,
    RunnerSignals,
    UnitOfWorkFactory,
)
from orchestrator.domain.engine import initial_nodes
from orchestrator.domain.errors import (
    ConcurrentChange,
    Conflict,
    NotFound,
    Problem,
    ValidationFailed,
)
from orchestrator.domain.execution import (
    ExecutionStatus,
    NodeStatus,
    WorkflowExecution,
)
from orchestrator.domain.values import ValueLimits
from orchestrator.domain.workflow import Definition

MAX_EVENTS_PAGE = 1000
MAX_ANCESTRY = 100


@dataclass(frozen=True)
class ExecutionServices:
    """What the execution use cases call out to."""

    uow_factory: UnitOfWorkFactory
    clock: Clock
    publisher: EventPublisher
    signals: RunnerSignals
    retry_conflicts: ConflictRetry
    execution_timeout_s: float
    observer: ExecutionObserver | None = None


def _new_execution(
    services: ExecutionServices,
    workflow_id: str,
    definition: Definition,
    node_input: Any,
    user_id: str | None,
    idempotency_key: str | None,
    trigger: dict[str, Any] | None = None,
    budget: dict[str, Any] | None = None,
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
        nodes=initial_nodes(definition),
        idempotency_key=idempotency_key,
        trigger=trigger,
        budget=budget,
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
    caller: Caller,
    idempotency_key: str | None,
    disabled_node_types: Collection[str] = (),
    trace_parent: str | None = None,
    trigger: dict[str, Any] | None = None,
    budget: dict[str, Any] | None = None,
) -> WorkflowExecution:
    """Start an execution of the workflow's current version; it runs in the background.

    The same Idempotency-Key gives back the execution it started the first time. A current
    version with a node of one of `disabled_node_types` is refused, naming those nodes.
    `trace_parent` (a W3C traceparent) is stored with it: the spans of its steps nest there.
    `trigger` says what started it (a schedule, a webhook); `budget` bounds its tokens and
    cost (None: the workflow's own budget, if it has one).
    """
    key = scoped_key(caller.user_id, idempotency_key)
    async with services.uow_factory() as uow:
        workflow = await uow.workflows.get(workflow_id)
        if workflow is None or not caller.may_change(workflow.user_id):
            raise NotFound("Workflow", workflow_id)
        workflow.ensure_executable()
        workflow.definition.ensure_types_enabled(disabled_node_types)
        candidate = _new_execution(
            services,
            workflow.id,
            workflow.definition,
            node_input,
            caller.user_id,
            key,
            trigger,
            budget if budget is not None else workflow.definition.budget,
        )
        candidate.trace_parent = trace_parent
        execution = await uow.executions.add(candidate)
        await uow.commit()
    if execution.workflow_id != workflow_id:
        raise Conflict("This Idempotency-Key was already used to execute another workflow")
    if execution.id == candidate.id:
        services.signals.created(execution, workflow.definition)
    return execution


async def get_execution(
    services: ExecutionServices, execution_id: str, caller: Caller
) -> WorkflowExecution:
    """The execution with its node states, or NotFound."""
    async with services.uow_factory() as uow:
        execution = await uow.executions.get(execution_id)
    if execution is None or not caller.may_read(execution.user_id):
        raise NotFound("Execution", execution_id)
    return execution


async def list_executions(
    services: ExecutionServices,
    page: Page,
    workflow_id: str | None,
    status: ExecutionStatus | None,
    caller: Caller,
    detail: ExecutionDetail = FULL_DETAIL,
) -> tuple[list[WorkflowExecution], int]:
    """One page of executions, newest first, with the total count; `detail` says what each
    carries."""
    async with services.uow_factory() as uow:
        return await uow.executions.list_page(page, workflow_id, status, caller.only, detail)


async def workflow_history(
    services: ExecutionServices,
    workflow_id: str,
    page: Page,
    order: ExecutionOrder,
    caller: Caller,
) -> tuple[list[WorkflowExecution], int]:
    """One page of a workflow's executions, with node states (not their data); NotFound for
    a workflow the caller cannot see."""
    async with services.uow_factory() as uow:
        workflow = await uow.workflows.get(workflow_id)
        if workflow is None or not caller.may_read(workflow.user_id):
            raise NotFound("Workflow", workflow_id)
        return await uow.executions.list_page(
            page, workflow_id, None, caller.only, ExecutionDetail(nodes=False, io=False), order
        )


async def cancel_execution(services: ExecutionServices, execution_id: str, caller: Caller) -> None:
    """Cancel at once: in-flight calls are abandoned and nothing after them runs.

    Cancelling a cancelled execution is fine; a COMPLETED or FAILED one is a Conflict. The
    write is fenced like a runner's step: if the runner wrote in between, it is decided again.
    """

    async def attempt() -> tuple[list[ExecutionEvent], str | None]:
        async with services.uow_factory() as uow:
            execution = await uow.executions.get(execution_id)
            if execution is None or not caller.may_change(execution.user_id):
                raise NotFound("Execution", execution_id)
            if execution.status == ExecutionStatus.CANCELLED:
                return [], None
            if execution.status.terminal:
                raise Conflict(f"Execution {execution_id} is already {execution.status}")
            previous_seq = execution.last_seq
            unfinished = [n for n in execution.nodes.values() if not n.status.terminal]
            definition = await uow.workflows.definition(
                execution.workflow_id, execution.workflow_version
            )
            names = {} if definition is None else definition.display_names()
            changes = execution.cancel(services.clock.now())
            events = render(execution, changes, names)
            if not await uow.executions.write_step(execution, previous_seq, unfinished, events):
                raise ConcurrentChange(f"Execution {execution_id} changed while cancelling")
            parent = execution.parent_execution_id
            if parent is not None:  # its SUBWORKFLOW node fails: the child was cancelled
                await uow.executions.wake(parent, services.clock.now())
            await uow.commit()
            if services.observer is not None:
                services.observer.observe(execution, changes)
            return events, parent

    events, parent = await services.retry_conflicts(attempt)
    services.signals.cancelled(execution_id)
    if parent is not None:
        services.signals.woken(parent)
    await services.publisher.publish(events)
    # Its sub-workflows are cancelled with it (and theirs with them).
    async with services.uow_factory() as uow:
        children = await uow.executions.active_children(execution_id)
    for child_id in children:
        with contextlib.suppress(Conflict):  # it finished in the meantime
            await cancel_execution(services, child_id, ANYONE)


async def raise_budget(
    services: ExecutionServices, execution_id: str, budget: dict[str, Any], caller: Caller
) -> WorkflowExecution:
    """Give an execution paused by its budget a new one; it goes on at once if the new budget
    allows (else it stays paused). Conflict unless it is paused."""

    async def attempt() -> tuple[WorkflowExecution, list[ExecutionEvent]]:
        async with services.uow_factory() as uow:
            execution = await uow.executions.get(execution_id)
            if execution is None or not caller.may_change(execution.user_id):
                raise NotFound("Execution", execution_id)
            if execution.paused is None:
                raise Conflict(
                    f"Execution {execution_id} is {execution.status} and not paused by its "
                    "budget: only a paused execution's budget can be changed"
                )
            previous_seq = execution.last_seq
            definition = await uow.workflows.definition(
                execution.workflow_id, execution.workflow_version
            )
            names = {} if definition is None else definition.display_names()
            now = services.clock.now()
            events = render(execution, execution.set_budget(budget, now), names)
            if not await uow.executions.write_step(execution, previous_seq, [], events):
                raise ConcurrentChange(f"Execution {execution_id} changed meanwhile")
            await uow.executions.wake(execution_id, now)
            await uow.commit()
            return execution, events

    execution, events = await services.retry_conflicts(attempt)
    services.signals.woken(execution_id)
    await services.publisher.publish(events)
    return execution


async def resume_node(
    services: ExecutionServices,
    execution_id: str,
    node_id: str,
    answer: Any,
    iteration: tuple[int, ...] | None,
    caller: Caller,
    limits: ValueLimits,
) -> None:
    """Answer a node that waits for a person; the execution goes on, on whichever runner
    claims it first.

    NotFound for an unknown execution or node; Conflict when the node does not wait, or was
    answered already (of two resumes at once, exactly one wins).
    """
    if answer is None:
        raise ValidationFailed("input: the answer is required", [Problem("input", "required")])
    limits.check(answer, "the answer")
    async with services.uow_factory() as uow:
        execution = await uow.executions.get(execution_id, lock=True)
        if execution is None or not caller.may_change(execution.user_id):
            raise NotFound("Execution", execution_id)
        node = execution.waiting_node(node_id, iteration)
        if not await uow.executions.answer(execution_id, node, answer, services.clock.now()):
            raise Conflict(f"Node {node_id} of execution {execution_id} was answered already")
        await uow.commit()
    services.signals.woken(execution_id)


class Subworkflows:
    """Starts the executions of SUBWORKFLOW nodes through the execute use case.

    `services` is set once the services are built (they need the runner, which needs this).
    """

    def __init__(self, max_depth: int, scoped: bool = False) -> None:
        self.max_depth = max_depth
        self.scoped = scoped  # authentication is on: a child runs only its owner's workflows
        self.services: ExecutionServices | None = None

    def _services(self) -> ExecutionServices:
        if self.services is None:
            raise RuntimeError("Subworkflows.services is not set")
        return self.services

    async def start(
        self,
        parent: WorkflowExecution,
        key: str,
        workflow_id: str,
        version: int | None,
        node_input: Any,
    ) -> ChildRef:
        """The child execution of node execution `key`: started once, the same one again after
        a restart. ChildRefused when the workflow cannot run as a child."""
        services = self._services()
        depth = parent.depth + 1
        if depth > self.max_depth:
            raise ChildRefused(
                f"sub-workflows nest deeper than MAX_SUBWORKFLOW_DEPTH ({self.max_depth})"
            )
        async with services.uow_factory() as uow:
            chain = await self._ancestry(uow.executions, parent)
            if workflow_id in chain:
                path = " -> ".join([*reversed(chain), workflow_id])
                raise ChildRefused(f"workflow {workflow_id} would call itself: {path}")
            workflow = await uow.workflows.get(workflow_id)
            owner = Caller(parent.user_id, scoped=self.scoped)
            if workflow is None or not owner.may_change(workflow.user_id):
                raise ChildRefused(f"sub-workflow {workflow_id} not found")
            if version is None:
                try:
                    workflow.ensure_executable()
                except Conflict as exc:
                    raise ChildRefused(exc.message) from exc
                definition = workflow.definition
            else:
                pinned = await uow.workflows.definition(workflow_id, version)
                if pinned is None:
                    raise ChildRefused(f"sub-workflow {workflow_id} has no version {version}")
                definition = pinned
            once = scoped_key(parent.user_id, f"subworkflow:{parent.id}:{key}")
            child = _new_execution(
                services, workflow_id, definition, node_input, parent.user_id, once
            )
            child.parent_execution_id = parent.id
            child.parent_node_id = parent.nodes[key].node_id
            child.depth = depth
            execution = await uow.executions.add(child)
            await uow.commit()
        if execution.id == child.id:
            services.signals.created(execution, definition)
        return ChildRef(execution.id, workflow_id, workflow.name)

    @staticmethod
    async def _ancestry(executions: ExecutionRepository, parent: WorkflowExecution) -> list[str]:
        """The workflow ids from the parent up to the root execution."""
        chain = [parent.workflow_id]
        ancestor_id = parent.parent_execution_id
        while ancestor_id is not None and len(chain) <= MAX_ANCESTRY:
            ancestor = await executions.get(ancestor_id)
            if ancestor is None:
                break
            chain.append(ancestor.workflow_id)
            ancestor_id = ancestor.parent_execution_id
        return chain

    async def result(self, execution_id: str) -> ChildResult | None:
        """How the child stands (None if it is gone)."""
        async with self._services().uow_factory() as uow:
            child = await uow.executions.get(execution_id)
        if child is None:
            return None
        return ChildResult(child.status, child.output, child.error, child.usage)


async def retry_execution(
    services: ExecutionServices, execution_id: str, caller: Caller
) -> WorkflowExecution:
    """Retry a FAILED execution from the node that failed.

    The failed execution stays FAILED (terminal statuses are final); a new execution of the
    same version takes over the nodes that had completed, without calling them again, and
    runs the rest.
    """
    async with services.uow_factory() as uow:
        failed = await uow.executions.get(execution_id)
        if failed is None or not caller.may_change(failed.user_id):
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
            # A loop runs again whole: its iterations' node executions start over.
            if node.status in (NodeStatus.COMPLETED, NodeStatus.SKIPPED) and not node.iteration:
                retry.nodes[node_id] = node
        await uow.executions.add(retry)
        await uow.commit()
    services.signals.created(retry, definition)
    return retry


async def execution_events(
    services: ExecutionServices, execution_id: str, after_seq: int, limit: int, caller: Caller
) -> list[ExecutionEvent]:
    """The events after `after_seq`, in order: what a reconnecting client missed."""
    async with services.uow_factory() as uow:
        execution = await uow.executions.get(execution_id)
        if execution is None or not caller.may_read(execution.user_id):
            raise NotFound("Execution", execution_id)
        return await uow.executions.events(execution_id, after_seq, min(limit, MAX_EVENTS_PAGE))
