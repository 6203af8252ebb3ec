"""Every rule a workflow definition must meet; all problems are reported at once."""

from __future__ import annotations

import re
import unicodedata
from collections import defaultdict, deque
from typing import Any

from orchestrator.domain.errors import ExpressionError, Problem
from orchestrator.domain.expressions import compile_expression
from orchestrator.domain.loops import BODY_HANDLE, EXIT_HANDLE, loop_structure
from orchestrator.domain.loops import find_cycle as find_cycle
from orchestrator.domain.mapping import references
from orchestrator.domain.retry import retry_problems
from orchestrator.domain.workflow import Definition, Node, NodeType

MAX_NODES = 500
MAX_TIMEOUT_MS = 3_600_000
# The longest a PROMPT (or an AGENT allowed to ask the user) may wait for a person: 30 days.
MAX_WAIT_MS = 30 * 24 * 3_600_000
MAX_LOOP_ITERATIONS = 10_000
DEFAULT_MAX_ITERATIONS = 100
DEFAULT_MAX_ITEMS = 1000
MAX_CONCURRENCY = 100
DEFAULT_CONCURRENCY = 1
MAX_SWITCH_CASES = 100
BRANCH_HANDLES = frozenset({"true", "false"})
TIMEOUT_HANDLE = "timeout"
DEFAULT_CASE_HANDLE = "default"
_CASE_HANDLE = re.compile(r"case_(0|[1-9][0-9]*)")
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
    by_id: dict[str, Node] = {}
    for node in nodes:
        by_id.setdefault(node.id, node)
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
        if ok:
            reason = _handle_problem(edge.source_handle, by_id[edge.source])
            if reason is not None:
                problems.append(Problem(f"{path}.sourceHandle", reason))
        if edge.condition is not None:
            problems += _expression(edge.condition, f"{path}.condition")
            if ok and types[edge.source] in (NodeType.WHILE, NodeType.FOR_EACH):
                problems.append(
                    Problem(
                        f"{path}.condition",
                        f"an edge leaving {types[edge.source]} node {edge.source!r} cannot have "
                        "a condition: the loop itself decides (its condition, its items)",
                    )
                )
        sound = sound and ok

    for i, node in enumerate(nodes):
        problems += _id_problems(node.id, f"definition.nodes[{i}].id", "node")
        problems += _node_problems(node, f"definition.nodes[{i}]", ids)
    for i, edge in enumerate(definition.edges):
        problems += _id_problems(edge.id, f"definition.edges[{i}].id", "edge")

    if sound:
        problems += _graph_problems(definition, starts[0].id)
    return problems


def case_handle(index: int) -> str:
    """The source handle of the edge a SWITCH takes for its case at `index` (from 0)."""
    return f"case_{index}"


