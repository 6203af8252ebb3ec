"""Wire models: camelCase out, camelCase or snake_case in, unknown fields refused."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from orchestrator.application.ports import ExecutionDetail, VersionRecord
from orchestrator.application.views import wait_view
from orchestrator.domain.execution import (
    Attempt,
    ExecutionStatus,
    NodeExecution,
    NodeStatus,
    WorkflowExecution,
)
from orchestrator.domain.workflow import Definition, Edge, Node, NodeType, Workflow, WorkflowStatus
from orchestrator.presentation.api.readable import StoredObject, StoredPayload, StoredValue

Id = Annotated[str, Field(min_length=1, max_length=200)]


class WireModel(BaseModel):
    """Base of every request and response body."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", serialize_by_alias=True
    )


class Position(WireModel):
    """Where the editor draws a node."""

    x: float
    y: float


class NodeIn(WireModel):
    """A node of a definition."""

    id: Id
    type: NodeType
    name: str | None = Field(None, max_length=200)
    config: StoredObject = Field(default_factory=dict)
    position: Position | None = None


class EdgeIn(WireModel):
    """An edge of a definition."""

    id: Id
    source: Id
    target: Id
    condition: str | None = None
    source_handle: str | None = Field(None, max_length=50)


class DefinitionIn(WireModel):
    """A definition as sent; `version` is assigned by the service and ignored here."""

    nodes: list[NodeIn]
    edges: list[EdgeIn] = Field(default_factory=list)
    version: int | None = None
    input_schema: StoredObject | None = None
    output_schema: StoredObject | None = None

    def to_domain(self) -> Definition:
        """The domain definition."""
        return Definition(
            nodes=tuple(
                Node(
                    id=n.id,
                    type=n.type,
                    config=n.config,
                    name=n.name,
                    position=n.position.model_dump() if n.position else None,
                )
                for n in self.nodes
            ),
            edges=tuple(
                Edge(e.id, e.source, e.target, e.condition, e.source_handle) for e in self.edges
            ),
            input_schema=self.input_schema,
            output_schema=self.output_schema,
        )


class DefinitionOut(WireModel):
    """A stored definition."""

    nodes: list[NodeIn]
    edges: list[EdgeIn]
    version: int
    input_schema: StoredObject | None = None
    output_schema: StoredObject | None = None

    @classmethod
    def of(cls, definition: Definition) -> DefinitionOut:
        """From the domain definition."""
        return cls(
            nodes=[
                NodeIn(
                    id=n.id,
                    type=n.type,
                    name=n.name,
                    config=n.config,
                    position=Position(**n.position) if n.position else None,
                )
                for n in definition.nodes
            ],
            edges=[
                EdgeIn(
                    id=e.id,
                    source=e.source,
                    target=e.target,
                    condition=e.condition,
                    source_handle=e.source_handle,
                )
                for e in definition.edges
            ],
            version=definition.version,
            input_schema=definition.input_schema,
            output_schema=definition.output_schema,
        )


class WorkflowCreate(WireModel):
    """Body of POST /workflows."""

    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=10_000)
    definition: DefinitionIn
    status: WorkflowStatus | None = None


class WorkflowPatch(WireModel):
    """Body of PATCH /workflows/{id} and of the editor's PUT /workflows/{id}: every field
    optional; those given replace the stored ones."""

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=10_000)
    definition: DefinitionIn | None = None
    status: WorkflowStatus | None = None


class ValidateIn(WireModel):
    """Body of POST /workflows/validate."""

    definition: DefinitionIn


class WorkflowOut(WireModel):
    """A workflow."""

    id: str
    name: str
    description: str | None
    status: WorkflowStatus
    definition: DefinitionOut
    user_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, workflow: Workflow) -> WorkflowOut:
        """From the domain workflow."""
        return cls(
            id=workflow.id,
            name=workflow.name,
            description=workflow.description,
            status=workflow.status,
            definition=DefinitionOut.of(workflow.definition),
            user_id=workflow.user_id,
            created_at=workflow.created_at,
            updated_at=workflow.updated_at,
        )


