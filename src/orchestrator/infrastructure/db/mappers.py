"""Rows <-> domain objects, and definitions <-> JSON."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.domain.execution import (
    Attempt,
    ExecutionStatus,
    NodeExecution,
    NodeStatus,
    WorkflowExecution,
)
from orchestrator.domain.usage import normalize
from orchestrator.domain.workflow import Definition, Edge, Node, NodeType, Workflow, WorkflowStatus


def definition_to_json(definition: Definition) -> dict[str, Any]:
    """The stored (and wire) form of a definition."""
    nodes = []
    for node in definition.nodes:
        item: dict[str, Any] = {"id": node.id, "type": node.type.value, "config": node.config}
        if node.name is not None:
            item["name"] = node.name
        if node.position is not None:
            item["position"] = node.position
        if node.custom_name is not None:
            item["customName"] = node.custom_name
        if node.description is not None:
            item["description"] = node.description
        if node.data is not None:
            item["data"] = node.data
        nodes.append(item)
    edges = []
    for edge in definition.edges:
        item = {"id": edge.id, "source": edge.source, "target": edge.target}
        if edge.condition is not None:
            item["condition"] = edge.condition
        if edge.source_handle is not None:
            item["sourceHandle"] = edge.source_handle
        edges.append(item)
    stored: dict[str, Any] = {"nodes": nodes, "edges": edges, "version": definition.version}
    if definition.input_schema is not None:
        stored["inputSchema"] = definition.input_schema
    if definition.output_schema is not None:
        stored["outputSchema"] = definition.output_schema
    if definition.budget is not None:
        stored["budget"] = definition.budget
    return stored


def definition_from_json(data: Mapping[str, Any]) -> Definition:
    """A definition from its stored form."""
    return Definition(
        nodes=tuple(
            Node(
                id=n["id"],
                type=NodeType(n["type"]),
                config=n.get("config") or {},
                name=n.get("name"),
                position=n.get("position"),
                custom_name=n.get("customName"),
                description=n.get("description"),
                data=n.get("data"),
            )
            for n in data["nodes"]
        ),
        edges=tuple(
            Edge(
                id=e["id"],
                source=e["source"],
                target=e["target"],
                condition=e.get("condition"),
                source_handle=e.get("sourceHandle"),
            )
            for e in data["edges"]
        ),
        version=int(data.get("version", 1)),
        input_schema=data.get("inputSchema"),
        output_schema=data.get("outputSchema"),
        budget=data.get("budget"),
    )


def workflow_from_row(row: Any, definition: Definition) -> Workflow:
    """A workflow from its row and the definition of its current version."""
    return Workflow(
        id=row.id,
        name=row.name,
        description=row.description,
        status=WorkflowStatus(row.status),
        definition=definition,
        user_id=row.user_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _attempts_to_json(attempts: list[Attempt]) -> list[dict[str, Any]]:
    return [_attempt_to_json(a) for a in attempts]


def _attempt_to_json(attempt: Attempt) -> dict[str, Any]:
    stored = {
        "n": attempt.number,
        "s": attempt.started_at.isoformat(),
        "c": attempt.completed_at.isoformat() if attempt.completed_at else None,
        "e": attempt.error,
    }
    if attempt.usage:
        stored["u"] = attempt.usage
    return stored


def _attempts_from_json(data: Sequence[Mapping[str, Any]] | None) -> list[Attempt]:
    return [
        Attempt(
            number=a["n"],
            started_at=dt.datetime.fromisoformat(a["s"]),
            completed_at=dt.datetime.fromisoformat(a["c"]) if a["c"] else None,
            error=a["e"],
            usage=normalize(a.get("u")),
        )
        for a in data or []
    ]


def node_values(node: NodeExecution) -> dict[str, Any]:
    """The mutable columns of a node row (named in NODE_VALUES)."""
    return {
        "status": node.status.value,
        "input": node.input,
        "output": node.output,
        "error": node.error,
        "retry_count": node.retry_count,
        "attempts": _attempts_to_json(node.attempts),
        "finished_order": node.finished_order,
        "started_at": node.started_at,
        "completed_at": node.completed_at,
        "routes": node.routes,
        "state": node.state,
        "answer": node.answer,
        "usage": node.usage,
    }


NODE_VALUES = tuple(node_values(NodeExecution("", NodeType.START)))
"""The node columns a step writes."""


def iteration_text(iteration: tuple[int, ...]) -> str:
    """The stored form of an iteration path: "" outside loops, "2", "0.3"."""
    return ".".join(map(str, iteration))


def node_row(execution_id: str, node: NodeExecution) -> dict[str, Any]:
    """A full node row for an insert."""
    return {
        "execution_id": execution_id,
        "node_id": node.node_id,
        "iteration": iteration_text(node.iteration),
        "position": node.position,
        "node_type": node.node_type.value,
        **node_values(node),
    }


def node_from_row(row: Any) -> NodeExecution:
    """A node execution from its row."""
    return NodeExecution(
        node_id=row.node_id,
        node_type=NodeType(row.node_type),
        status=NodeStatus(row.status),
        input=row.input,
        output=row.output,
        error=row.error,
        retry_count=row.retry_count,
        started_at=row.started_at,
        completed_at=row.completed_at,
        attempts=_attempts_from_json(row.attempts),
        finished_order=row.finished_order,
        routes=row.routes,
        iteration=tuple(int(i) for i in row.iteration.split(".")) if row.iteration else (),
        state=row.state,
        answer=row.answer,
        position=row.position,
        usage=row.usage,
    )


def execution_values(execution: WorkflowExecution) -> dict[str, Any]:
    """The columns of an execution row that its steps change (named in EXECUTION_VALUES)."""
    return {
        "status": execution.status.value,
        "output": execution.output,
        "error": execution.error,
        "current_node_id": execution.current_node_id,
        "started_at": execution.started_at,
        "completed_at": execution.completed_at,
        "last_seq": execution.last_seq,
        "deadline_at": execution.deadline_at,
        "waiting_since": execution.waiting_since,
        "usage": execution.usage,
        "budget": execution.budget,
    }


EXECUTION_VALUES = (
    "status",
    "output",
    "error",
    "current_node_id",
    "started_at",
    "completed_at",
    "last_seq",
    "deadline_at",
    "waiting_since",
    "usage",
    "budget",
)
"""The execution columns a step writes."""


def execution_row(execution: WorkflowExecution) -> dict[str, Any]:
    """A full execution row for an insert."""
    return {
        "id": execution.id,
        "workflow_id": execution.workflow_id,
        "workflow_version": execution.workflow_version,
        "input": execution.input,
        "user_id": execution.user_id,
        "idempotency_key": execution.idempotency_key,
        "retry_of": execution.retry_of,
        "parent_execution_id": execution.parent_execution_id,
        "parent_node_id": execution.parent_node_id,
        "depth": execution.depth,
        "trace_parent": execution.trace_parent,
        "trigger": execution.trigger,
        "keep": execution.keep,
        "wake_at": None,
        "created_at": execution.created_at,
        "updated_at": execution.updated_at,
        **execution_values(execution),
        "lease_owner": None,
        "lease_token": 0,
        "lease_expires_at": None,
        "recoveries": 0,
    }


def execution_from_rows(row: Any, node_rows: Sequence[Any]) -> WorkflowExecution:
    """An execution from its row and its node rows (in definition order)."""
    return WorkflowExecution(
        id=row.id,
        workflow_id=row.workflow_id,
        workflow_version=row.workflow_version,
        status=ExecutionStatus(row.status),
        input=row.input,
        user_id=row.user_id,
        created_at=row.created_at,
        updated_at=row.updated_at,
        deadline_at=row.deadline_at,
        nodes={node.key: node for node in map(node_from_row, node_rows)},
        output=row.output,
        error=row.error,
        current_node_id=row.current_node_id,
        started_at=row.started_at,
        completed_at=row.completed_at,
        idempotency_key=row.idempotency_key,
        retry_of=row.retry_of,
        last_seq=row.last_seq,
        parent_execution_id=row.parent_execution_id,
        parent_node_id=row.parent_node_id,
        depth=row.depth,
        waiting_since=row.waiting_since,
        trace_parent=row.trace_parent,
        trigger=row.trigger,
        keep=row.keep,
        usage=row.usage,
        budget=row.budget,
    )
