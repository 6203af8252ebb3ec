"""The execution's rules: which nodes run next, joins, skips, routes, limits, and the stepper.

Pure code. `advance` takes what just happened to an execution and returns the step to commit:
the changed nodes, the events that report them and the nodes to start. Expression work (input
mappings, transforms, conditions, edge conditions) is described here as `Job`s and carried out
by the caller under time and size bounds; the stepper itself evaluates nothing.
"""

from __future__ import annotations

import datetime as dt
import graphlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from orchestrator.domain.evaluation import Analysis, Job, JobKind, analyze
from orchestrator.domain.execution import (
    DomainEvent,
    ExecutionStatus,
    NodeExecution,
    NodeStatus,
    WorkflowExecution,
)
from orchestrator.domain.values import ValueLimits, ValueTooLarge, json_size
from orchestrator.domain.workflow import Definition, Edge, Node, NodeType

_DONE = frozenset({NodeStatus.COMPLETED, NodeStatus.SKIPPED})
_PASS_THROUGH = frozenset({NodeType.START, NodeType.END, NodeType.TRANSFORM})
BRANCH_HANDLES = ("true", "false")

Work = tuple[Job, Analysis]


@dataclass(frozen=True)
class Limits:
    """Bounds on what an execution may store."""

    values: ValueLimits = field(default_factory=ValueLimits)
    max_state_bytes: int = 16_777_216


class CompiledWorkflow:
    """A definition with its graph indexed and every expression analyzed, built once per version."""

    def __init__(self, definition: Definition) -> None:
        self.definition = definition
        self.nodes: dict[str, Node] = {n.id: n for n in definition.nodes}
        self.incoming: dict[str, list[Edge]] = defaultdict(list)
        self.outgoing: dict[str, list[Edge]] = defaultdict(list)
        for edge in definition.edges:
            self.incoming[edge.target].append(edge)
            self.outgoing[edge.source].append(edge)
        sorter = graphlib.TopologicalSorter({n.id: [] for n in definition.nodes})
        for edge in definition.edges:
            sorter.add(edge.target, edge.source)
        self.order: list[str] = list(sorter.static_order())
        self.start_id = next(n.id for n in definition.nodes if n.type == NodeType.START)
        self._specs: dict[tuple[str, str], tuple[JobKind, Any, Analysis]] = {}
        for node in definition.nodes:
            for key, kind in _node_specs(node):
                spec = node.config[key]
                self._specs[(node.id, key)] = (kind, spec, analyze(kind, spec))
        for edge in definition.edges:
            if edge.condition:
                self._specs[(edge.id, "condition")] = (
                    "condition",
                    edge.condition,
                    analyze("condition", edge.condition),
                )

    def trivial(self, node_id: str) -> bool:
        """A node that passes its input on and takes every outgoing edge: nothing to evaluate."""
        node = self.nodes[node_id]
        return (
            node.type in _PASS_THROUGH
            and not any((node_id, key) in self._specs for key in _KEYS)
            and not any(e.condition for e in self.outgoing[node_id])
        )

    def calls_out(self, node_id: str) -> bool:
        """True for the nodes that call agent-service or tool-service."""
        return self.nodes[node_id].type in (NodeType.AGENT, NodeType.TOOL)

    def default_input(self, node_id: str, execution: WorkflowExecution) -> Any:
        """The input of a node before its input mapping.

        START takes the execution's input; a node with one incoming edge takes its source's
        output; a join (several incoming edges) takes `{sourceNodeId: output}` of each branch
        that arrived, so its input has the same shape whichever branches were taken.
        """
        if node_id == self.start_id:
            return execution.input
        sources = self.arrived(node_id, execution)
        if len(self.incoming[node_id]) == 1:
            return execution.nodes[sources[0]].output if sources else None
        return {source: execution.nodes[source].output for source in sources}

    def arrived(self, node_id: str, execution: WorkflowExecution) -> list[str]:
        """The sources whose edge into the node was taken."""
        return [
            e.source
            for e in self.incoming[node_id]
            if execution.nodes[e.source].status == NodeStatus.COMPLETED
            and e.id in (execution.nodes[e.source].routes or ())
        ]

    def job(
        self,
        owner: str,
        key: str,
        execution: WorkflowExecution,
        node_input: Any = None,
        output: Any = None,
    ) -> Work | None:
        """The expression work of a node (`inputMapping`, `expression`, `template`, `condition`,
        `parameters`) or of an edge (`condition`), with the context it reads; None if absent."""
        entry = self._specs.get((owner, key))
        if entry is None:
            return None
        kind, spec, analysis = entry
        context = _context(analysis.names, execution, node_input, output)
        what = f"edge {owner!r} condition" if owner not in self.nodes else f"node {owner!r} {key}"
        return Job(kind, spec, context, what), analysis

    def route_work(
        self, node_id: str, output: Any, verdict: bool | None, execution: WorkflowExecution
    ) -> tuple[list[str], list[tuple[str, Work]]]:
        """The edges a completed node takes for sure, and those whose condition decides."""
        taken: list[str] = []
        conditional: list[tuple[str, Work]] = []
        for edge in self.outgoing[node_id]:
            branch = "true" if verdict else "false"
            handle = edge.source_handle
            if verdict is not None and handle in BRANCH_HANDLES and handle != branch:
                continue
            work = self.job(edge.id, "condition", execution, output=output)
            if work is None:
                taken.append(edge.id)
            else:
                conditional.append((edge.id, work))
        return taken, conditional

    def output(self, execution: WorkflowExecution) -> Any:
        """The execution's output: the END node's input, or `{endId: input}` when several ran."""
        ends = [
            nid
            for nid in self.order
            if self.nodes[nid].type == NodeType.END
            and execution.nodes[nid].status == NodeStatus.COMPLETED
        ]
        if len(ends) == 1:
            return execution.nodes[ends[0]].output
        if not ends:
            return None
        return {nid: execution.nodes[nid].output for nid in ends}