class WorkflowList(WireModel):
    """A page of workflows; `data` is the same list, as the platform's frontend reads it."""

    workflows: list[WorkflowOut]
    data: list[WorkflowOut]
    total: int
    page: int
    limit: int


class VersionOut(WireModel):
    """One stored version."""

    version: int
    definition: DefinitionOut
    created_at: dt.datetime

    @classmethod
    def of(cls, record: VersionRecord) -> VersionOut:
        """From the stored record."""
        return cls(
            version=record.version,
            definition=DefinitionOut.of(record.definition),
            created_at=record.created_at,
        )


class VersionList(WireModel):
    """Every version of a workflow."""

    workflow_id: str
    versions: list[VersionOut]


class Problem(WireModel):
    """One validation problem."""

    path: str
    message: str


class ValidationResult(WireModel):
    """Answer of POST /workflows/validate."""

    valid: bool
    problems: list[Problem]


NodeTypeNames = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=50)]],
    Field(
        max_length=100,
        description="Node types (case-insensitive) this execution must not run: "
        "a workflow using one is refused with 400",
    ),
]


class ExecuteWorkflowIn(WireModel):
    """Body of POST /workflows/{id}/execute."""

    input: Any = Field(
        None, description="Nested at most MAX_VALUE_DEPTH levels; at most MAX_NODE_OUTPUT_BYTES"
    )
    disabled_node_types: NodeTypeNames = Field(default_factory=list)


class ExecuteIn(ExecuteWorkflowIn):
    """Body of POST /workflows/execute."""

    workflow_id: Id


class ResumeIn(WireModel):
    """Body of POST /workflows/executions/{id}/nodes/{nodeId}/resume."""

    input: Any = Field(
        description="The answer: text (a multiple choice arrives as JSON text) or any JSON "
        "value; nested at most MAX_VALUE_DEPTH levels, at most MAX_NODE_OUTPUT_BYTES"
    )
    iteration: list[Annotated[int, Field(ge=0)]] | None = Field(
        None,
        max_length=100,
        description="In a loop body where several iterations wait: which one (its iteration "
        "indices, outermost first)",
    )


class ResumeOut(WireModel):
    """The answer was taken."""

    success: bool = True


class AttemptOut(WireModel):
    """One attempt of a node."""

    attempt: int
    started_at: dt.datetime
    completed_at: dt.datetime | None
    error: str | None

    @classmethod
    def of(cls, attempt: Attempt) -> AttemptOut:
        """From the domain attempt."""
        return cls(
            attempt=attempt.number,
            started_at=attempt.started_at,
            completed_at=attempt.completed_at,
            error=attempt.error,
        )


class NodeState(WireModel):
    """What every view of a node's state in an execution shows."""

    node_id: str
    node_type: NodeType
    status: NodeStatus
    error: str | None
    retry_count: int
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    iteration: list[int] = Field(
        default_factory=list,
        description="In a loop body: the iteration indices of the enclosing loops, outermost "
        "first (empty outside loops)",
    )
    wait: dict[str, Any] | None = Field(
        None,
        description="While the node waits: `for` (input or child) and what it waits for "
        "(`prompt`, `agentMessage`, `proposals`, `questionType`, `timeoutAt`; or the "
        "sub-workflow's `subExecutionId`, `subWorkflowId`, `subWorkflowName`)",
    )

    @staticmethod
    def fields(node: NodeExecution) -> dict[str, Any]:
        """The shared fields of `node`."""
        return {
            "iteration": list(node.iteration),
            "wait": wait_view(node),
            "node_id": node.node_id,
            "node_type": node.node_type,
            "status": node.status,
            "error": node.error,
            "retry_count": node.retry_count,
            "started_at": node.started_at,
            "completed_at": node.completed_at,
        }


class NodeExecutionOut(NodeState):
    """A node's state in an execution."""

    input: StoredValue
    output: StoredValue
    attempts: list[AttemptOut]

    @classmethod
    def of(cls, node: NodeExecution) -> NodeExecutionOut:
        """From the domain node execution."""
        return cls(
            **cls.fields(node),
            input=node.input,
            output=node.output,
            attempts=[AttemptOut.of(a) for a in node.attempts],
        )


