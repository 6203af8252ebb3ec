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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from orchestrator.domain import usage as tokens
from orchestrator.domain.evaluation import Analysis, Job, JobKind, analyze
from orchestrator.domain.execution import (
    DomainEvent,
    ExecutionStatus,
    LoopProgress,
    NodeExecution,
    NodeStatus,
    WorkflowExecution,
    node_key,
)
from orchestrator.domain.loops import LOOP_TYPES, Loop, loop_structure
from orchestrator.domain.validation import DEFAULT_MAX_ITERATIONS
from orchestrator.domain.values import ValueLimits, ValueTooLarge, json_size
from orchestrator.domain.workflow import Definition, Edge, Node, NodeType

_DONE = frozenset({NodeStatus.COMPLETED, NodeStatus.SKIPPED})
# How long after its node completed a progress report is still relayed (see reported_node).
LATE_GRACE = dt.timedelta(seconds=2)
_PASS_THROUGH = frozenset({NodeType.START, NodeType.END, NodeType.TRANSFORM})
BRANCH_HANDLES = ("true", "false")

Work = tuple[Job, Analysis]


@dataclass(frozen=True)
class Limits:
    """Bounds on what an execution may store."""

    values: ValueLimits = field(default_factory=ValueLimits)
    max_state_bytes: int = 16_777_216
    # USD per million tokens, {model: {input, output}}: what a budget's maxCostUsd counts.
    prices: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


