"""WorkflowExecution and NodeExecution, their statuses, and the one table of allowed transitions."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from orchestrator.domain.errors import IllegalTransition
from orchestrator.domain.workflow import NodeType


class ExecutionStatus(StrEnum):
    """Status of a whole execution."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """COMPLETED, FAILED and CANCELLED are final."""
        return self in TERMINAL_EXECUTION


class NodeStatus(StrEnum):
    """Status of one node within an execution."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        """True once the node will not change again."""
        return self in TERMINAL_NODE


TERMINAL_EXECUTION = frozenset(
    {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}
)
ACTIVE_EXECUTION = frozenset({ExecutionStatus.PENDING, ExecutionStatus.RUNNING})
TERMINAL_NODE = frozenset(
    {NodeStatus.COMPLETED, NodeStatus.FAILED, NodeStatus.SKIPPED, NodeStatus.CANCELLED}
)

EXECUTION_TRANSITIONS: dict[ExecutionStatus, frozenset[ExecutionStatus]] = {
    ExecutionStatus.PENDING: frozenset(
        {ExecutionStatus.RUNNING, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}
    ),
    ExecutionStatus.RUNNING: frozenset(
        {ExecutionStatus.COMPLETED, ExecutionStatus.FAILED, ExecutionStatus.CANCELLED}
    ),
    ExecutionStatus.COMPLETED: frozenset(),
    ExecutionStatus.FAILED: frozenset(),
    ExecutionStatus.CANCELLED: frozenset(),
}

# RUNNING -> RUNNING is a new attempt of the same node.
NODE_TRANSITIONS: dict[NodeStatus, frozenset[NodeStatus]] = {
    NodeStatus.PENDING: frozenset({NodeStatus.RUNNING, NodeStatus.SKIPPED, NodeStatus.CANCELLED}),
    NodeStatus.RUNNING: frozenset(
        {NodeStatus.RUNNING, NodeStatus.COMPLETED, NodeStatus.FAILED, NodeStatus.CANCELLED}
    ),
    NodeStatus.COMPLETED: frozenset(),
    NodeStatus.FAILED: frozenset(),
    NodeStatus.SKIPPED: frozenset(),
    NodeStatus.CANCELLED: frozenset(),
}


def check_execution_transition(old: ExecutionStatus, new: ExecutionStatus) -> None:
    """Raise IllegalTransition unless `old -> new` is allowed."""
    if new not in EXECUTION_TRANSITIONS[old]:
        raise IllegalTransition(f"execution cannot go from {old} to {new}")


def check_node_transition(node_id: str, old: NodeStatus, new: NodeStatus) -> None:
    """Raise IllegalTransition unless `old -> new` is allowed for a node."""
    if new not in NODE_TRANSITIONS[old]:
        raise IllegalTransition(f"node {node_id} cannot go from {old} to {new}")


@dataclass
class Attempt:
    """One call of a node; `error` is set when it failed."""

    number: int
    started_at: dt.datetime
    completed_at: dt.datetime | None = None
    error: str | None = None


@dataclass
class NodeExecution:
    """The state of one node in one execution."""

    node_id: str
    node_type: NodeType
    status: NodeStatus = NodeStatus.PENDING
    input: Any = None
    output: Any = None
    error: str | None = None
    retry_count: int = 0
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    attempts: list[Attempt] = field(default_factory=list)
    # Position in the order in which nodes finished; rebuilds the variables after a restart.
    finished_order: int | None = None

    def move(self, new: NodeStatus, now: dt.datetime) -> None:
        """Change status through the transition table."""
        check_node_transition(self.node_id, self.status, new)
        if new == NodeStatus.RUNNING and self.started_at is None:
            self.started_at = now
        if new.terminal:
            self.completed_at = now
        self.status = new

    def start_attempt(self, number: int, now: dt.datetime) -> None:
        """Record the start of attempt `number` (1-based)."""
        self.move(NodeStatus.RUNNING, now)
        self.retry_count = number - 1
        if self.attempts and self.attempts[-1].number == number:
            # The same attempt again after a restart: it keeps its number and key.
            self.attempts[-1] = Attempt(number, now)
        else:
            self.attempts.append(Attempt(number, now))

    def fail_attempt(self, error: str, now: dt.datetime) -> None:
        """Record that the current attempt failed (the node may still be retried)."""
        if self.attempts:
            self.attempts[-1].completed_at = now
            self.attempts[-1].error = error
        self.error = error


@dataclass
class WorkflowExecution:
    """One run of one version of a workflow."""

    id: str
    workflow_id: str
    workflow_version: int
    status: ExecutionStatus
    input: Any
    user_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    deadline_at: dt.datetime
    nodes: dict[str, NodeExecution]
    output: Any = None
    error: str | None = None
    current_node_id: str | None = None
    started_at: dt.datetime | None = None
    completed_at: dt.datetime | None = None
    idempotency_key: str | None = None
    retry_of: str | None = None
    last_seq: int = 0

    def move(self, new: ExecutionStatus, now: dt.datetime) -> None:
        """Change status through the transition table; a terminal status is never left."""
        check_execution_transition(self.status, new)
        if new == ExecutionStatus.RUNNING and self.started_at is None:
            self.started_at = now
        if new.terminal:
            self.completed_at = now
        self.status = new
        self.updated_at = now

    @property
    def finished(self) -> bool:
        """True once the execution is in a terminal status."""
        return self.status.terminal