class NodeSummary(NodeState):
    """A node's state in a page of executions; the rest only with `include=nodes`."""

    input: StoredValue = Field(None, description="Only with include=nodes")
    output: StoredValue = Field(None, description="Only with include=nodes")
    attempts: list[AttemptOut] = Field(default_factory=list, description="Only with include=nodes")

    @classmethod
    def of(cls, node: NodeExecution, detail: ExecutionDetail) -> NodeSummary:
        """From the domain node execution, with what `detail` asks for."""
        if not detail.nodes:
            return cls(**cls.fields(node))
        return cls(
            **cls.fields(node),
            input=node.input,
            output=node.output,
            attempts=[AttemptOut.of(a) for a in node.attempts],
        )


class ExecutionState(WireModel):
    """What every view of an execution shows."""

    id: str
    workflow_id: str
    workflow_version: int
    status: ExecutionStatus
    error: str | None
    current_node_id: str | None
    retry_of: str | None
    parent_execution_id: str | None = Field(
        None, description="A sub-workflow's execution: the execution that started it"
    )
    parent_node_id: str | None = Field(None, description="... and its SUBWORKFLOW node")
    last_seq: int
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    deadline_at: dt.datetime
    user_id: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @staticmethod
    def fields(execution: WorkflowExecution) -> dict[str, Any]:
        """The shared fields of `execution`."""
        return {
            "id": execution.id,
            "workflow_id": execution.workflow_id,
            "workflow_version": execution.workflow_version,
            "status": execution.status,
            "error": execution.error,
            "current_node_id": execution.current_node_id,
            "retry_of": execution.retry_of,
            "parent_execution_id": execution.parent_execution_id,
            "parent_node_id": execution.parent_node_id,
            "last_seq": execution.last_seq,
            "started_at": execution.started_at,
            "completed_at": execution.completed_at,
            "deadline_at": execution.deadline_at,
            "user_id": execution.user_id,
            "created_at": execution.created_at,
            "updated_at": execution.updated_at,
        }


class ExecutionOut(ExecutionState):
    """An execution with every node's state and attempts."""

    input: StoredValue
    output: StoredValue
    node_executions: list[NodeExecutionOut]

    @classmethod
    def of(cls, execution: WorkflowExecution) -> ExecutionOut:
        """From the domain execution."""
        return cls(
            **cls.fields(execution),
            input=execution.input,
            output=execution.output,
            node_executions=[NodeExecutionOut.of(n) for n in execution.nodes.values()],
        )


class ExecutionSummary(ExecutionState):
    """An execution in a page; `input` and `output` only with `include=io`."""

    input: StoredValue = Field(None, description="Only with include=io")
    output: StoredValue = Field(None, description="Only with include=io")
    node_executions: list[NodeSummary]

    @classmethod
    def of(cls, execution: WorkflowExecution, detail: ExecutionDetail) -> ExecutionSummary:
        """From the domain execution, with what `detail` asks for."""
        nodes = [NodeSummary.of(n, detail) for n in execution.nodes.values()]
        if not detail.io:
            return cls(**cls.fields(execution), node_executions=nodes)
        return cls(
            **cls.fields(execution),
            input=execution.input,
            output=execution.output,
            node_executions=nodes,
        )


class ExecutionList(WireModel):
    """A page of executions."""

    executions: list[ExecutionSummary]
    total: int
    page: int
    limit: int


class EventOut(WireModel):
    """A stored Socket.IO event."""

    seq: int
    event: str
    data: StoredPayload


class EventList(WireModel):
    """Events after `afterSeq`, in order."""

    execution_id: str
    events: list[EventOut]
    last_seq: int


class Health(WireModel):
    """Answer of GET /health."""

    status: str
    service: str
    timestamp: dt.datetime


class Readiness(WireModel):
    """Answer of GET /health/ready."""

    status: str
    database: str
    runner: str