class CompiledWorkflow:
    """A definition with its graph indexed and every expression analyzed, built once per version.

    In a loop body a node runs once per iteration: its executions are keyed `id@i` (see
    `node_key`), and the edges of a body link the executions of one iteration.
    """

    def __init__(self, definition: Definition) -> None:
        self.definition = definition
        self.nodes: dict[str, Node] = {n.id: n for n in definition.nodes}
        structure = loop_structure(definition)
        self.loops: dict[str, Loop] = structure.loops
        self.loop_of: dict[str, str | None] = structure.parent
        self.depth: dict[str, int] = {nid: self._depth(nid) for nid in self.nodes}
        # The edges into a node that must be done before it starts (back edges never are).
        self.incoming: dict[str, list[Edge]] = defaultdict(list)
        self.outgoing: dict[str, list[Edge]] = defaultdict(list)
        for edge in definition.edges:
            if edge.id not in structure.back_edge_ids:
                self.incoming[edge.target].append(edge)
            self.outgoing[edge.source].append(edge)
        self.entry_edges = frozenset(e.id for loop in self.loops.values() for e in loop.entries)
        sorter = graphlib.TopologicalSorter({n.id: [] for n in definition.nodes})
        for edge in definition.edges:
            if edge.id not in structure.back_edge_ids:
                sorter.add(edge.target, edge.source)
        self.order: list[str] = list(sorter.static_order())
        self.scopes: dict[str | None, list[str]] = defaultdict(list)
        for nid in self.order:
            self.scopes[self.loop_of.get(nid)].append(nid)
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

    def _depth(self, node_id: str) -> int:
        depth, loop = 0, self.loop_of.get(node_id)
        while loop is not None:
            depth, loop = depth + 1, self.loop_of.get(loop)
        return depth

    def key_of(self, node_id: str, path: tuple[int, ...]) -> str:
        """The key of `node_id`'s execution as seen from iteration `path` (or from within it)."""
        return node_key(node_id, path[: self.depth[node_id]])

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

    def default_input(self, key: str, execution: WorkflowExecution) -> Any:
        """The input of a node execution before its input mapping.

        START takes the execution's input; a node with one incoming edge takes its source's
        output (a loop body's first node: the iteration's item); a join (several incoming
        edges) takes `{sourceNodeId: output}` of each branch that arrived, so that its input
        has the same shape whichever branches were taken.
        """
        node = execution.nodes[key]
        if node.node_id == self.start_id:
            return execution.input
        values = {
            edge.source: self._edge_value(edge, node, execution)
            for edge in self.arrived(key, execution)
        }
        if len(self.incoming[node.node_id]) == 1:
            return next(iter(values.values()), None)
        return values

    def _edge_value(self, edge: Edge, node: NodeExecution, execution: WorkflowExecution) -> Any:
        if edge.id in self.entry_edges:
            loop_key = self.key_of(edge.source, node.iteration)
            return self.item(loop_key, node.iteration[-1], execution)
        return execution.nodes[self.key_of(edge.source, node.iteration)].output

    def arrived(self, key: str, execution: WorkflowExecution) -> list[Edge]:
        """The incoming edges that were taken (into a loop body: the loop's, always)."""
        node = execution.nodes[key]
        taken = []
        for edge in self.incoming[node.node_id]:
            if edge.id in self.entry_edges:
                taken.append(edge)
                continue
            source = execution.nodes.get(self.key_of(edge.source, node.iteration))
            if (
                source is not None
                and source.status == NodeStatus.COMPLETED
                and edge.id in (source.routes or ())
            ):
                taken.append(edge)
        return taken

    def item(self, loop_key: str, index: int, execution: WorkflowExecution) -> Any:
        """What iteration `index` of a loop works on: a FOR_EACH's item; for a WHILE, the
        loop's input at first, then the result of the iteration before."""
        loop = execution.nodes[loop_key]
        if loop.node_type == NodeType.FOR_EACH:
            return (loop.state or {}).get("items", [])[index]
        if index == 0:
            return loop.input
        return self.result(loop_key, index - 1, execution)

    def result(self, loop_key: str, index: int, execution: WorkflowExecution) -> Any:
        """What an iteration gives: the output of the body node that led back to the loop (or,
        in a FOR_EACH body that does not lead back, of its last nodes)."""
        loop = execution.nodes[loop_key]
        path = (*loop.iteration, index)
        structure = self.loops[loop.node_id]
        ends: list[tuple[NodeExecution | None, str | None]]
        if structure.back_edges:
            ends = [
                (execution.nodes.get(self.key_of(e.source, path)), e.id)
                for e in structure.back_edges
            ]
        else:
            ends = [
                (execution.nodes.get(node_key(nid, path)), None)
                for nid in self.scopes[loop.node_id]
                if not self.outgoing[nid]
            ]
        done = [
            n
            for n, edge_id in ends
            if n is not None
            and n.status == NodeStatus.COMPLETED
            and (edge_id is None or edge_id in (n.routes or ()))
        ]
        if len(done) == 1:
            return done[0].output
        if not done:
            return None
        return {n.node_id: n.output for n in done}

    def job(
        self,
        owner: str,
        key: str,
        execution: WorkflowExecution,
        node_input: Any = None,
        output: Any = None,
        at: str | None = None,
    ) -> Work | None:
        """The expression work of a node (`inputMapping`, `expression`, `template`, `condition`,
        `parameters`, `collection`, `switchOn`, `prompt`) or of an edge (`condition`), with the
        context it reads; None if absent. `at` is the key of the node execution that asks (in
        a loop body, it gives `item` and `index`)."""
        entry = self._specs.get((owner, key))
        if entry is None:
            return None
        kind, spec, analysis = entry
        context = self._context(analysis.names, execution, node_input, output, at)
        what = f"edge {owner!r} condition" if owner not in self.nodes else f"node {owner!r} {key}"
        return Job(kind, spec, context, what), analysis

    def _context(
        self,
        names: frozenset[str],
        execution: WorkflowExecution,
        node_input: Any,
        output: Any,
        at: str | None,
    ) -> dict[str, Any]:
        asking = None if at is None else execution.nodes[at]
        iteration = () if asking is None else asking.iteration
        context: dict[str, Any] = {}
        if "input" in names:
            context["input"] = node_input
        if "output" in names:
            context["output"] = output
        if "variables" in names:
            context["variables"] = variables(execution)
        if "outputs" in names:
            context["outputs"] = self._outputs(execution, iteration)
        if "item" in names or "index" in names:
            context["item"], context["index"] = None, None
            loop_id = None if asking is None else self.loop_of.get(asking.node_id)
            if loop_id is not None:
                loop_key = node_key(loop_id, iteration[:-1])
                context["index"] = iteration[-1]
                context["item"] = self.item(loop_key, iteration[-1], execution)
        return context

    def _outputs(self, execution: WorkflowExecution, iteration: tuple[int, ...]) -> dict[str, Any]:
        """`{nodeId: output}` of the completed nodes seen from `iteration`: in a loop body, the
        executions of the same iteration."""
        if not self.loops:
            return {
                nid: ne.output
                for nid, ne in execution.nodes.items()
                if ne.status == NodeStatus.COMPLETED
            }
        found: dict[str, Any] = {}
        for nid in self.nodes:
            if self.depth[nid] > len(iteration):
                continue
            ne = execution.nodes.get(self.key_of(nid, iteration))
            if ne is not None and ne.status == NodeStatus.COMPLETED:
                found[nid] = ne.output
        return found

    def route_work(
        self,
        key: str,
        output: Any,
        choice: str | None,
        execution: WorkflowExecution,
    ) -> tuple[list[str], list[tuple[str, Work]]]:
        """The edges a completed node takes for sure, and those whose condition decides.

        `choice` is the handle the node chose (a CONDITIONAL's "true"/"false", a SWITCH's
        case, "timeout" for a wait that timed out): an edge with one of the node's choice
        handles is taken only when it is the chosen one.
        """
        node_id = execution.nodes[key].node_id
        handles = choice_handles(self.nodes[node_id])
        taken: list[str] = []
        conditional: list[tuple[str, Work]] = []
        for edge in self.outgoing[node_id]:
            handle = edge.source_handle
            if handle is not None and handles(handle) and handle != choice:
                continue
            if choice == TIMEOUT_HANDLE and handle != TIMEOUT_HANDLE:
                continue  # a wait that timed out goes only the timeout way
            work = self.job(edge.id, "condition", execution, output=output, at=key)
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
            and nid in execution.nodes
            and execution.nodes[nid].status == NodeStatus.COMPLETED
        ]
        if len(ends) == 1:
            return execution.nodes[ends[0]].output
        if not ends:
            return None
        return {nid: execution.nodes[nid].output for nid in ends}


