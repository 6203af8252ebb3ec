"""Wire models: camelCase out, camelCase or snake_case in, unknown fields refused."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    model_validator,
)
from pydantic.alias_generators import to_camel

from orchestrator.application.ports import ExecutionDetail, VersionRecord
from orchestrator.application.views import wait_view
from orchestrator.application.workflows import workflow_problems
from orchestrator.domain.errors import Problem as DomainProblem
from orchestrator.domain.errors import ValidationFailed
from orchestrator.domain.execution import (
    Attempt,
    ExecutionStatus,
    NodeExecution,
    NodeStatus,
    WorkflowExecution,
)
from orchestrator.domain.usage import summary
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

    x: StrictFloat | StrictInt
    y: StrictFloat | StrictInt


def _upper(value: Any) -> Any:
    """Older saves of the platform's editor write types and statuses in lowercase."""
    return value.upper() if isinstance(value, str) else value


NodeTypeName = Annotated[NodeType, BeforeValidator(_upper)]
StatusName = Annotated[WorkflowStatus, BeforeValidator(_upper)]
# What React Flow keeps in a node's `data` that the canonical shape says elsewhere.
_CANONICAL_DATA = ("config", "customName", "nodeType")


class NodeFields(WireModel):
    """A node's fields as the seed's clients and the platform's editor send them.

    `config` may come in React Flow's `data.config`, `customName` in `data.customName` and
    `type` in `data.nodeType`; what else `data` holds (say its `label`) is kept as `data`.
    """

    name: str | None = Field(None, max_length=200)
    custom_name: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=10_000)
    config: StoredObject | None = None
    position: Position | None = None
    data: StoredObject | None = None

    def _canonical(self) -> dict[str, Any]:
        """The fields of a domain node that were sent, with `data` folded in."""
        sent = self.model_fields_set
        data = self.data or {}
        fields: dict[str, Any] = {}
        if "name" in sent:
            fields["name"] = self.name
        if "custom_name" in sent or "customName" in data:
            fields["custom_name"] = self.custom_name or data.get("customName")
        if "description" in sent:
            fields["description"] = self.description
        if "config" in sent or "config" in data:
            config = self.config if self.config is not None else data.get("config")
            fields["config"] = config if isinstance(config, dict) else {}
        if "position" in sent:
            fields["position"] = self.position.model_dump() if self.position else None
        if "data" in sent:
            rest = {k: v for k, v in data.items() if k not in _CANONICAL_DATA}
            fields["data"] = rest or None
        return fields


class NodeIn(NodeFields):
    """A node of a definition."""

    id: Id
    type: NodeTypeName

    @model_validator(mode="before")
    @classmethod
    def _type_from_data(cls, value: Any) -> Any:
        if isinstance(value, dict) and "type" not in value:
            data = value.get("data")
            if isinstance(data, dict) and "nodeType" in data:
                return {**value, "type": data["nodeType"]}
        return value

    def to_domain(self) -> Node:
        """The domain node."""
        return Node(id=self.id, type=self.type, **self._canonical())


class NodePatch(NodeFields):
    """Body of PUT /workflows/{id}/nodes/{nodeId}: the fields sent replace the node's."""

    id: Id | None = Field(None, description="The node's id; it cannot change")
    type: NodeTypeName | None = None

    def apply(self, node: Node) -> Node:
        """The node with the fields sent replaced."""
        if self.id is not None and self.id != node.id:
            raise ValidationFailed(
                "A node's id cannot change", [DomainProblem("id", f"must be {node.id!r}")]
            )
        fields = self._canonical()
        if self.type is not None:
            fields["type"] = self.type
        elif isinstance((self.data or {}).get("nodeType"), str):
            fields["type"] = NodeType(_upper(self.data["nodeType"]))  # type: ignore[index]
        return replace(node, **fields)


