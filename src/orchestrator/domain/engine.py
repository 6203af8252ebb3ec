"""Graph stepping: which nodes run next, joins, skips, conditions, input mapping, transforms.

Pure code: it reads an execution's node states and says what happens next; the runner
carries that out and records it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.domain.errors import ExpressionError
from orchestrator.domain.execution import NodeStatus, WorkflowExecution
from orchestrator.domain.expressions import Expression, compile_expression
from orchestrator.domain.mapping import compile_all, resolve
from orchestrator.domain.workflow import Definition, Edge, Node, NodeType

_DONE = frozenset({NodeStatus.COMPLETED, NodeStatus.SKIPPED})


@dataclass(frozen=True)
class Run:
    """Start this node; `sources` are the nodes whose edges into it were taken."""

    node_id: str
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skip:
    """This node will not run: no branch that reaches it was taken."""

    node_id: str


Decision = Run | Skip


class CompiledWorkflow:
    """A definition with its graph indexed and every expression compiled, built once per version."""

    def __init__(self, definition: Definition) -> None:
        self.definition = definition
        self.nodes: dict[str, Node] = {n.id: n for n in definition.nodes}
        self.incoming: dict[str, list[Edge]] = defaultdict(list)
        self.outgoing: dict[str, list[Edge]] = defaultdict(list)
        for edge in definition.edges:
            self.incoming[edge.target].append(edge)
            self.outgoing[edge.source].append(edge)
        self.order = self._topological_order()
        self.start_id = next(n.id for n in definition.nodes if n.type == NodeType.START)
        self._edge_conditions: dict[str, Expression] = {
            e.id: compile_expression(e.condition) for e in definition.edges if e.condition
        }
        self._node_expressions: dict[str, Expression] = {}
        for node in definition.nodes:
            key = "condition" if node.type == NodeType.CONDITIONAL else "expression"
            source = node.config.get(key)
            if node.type in (NodeType.CONDITIONAL, NodeType.TRANSFORM) and isinstance(source, str):
                self._node_expressions[node.id] = compile_expression(source)
            for mapped in ("inputMapping", "template", "parameters"):
                compile_all(node.config.get(mapped))

    def _topological_order(self) -> list[str]:
        indegree = {n: len(self.incoming[n]) for n in self.nodes}
        ready = [n.id for n in self.definition.nodes if indegree[n.id] == 0]
        order: list[str] = []
        while ready:
            current = ready.pop(0)
            order.append(current)
            for edge in self.outgoing[current]:
                indegree[edge.target] -= 1
                if indegree[edge.target] == 0:
                    ready.append(edge.target)
        return order

    def decide(self, execution: WorkflowExecution) -> list[Decision]:
        """The nodes that can start now, and those that can never run (skips propagate)."""
        status = {nid: ne.status for nid, ne in execution.nodes.items()}
        decisions: list[Decision] = []
        for node_id in self.order:
            if status[node_id] != NodeStatus.PENDING:
                continue
            if node_id == self.start_id:
                decisions.append(Run(node_id))
                continue
            incoming = self.incoming[node_id]
            if any(status[e.source] not in _DONE for e in incoming):
                continue
            taken = [
                e
                for e in incoming
                if status[e.source] == NodeStatus.COMPLETED and self.edge_taken(e, execution)
            ]
            if taken:
                decisions.append(Run(node_id, tuple(e.source for e in taken)))
            else:
                status[node_id] = NodeStatus.SKIPPED
                decisions.append(Skip(node_id))
        return decisions

    def edge_taken(self, edge: Edge, execution: WorkflowExecution) -> bool:
        """Whether the edge is followed, given its source's result."""
        source = self.nodes[edge.source]
        output = execution.nodes[edge.source].output
        if source.type == NodeType.CONDITIONAL and edge.source_handle in ("true", "false"):
            branch = self.condition(source.id, output)
            if edge.source_handle != ("true" if branch else "false"):
                return False
        condition = self._edge_conditions.get(edge.id)
        if condition is None:
            return True
        return _boolean(condition.evaluate({"output": output}), f"edge {edge.id!r} condition")

    def condition(self, node_id: str, node_input: Any) -> bool:
        """A CONDITIONAL node's verdict; its input is named `input`."""
        return _boolean(
            self._node_expressions[node_id].evaluate({"input": node_input}),
            f"node {node_id!r} condition",
        )

    def node_input(self, run: Run, execution: WorkflowExecution) -> Any:
        """The input of a node about to run.

        START takes the execution's input; a node with one incoming edge takes its source's
        output; a join (several incoming edges) takes `{sourceNodeId: output}` of each branch
        that arrived, so its input has the same shape whichever branches were taken.
        `config.inputMapping`, when present, builds the input from those parts instead.
        """
        if run.node_id == self.start_id:
            default = execution.input
        elif len(self.incoming[run.node_id]) == 1:
            default = execution.nodes[run.sources[0]].output
        else:
            default = {source: execution.nodes[source].output for source in run.sources}
        mapping = self.nodes[run.node_id].config.get("inputMapping")
        if mapping is None:
            return default
        return resolve(mapping, self.context(execution, default))

    def context(self, execution: WorkflowExecution, node_input: Any) -> Mapping[str, Any]:
        """What an expression in a mapping or transform sees: `input`, `variables`, `outputs`."""
        return _Context(execution, node_input)

    def transform(self, node_id: str, node_input: Any, execution: WorkflowExecution) -> Any:
        """Run a TRANSFORM node: its expression, else its template, else its mapped input."""
        node = self.nodes[node_id]
        if node_id in self._node_expressions:
            return self._node_expressions[node_id].evaluate(self.context(execution, node_input))
        if "template" in node.config:
            return resolve(node.config["template"], self.context(execution, node_input))
        return node_input

    def tool_parameters(self, node_id: str, node_input: Any, execution: WorkflowExecution) -> Any:
        """A TOOL node's parameters: `config.parameters` (templated) over an object input."""
        node = self.nodes[node_id]
        base = node_input if isinstance(node_input, dict) else {"input": node_input}
        if node_input is None:
            base = {}
        extra = node.config.get("parameters")
        if not extra:
            return base
        return {**base, **resolve(extra, self.context(execution, node_input))}

    def is_complete(self, execution: WorkflowExecution) -> bool:
        """True when every node has finished (completed or skipped)."""
        return all(ne.status in _DONE for ne in execution.nodes.values())

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


class _Context(Mapping[str, Any]):
    """`variables` and `outputs` are computed on first use: most expressions read `input` only."""

    _NAMES = ("input", "variables", "outputs")

    def __init__(self, execution: WorkflowExecution, node_input: Any) -> None:
        self._execution = execution
        self._values: dict[str, Any] = {"input": node_input}

    def __getitem__(self, name: str) -> Any:
        if name not in self._values:
            if name == "variables":
                self._values[name] = variables(self._execution)
            elif name == "outputs":
                self._values[name] = {
                    nid: ne.output
                    for nid, ne in self._execution.nodes.items()
                    if ne.status == NodeStatus.COMPLETED
                }
            else:
                raise KeyError(name)
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._NAMES)

    def __len__(self) -> int:
        return len(self._NAMES)


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


def _boolean(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ExpressionError(f"{what} must be true or false, got {value!r}")
    return value