def initial_nodes(definition: Definition) -> dict[str, NodeExecution]:
    """The node executions of a new execution: one per node outside loop bodies (those in
    a body are made per iteration)."""
    inside: dict[str, str | None] = {}
    if any(n.type in LOOP_TYPES for n in definition.nodes):
        inside = loop_structure(definition).parent
    return {
        n.id: NodeExecution(n.id, n.type, position=i)
        for i, n in enumerate(definition.nodes)
        if inside.get(n.id) is None
    }


_KEYS = ("inputMapping", "expression", "template", "condition", "parameters")
TIMEOUT_HANDLE = "timeout"
DEFAULT_HANDLE = "default"


def choice_handles(node: Node) -> Callable[[str], bool]:
    """Which edge handles of this node are choices (taken only when chosen)."""
    if node.type == NodeType.CONDITIONAL:
        return BRANCH_HANDLES.__contains__
    if node.type == NodeType.SWITCH:
        return lambda handle: handle == DEFAULT_HANDLE or handle.startswith("case_")
    if node.type in (NodeType.PROMPT, NodeType.AGENT):
        return TIMEOUT_HANDLE.__eq__
    return lambda handle: False


def _node_specs(node: Node) -> list[tuple[str, JobKind]]:
    """The (config key, job kind) pairs of a node's expression work."""
    config = node.config
    specs: list[tuple[str, JobKind]] = []
    if "inputMapping" in config:
        specs.append(("inputMapping", "resolve"))
    if node.type in (NodeType.CONDITIONAL, NodeType.WHILE):
        specs.append(("condition", "condition"))
    elif node.type == NodeType.TRANSFORM:
        if isinstance(config.get("expression"), str):
            specs.append(("expression", "expression"))
        elif "template" in config:
            specs.append(("template", "resolve"))
    elif node.type == NodeType.TOOL and config.get("parameters"):
        specs.append(("parameters", "resolve"))
    elif node.type == NodeType.FOR_EACH:
        specs.append(("collection", "expression"))
    elif node.type == NodeType.SWITCH:
        specs.append(("switchOn", "expression"))
    elif node.type == NodeType.PROMPT and "prompt" in config:
        specs.append(("prompt", "resolve"))
    return specs


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
    """A runner took the execution (new, from a runner that stopped, or woken from a wait).

    `routes` are the routes of completed nodes stored before routes were recorded with them.
    """

    routes: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class AttemptStarted:
    """Attempt `attempt` of a calling node is about to call out; `failed` is why the one
    before it failed, when this is a retry."""

    key: str
    attempt: int
    failed: str | None = None