_KEYS = ("inputMapping", "expression", "template", "condition", "parameters")


def _node_specs(node: Node) -> list[tuple[str, JobKind]]:
    """The (config key, job kind) pairs of a node's expression work."""
    config = node.config
    specs: list[tuple[str, JobKind]] = []
    if "inputMapping" in config:
        specs.append(("inputMapping", "resolve"))
    if node.type == NodeType.CONDITIONAL:
        specs.append(("condition", "condition"))
    elif node.type == NodeType.TRANSFORM:
        if isinstance(config.get("expression"), str):
            specs.append(("expression", "expression"))
        elif "template" in config:
            specs.append(("template", "resolve"))
    elif node.type == NodeType.TOOL and config.get("parameters"):
        specs.append(("parameters", "resolve"))
    return specs


def _context(
    names: frozenset[str], execution: WorkflowExecution, node_input: Any, output: Any
) -> dict[str, Any]:
    context: dict[str, Any] = {}
    if "input" in names:
        context["input"] = node_input
    if "output" in names:
        context["output"] = output
    if "variables" in names:
        context["variables"] = variables(execution)
    if "outputs" in names:
        context["outputs"] = {
            nid: ne.output
            for nid, ne in execution.nodes.items()
            if ne.status == NodeStatus.COMPLETED
        }
    return context


def tool_parameters(node_input: Any, parameters: Any) -> dict[str, Any]:
    """A TOOL node's parameters: its resolved `config.parameters` over an object input."""
    base = node_input if isinstance(node_input, dict) else {"input": node_input}
    if node_input is None:
        base = {}
    if not parameters:
        return dict(base)
    return {**base, **parameters}


def variables(execution: WorkflowExecution) -> dict[str, Any]:
    """The execution input, with each finished node's object output merged in, in finish order."""
    result: dict[str, Any] = dict(execution.input) if isinstance(execution.input, dict) else {}
    finished = sorted(
        (ne for ne in execution.nodes.values() if ne.status == NodeStatus.COMPLETED),
        key=lambda ne: ne.finished_order or 0,
    )
    for ne in finished:
        if isinstance(ne.output, dict):
            result.update(ne.output)
    return result


