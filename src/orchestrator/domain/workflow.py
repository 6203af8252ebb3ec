"""Workflow: a named graph of nodes and edges with a lifecycle and immutable versions."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from orchestrator.domain.errors import (
    Conflict,
    IllegalTransition,
    NotFound,
    Problem,
    ValidationFailed,
)


class WorkflowStatus(StrEnum):
    """Lifecycle of a workflow."""

    DRAFT = "DRAFT"
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"
    ARCHIVED = "ARCHIVED"


WORKFLOW_TRANSITIONS: dict[WorkflowStatus, frozenset[WorkflowStatus]] = {
    WorkflowStatus.DRAFT: frozenset({WorkflowStatus.ACTIVE, WorkflowStatus.ARCHIVED}),
    WorkflowStatus.ACTIVE: frozenset({WorkflowStatus.INACTIVE, WorkflowStatus.ARCHIVED}),
    WorkflowStatus.INACTIVE: frozenset({WorkflowStatus.ACTIVE, WorkflowStatus.ARCHIVED}),
    WorkflowStatus.ARCHIVED: frozenset(),
}


class NodeType(StrEnum):
    """The six node types of the seed, and control flow: human input, loops, switch, children."""

    START = "START"
    END = "END"
    AGENT = "AGENT"
    TOOL = "TOOL"
    CONDITIONAL = "CONDITIONAL"
    TRANSFORM = "TRANSFORM"
    PROMPT = "PROMPT"
    WHILE = "WHILE"
    FOR_EACH = "FOR_EACH"
    SWITCH = "SWITCH"
    SUBWORKFLOW = "SUBWORKFLOW"


@dataclass(frozen=True)
class Node:
    """One step of a workflow.

    `name` (the seed's) and `custom_name` (the platform editor's) are both kept as sent;
    `description`, `position` and `data` (what a graph editor keeps with the node) are the
    editor's, stored and returned untouched.
    """

    id: str
    type: NodeType
    config: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    position: dict[str, float] | None = None
    custom_name: str | None = None
    description: str | None = None
    data: dict[str, Any] | None = None

    @property
    def display_name(self) -> str:
        """The name a user sees: the node's custom name, else its name, else its id."""
        return self.custom_name or self.name or self.id


@dataclass(frozen=True)
class Edge:
    """A directed link; `condition` and `source_handle` decide whether it is taken."""

    id: str
    source: str
    target: str
    condition: str | None = None
    source_handle: str | None = None


@dataclass(frozen=True)
class Definition:
    """The graph of a workflow at one version."""

    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    version: int = 1
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    # Bounds each execution's tokens and cost unless the execute call sets its own:
    # {maxTotalTokens?, maxCostUsd?, onExceed: "fail" | "pause"}.
    budget: dict[str, Any] | None = None

    def node(self, node_id: str) -> Node:
        """The node with this id (KeyError when absent)."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def display_names(self) -> dict[str, str]:
        """Each node's display name, by node id, in definition order."""
        return {node.id: node.display_name for node in self.nodes}

    def same_graph(self, other: Definition) -> bool:
        """True when both describe the same graph and schemas, whatever their version numbers."""
        return (
            self.nodes == other.nodes
            and self.edges == other.edges
            and self.input_schema == other.input_schema
            and self.output_schema == other.output_schema
            and self.budget == other.budget
        )

    def with_node(self, node: Node) -> Definition:
        """This graph and one more node (Conflict if its id is taken)."""
        if any(n.id == node.id for n in self.nodes):
            raise Conflict(f"Node {node.id} already exists")
        return replace(self, nodes=(*self.nodes, node))

    def with_node_changed(self, node: Node) -> Definition:
        """This graph with node `node.id` replaced (NotFound if there is none)."""
        self.node_or_not_found(node.id)
        return replace(self, nodes=tuple(node if n.id == node.id else n for n in self.nodes))

    def without_node(self, node_id: str) -> Definition:
        """This graph without the node and every edge into or out of it."""
        self.node_or_not_found(node_id)
        return replace(
            self,
            nodes=tuple(n for n in self.nodes if n.id != node_id),
            edges=tuple(e for e in self.edges if node_id not in (e.source, e.target)),
        )

    def with_edge(self, edge: Edge) -> Definition:
        """This graph and one more edge (Conflict if its id is taken)."""
        if any(e.id == edge.id for e in self.edges):
            raise Conflict(f"Edge {edge.id} already exists")
        return replace(self, edges=(*self.edges, edge))

    def without_edge(self, edge_id: str) -> Definition:
        """This graph without the edge (NotFound if there is none)."""
        if not any(e.id == edge_id for e in self.edges):
            raise NotFound("Edge", edge_id)
        return replace(self, edges=tuple(e for e in self.edges if e.id != edge_id))

    def node_or_not_found(self, node_id: str) -> Node:
        """The node with this id, or NotFound."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise NotFound("Node", node_id)

    def ensure_types_enabled(self, disabled_types: Iterable[str]) -> None:
        """Refuse to run when a node is of a type disabled for this execution (case-insensitive).

        Raises ValidationFailed naming each disabled type in use and its nodes.
        """
        disabled = {name.strip().upper() for name in disabled_types}
        used: dict[str, list[str]] = {}
        for node in self.nodes:
            if node.type.value in disabled:
                used.setdefault(node.type.value, []).append(node.id)
        if not used:
            return
        parts = [f"{kind} (nodes {', '.join(ids)})" for kind, ids in used.items()]
        raise ValidationFailed(
            f"Node types disabled for this execution: {'; '.join(parts)}",
            [
                Problem("disabledNodeTypes", f"node {node_id} is of disabled type {kind}")
                for kind, ids in used.items()
                for node_id in ids
            ],
        )


@dataclass
class Workflow:
    """A workflow and its current definition."""

    id: str
    name: str
    description: str | None
    status: WorkflowStatus
    definition: Definition
    user_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @property
    def version(self) -> int:
        """The current definition version."""
        return self.definition.version

    def change_status(self, new: WorkflowStatus, now: dt.datetime) -> None:
        """Move to `new` if the lifecycle allows it; staying put is always allowed."""
        if new == self.status:
            return
        if new not in WORKFLOW_TRANSITIONS[self.status]:
            raise IllegalTransition(f"Workflow {self.id} cannot go from {self.status} to {new}")
        self.status = new
        self.updated_at = now

    def ensure_editable(self) -> None:
        """ARCHIVED workflows are read-only."""
        if self.status == WorkflowStatus.ARCHIVED:
            raise Conflict(f"Workflow {self.id} is archived and read-only")

    def ensure_executable(self) -> None:
        """Only ACTIVE workflows run."""
        if self.status != WorkflowStatus.ACTIVE:
            raise NotExecutable(
                f"Workflow {self.id} is {self.status}; only ACTIVE workflows can be executed"
            )

    def replace_definition(self, definition: Definition, now: dt.datetime) -> bool:
        """Adopt a new graph as the next version; False (and no new version) if unchanged."""
        if definition.same_graph(self.definition):
            return False
        self.definition = replace(definition, version=self.definition.version + 1)
        self.updated_at = now
        return True


class NotExecutable(Conflict):
    """An execute request for a workflow that is not ACTIVE (400 on the wire, as the seed did)."""
