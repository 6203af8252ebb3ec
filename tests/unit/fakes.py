"""Small hand-written fakes of the application ports, for use-case tests without I/O."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from orchestrator.application.ports import (
    FULL_DETAIL,
    NEWEST_FIRST,
    ChildRef,
    ChildRefused,
    ChildResult,
    ExecutionDetail,
    ExecutionEvent,
    ExecutionOrder,
    ExecutionRepository,
    Page,
    VersionRecord,
    WorkflowRepository,
)
from orchestrator.domain.execution import (
    ExecutionStatus,
    NodeExecution,
    NodeStatus,
    WorkflowExecution,
)
from orchestrator.domain.workflow import Definition, Workflow, WorkflowStatus


class FakeWorkflowRepository:
    """Workflows in a dict; copies in and out, so only `add`/`save`/`archive` change what is
    stored."""

    def __init__(self) -> None:
        self.rows: dict[str, Workflow] = {}
        self.version_rows: dict[str, list[VersionRecord]] = {}

    async def add(self, workflow: Workflow) -> None:
        self.rows[workflow.id] = copy.deepcopy(workflow)
        self.version_rows[workflow.id] = [
            VersionRecord(workflow.version, workflow.definition, workflow.updated_at)
        ]

    async def get(self, workflow_id: str) -> Workflow | None:
        row = self.rows.get(workflow_id)
        return copy.deepcopy(row) if row is not None else None

    async def list_page(
        self, page: Page, user_id: str | None, status: WorkflowStatus | None
    ) -> tuple[list[Workflow], int]:
        matching = [
            w
            for w in sorted(self.rows.values(), key=lambda w: (-w.created_at.timestamp(), w.id))
            if (user_id is None or w.user_id == user_id) and (status is None or w.status == status)
        ]
        chosen = matching[page.offset : page.offset + page.limit]
        return [copy.deepcopy(w) for w in chosen], len(matching)

    async def save(self, workflow: Workflow, new_version: bool) -> None:
        assert workflow.id in self.rows, "save() of a workflow that was never added"
        self.rows[workflow.id] = copy.deepcopy(workflow)
        if new_version:
            self.version_rows[workflow.id].append(
                VersionRecord(workflow.version, workflow.definition, workflow.updated_at)
            )

    async def archive(self, workflow_id: str, now: dt.datetime) -> Workflow | None:
        row = self.rows.get(workflow_id)
        if row is None:
            return None
        if row.status != WorkflowStatus.ARCHIVED:
            row.status = WorkflowStatus.ARCHIVED
            row.updated_at = now
        return copy.deepcopy(row)

    async def versions(self, workflow_id: str) -> list[VersionRecord]:
        return list(self.version_rows.get(workflow_id, []))

    async def definition(self, workflow_id: str, version: int) -> Definition | None:
        for record in self.version_rows.get(workflow_id, []):
            if record.version == version:
                return record.definition
        return None


class FakeExecutionRepository:
    """Executions in a dict; an idempotency key already used returns the first execution."""

    def __init__(self) -> None:
        self.rows: dict[str, WorkflowExecution] = {}
        self.events_by_execution: dict[str, list[ExecutionEvent]] = {}
        self.woken: list[str] = []

    async def add(self, execution: WorkflowExecution) -> WorkflowExecution:
        for row in self.rows.values():
            if execution.idempotency_key is not None and (
                row.idempotency_key == execution.idempotency_key
            ):
                return copy.deepcopy(row)
        self.rows[execution.id] = copy.deepcopy(execution)
        return execution

    async def get(self, execution_id: str, lock: bool = False) -> WorkflowExecution | None:
        row = self.rows.get(execution_id)
        return copy.deepcopy(row) if row is not None else None

    async def answer(
        self, execution_id: str, node: NodeExecution, answer: Any, now: dt.datetime
    ) -> bool:
        stored = self.rows[execution_id].nodes[node.key]
        if stored.status != NodeStatus.WAITING_INPUT or stored.answer is not None:
            return False
        stored.answer = answer
        return True

    async def wake(self, execution_id: str, now: dt.datetime) -> None:
        self.woken.append(execution_id)

    async def active_children(self, execution_id: str) -> list[str]:
        return [
            x.id
            for x in self.rows.values()
            if x.parent_execution_id == execution_id and not x.finished
        ]

    async def list_page(
        self,
        page: Page,
        workflow_id: str | None,
        status: ExecutionStatus | None,
        user_id: str | None,
        detail: ExecutionDetail = FULL_DETAIL,
        order: ExecutionOrder = NEWEST_FIRST,
    ) -> tuple[list[WorkflowExecution], int]:
        matching = [
            x
            for x in self.rows.values()
            if (workflow_id is None or x.workflow_id == workflow_id)
            and (status is None or x.status == status)
            and (user_id is None or x.user_id == user_id)
        ]
        chosen = matching[page.offset : page.offset + page.limit]
        return [copy.deepcopy(x) for x in chosen], len(matching)

    async def events(self, execution_id: str, after_seq: int, limit: int) -> list[ExecutionEvent]:
        events = self.events_by_execution.get(execution_id, [])
        return [ev for ev in events if ev.seq > after_seq][:limit]

    async def write_step(
        self,
        execution: WorkflowExecution,
        previous_seq: int,
        nodes: list[NodeExecution],
        events: list[ExecutionEvent],
    ) -> bool:
        stored = self.rows[execution.id]
        if stored.finished or stored.last_seq != previous_seq:
            return False
        self.rows[execution.id] = copy.deepcopy(execution)
        self.events_by_execution.setdefault(execution.id, []).extend(events)
        return True


class FakeUnitOfWork:
    """One fake transaction; `committed` turns True on commit, `commits` counts them."""

    def __init__(self) -> None:
        self.fake_workflows = FakeWorkflowRepository()
        self.fake_executions = FakeExecutionRepository()
        self.workflows: WorkflowRepository = self.fake_workflows
        self.executions: ExecutionRepository = self.fake_executions
        self.committed = False
        self.commits = 0

    async def __aenter__(self) -> FakeUnitOfWork:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def commit(self) -> None:
        self.committed = True
        self.commits += 1


class FixedClock:
    """A clock that stands still until a test moves it."""

    def __init__(self, now: dt.datetime) -> None:
        self.current = now

    def now(self) -> dt.datetime:
        return self.current

    def advance(self, seconds: float) -> dt.datetime:
        self.current += dt.timedelta(seconds=seconds)
        return self.current


class NoChildren:
    """Sub-workflows refused: for tests of workflows without SUBWORKFLOW nodes."""

    async def start(
        self,
        parent: WorkflowExecution,
        key: str,
        workflow_id: str,
        version: int | None,
        node_input: Any,
    ) -> ChildRef:
        raise ChildRefused("no sub-workflows in this test")

    async def result(self, execution_id: str) -> ChildResult | None:
        return None
