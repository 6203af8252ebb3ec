"""Protocols the use cases and the runner call out through."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from orchestrator.domain.evaluation import Analysis, Job
from orchestrator.domain.execution import (
    DomainEvent,
    ExecutionStatus,
    NodeExecution,
    WorkflowExecution,
)
from orchestrator.domain.retry import RetryPolicy
from orchestrator.domain.workflow import Definition, Workflow, WorkflowStatus

T = TypeVar("T")


class InvocationError(Exception):
    """A call to agent-service or tool-service that failed.

    `retryable` is True for connection errors, timeouts, 408, 429 and 5xx.
    """

    def __init__(self, message: str, *, retryable: bool, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status_code = status_code


@dataclass(frozen=True)
class CallContext:
    """Who is calling: sent as metadata, and the idempotency key of every attempt of a node.

    `attempt` (1-based) and `iteration` (the loop iteration path, empty outside loops) let an
    agent's progress reports name the node execution they are about."""

    execution_id: str
    workflow_id: str
    node_id: str
    user_id: str | None
    idempotency_key: str
    timeout_s: float | None
    attempt: int = 1
    iteration: tuple[int, ...] = ()


@dataclass(frozen=True)
class AgentAnswer:
    """An agent's answer, and the tokens it says it used (`usage`, when it reported them:
    `inputTokens`, `outputTokens`, `totalTokens`) with which `model`, when it said."""

    output: Any
    usage: dict[str, int] | None = None
    model: str | None = None


class AgentInvoker(Protocol):
    """agent-service: run an agent on an input; returns the agent's answer."""

    async def execute_agent(
        self, agent_id: str, node_input: Any, ctx: CallContext
    ) -> AgentAnswer: ...


class ToolInvoker(Protocol):
    """tool-service: run a tool with parameters; returns the tool's `data`."""

    async def execute_tool(
        self, tool_id: str, parameters: dict[str, Any], ctx: CallContext
    ) -> Any: ...


@dataclass(frozen=True)
class ChildRef:
    """A sub-workflow's execution, as its parent node shows it."""

    execution_id: str
    workflow_id: str
    workflow_name: str


@dataclass(frozen=True)
class ChildResult:
    """How a sub-workflow's execution stands, and the tokens it used (its shown usage)."""

    status: ExecutionStatus
    output: Any
    error: str | None
    usage: dict[str, Any] | None = None


class ChildRefused(Exception):
    """A sub-workflow cannot start (unknown or inactive workflow, too deep, calls itself)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ChildExecutions(Protocol):
    """Starts the executions of SUBWORKFLOW nodes and reads how they stand."""

    async def start(
        self,
        parent: WorkflowExecution,
        key: str,
        workflow_id: str,
        version: int | None,
        node_input: Any,
    ) -> ChildRef:
        """The child of node execution `key` (the same one again if it was started)."""
        ...

    async def result(self, execution_id: str) -> ChildResult | None: ...


AttemptHook = Callable[[int], Awaitable[None]]
FailureHook = Callable[[int, InvocationError, float], Awaitable[None]]


class Retrier(Protocol):
    """Runs a call under a retry policy.

    `on_attempt(n)` runs before attempt n (1-based, starting at `first_attempt`);
    `on_failure(n, error, delay_s)` after a failed attempt that will be retried after `delay_s`.
    The last error is raised when attempts run out or the error is not retryable.
    """

    async def run(
        self,
        call: Callable[[], Awaitable[Any]],
        policy: RetryPolicy,
        first_attempt: int,
        on_attempt: AttemptHook,
        on_failure: FailureHook,
    ) -> Any: ...


class Evaluator(Protocol):
    """Carries out expression work under a time limit and a bound on the result's size.

    Raises ExpressionError when the expression fails or breaks a limit (the message names it);
    any other error means the evaluator itself is unavailable (say, it is shutting down), and
    is not the expression's fault.
    """

    async def evaluate(self, job: Job, analysis: Analysis) -> Any: ...


class Clock(Protocol):
    """The time, in UTC."""

    def now(self) -> dt.datetime: ...


@dataclass(frozen=True)
class Page:
    """Which slice of a list: 1-based page number and page size."""

    page: int
    limit: int

    @property
    def offset(self) -> int:
        """Rows to skip."""
        return (self.page - 1) * self.limit


@dataclass(frozen=True)
class ExecutionDetail:
    """What a page of executions carries besides their states: the nodes' inputs, outputs and
    attempts (`nodes`) and the executions' inputs and outputs (`io`); left out, they are not
    even loaded, and read as None (attempts as [])."""

    nodes: bool = True
    io: bool = True


FULL_DETAIL = ExecutionDetail()

SortField = Literal["createdAt", "startedAt", "completedAt", "status"]


@dataclass(frozen=True)
class ExecutionOrder:
    """How a page of executions is sorted (executions never started or finished come last)."""

    by: SortField = "createdAt"
    descending: bool = True


NEWEST_FIRST = ExecutionOrder()


@dataclass(frozen=True)
class ExecutionEvent:
    """One Socket.IO event of an execution, numbered by `seq`."""

    execution_id: str
    seq: int
    name: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class VersionRecord:
    """One stored version of a workflow's definition."""

    version: int
    definition: Definition
    created_at: dt.datetime


