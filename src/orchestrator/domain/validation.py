"""Every rule a workflow definition must meet; all problems are reported at once."""

from __future__ import annotations

import unicodedata
from collections import defaultdict, deque
from graphlib import CycleError, TopologicalSorter
from typing import Any

from orchestrator.domain.errors import ExpressionError, Problem
from orchestrator.domain.expressions import compile_expression
from orchestrator.domain.mapping import references
from orchestrator.domain.retry import retry_problems
from orchestrator.domain.workflow import Definition, Node, NodeType

MAX_NODES = 500
MAX_TIMEOUT_MS = 3_600_000
BRANCH_HANDLES = frozenset({"true", "false"})
# Characters an agentId or toolId may not hold: an agentId is a URL path segment
# (`/agents/{agentId}/execute`), and toolId follows the same rule.
UNSAFE_IN_SERVICE_ID = frozenset("/\\?#%")
SERVICE_ID_RULE = (
    "an id is printable characters other than / \\ ? # % and whitespace, and is not . or .."
)


def validate_definition(definition: Definition) -> list[Problem]:
    """All problems of a definition; an empty list means it is valid."""
    problems: list[Problem] = []
    nodes = definition.nodes
    if not nodes:
        return [Problem("definition.nodes", "a workflow needs at least one node")]
    if len(nodes) > MAX_NODES:
        problems.append(Problem("definition.nodes", f"at most {MAX_NODES} nodes are allowed"))

    problems += _duplicates([n.id for n in nodes], "definition.nodes", "node")
    problems += _duplicates([e.id for e in definition.edges], "definition.edges", "edge")

    starts = [n for n in nodes if n.type == NodeType.START]
    if len(starts) != 1:
        problems.append(
            Problem("definition.nodes", f"exactly one START node is required, found {len(starts)}")
        )
    if not any(n.type == NodeType.END for n in nodes):
        problems.append(Problem("definition.nodes", "at least one END node is required"))

    ids = {n.id for n in nodes}
    types = {n.id: n.type for n in nodes}
    # The graph checks need a sound skeleton; config and expression problems do not
    # disturb them, so those are reported together with the graph's own problems.
    sound = len(starts) == 1 and not problems
    for i, edge in enumerate(definition.edges):
        path = f"definition.edges[{i}]"
        ok = True
        for end in ("source", "target"):
            ref = getattr(edge, end)
            if ref not in ids:
                problems.append(
                    Problem(f"{path}.{end}", f"edge {edge.id!r} names unknown node {ref!r}")
                )
                ok = False
        if ok and types[edge.target] == NodeType.START:
            problems.append(Problem(f"{path}.target", "no edge may lead into the START node"))
            sound = False
        if ok and types[edge.source] == NodeType.END:
            problems.append(Problem(f"{path}.source", "no edge may leave an END node"))
            sound = False
        if (
            ok
            and types[edge.source] == NodeType.CONDITIONAL
            and edge.source_handle is not None
            and edge.source_handle not in BRANCH_HANDLES
        ):
            problems.append(
                Problem(f"{path}.sourceHandle", 'a CONDITIONAL edge handle is "true" or "false"')
            )
        if edge.condition is not None:
            problems += _expression(edge.condition, f"{path}.condition")
        sound = sound and ok

    for i, node in enumerate(nodes):
        problems += _id_problems(node.id, f"definition.nodes[{i}].id", "node")
        problems += _node_problems(node, f"definition.nodes[{i}]", ids)
    for i, edge in enumerate(definition.edges):
        problems += _id_problems(edge.id, f"definition.edges[{i}].id", "edge")

    if sound:
        problems += _graph_problems(definition, starts[0].id)
    return problems


def _duplicates(values: list[str], path: str, what: str) -> list[Problem]:
    seen: set[str] = set()
    dupes: list[str] = []
    for value in values:
        if value in seen and value not in dupes:
            dupes.append(value)
        seen.add(value)
    return [Problem(path, f"{what} id {v!r} is used more than once") for v in dupes]


def _unprintable(text: str) -> str | None:
    """The first control character or unpaired surrogate in `text`, described; or None."""
    for char in text:
        category = unicodedata.category(char)
        if category == "Cc":
            return f"the control character U+{ord(char):04X}"
        if category == "Cs":
            return f"the unpaired surrogate U+{ord(char):04X}"
    return None


def service_id_problem(value: str) -> str | None:
    """Why `value` cannot be an agentId or toolId, or None when it can."""
    if value in (".", ".."):
        return f"{value!r} is not allowed: {SERVICE_ID_RULE}"
    bad = _unprintable(value)
    if bad is None:
        found = next((c for c in value if c in UNSAFE_IN_SERVICE_ID or c.isspace()), None)
        if found is not None:
            bad = "whitespace" if found.isspace() else repr(found)
    if bad is not None:
        return f"{value!r} contains {bad}: {SERVICE_ID_RULE}"
    return None