@dataclass(frozen=True)
class InputResolved:
    """A running node's input mapping was resolved."""

    key: str
    input: Any


@dataclass(frozen=True)
class NodeSucceeded:
    """A node's work finished with `output`; `routes` are the outgoing edges it takes;
    `usage` the tokens its attempt used in all, as the agent (or sub-workflow) says."""

    key: str
    input: Any
    output: Any
    routes: list[str]
    usage: tokens.Usage | None = None


@dataclass(frozen=True)
class NodeFailed:
    """A node's work failed for good (`usage`: what a failed sub-workflow used)."""

    key: str
    input: Any
    error: str
    usage: tokens.Usage | None = None


@dataclass(frozen=True)
class ProgressReport:
    """What an agent reported while node `node_id` ran: `kind` "tokens" (`data`: its counts
    so far in this attempt and `model`) or "thinking" (`data`: step, thought, plan, toolCalls).
    `attempt` and `loop` (the iteration path) say which node execution, when the agent knows."""

    kind: str
    node_id: str
    data: dict[str, Any]
    attempt: int | None = None
    loop: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Progressed:
    """Progress reports of running nodes, in the order they came."""

    reports: tuple[ProgressReport, ...]


@dataclass(frozen=True)
class NodeWaiting:
    """A node waits: for a person's answer (`for_input`) or for a child execution."""

    key: str
    input: Any
    state: dict[str, Any]
    for_input: bool


@dataclass(frozen=True)
class LoopItems:
    """A FOR_EACH's collection was evaluated: one iteration per item."""

    key: str
    input: Any
    items: list[Any]


@dataclass(frozen=True)
class LoopDecided:
    """A WHILE's condition, checked before iteration `index` (on `value`), said `go` or not."""

    key: str
    input: Any
    index: int
    value: Any
    go: bool


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


Happening = (
    Began
    | AttemptStarted
    | InputResolved
    | NodeSucceeded
    | NodeFailed
    | NodeWaiting
    | LoopItems
    | LoopDecided
    | Stopped
    | Progressed
)


@dataclass(frozen=True)
class NodeStart:
    """Run this node execution; attempt `attempt` is already recorded by the step that asks.

    `wake` says why a waiting node runs again ("answer", "timeout", "child"); `index` is the
    iteration a WHILE checks its condition for.
    """

    key: str
    attempt: int
    wake: str | None = None
    index: int | None = None


@dataclass
class Step:
    """What one commit writes (changed nodes, events) and the nodes to start after it."""

    previous_seq: int
    nodes: dict[str, NodeExecution] = field(default_factory=dict)
    events: list[DomainEvent] = field(default_factory=list)
    starts: list[NodeStart] = field(default_factory=list)
    execution_changed: bool = False
    # Keys of the node executions this step made (an iteration's): stored new, not updated.
    created: set[str] = field(default_factory=set)
    # Progress reports dropped: their node was not running (late, duplicate, unknown).
    dropped: int = 0


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
        step.settle()
    return step.result


def budget_exceeded(
    execution: WorkflowExecution, prices: Mapping[str, Mapping[str, float]]
) -> str | None:
    """Why the execution is past its budget (None when it is not, or has none)."""
    budget = execution.budget
    if not budget:
        return None
    used = tokens.parse(execution.usage)
    max_tokens = budget.get("maxTotalTokens")
    total = tokens.totals(used)["totalTokens"]
    if isinstance(max_tokens, int) and total > max_tokens:
        return f"Budget exceeded: {total} tokens used, maxTotalTokens is {max_tokens}"
    max_cost = budget.get("maxCostUsd")
    if isinstance(max_cost, int | float):
        cost = tokens.cost_usd(used, prices)
        if cost > max_cost:
            return f"Budget exceeded: ${cost:.6f} used, maxCostUsd is {max_cost} (MODEL_PRICES)"
    return None


def wait_deadline(node: NodeExecution) -> dt.datetime | None:
    """When a wait for a person times out (None: never)."""
    if node.state is None or node.waiting != "input":
        return None
    text = node.state.get("timeoutAt")
    return dt.datetime.fromisoformat(text) if isinstance(text, str) else None


