"""Workflow: a named graph of nodes and edges with a lifecycle and immutable versions."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from orchestrator.domain.errors import Conflict, IllegalTransition


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
    """The six node types of the seed."""

    START = "START"
    END = "END"
    AGENT = "AGENT"
    TOOL = "TOOL"
    CONDITIONAL = "CONDITIONAL"
    TRANSFORM = "TRANSFORM"


@dataclass(frozen=True)
class Node:
    """One step of a workflow."""

    id: str
    type: NodeType
    config: dict[str, Any] = field(default_factory=dict)
    name: str | None = None
    position: dict[str, float] | None = None


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

    def node(self, node_id: str) -> Node:
        """The node with this id (KeyError when absent)."""
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    def same_graph(self, other: Definition) -> bool:
        """True when both describe the same graph, whatever their version numbers."""
        return self.nodes == other.nodes and self.edges == other.edges


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