# What can happen to an execution; `advance` turns each into a step.


@dataclass(frozen=True)
class Began:
    """A runner took the execution (new, or from a runner that stopped).

    `routes` are the routes of completed nodes stored before routes were recorded with them.
    """

    routes: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class AttemptStarted:
    """Attempt `attempt` of a calling node is about to call out; `failed` is why the one
    before it failed, when this is a retry."""

    node_id: str
    attempt: int
    failed: str | None = None


@dataclass(frozen=True)
class InputResolved:
    """A running node's input mapping was resolved."""

    node_id: str
    input: Any


@dataclass(frozen=True)
class NodeSucceeded:
    """A node's work finished with `output`; `routes` are the outgoing edges it takes."""

    node_id: str
    input: Any
    output: Any
    routes: list[str]


@dataclass(frozen=True)
class NodeFailed:
    """A node's work failed for good."""

    node_id: str
    input: Any
    error: str


@dataclass(frozen=True)
class Stopped:
    """The execution must end FAILED: timeout, poison, or a step that cannot be stored."""

    message: str

    @classmethod
    def timed_out(cls, timeout_ms: int) -> Stopped:
        """Past EXECUTION_TIMEOUT."""
        return cls(f"Execution timed out: it ran longer than EXECUTION_TIMEOUT ({timeout_ms} ms)")

    @classmethod
    def poisoned(cls, recoveries: int) -> Stopped:
        """Taken over more than MAX_RECOVERIES times."""
        return cls(
            f"Execution failed after {recoveries} recoveries: the runners driving it stopped "
            "again and again"
        )

    @classmethod
    def unstorable(cls, refused_value: bool) -> Stopped:
        """A step could not be stored, for a reason other than an outage."""
        if refused_value:
            return cls(
                "The database refused a value of this execution (for example a NUL "
                "character in a node's output)"
            )
        return cls("Internal error while running the execution; see the service log")


Happening = Began | AttemptStarted | InputResolved | NodeSucceeded | NodeFailed | Stopped


@dataclass(frozen=True)
class NodeStart:
    """Run this node; attempt `attempt` is already recorded by the step that asks for it."""

    node_id: str
    attempt: int


@dataclass
class Step:
    """What one commit writes (changed nodes, events) and the nodes to start after it."""

    previous_seq: int
    nodes: dict[str, NodeExecution] = field(default_factory=dict)
    events: list[DomainEvent] = field(default_factory=list)
    starts: list[NodeStart] = field(default_factory=list)
    execution_changed: bool = False


def advance(
    workflow: CompiledWorkflow,
    execution: WorkflowExecution,
    happening: Happening,
    now: dt.datetime,
    limits: Limits,
) -> Step:
    """Apply what happened; return the changes to commit and the nodes to start.

    Nothing happens to a finished execution: a late result is dropped.
    """
    step = _Stepper(workflow, execution, now, limits)
    if not execution.finished:
        step.apply(happening)
    return step.result