class NodeOut(WireModel):
    """A stored node, in the contract's shape."""

    id: str
    type: NodeType
    name: str | None = None
    custom_name: str | None = None
    description: str | None = None
    config: StoredObject = Field(default_factory=dict)
    position: Position | None = None
    data: StoredObject | None = None

    @classmethod
    def of(cls, node: Node) -> NodeOut:
        """From the domain node."""
        return cls(
            id=node.id,
            type=node.type,
            name=node.name,
            custom_name=node.custom_name,
            description=node.description,
            config=node.config,
            position=Position(**node.position) if node.position else None,
            data=node.data,
        )


class EdgeIn(WireModel):
    """An edge of a definition."""

    id: Id
    source: Id
    target: Id
    condition: str | None = None
    source_handle: str | None = Field(None, max_length=50)

    def to_domain(self) -> Edge:
        """The domain edge."""
        return Edge(self.id, self.source, self.target, self.condition, self.source_handle)


class Budget(WireModel):
    """How many tokens (or dollars, priced by MODEL_PRICES) one execution may use."""

    max_total_tokens: StrictInt | None = Field(None, ge=1, description="Input plus output")
    max_cost_usd: float | None = Field(None, gt=0, le=1_000_000)
    on_exceed: Literal["fail", "pause"] = Field(
        "fail",
        description="fail: the execution FAILS naming the budget; pause: it waits until the "
        "budget is raised (POST .../budget) or it is cancelled",
    )

    @model_validator(mode="after")
    def _some_bound(self) -> Budget:
        if self.max_total_tokens is None and self.max_cost_usd is None:
            raise ValueError("set maxTotalTokens or maxCostUsd (or both)")
        return self

    def to_domain(self) -> dict[str, Any]:
        """The stored form (camelCase, only what is set)."""
        return self.model_dump(by_alias=True, exclude_none=True)


class DefinitionIn(WireModel):
    """A definition as sent; `version` is assigned by the service and ignored here."""

    nodes: list[NodeIn] = Field(default_factory=list)
    edges: list[EdgeIn] = Field(default_factory=list)
    version: StrictInt | None = None
    input_schema: StoredObject | None = None
    output_schema: StoredObject | None = None
    budget: Budget | None = None

    def to_domain(self) -> Definition:
        """The domain definition."""
        return Definition(
            nodes=tuple(n.to_domain() for n in self.nodes),
            edges=tuple(e.to_domain() for e in self.edges),
            input_schema=self.input_schema,
            output_schema=self.output_schema,
            budget=None if self.budget is None else self.budget.to_domain(),
        )


class DefinitionOut(WireModel):
    """A stored definition."""

    nodes: list[NodeOut]
    edges: list[EdgeIn]
    version: int
    input_schema: StoredObject | None = None
    output_schema: StoredObject | None = None
    budget: dict[str, Any] | None = None

    @classmethod
    def of(cls, definition: Definition) -> DefinitionOut:
        """From the domain definition."""
        return cls(
            nodes=[NodeOut.of(n) for n in definition.nodes],
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
            budget=definition.budget,
        )


class Problem(WireModel):
    """One validation problem."""

    path: str
    message: str


class WorkflowCreate(WireModel):
    """Body of POST /workflows; without a definition, the workflow starts as an empty draft."""

    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=10_000)
    definition: DefinitionIn | None = None
    status: StatusName | None = None


class WorkflowPatch(WireModel):
    """Body of PATCH /workflows/{id} and of the editor's PUT /workflows/{id}: every field
    optional; those given replace the stored ones."""

    name: str | None = Field(None, min_length=1, max_length=200)
    description: str | None = Field(None, max_length=10_000)
    definition: DefinitionIn | None = None
    status: StatusName | None = None


class ValidateIn(WireModel):
    """Body of POST /workflows/validate."""

    definition: DefinitionIn


class WorkflowOut(WireModel):
    """A workflow; `problems` says what keeps its current definition from running (a draft
    may be saved incomplete; activating it needs none)."""

    id: str
    name: str
    description: str | None
    status: WorkflowStatus
    definition: DefinitionOut
    problems: list[Problem]
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
            problems=[Problem(path=p.path, message=p.message) for p in workflow_problems(workflow)],
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
    budget: Budget | None = Field(None, description="This execution's budget (else the workflow's)")


class ExecuteIn(ExecuteWorkflowIn):
    """Body of POST /workflows/execute."""

    workflow_id: Id


