"""Domain events to wire events: the one place where Socket.IO payloads are rendered."""

from __future__ import annotations

import datetime as dt
from typing import Any

from orchestrator.application.ports import ExecutionEvent
from orchestrator.application.views import iso, node_view
from orchestrator.domain.execution import (
    DomainEvent,
    ExecutionErrored,
    ExecutionUpdated,
    NodeExecution,
    NodeUpdated,
    WorkflowExecution,
)


def render(execution: WorkflowExecution, events: list[DomainEvent]) -> list[ExecutionEvent]:
    """The wire events of an execution's domain events, in order."""
    return [_render(execution, event) for event in events]


def _render(execution: WorkflowExecution, event: DomainEvent) -> ExecutionEvent:
    match event:
        case NodeUpdated(seq, at, node):
            return ExecutionEvent(
                execution.id, seq, "node:update", node_update(execution.id, node, seq, at)
            )
        case ExecutionUpdated(seq, at, status, current, output, error, nodes):
            payload = {
                "executionId": execution.id,
                "workflowId": execution.workflow_id,
                "status": status.value,
                "currentNodeId": current,
                "nodeExecutions": [node_view(n) for n in nodes],
                "output": output,
                "error": error,
                "seq": seq,
                "timestamp": iso(at),
            }
            return ExecutionEvent(execution.id, seq, "execution:update", payload)
        case ExecutionErrored(seq, at, node_id, message):
            payload = {
                "executionId": execution.id,
                "nodeId": node_id,
                "error": message,
                "seq": seq,
                "timestamp": iso(at),
            }
            return ExecutionEvent(execution.id, seq, "execution:error", payload)
    raise TypeError(event)


def node_update(
    execution_id: str, node: NodeExecution, seq: int, at: dt.datetime
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
        "timestamp": iso(at),
    }


def snapshot(execution: WorkflowExecution, at: dt.datetime) -> dict[str, Any]:
    """The `execution:update` a new subscriber is sent: the current state, at `lastSeq`."""
    event = ExecutionUpdated(
        execution.last_seq,
        at,
        execution.status,
        execution.current_node_id,
        execution.output,
        execution.error,
        tuple(execution.nodes.values()),
    )
    return _render(execution, event).payload
