"""Builders of compiled workflows and hand-made executions for the engine tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

from orchestrator.domain.engine import CompiledWorkflow, initial_nodes
from orchestrator.domain.execution import (
    ExecutionStatus,
    NodeStatus,
    WorkflowExecution,
)
from orchestrator.domain.workflow import Definition, Edge, Node, NodeType

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
START, END, AGENT, TOOL = NodeType.START, NodeType.END, NodeType.AGENT, NodeType.TOOL
COND, TRANSFORM = NodeType.CONDITIONAL, NodeType.TRANSFORM


def n(node_id: str, node_type: NodeType = AGENT, **config: Any) -> Node:
    if node_type == AGENT:
        config.setdefault("agentId", "writer")
    return Node(id=node_id, type=node_type, config=config)


def e(source: str, target: str, condition: str | None = None, handle: str | None = None) -> Edge:
    return Edge(f"{source}->{target}", source, target, condition=condition, source_handle=handle)


def compiled(nodes: list[Node], edges: list[Edge]) -> CompiledWorkflow:
    return CompiledWorkflow(Definition(nodes=tuple(nodes), edges=tuple(edges)))


def new_execution(workflow: CompiledWorkflow, execution_input: Any = None) -> WorkflowExecution:
    return WorkflowExecution(
        id="x1",
        workflow_id="w1",
        workflow_version=1,
        status=ExecutionStatus.RUNNING,
        input=execution_input,
        user_id=None,
        created_at=T0,
        updated_at=T0,
        deadline_at=T0 + dt.timedelta(minutes=5),
        nodes=initial_nodes(workflow.definition),
    )


def start(execution: WorkflowExecution, node_id: str) -> None:
    execution.nodes[node_id].start_attempt(1, T0)


def finish(
    execution: WorkflowExecution,
    node_id: str,
    output: Any,
    workflow: CompiledWorkflow | None = None,
) -> None:
    """Complete a node through the transition table, recording its place in the finish order
    and (given the workflow) taking every outgoing edge."""
    node = execution.nodes[node_id]
    if workflow is not None:
        node.routes = [edge.id for edge in workflow.outgoing[node_id]]
    if node.status == NodeStatus.PENDING:
        start(execution, node_id)
    node.output = output
    node.finished_order = 1 + max(
        (ne.finished_order for ne in execution.nodes.values() if ne.finished_order is not None),
        default=-1,
    )
    node.move(NodeStatus.COMPLETED, T0)