class _Stepper:
    def __init__(
        self,
        workflow: CompiledWorkflow,
        execution: WorkflowExecution,
        now: dt.datetime,
        limits: Limits,
    ) -> None:
        self.workflow = workflow
        self.execution = execution
        self.now = now
        self.limits = limits
        self.result = Step(previous_seq=execution.last_seq)

    def record(self, events: list[DomainEvent], *node_ids: str) -> None:
        self.result.events += events
        for node_id in node_ids:
            self.result.nodes[node_id] = self.execution.nodes[node_id]
        self.result.execution_changed = True

    def apply(self, happening: Happening) -> None:
        ex, now = self.execution, self.now
        match happening:
            case Began(routes):
                for node_id, taken in routes.items():
                    ex.nodes[node_id].routes = taken
                    self.record([], node_id)
                if ex.status == ExecutionStatus.PENDING:
                    self.record(ex.begin(now))
                for node_id, node in ex.nodes.items():
                    if node.status == NodeStatus.RUNNING:
                        # In flight when the last runner stopped: the same attempt runs again,
                        # under the same idempotency key, so that the callee can drop it.
                        attempt = node.retry_count + 1
                        self.record(ex.start_node(node_id, attempt, node.input, now), node_id)
                        self.result.starts.append(NodeStart(node_id, attempt))
                self.progress()
            case AttemptStarted(node_id, attempt, failed):
                node = ex.nodes[node_id]
                if failed is not None:
                    node.fail_attempt(failed, now)
                self.record(ex.start_node(node_id, attempt, node.input, now), node_id)
            case InputResolved(node_id, node_input):
                self.record(ex.set_input(node_id, node_input, now), node_id)
            case NodeSucceeded(node_id, node_input, output, routes):
                ex.nodes[node_id].input = node_input
                if self.complete(node_id, output, routes):
                    self.progress()
            case NodeFailed(node_id, node_input, error):
                ex.nodes[node_id].input = node_input
                self.fail(error, node_id)
            case Stopped(message):
                self.fail(message, None)

    def fail(self, message: str, node_id: str | None) -> None:
        changed = [n for n, s in self.execution.nodes.items() if not s.status.terminal]
        self.record(self.execution.fail(message, node_id, self.now), *changed)

    def complete(self, node_id: str, output: Any, routes: list[str]) -> bool:
        """COMPLETE the node unless its output breaks a limit (then the node FAILS)."""
        try:
            size = self.limits.values.check(output, f"the output of node {node_id!r}")
            total = size + sum(
                _output_bytes(n) for n in self.execution.nodes.values() if n.node_id != node_id
            )
            if total > self.limits.max_state_bytes:
                raise ValueTooLarge(
                    f"the execution's stored state would exceed MAX_EXECUTION_STATE_BYTES "
                    f"({total} bytes, at most {self.limits.max_state_bytes})",
                    "MAX_EXECUTION_STATE_BYTES",
                )
        except ValueTooLarge as exc:
            self.fail(exc.message, node_id)
            return False
        self.record(self.execution.complete_node(node_id, output, routes, self.now), node_id)
        self.execution.nodes[node_id].output_bytes = size
        return True

    def progress(self) -> None:
        """Start what can start, skip what never will, and finish the execution when all is done.

        Pass-through nodes (START, END, a TRANSFORM without config) complete here at once.
        """
        workflow, ex, now = self.workflow, self.execution, self.now
        changed = True
        while changed and not ex.finished:
            changed = False
            for node_id in workflow.order:
                if ex.nodes[node_id].status != NodeStatus.PENDING:
                    continue
                incoming = workflow.incoming[node_id]
                if any(ex.nodes[e.source].status not in _DONE for e in incoming):
                    continue
                if node_id != workflow.start_id and not workflow.arrived(node_id, ex):
                    self.record(ex.skip_node(node_id, now), node_id)
                    changed = True
                    continue
                node_input = workflow.default_input(node_id, ex)
                mapped = "inputMapping" in workflow.nodes[node_id].config
                self.record(ex.start_node(node_id, 1, None if mapped else node_input, now), node_id)
                if workflow.trivial(node_id):
                    routes = [e.id for e in workflow.outgoing[node_id]]
                    if not self.complete(node_id, node_input, routes):
                        return
                    changed = True
                else:
                    self.result.starts.append(NodeStart(node_id, 1))
        if not ex.finished and all(n.status in _DONE for n in ex.nodes.values()):
            self.record(ex.complete(workflow.output(ex), now))


def _output_bytes(node: NodeExecution) -> int:
    if node.status != NodeStatus.COMPLETED:
        return 0
    if node.output_bytes is None:
        node.output_bytes = json_size(node.output)
    return node.output_bytes