Scope = tuple[str | None, tuple[int, ...]]
"""A loop's iteration (the loop's node id and the iteration path), or the top level."""


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
        self.pending: list[Scope] = []
        # The node execution whose tokens changed last in this step.
        self.spent: str | None = None

    def record(self, events: list[DomainEvent], *keys: str) -> None:
        self.result.events += events
        for key in keys:
            self.result.nodes[key] = self.execution.nodes[key]
        self.result.execution_changed = True

    def apply(self, happening: Happening) -> None:
        ex, now = self.execution, self.now
        match happening:
            case Began(routes):
                self.began(routes)
            case AttemptStarted(key, attempt, failed):
                node = ex.nodes[key]
                if failed is not None:
                    node.fail_attempt(failed, now)
                self.record(ex.start_node(key, attempt, node.input, now), key)
            case InputResolved(key, node_input):
                self.record(ex.set_input(key, node_input, now), key)
            case NodeSucceeded(key, node_input, output, routes, usage):
                ex.nodes[key].input = node_input
                self.used(key, usage)
                if self.complete(key, output, routes):
                    self.pending.append(self.scope_of(key))
            case NodeFailed(key, node_input, error, usage):
                ex.nodes[key].input = node_input
                self.used(key, usage)
                self.fail(error, key)
            case Progressed(reports):
                for report in reports:
                    self.progressed(report)
            case NodeWaiting(key, node_input, state, for_input):
                node = ex.nodes[key]
                node.input = node_input
                self.used(key, tokens.normalize(state.get("usage")))
                if node.state != state or node.status != NodeStatus.RUNNING:
                    timeout_ms = self.workflow.nodes[node.node_id].config.get("timeoutMs")
                    if for_input and node.node_type == NodeType.PROMPT and timeout_ms:
                        at = now + dt.timedelta(milliseconds=timeout_ms)
                        state = {**state, "timeoutAt": at.isoformat()}
                    self.record(ex.wait_node(key, state, now, for_input), key)
            case LoopItems(key, node_input, items):
                self.loop_items(key, node_input, items)
            case LoopDecided(key, node_input, index, value, go):
                self.loop_decided(key, node_input, index, value, go)
            case Stopped(message):
                self.fail(message, None)

    def used(self, key: str, used: tokens.Usage | None) -> None:
        """The attempt's usage in all, as its end says; without one, what the progress
        reports said stands. A reply that names no model takes the one the reports named."""
        if not used:
            return
        node = self.execution.nodes[key]
        reported = node.attempts[-1].usage if node.attempts else None
        if set(used) == {tokens.UNKNOWN_MODEL} and reported and len(reported) == 1:
            used = {next(iter(reported)): used[tokens.UNKNOWN_MODEL]}
        if self.execution.record_usage(key, used):
            self.result.nodes[key] = node
            self.result.execution_changed = True
            self.spent = key

    def progressed(self, report: ProgressReport) -> None:
        """Relay a report as an event of the node it is about; counted in, for tokens, while
        the node runs (once it has ended, its reply's tokens are the final word)."""
        ex = self.execution
        found = self.reported_node(report)
        if found is None:
            self.result.dropped += 1
            return
        key, running = found
        node = ex.nodes[key]
        changed: tuple[str, ...] = ()
        if report.kind == "tokens" and running:
            earlier = tokens.normalize((node.state or {}).get("usage"))  # asked the user before
            model = report.data.get("model")
            now_used = tokens.add(earlier, tokens.of_counts(report.data, model))
            if ex.record_usage(key, now_used):
                changed = (key,)
                self.spent = key
        self.record(ex.progressed(key, report.kind, report.data, self.now), *changed)

    def reported_node(self, report: ProgressReport) -> tuple[str, bool] | None:
        """The node execution a report is about, and whether it runs: the one of its loop
        iteration and attempt when the report says, else the only one of its node that runs.

        A node that completed within LATE_GRACE still takes reports of its last attempt: one
        that travelled between processes may arrive just after the agent's reply did.
        """
        ex = self.execution
        if report.loop is not None:
            candidates = [node_key(report.node_id, report.loop)]
        else:
            candidates = [report.node_id]
            if self.workflow.loop_of.get(report.node_id) is not None:
                candidates = [
                    k
                    for k, n in ex.nodes.items()
                    if n.node_id == report.node_id and n.status == NodeStatus.RUNNING
                ]
        found = [k for k in candidates if k in ex.nodes]
        if len(found) != 1:
            return None
        node = ex.nodes[found[0]]
        if report.attempt is not None and report.attempt != node.retry_count + 1:
            return None
        if node.status == NodeStatus.RUNNING and node.waiting is None:
            return found[0], True
        ended = node.completed_at
        if node.status == NodeStatus.COMPLETED and ended and self.now - ended <= LATE_GRACE:
            return found[0], False
        return None

    def budget_holds(self) -> bool:
        """Past its budget no node starts: the execution FAILS (at the running node whose
        tokens took it past, which is stopped), or with onExceed "pause" it waits until the
        budget is raised; False then."""
        ex = self.execution
        exceeded = budget_exceeded(ex, self.limits.prices)
        if exceeded is None or ex.finished:
            return True
        if (ex.budget or {}).get("onExceed") == "pause":
            self.pause(exceeded)
            return False
        key = self.spent
        if key is not None and ex.nodes[key].status == NodeStatus.RUNNING:
            self.fail(exceeded, key)
        else:
            after = "" if key is None else f" (after node {ex.nodes[key].node_id})"
            self.fail(exceeded + after, None)
        return False

    def pause(self, reason: str) -> None:
        """Stop starting nodes; those in flight are abandoned and run again once the budget
        is raised. The execution waits (its EXECUTION_TIMEOUT clock stops)."""
        ex = self.execution
        if ex.paused is None:
            self.record(ex.pause(reason, self.now))
        self.result.starts.clear()
        self.pending.clear()

    def began(self, routes: dict[str, list[str]]) -> None:
        ex, now = self.execution, self.now
        for key, taken in routes.items():
            ex.nodes[key].routes = taken
            self.record([], key)
        if ex.status == ExecutionStatus.PENDING:
            self.record(ex.begin(now))
        if ex.paused is not None and budget_exceeded(ex, self.limits.prices) is not None:
            return  # still past its budget: it waits on
        if ex.paused is not None:
            self.record(ex.unpause(now))
        if ex.waiting_since is not None:
            ex.resume_waiting(now)
            self.result.execution_changed = True
        scopes: set[Scope] = {(None, ())}
        for key, node in list(ex.nodes.items()):
            if node.iteration:
                scopes.add((self.workflow.loop_of.get(node.node_id), node.iteration))
            if node.status not in (NodeStatus.RUNNING, NodeStatus.WAITING_INPUT):
                continue
            attempt = node.retry_count + 1
            waiting = node.waiting
            if waiting == "input":
                deadline = wait_deadline(node)
                if node.answer is not None:
                    self.record(ex.start_node(key, attempt, node.input, now), key)
                    self.result.starts.append(NodeStart(key, attempt, wake="answer"))
                elif deadline is not None and deadline <= now:
                    self.result.starts.append(NodeStart(key, attempt, wake="timeout"))
            elif waiting == "child":
                self.result.starts.append(NodeStart(key, attempt, wake="child"))
            elif node.node_type in LOOP_TYPES and self.loop_began(key):
                pass
            else:
                # In flight when the last runner stopped: the same attempt runs again, under
                # the same idempotency key, so that the callee can drop it.
                self.record(ex.start_node(key, attempt, node.input, now), key)
                self.result.starts.append(NodeStart(key, attempt))
        self.pending.extend(scopes)

    def loop_began(self, key: str) -> bool:
        """Take a running loop up again; False when it must start over (items not known)."""
        node = self.execution.nodes[key]
        if node.node_type == NodeType.FOR_EACH:
            if node.state is None:
                return False
            self.drive_for_each(key)
            return True
        progress = self.loop_progress(key)
        if not progress.open:
            self.ask_while(key, progress.started)
        return True

    def fail(self, message: str, key: str | None) -> None:
        changed = [k for k, s in self.execution.nodes.items() if not s.status.terminal]
        self.record(self.execution.fail(message, key, self.now), *changed)

    def complete(self, key: str, output: Any, routes: list[str]) -> bool:
        """COMPLETE the node unless its output breaks a limit (then the node FAILS)."""
        try:
            size = self.limits.values.check(output, f"the output of node {key!r}")
            total = size + self.state_bytes()
            if total > self.limits.max_state_bytes:
                raise ValueTooLarge(
                    f"the execution's stored state would exceed MAX_EXECUTION_STATE_BYTES "
                    f"({total} bytes, at most {self.limits.max_state_bytes})",
                    "MAX_EXECUTION_STATE_BYTES",
                )
        except ValueTooLarge as exc:
            self.fail(exc.message, key)
            return False
        self.record(self.execution.complete_node(key, output, routes, self.now), key)
        self.execution.nodes[key].output_bytes = size
        self.execution.output_bytes = total
        return True

    def state_bytes(self) -> int:
        """Bytes of the completed nodes' outputs, measured once per load, then kept."""
        ex = self.execution
        if ex.output_bytes is None:
            ex.output_bytes = sum(_output_bytes(n) for n in ex.nodes.values())
        return ex.output_bytes

    def scope_of(self, key: str) -> Scope:
        node = self.execution.nodes[key]
        return self.workflow.loop_of.get(node.node_id), node.iteration

    # Loops.

    def loop_progress(self, key: str) -> LoopProgress:
        """The iterations of a loop execution, found once per load and kept up to date."""
        node = self.execution.nodes[key]
        progress = node.progress
        if progress is None:
            first = self.workflow.scopes[node.node_id]
            started = 0
            while node_key(first[0], (*node.iteration, started)) in self.execution.nodes:
                started += 1
            progress = LoopProgress(
                started,
                {i for i in range(started) if not self.iteration_done(node, i)},
            )
            node.progress = progress
        return progress

    def loop_busy(self, loop: NodeExecution) -> bool:
        """A running loop works itself (evaluates its items or its condition) when no
        iteration of it is open."""
        if loop.node_type == NodeType.FOR_EACH and loop.state is None:
            return True
        return not self.loop_progress(loop.key).open

    def iteration_done(self, loop: NodeExecution, index: int) -> bool:
        path = (*loop.iteration, index)
        return all(
            self.execution.nodes[node_key(nid, path)].status in _DONE
            for nid in self.workflow.scopes[loop.node_id]
        )

    def start_iteration(self, key: str) -> None:
        """Create the node executions of the loop's next iteration; its first nodes start."""
        loop = self.execution.nodes[key]
        progress = self.loop_progress(key)
        path = (*loop.iteration, progress.started)
        added = [
            NodeExecution(nid, self.workflow.nodes[nid].type, iteration=path)
            for nid in self.workflow.scopes[loop.node_id]
        ]
        self.execution.add_nodes(added)
        self.record([], *(n.key for n in added))
        self.result.created.update(n.key for n in added)
        progress.open.add(progress.started)
        progress.started += 1
        self.pending.append((loop.node_id, path))

    def loop_items(self, key: str, node_input: Any, items: list[Any]) -> None:
        node = self.execution.nodes[key]
        node.input = node_input
        try:
            self.limits.values.check(items, f"the items of node {key!r}")
        except ValueTooLarge as exc:
            self.fail(exc.message, key)
            return
        self.execution.set_state(key, {"items": items}, self.now)
        self.record([], key)
        self.drive_for_each(key)

    def drive_for_each(self, key: str) -> None:
        """Start iterations up to the loop's concurrency; complete it when all are done."""
        node = self.execution.nodes[key]
        items = (node.state or {}).get("items", [])
        config = self.workflow.nodes[node.node_id].config
        concurrency = config.get("concurrency") or 1
        progress = self.loop_progress(key)
        while progress.started < len(items) and len(progress.open) < concurrency:
            self.start_iteration(key)
        if progress.started == len(items) and not progress.open:
            results = [self.workflow.result(key, i, self.execution) for i in range(len(items))]
            self.finish_loop(key, results)

    def ask_while(self, key: str, index: int) -> None:
        """A WHILE checks its condition before iteration `index`."""
        node = self.execution.nodes[key]
        self.result.starts.append(NodeStart(key, node.retry_count + 1, index=index))

    def loop_decided(self, key: str, node_input: Any, index: int, value: Any, go: bool) -> None:
        node = self.execution.nodes[key]
        progress = self.loop_progress(key)
        if node.status != NodeStatus.RUNNING or index != progress.started or progress.open:
            return  # a check that a restart made twice
        node.input = node_input
        if not go:
            self.finish_loop(key, value)
            return
        limit = self.workflow.nodes[node.node_id].config.get("maxIterations")
        limit = DEFAULT_MAX_ITERATIONS if limit is None else limit
        if index >= limit:
            self.fail(
                f"WHILE node {node.node_id!r} reached maxIterations ({limit}) and its "
                "condition is still true",
                key,
            )
            return
        if index == 0:
            self.record([], key)  # its input, when it has an input mapping
        self.start_iteration(key)

    def iteration_finished(self, loop_id: str, path: tuple[int, ...]) -> None:
        """Every node of an iteration is done: the loop goes on."""
        key = node_key(loop_id, path[:-1])
        progress = self.loop_progress(key)
        if path[-1] not in progress.open:
            return
        progress.open.discard(path[-1])
        if self.execution.nodes[key].node_type == NodeType.FOR_EACH:
            self.drive_for_each(key)
        else:
            self.ask_while(key, progress.started)

    def finish_loop(self, key: str, output: Any) -> None:
        loop = self.workflow.loops[self.execution.nodes[key].node_id]
        if self.complete(key, output, [e.id for e in loop.exits]):
            self.pending.append(self.scope_of(key))

    # Starting what can start.

    def settle(self) -> None:
        """Progress every scope that changed; then finish the execution, or note that it
        waits, or fail it if it can go no further."""
        ex = self.execution
        if ex.paused is not None or not self.budget_holds():
            return
        while self.pending and not ex.finished:
            self.progress(*self.pending.pop())
        if ex.finished:
            return
        top = [ex.nodes[nid] for nid in self.workflow.scopes[None]]
        if all(n.status in _DONE for n in top):
            self.record(ex.complete(self.workflow.output(ex), self.now))
            return
        if self.result.starts:
            return
        busy = waiting = False
        for node in reversed(ex.nodes.values()):
            if node.status in (NodeStatus.RUNNING, NodeStatus.WAITING_INPUT):
                if node.waiting is not None:
                    waiting = True
                elif node.node_type not in LOOP_TYPES or self.loop_busy(node):
                    busy = True
                    break
        if busy:
            return
        if waiting:
            if ex.waiting_since is None:
                ex.waiting_since = self.now
                self.result.execution_changed = True
            return
        self.fail("Internal error: no node of the execution can run any more", None)

    def progress(self, loop_id: str | None, path: tuple[int, ...]) -> None:
        """Start what can start in one scope, skip what never will; pass-through nodes (START,
        END, a TRANSFORM without config) complete here at once."""
        workflow, ex, now = self.workflow, self.execution, self.now
        scope = workflow.scopes[loop_id]
        changed = True
        while changed and not ex.finished:
            changed = False
            for node_id in scope:
                key = node_key(node_id, path)
                node = ex.nodes.get(key)
                if node is None or node.status != NodeStatus.PENDING:
                    continue
                if not self.ready(node_id, path):
                    continue
                if node_id != workflow.start_id and not workflow.arrived(key, ex):
                    self.record(ex.skip_node(key, now), key)
                    changed = True
                    continue
                node_input = workflow.default_input(key, ex)
                mapped = "inputMapping" in workflow.nodes[node_id].config
                self.record(ex.start_node(key, 1, None if mapped else node_input, now), key)
                if workflow.trivial(node_id):
                    routes = [e.id for e in workflow.outgoing[node_id]]
                    if not self.complete(key, node_input, routes):
                        return
                    changed = True
                elif node.node_type == NodeType.WHILE:
                    self.result.starts.append(NodeStart(key, 1, index=0))
                else:
                    self.result.starts.append(NodeStart(key, 1))
        if loop_id is not None and not ex.finished:
            loop = ex.nodes[node_key(loop_id, path[:-1])]
            if self.iteration_done(loop, path[-1]):
                self.iteration_finished(loop_id, path)

    def ready(self, node_id: str, path: tuple[int, ...]) -> bool:
        """Every edge into the node comes from a node execution that is done."""
        workflow, nodes = self.workflow, self.execution.nodes
        for edge in workflow.incoming[node_id]:
            if edge.id in workflow.entry_edges:
                continue
            source = nodes.get(workflow.key_of(edge.source, path))
            if source is None or source.status not in _DONE:
                return False
        return True


def _output_bytes(node: NodeExecution) -> int:
    if node.status != NodeStatus.COMPLETED:
        return 0
    if node.output_bytes is None:
        node.output_bytes = json_size(node.output)
    return node.output_bytes