def _id_problems(value: str, path: str, what: str) -> list[Problem]:
    problems: list[Problem] = []
    bad = _unprintable(value)
    if bad is not None:
        problems.append(Problem(path, f"{what} id {value!r} contains {bad}"))
    if value != value.strip():
        problems.append(Problem(path, f"{what} id {value!r} starts or ends with whitespace"))
    return problems


def _expression(source: Any, path: str) -> list[Problem]:
    if not isinstance(source, str):
        return [Problem(path, "must be an expression string")]
    try:
        compile_expression(source)
    except ExpressionError as exc:
        return [Problem(path, f"does not compile: {exc.message}")]
    return []


def _node_problems(node: Node, path: str, ids: set[str]) -> list[Problem]:
    config = node.config
    cpath = f"{path}.config"
    problems: list[Problem] = []

    def required_id(key: str) -> None:
        value = config.get(key)
        if not isinstance(value, str) or not value.strip():
            problems.append(Problem(f"{cpath}.{key}", f"a {node.type} node needs config.{key}"))
            return
        reason = service_id_problem(value)
        if reason is not None:
            problems.append(Problem(f"{cpath}.{key}", f"{key} {reason}"))

    if node.type == NodeType.AGENT:
        required_id("agentId")
    elif node.type == NodeType.TOOL:
        required_id("toolId")
        if "parameters" in config and not isinstance(config["parameters"], dict):
            problems.append(Problem(f"{cpath}.parameters", "must be an object"))
        problems += _mapping_problems(config.get("parameters"), f"{cpath}.parameters", ids)
    elif node.type == NodeType.CONDITIONAL:
        if "condition" not in config:
            problems.append(
                Problem(f"{cpath}.condition", "a CONDITIONAL node needs config.condition")
            )
        else:
            problems += _expression(config["condition"], f"{cpath}.condition")
    elif node.type == NodeType.TRANSFORM:
        # Without expression or template it passes its input on, as in the seed.
        if "expression" in config:
            problems += _expression(config["expression"], f"{cpath}.expression")
        problems += _mapping_problems(config.get("template"), f"{cpath}.template", ids)

    if "inputMapping" in config:
        if not isinstance(config["inputMapping"], dict):
            problems.append(Problem(f"{cpath}.inputMapping", "must be an object"))
        else:
            problems += _mapping_problems(config["inputMapping"], f"{cpath}.inputMapping", ids)
    problems += retry_problems(config.get("retry"), f"{cpath}.retry")
    if "timeoutMs" in config:
        value = config["timeoutMs"]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_TIMEOUT_MS:
            problems.append(
                Problem(f"{cpath}.timeoutMs", f"must be a whole number from 1 to {MAX_TIMEOUT_MS}")
            )
    return problems


def _mapping_problems(value: Any, path: str, ids: set[str]) -> list[Problem]:
    problems: list[Problem] = []
    for kind, ref in references(value):
        if kind == "output" and ref not in ids:
            problems.append(Problem(path, f"$output.{ref} names unknown node {ref!r}"))
        elif kind == "expression":
            problems += _expression(ref, path)
    return problems


def _graph_problems(definition: Definition, start: str) -> list[Problem]:
    successors: dict[str, list[str]] = defaultdict(list)
    predecessors: dict[str, list[str]] = defaultdict(list)
    for edge in definition.edges:
        successors[edge.source].append(edge.target)
        predecessors[edge.target].append(edge.source)

    problems: list[Problem] = []
    cycle = find_cycle([n.id for n in definition.nodes], successors)
    if cycle:
        problems.append(
            Problem(
                "definition.edges",
                "cycles are not supported yet: " + " -> ".join([*cycle, cycle[0]]),
            )
        )

    reached = _reach([start], successors)
    ends = [n.id for n in definition.nodes if n.type == NodeType.END]
    reaches_end = _reach(ends, predecessors)
    for i, node in enumerate(definition.nodes):
        if node.id not in reached:
            problems.append(
                Problem(f"definition.nodes[{i}]", f"node {node.id!r} is not reachable from START")
            )
        if node.id not in reaches_end:
            problems.append(
                Problem(f"definition.nodes[{i}]", f"no END node is reachable from node {node.id!r}")
            )
    return problems


def _reach(roots: list[str], links: dict[str, list[str]]) -> set[str]:
    seen = set(roots)
    queue = deque(roots)
    while queue:
        for nxt in links.get(queue.popleft(), []):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def find_cycle(node_ids: list[str], successors: dict[str, list[str]]) -> list[str] | None:
    """One cycle of the graph as a list of node ids (in edge order), or None when it is acyclic."""
    sorter: TopologicalSorter[str] = TopologicalSorter()
    for node in node_ids:
        sorter.add(node)
    for node in node_ids:
        for child in successors.get(node, []):
            sorter.add(child, node)
    try:
        sorter.prepare()
    except CycleError as exc:
        cycle: list[str] = exc.args[1]
        return cycle[:-1]
    return None