class ResumeIn(WireModel):
    """Body of POST /workflows/executions/{id}/nodes/{nodeId}/resume."""

    input: Any = Field(
        description="The answer: text (a multiple choice arrives as JSON text) or any JSON "
        "value but null; nested at most MAX_VALUE_DEPTH levels, at most MAX_NODE_OUTPUT_BYTES",
        json_schema_extra={"not": {"type": "null"}},
    )
    iteration: list[Annotated[StrictInt, Field(ge=0)]] | None = Field(
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
    usage: dict[str, Any] | None = Field(
        None, description="The tokens this attempt used: the totals and byModel"
    )

    @classmethod
    def of(cls, attempt: Attempt) -> AttemptOut:
        """From the domain attempt."""
        return cls(
            attempt=attempt.number,
            started_at=attempt.started_at,
            completed_at=attempt.completed_at,
            error=attempt.error,
            usage=summary(attempt.usage),
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
    usage: dict[str, Any] | None = Field(
        None,
        description="The tokens its attempts used, each counted once: inputTokens, "
        "outputTokens, totalTokens and byModel (a sub-workflow's: all its tokens)",
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
            "usage": node.usage,
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
    trigger: dict[str, Any] | None = Field(
        None,
        description="What started it when not a person: {type: schedule, scheduleId, "
        "scheduledFor} or {type: webhook, webhookId}",
    )
    keep: bool = Field(False, description="Pinned: retention never deletes it")
    usage: dict[str, Any] | None = Field(
        None,
        description="Tokens used, every attempt counted once: {inputTokens, outputTokens, "
        "totalTokens, byModel: {model: {inputTokens, outputTokens, totalTokens}}}",
    )
    budget: dict[str, Any] | None = Field(
        None, description="{maxTotalTokens?, maxCostUsd?, onExceed: fail | pause}"
    )
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
            "trigger": execution.trigger,
            "keep": execution.keep,
            "usage": execution.usage,
            "budget": execution.budget,
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


class HistoryItem(WireModel):
    """One execution in a workflow's run history, as the platform's frontend lists it."""

    execution_id: str
    workflow_version: int
    status: ExecutionStatus
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    duration: int | None = Field(description="Milliseconds from start to end, once it ended")
    total_tokens: int | None = Field(description="Tokens the agents reported; null if none did")
    input_tokens: int | None
    output_tokens: int | None
    node_executions: list[NodeSummary]
    error: str | None
    created_at: dt.datetime

    @classmethod
    def of(cls, execution: WorkflowExecution) -> HistoryItem:
        """From the domain execution (its nodes' states, without their data)."""
        started, completed = execution.started_at, execution.completed_at
        duration = None
        if started is not None and completed is not None:
            duration = max(0, round((completed - started).total_seconds() * 1000))
        # Every attempt once, sub-workflows included (older executions: their nodes' reports).
        used = execution.usage or _node_totals(execution)

        def total(name: str) -> int | None:
            value = used.get(name) if used else None
            return value if isinstance(value, int) else None

        states = ExecutionDetail(nodes=False, io=False)
        return cls(
            execution_id=execution.id,
            workflow_version=execution.workflow_version,
            status=execution.status,
            started_at=started,
            completed_at=completed,
            duration=duration,
            total_tokens=total("totalTokens"),
            input_tokens=total("inputTokens"),
            output_tokens=total("outputTokens"),
            node_executions=[NodeSummary.of(n, states) for n in execution.nodes.values()],
            error=execution.error,
            created_at=execution.created_at,
        )


def _node_totals(execution: WorkflowExecution) -> dict[str, int] | None:
    reported = [n.usage for n in execution.nodes.values() if n.usage]
    if not reported:
        return None
    return {
        name: sum(u[name] for u in reported if isinstance(u.get(name), int))
        for name in ("inputTokens", "outputTokens", "totalTokens")
        if any(name in u for u in reported)
    }


class HistoryPage(WireModel):
    """A page of a workflow's executions."""

    data: list[HistoryItem]
    total: int
    page: int
    limit: int


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
