"""The loop structure of a workflow graph: which nodes form the body of each WHILE and FOR_EACH.

A loop node L (WHILE or FOR_EACH) enters its body through the edges of its body handle
("loop" for WHILE, "body" for FOR_EACH) and leaves the loop through its other edges ("exit",
or no handle). The body is every node reachable forward from the targets of those entry
edges without passing through L; an edge from a body node back into L is a back edge.
Once the back edges are removed, the graph must be acyclic.

Pure analysis, shared by validation and the engine; it never raises, even on graphs that
break other rules (unknown node ids in edges, duplicate ids).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from graphlib import CycleError, TopologicalSorter

from orchestrator.domain.errors import Problem
from orchestrator.domain.workflow import Definition, Edge, Node, NodeType

LOOP_TYPES = frozenset({NodeType.WHILE, NodeType.FOR_EACH})
BODY_HANDLE = {NodeType.WHILE: "loop", NodeType.FOR_EACH: "body"}
EXIT_HANDLE = "exit"


@dataclass(frozen=True)
class Loop:
    """One WHILE or FOR_EACH node and the parts of the graph it repeats."""

    node_id: str
    body: frozenset[str]  # every node of the body, nested loops' nodes included
    entries: tuple[Edge, ...]  # edges leaving the loop node by its body handle
    exits: tuple[Edge, ...]  # the other edges leaving the loop node ("exit", or no handle)
    back_edges: tuple[Edge, ...]  # edges from a body node into the loop node


@dataclass(frozen=True)
class LoopStructure:
    """Every loop of a definition, the loop around each node, and what is wrong (if anything)."""

    loops: dict[str, Loop]  # by loop node id
    # every node id -> its innermost enclosing loop node id (None at top level);
    # a loop node's parent is the loop around it
    parent: dict[str, str | None]
    back_edge_ids: frozenset[str]
    problems: list[Problem]  # empty when the structure is sound


def loop_structure(definition: Definition) -> LoopStructure:
    """Analyse the loops of `definition`; problems are reported, never raised."""
    nodes: dict[str, Node] = {}
    node_index: dict[str, int] = {}
    for i, node in enumerate(definition.nodes):
        if node.id not in nodes:
            nodes[node.id] = node
            node_index[node.id] = i

    # Only edges between known nodes take part; validation reports the others.
    edges: list[tuple[int, Edge]] = [
        (i, edge)
        for i, edge in enumerate(definition.edges)
        if edge.source in nodes and edge.target in nodes
    ]
    successors: dict[str, list[str]] = {node_id: [] for node_id in nodes}
    for _, edge in edges:
        successors[edge.source].append(edge.target)

    problems: list[Problem] = []

    def node_path(node_id: str) -> str:
        return f"definition.nodes[{node_index[node_id]}]"

    loops: dict[str, Loop] = {}
    # Edges from a loop node straight back into itself: refused below, and left out of
    # the cycle check so that they are not reported a second time.
    self_edges: set[str] = set()
    for loop_id, node in nodes.items():
        if node.type not in LOOP_TYPES:
            continue
        handle = BODY_HANDLE[node.type]
        leaving = [(i, edge) for i, edge in edges if edge.source == loop_id]
        entries = tuple(edge for _, edge in leaving if edge.source_handle == handle)
        exits = tuple(edge for _, edge in leaving if edge.source_handle != handle)
        for i, edge in leaving:
            if edge.target == loop_id:
                self_edges.add(edge.id)
                problems.append(
                    Problem(
                        f"definition.edges[{i}]",
                        f"edge {edge.id!r} leads from {node.type} node {loop_id!r} straight back "
                        "to it; a loop node's edges lead into its body or out of the loop",
                    )
                )
        body = _reach(
            [edge.target for edge in entries if edge.target != loop_id], successors, loop_id
        )
        back_edges = tuple(
            edge for _, edge in edges if edge.target == loop_id and edge.source in body
        )
        loops[loop_id] = Loop(loop_id, frozenset(body), entries, exits, back_edges)

        if not body:
            problems.append(
                Problem(
                    node_path(loop_id),
                    f'{node.type} node {loop_id!r} has no edge from its "{handle}" handle: '
                    "its body is empty",
                )
            )
        elif node.type == NodeType.WHILE and not back_edges:
            problems.append(
                Problem(
                    node_path(loop_id),
                    f"the body of WHILE node {loop_id!r} never leads back to it; an edge from "
                    "the body back into the WHILE node starts the next iteration",
                )
            )
        for i, edge in edges:
            if edge.target not in body or edge.source in body:
                continue
            if edge.source != loop_id:
                problems.append(
                    Problem(
                        f"definition.edges[{i}]",
                        f"node {edge.target!r} is inside the body of loop {loop_id!r} but is also "
                        f"entered from {edge.source!r}, outside it; a loop body is entered only "
                        "through its loop node",
                    )
                )
            elif edge.source_handle != handle:
                problems.append(
                    Problem(
                        f"definition.edges[{i}]",
                        f"edge {edge.id!r} leaves {node.type} node {loop_id!r} by its exit but "
                        f"leads into the loop's body (node {edge.target!r}); only its "
                        f"{handle!r} handle enters the body, exits lead outside it",
                    )
                )

    parent = _parents(list(nodes), loops, node_index)

    for node_id, node in nodes.items():
        enclosing = parent[node_id]
        if node.type in (NodeType.START, NodeType.END) and enclosing is not None:
            problems.append(
                Problem(
                    node_path(node_id),
                    f"{node.type} node {node_id!r} is inside the body of loop {enclosing!r}; "
                    "a loop body holds neither START nor END: it leads back to its loop node, "
                    "and the workflow goes on from the loop's exit",
                )
            )

    problems += _overlap_problems(loops, node_index, node_path)

    back_edge_ids = frozenset(edge.id for loop in loops.values() for edge in loop.back_edges)
    skipped = back_edge_ids | self_edges
    forward: dict[str, list[str]] = {node_id: [] for node_id in nodes}
    for _, edge in edges:
        if edge.id not in skipped:
            forward[edge.source].append(edge.target)
    cycle = find_cycle(list(nodes), forward)
    if cycle:
        shown = " -> ".join([*cycle, cycle[0]])
        in_cycle = [node_id for node_id in cycle if node_id in loops]
        if not in_cycle:
            message = (
                f"cycle {shown} does not pass through a WHILE or FOR_EACH loop node; "
                "only loops may repeat"
            )
        else:
            names = ", ".join(repr(node_id) for node_id in in_cycle)
            message = (
                f"cycle {shown} is not the body of a loop, though it passes through loop node "
                f"{names}; only edges from a loop's body back to its loop node may repeat"
            )
        problems.append(Problem("definition.edges", message))

    return LoopStructure(loops, parent, back_edge_ids, problems)


def _reach(roots: Iterable[str], successors: Mapping[str, Sequence[str]], stop: str) -> set[str]:
    """Every node reachable from `roots` (included), never passing through `stop`."""
    seen = {root for root in roots if root != stop}
    queue = deque(seen)
    while queue:
        for nxt in successors.get(queue.popleft(), ()):
            if nxt != stop and nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def _parents(
    node_ids: list[str], loops: Mapping[str, Loop], node_index: Mapping[str, int]
) -> dict[str, str | None]:
    """Each node's innermost enclosing loop: the smallest body holding it (first on a tie)."""
    parent: dict[str, str | None] = {}
    for node_id in node_ids:
        around = [loop for loop in loops.values() if node_id in loop.body]
        if not around:
            parent[node_id] = None
            continue
        inner = min(around, key=lambda loop: (len(loop.body), node_index[loop.node_id]))
        parent[node_id] = inner.node_id
    return parent


