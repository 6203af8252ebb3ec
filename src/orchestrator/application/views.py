"""The wire form of executions and events (camelCase, ISO 8601), shared by REST and Socket.IO."""

from __future__ import annotations

import datetime as dt
from typing import Any

from orchestrator.domain.execution import Attempt, NodeExecution, WorkflowExecution


def iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 with the UTC offset, or None."""
    return value.isoformat() if value is not None else None


def attempt_view(attempt: Attempt) -> dict[str, Any]:
    """One attempt of a node."""
    return {
        "attempt": attempt.number,
        "startedAt": iso(attempt.started_at),
        "completedAt": iso(attempt.completed_at),
        "error": attempt.error,
    }


def node_view(node: NodeExecution) -> dict[str, Any]:
    """A node execution as the contract shows it."""
    return {
        "nodeId": node.node_id,
        "nodeType": node.node_type.value,
        "status": node.status.value,
        "input": node.input,
        "output": node.output,
        "error": node.error,
        "retryCount": node.retry_count,
        "attempts": [attempt_view(a) for a in node.attempts],
        "startedAt": iso(node.started_at),
        "completedAt": iso(node.completed_at),
    }


def execution_view(execution: WorkflowExecution) -> dict[str, Any]:
    """An execution as the contract shows it."""
    return {
        "id": execution.id,
        "workflowId": execution.workflow_id,
        "workflowVersion": execution.workflow_version,
        "status": execution.status.value,
        "input": execution.input,
        "output": execution.output,
        "error": execution.error,
        "currentNodeId": execution.current_node_id,
        "nodeExecutions": [node_view(n) for n in execution.nodes.values()],
        "retryOf": execution.retry_of,
        "lastSeq": execution.last_seq,
        "startedAt": iso(execution.started_at),
        "completedAt": iso(execution.completed_at),
        "deadlineAt": iso(execution.deadline_at),
        "userId": execution.user_id,
        "createdAt": iso(execution.created_at),
        "updatedAt": iso(execution.updated_at),
    }


def execution_update(execution: WorkflowExecution, seq: int, now: dt.datetime) -> dict[str, Any]:
    """Payload of `execution:update`."""
    return {
        "executionId": execution.id,
        "workflowId": execution.workflow_id,
        "status": execution.status.value,
        "currentNodeId": execution.current_node_id,
        "nodeExecutions": [node_view(n) for n in execution.nodes.values()],
        "output": execution.output,
        "error": execution.error,
        "seq": seq,
        "timestamp": iso(now),
    }


def node_update(
    execution_id: str, node: NodeExecution, seq: int, now: dt.datetime
) -> dict[str, Any]:
    """Payload of `node:update`; `attempt` is 1-based."""
    return {
        "executionId": execution_id,
        "nodeId": node.node_id,
        "nodeType": node.node_type.value,
        "status": node.status.value,
        "attempt": node.retry_count + 1,
        "data": {"input": node.input, "output": node.output, "error": node.error},
        "seq": seq,
        "timestamp": iso(now),
    }


def execution_error(
    execution_id: str, node_id: str | None, error: str, seq: int, now: dt.datetime
) -> dict[str, Any]:
    """Payload of `execution:error`."""
    return {
        "executionId": execution_id,
        "nodeId": node_id,
        "error": error,
        "seq": seq,
        "timestamp": iso(now),
    }
