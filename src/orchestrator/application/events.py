"""Domain events to wire events: the one place where Socket.IO payloads are rendered.

`names` maps a node id to the name a user sees (`Definition.display_names()`); a node that is
not in it is shown by its id.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from orchestrator.application.ports import ExecutionEvent
from orchestrator.application.views import iso, node_data, node_view
from orchestrator.domain.execution import (
    DomainEvent,
    ExecutionErrored,
    ExecutionUpdated,
    NodeExecution,
    NodeProgressed,
    NodeStatus,
    NodeUpdated,
    WorkflowExecution,
)


def render(
    execution: WorkflowExecution, events: list[DomainEvent], names: Mapping[str, str]
) -> list[ExecutionEvent]:
    """The wire events of an execution's domain events, in order."""
    return [_render(execution, event, names) for event in events]


def _render(
    execution: WorkflowExecution, event: DomainEvent, names: Mapping[str, str]
) -> ExecutionEvent:
    match event:
        case NodeUpdated(seq, at, node):
            payload = node_update(execution.id, node, seq, at, names)
            return ExecutionEvent(execution.id, seq, "node:update", payload)
        case ExecutionUpdated(seq, at, status, current, output, error, nodes):
            payload = {
                "executionId": execution.id,
                "workflowId": execution.workflow_id,
                "status": status.value,
                "currentNodeId": current,
                "currentNodeName": None if current is None else names.get(current, current),
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
        case NodeProgressed():
            return _progress(execution, event, names)
    raise TypeError(event)


TOKEN_FIELDS = ("inputTokens", "outputTokens", "totalTokens", "model", "iteration")
THINKING_FIELDS = ("step", "thought", "plan", "toolCalls", "truncated")


def _progress(
    execution: WorkflowExecution, event: NodeProgressed, names: Mapping[str, str]
) -> ExecutionEvent:
    """`node:token-update` or `node:thinking`: the agent's report, with the node's name, the
    attempt it is about (a client drops a node's partial progress when a new attempt starts)
    and, in a loop body, the iteration path as `loopIteration`."""
    tokens = event.kind == "tokens"
    payload: dict[str, Any] = {
        "executionId": execution.id,
        "nodeId": event.node_id,
        "nodeName": names.get(event.node_id, event.node_id),
    }
    for name in TOKEN_FIELDS if tokens else THINKING_FIELDS:
        if name in event.data:
            payload[name] = event.data[name]
    payload["attempt"] = event.attempt
    if event.iteration:
        payload["loopIteration"] = list(event.iteration)
    payload["seq"] = event.seq
    payload["timestamp"] = iso(event.at)
    name = "node:token-update" if tokens else "node:thinking"
    return ExecutionEvent(execution.id, event.seq, name, payload)


def node_update(
    execution_id: str,
    node: NodeExecution,
    seq: int,
    at: dt.datetime,
    names: Mapping[str, str],
) -> dict[str, Any]:
    """Payload of `node:update`; `attempt` is 1-based; `iteration` only in a loop body."""
    payload: dict[str, Any] = {
        "executionId": execution_id,
        "nodeId": node.node_id,
        "nodeName": names.get(node.node_id, node.node_id),
        "nodeType": node.node_type.value,
        "status": node.status.value,
        "attempt": node.retry_count + 1,
        "data": node_data(node),
        "seq": seq,
        "timestamp": iso(at),
    }
    if node.iteration:
        payload["iteration"] = list(node.iteration)
    return payload


def snapshot(
    execution: WorkflowExecution, at: dt.datetime, names: Mapping[str, str]
) -> dict[str, Any]:
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
    return _render(execution, event, names).payload


def replay(
    execution: WorkflowExecution, at: dt.datetime, names: Mapping[str, str]
) -> list[dict[str, Any]]:
    """The `node:update` of each node that has started, in `names` order, at `lastSeq`.

    Sent after a `join`'s snapshot so that a view that reads only `node:update` paints every
    node: a picture of the state at the snapshot's seq, not new events.
    """
    order = {node_id: i for i, node_id in enumerate(names)}
    started = sorted(
        (n for n in execution.nodes.values() if n.status != NodeStatus.PENDING),
        key=lambda n: (order.get(n.node_id, len(order)), n.iteration),
    )
    # Each at the time it last changed, so that a late view shows when the node ran.
    return [
        node_update(
            execution.id, n, execution.last_seq, n.completed_at or n.started_at or at, names
        )
        for n in started
    ]