def _handle_problem(handle: str | None, source: Node) -> str | None:
    """Why an edge leaving `source` may not carry `handle`, or None when it may."""
    found = "no handle" if handle is None else f"found {handle!r}"
    kind = source.type
    if kind == NodeType.CONDITIONAL:
        if handle is None or handle in BRANCH_HANDLES:
            return None
        return 'a CONDITIONAL edge handle is "true" or "false"'
    if kind in BODY_HANDLE:
        body = BODY_HANDLE[kind]
        if handle is None or handle in (body, EXIT_HANDLE):
            return None
        return (
            f"a {kind} edge handle is {body!r} (into the loop's body) or {EXIT_HANDLE!r} "
            f"(out of the loop, also taken by an edge without handle), {found}"
        )
    if kind == NodeType.SWITCH:
        cases = source.config.get("cases")
        if isinstance(cases, list):
            if handle == DEFAULT_CASE_HANDLE or handle in {
                case_handle(i) for i in range(len(cases))
            }:
                return None
            if not cases:
                allowed = f"{DEFAULT_CASE_HANDLE!r} (the node has no cases)"
            else:
                last = case_handle(len(cases) - 1)
                allowed = (
                    f"{case_handle(0)!r} to {last!r} (one per case, from 0) "
                    f"or {DEFAULT_CASE_HANDLE!r}"
                )
        else:
            # config.cases is reported on its own; only the form of the handle is checked.
            if handle is not None and (
                handle == DEFAULT_CASE_HANDLE or _CASE_HANDLE.fullmatch(handle)
            ):
                return None
            allowed = f'"case_<index>" (one per case, from 0) or {DEFAULT_CASE_HANDLE!r}'
        return f"a SWITCH edge handle is {allowed}, {found}"
    if kind == NodeType.PROMPT:
        if handle is None or handle == TIMEOUT_HANDLE:
            return None
        return (
            f"a PROMPT edge has no handle, or {TIMEOUT_HANDLE!r} for the way taken when "
            f"nobody answers in time, {found}"
        )
    return None


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

    def required_expression(key: str, what: str) -> None:
        if key not in config:
            problems.append(
                Problem(f"{cpath}.{key}", f"a {node.type} node needs config.{key}, {what}")
            )
        else:
            problems.extend(_expression(config[key], f"{cpath}.{key}"))

    def whole_number(key: str, low: int, high: int | None, note: str) -> None:
        if key not in config:
            return
        value = config[key]
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value >= low
            and (high is None or value <= high)
        ):
            return
        span = f"from {low} to {high}" if high is not None else f"of at least {low}"
        problems.append(Problem(f"{cpath}.{key}", f"must be a whole number {span}{note}"))

    if node.type == NodeType.AGENT:
        required_id("agentId")
        if "allowAskUser" in config and not isinstance(config["allowAskUser"], bool):
            problems.append(
                Problem(
                    f"{cpath}.allowAskUser",
                    "must be true or false (whether the agent may stop to ask the user)",
                )
            )
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
    elif node.type == NodeType.PROMPT:
        prompt = config.get("prompt")
        if not isinstance(prompt, str):
            problems.append(
                Problem(
                    f"{cpath}.prompt",
                    "a PROMPT node needs config.prompt, the text shown to the person: a string "
                    "whose {{path}} placeholders are filled from the node's input",
                )
            )
        else:
            problems += _mapping_problems(prompt, f"{cpath}.prompt", ids)
    elif node.type == NodeType.WHILE:
        required_expression("condition", "the expression that decides whether to run the body")
        whole_number(
            "maxIterations",
            1,
            MAX_LOOP_ITERATIONS,
            f" (the most iterations allowed; default {DEFAULT_MAX_ITERATIONS})",
        )
    elif node.type == NodeType.FOR_EACH:
        required_expression("collection", "the expression giving the list to iterate over")
        whole_number(
            "maxItems",
            1,
            MAX_LOOP_ITERATIONS,
            f" (the most items allowed; default {DEFAULT_MAX_ITEMS})",
        )
        whole_number(
            "concurrency",
            1,
            MAX_CONCURRENCY,
            f" (items run at once; default {DEFAULT_CONCURRENCY})",
        )
    elif node.type == NodeType.SWITCH:
        required_expression("switchOn", "the expression whose value picks the case")
        problems += _cases_problems(config, cpath)
    elif node.type == NodeType.SUBWORKFLOW:
        required_id("workflowId")
        whole_number(
            "version",
            1,
            None,
            " (the version of the child workflow to run; leave it out for its current version)",
        )

    if "inputMapping" in config:
        if not isinstance(config["inputMapping"], dict):
            problems.append(Problem(f"{cpath}.inputMapping", "must be an object"))
        else:
            problems += _mapping_problems(config["inputMapping"], f"{cpath}.inputMapping", ids)
    problems += retry_problems(config.get("retry"), f"{cpath}.retry")
    if node.type == NodeType.PROMPT:
        whole_number(
            "timeoutMs",
            1,
            MAX_WAIT_MS,
            " (milliseconds; up to 30 days, as the node may wait for a person)",
        )
    else:
        whole_number("timeoutMs", 1, MAX_TIMEOUT_MS, "")
    return problems


def _cases_problems(config: dict[str, Any], cpath: str) -> list[Problem]:
    path = f"{cpath}.cases"
    if "cases" not in config:
        return [
            Problem(
                path,
                'a SWITCH node needs config.cases, a list of objects each with a "value" key',
            )
        ]
    cases = config["cases"]
    if not isinstance(cases, list):
        return [Problem(path, 'must be a list of objects each with a "value" key')]
    problems: list[Problem] = []
    if len(cases) > MAX_SWITCH_CASES:
        problems.append(
            Problem(path, f"at most {MAX_SWITCH_CASES} cases are allowed, found {len(cases)}")
        )
    for i, case in enumerate(cases):
        if not isinstance(case, dict) or "value" not in case:
            problems.append(
                Problem(
                    f"{path}[{i}]",
                    'must be an object with a "value" key (the value of config.switchOn '
                    "that selects this case; any JSON value)",
                )
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

    structure = loop_structure(definition)
    problems: list[Problem] = list(structure.problems)
    # A FOR_EACH body may end without an edge back to its loop node: its last nodes then
    # give the iteration's result and the loop goes on, so they lead on through the loop.
    for node_id, enclosing in structure.parent.items():
        if (
            enclosing is not None
            and not successors.get(node_id)
            and definition.node(enclosing).type == NodeType.FOR_EACH
        ):
            predecessors[enclosing].append(node_id)

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