def _overlap_problems(
    loops: Mapping[str, Loop], node_index: Mapping[str, int], node_path: Callable[[str], str]
) -> list[Problem]:
    """Loop bodies must nest or be disjoint."""
    problems: list[Problem] = []
    ordered = sorted(loops.values(), key=lambda loop: node_index[loop.node_id])
    for a_pos, outer in enumerate(ordered):
        for inner in ordered[a_pos + 1 :]:
            for first, second in ((outer, inner), (inner, outer)):
                if second.node_id in first.body:
                    stray = sorted(second.body - first.body - {first.node_id})
                    if stray:
                        problems.append(
                            Problem(
                                node_path(second.node_id),
                                f"loop {second.node_id!r} is inside the body of loop "
                                f"{first.node_id!r}, but its own body also holds "
                                f"{_names(stray)}, outside that body; a nested loop's body "
                                "lies entirely within the body of the loop around it",
                            )
                        )
                    break
            else:
                shared = sorted(outer.body & inner.body)
                if shared:
                    problems.append(
                        Problem(
                            node_path(inner.node_id),
                            f"the bodies of loops {outer.node_id!r} and {inner.node_id!r} share "
                            f"{_names(shared)}, though neither loop is inside the other's body; "
                            "loop bodies either nest or have no node in common",
                        )
                    )
    return problems


def _names(node_ids: Sequence[str]) -> str:
    quoted = ", ".join(repr(node_id) for node_id in node_ids)
    return f"node {quoted}" if len(node_ids) == 1 else f"nodes {quoted}"


def find_cycle(node_ids: list[str], successors: Mapping[str, Sequence[str]]) -> list[str] | None:
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