class WorkflowRepository(Protocol):
    """Workflows and their immutable versions."""

    async def add(self, workflow: Workflow) -> None: ...

    async def get(self, workflow_id: str) -> Workflow | None: ...

    async def list_page(
        self, page: Page, user_id: str | None, status: WorkflowStatus | None
    ) -> tuple[list[Workflow], int]: ...

    async def save(self, workflow: Workflow, new_version: bool) -> None: ...

    async def archive(self, workflow_id: str, now: dt.datetime) -> Workflow | None:
        """Archive the workflow in one statement unless it already is (whatever changed since
        it was read); the workflow as stored then, or None when there is none."""
        ...

    async def versions(self, workflow_id: str) -> list[VersionRecord]: ...

    async def definition(self, workflow_id: str, version: int) -> Definition | None: ...


class ExecutionRepository(Protocol):
    """Executions, their node states and their events."""

    async def add(self, execution: WorkflowExecution) -> WorkflowExecution:
        """Store a new execution; with an idempotency key already used, return that one instead."""
        ...

    async def get(self, execution_id: str, lock: bool = False) -> WorkflowExecution | None:
        """The execution with its node executions; `lock` holds its row until the commit."""
        ...

    async def answer(
        self, execution_id: str, node: NodeExecution, answer: Any, now: dt.datetime
    ) -> bool:
        """Store a person's answer to a waiting node and make the execution claimable now;
        False (nothing written) when the node no longer waits or was answered already."""
        ...

    async def wake(self, execution_id: str, now: dt.datetime) -> None:
        """Make a waiting execution claimable now (a child of it ended)."""
        ...

    async def active_children(self, execution_id: str) -> list[str]:
        """The ids of the unfinished sub-workflow executions this one started."""
        ...

    async def list_page(
        self,
        page: Page,
        workflow_id: str | None,
        status: ExecutionStatus | None,
        user_id: str | None,
        detail: ExecutionDetail = FULL_DETAIL,
        order: ExecutionOrder = NEWEST_FIRST,
    ) -> tuple[list[WorkflowExecution], int]: ...

    async def events(
        self, execution_id: str, after_seq: int, limit: int
    ) -> list[ExecutionEvent]: ...

    async def write_step(
        self,
        execution: WorkflowExecution,
        previous_seq: int,
        nodes: list[NodeExecution],
        events: list[ExecutionEvent],
    ) -> bool:
        """Store the changed execution, nodes and events, only if nobody wrote since
        `previous_seq` and it is unfinished; False (nothing written) otherwise."""
        ...


class UnitOfWork(Protocol):
    """One transaction over the repositories."""

    workflows: WorkflowRepository
    executions: ExecutionRepository

    async def __aenter__(self) -> UnitOfWork: ...

    async def __aexit__(self, *exc: object) -> None: ...

    async def commit(self) -> None: ...


UnitOfWorkFactory = Callable[[], UnitOfWork]


class ConflictRetry(Protocol):
    """Runs an operation again (a few times, briefly spaced) while it raises ConcurrentChange."""

    async def __call__(self, operation: Callable[[], Awaitable[T]]) -> T: ...


class EventPublisher(Protocol):
    """Sends committed events to live subscribers."""

    async def publish(self, events: list[ExecutionEvent]) -> None: ...


class ExecutionObserver(Protocol):
    """Sees each committed change of an execution (metrics)."""

    def observe(self, execution: WorkflowExecution, events: Sequence[DomainEvent]) -> None: ...


class RunnerSignals(Protocol):
    """Lets the use cases nudge the runner of this process."""

    def created(self, execution: WorkflowExecution, definition: Definition) -> None:
        """A new execution was committed: claim now, and spare loading what is in hand."""
        ...

    def cancelled(self, execution_id: str) -> None:
        """Abandon this execution's in-flight work at once."""
        ...

    def woken(self, execution_id: str) -> None:
        """A waiting execution can go on (an answer, a child finished): claim it now."""
        ...
