"""loop_structure: the bodies, entries, exits and back edges of loops, and every broken rule."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.domain.errors import Problem
from orchestrator.domain.loops import (
    BODY_HANDLE,
    EXIT_HANDLE,
    LOOP_TYPES,
    Loop,
    find_cycle,
    loop_structure,
)
from orchestrator.domain.workflow import Definition, Edge, Node, NodeType

START, END, AGENT = NodeType.START, NodeType.END, NodeType.AGENT
WHILE, FOR_EACH, TRANSFORM = NodeType.WHILE, NodeType.FOR_EACH, NodeType.TRANSFORM


def n(node_id: str, node_type: NodeType = TRANSFORM, **config: Any) -> Node:
    return Node(id=node_id, type=node_type, config=config)


def e(source: str, target: str, handle: str | None = None) -> Edge:
    return Edge(f"{source}->{target}", source, target, source_handle=handle)


def graph(nodes: list[Node], edges: list[Edge]) -> Definition:
    return Definition(nodes=tuple(nodes), edges=tuple(edges))


def problems_of(definition: Definition) -> list[tuple[str, str]]:
    return [(p.path, p.message) for p in loop_structure(definition).problems]


NOT_A_LOOP = "does not pass through a WHILE or FOR_EACH loop node; only loops may repeat"


def test_constants() -> None:
    assert frozenset({WHILE, FOR_EACH}) == LOOP_TYPES
    assert BODY_HANDLE == {WHILE: "loop", FOR_EACH: "body"}
    assert EXIT_HANDLE == "exit"


def test_a_valid_while_loop() -> None:
    loop_in, back, out = e("w", "b1", "loop"), e("b2", "w"), e("w", "end", "exit")
    definition = graph(
        [n("s", START), n("w", WHILE), n("b1"), n("b2"), n("end", END)],
        [e("s", "w"), loop_in, e("b1", "b2"), back, out],
    )
    structure = loop_structure(definition)
    assert structure.problems == []
    assert structure.loops == {
        "w": Loop("w", frozenset({"b1", "b2"}), (loop_in,), (out,), (back,)),
    }
    assert structure.parent == {"s": None, "w": None, "b1": "w", "b2": "w", "end": None}
    assert structure.back_edge_ids == frozenset({"b2->w"})


def test_an_edge_without_handle_leaving_a_loop_node_is_an_exit() -> None:
    out = e("w", "end")
    definition = graph(
        [n("s", START), n("w", WHILE), n("b"), n("end", END)],
        [e("s", "w"), e("w", "b", "loop"), e("b", "w"), out],
    )
    structure = loop_structure(definition)
    assert structure.problems == []
    assert structure.loops["w"].exits == (out,)


def test_a_for_each_nested_in_a_while() -> None:
    definition = graph(
        [n("s", START), n("w", WHILE), n("f", FOR_EACH), n("x"), n("y"), n("end", END)],
        [
            e("s", "w"),
            e("w", "f", "loop"),
            e("f", "x", "body"),
            e("x", "f"),
            e("f", "y", "exit"),
            e("y", "w"),
            e("w", "end", "exit"),
        ],
    )
    structure = loop_structure(definition)
    assert structure.problems == []
    assert structure.loops["w"].body == frozenset({"f", "x", "y"})
    assert structure.loops["f"].body == frozenset({"x"})
    assert structure.loops["f"].exits == (e("f", "y", "exit"),)
    assert structure.parent == {
        "s": None,
        "w": None,
        "f": "w",
        "x": "f",
        "y": "w",
        "end": None,
    }
    assert structure.back_edge_ids == frozenset({"x->f", "y->w"})


def test_a_for_each_without_back_edge_is_sound() -> None:
    definition = graph(
        [n("s", START), n("f", FOR_EACH), n("x"), n("y"), n("end", END)],
        [e("s", "f"), e("f", "x", "body"), e("x", "y"), e("f", "end", "exit")],
    )
    structure = loop_structure(definition)
    assert structure.problems == []
    assert structure.loops["f"].body == frozenset({"x", "y"})
    assert structure.loops["f"].back_edges == ()
    assert structure.back_edge_ids == frozenset()
    assert structure.parent["y"] == "f"


def test_a_graph_without_loops() -> None:
    definition = graph([n("s", START), n("a"), n("end", END)], [e("s", "a"), e("a", "end")])
    structure = loop_structure(definition)
    assert structure == type(structure)({}, {"s": None, "a": None, "end": None}, frozenset(), [])


INVALID: list[Any] = [
    pytest.param(
        graph([n("s", START), n("w", WHILE), n("end", END)], [e("s", "w"), e("w", "end", "exit")]),
        [
            (
                "definition.nodes[1]",
                "WHILE node 'w' has no edge from its \"loop\" handle: its body is empty",
            )
        ],
        id="while-without-body",
    ),
    pytest.param(
        graph(
            [n("s", START), n("f", FOR_EACH), n("end", END)],
            [e("s", "f"), e("f", "end", "exit")],
        ),
        [
            (
                "definition.nodes[1]",
                "FOR_EACH node 'f' has no edge from its \"body\" handle: its body is empty",
            )
        ],
        id="for-each-without-body",
    ),
    pytest.param(
        graph(
            [n("s", START), n("w", WHILE), n("b"), n("end", END)],
            [e("s", "w"), e("w", "b", "loop"), e("w", "end", "exit")],
        ),
        [
            (
                "definition.nodes[1]",
                "the body of WHILE node 'w' never leads back to it; an edge from the body back "
                "into the WHILE node starts the next iteration",
            )
        ],
        id="while-without-back-edge",
    ),
    pytest.param(
        graph(
            [n("s", START), n("w", WHILE), n("b"), n("end", END)],
            [e("s", "w"), e("w", "b", "loop"), e("b", "w"), e("s", "b"), e("w", "end", "exit")],
        ),
        [
            (
                "definition.edges[3]",
                "node 'b' is inside the body of loop 'w' but is also entered from 's', outside "
                "it; a loop body is entered only through its loop node",
            )
        ],
        id="body-entered-from-outside",
    ),
    pytest.param(
        graph(
            [n("s", START), n("w", WHILE), n("b"), n("end", END)],
            [e("s", "w"), e("w", "b", "loop"), e("b", "w"), e("w", "end", "exit"), e("w", "b")],
        ),
        [
            (
                "definition.edges[4]",
                "edge 'w->b' leaves WHILE node 'w' by its exit but leads into the loop's body "
                "(node 'b'); only its 'loop' handle enters the body, exits lead outside it",
            )
        ],
        id="exit-into-own-body",
    ),
    pytest.param(
        graph(
            [n("s", START), n("w", WHILE), n("end", END)],
            [e("s", "w"), e("w", "w", "loop"), e("w", "end", "exit")],
        ),
        [
            (
                "definition.edges[1]",
                "edge 'w->w' leads from WHILE node 'w' straight back to it; a loop node's edges "
                "lead into its body or out of the loop",
            ),
            (
                "definition.nodes[1]",
                "WHILE node 'w' has no edge from its \"loop\" handle: its body is empty",
            ),
        ],
        id="loop-node-into-itself",
    ),
    pytest.param(
        graph(
            [n("s", START), n("w", WHILE), n("b"), n("end", END)],
            [e("s", "w"), e("w", "b", "loop"), e("b", "w"), e("b", "end"), e("w", "end", "exit")],
        ),
        [
            (
                "definition.edges[4]",
                "edge 'w->end' leaves WHILE node 'w' by its exit but leads into the loop's body "
                "(node 'end')",
            ),
            (
                "definition.nodes[3]",
                "END node 'end' is inside the body of loop 'w'; a loop body holds neither START "
                "nor END: it leads back to its loop node, and the workflow goes on from the "
                "loop's exit",
            ),
        ],
        id="end-inside-body",
    ),
    pytest.param(
        graph(
            [n("s", START), n("w", WHILE), n("b"), n("end", END)],
            [e("s", "w"), e("w", "b", "loop"), e("b", "s"), e("w", "end", "exit")],
        ),
        [
            (
                "definition.nodes[0]",
                "START node 's' is inside the body of loop 'w'; a loop body holds neither START "
                "nor END",
            ),
        ],
        id="start-inside-body",
    ),
    pytest.param(
        graph(
            [
                n("s", START),
                n("f1", FOR_EACH),
                n("f2", FOR_EACH),
                n("a"),
                n("c"),
                n("shared"),
                n("end", END),
            ],
            [
                e("s", "f1"),
                e("f1", "f2", "exit"),
                e("f2", "end", "exit"),
                e("f1", "a", "body"),
                e("a", "shared"),
                e("f2", "c", "body"),
                e("c", "shared"),
            ],
        ),
        [
            (
                "definition.edges[6]",
                "node 'shared' is inside the body of loop 'f1' but is also entered from 'c'",
            ),
            (
                "definition.edges[4]",
                "node 'shared' is inside the body of loop 'f2' but is also entered from 'a'",
            ),
            (
                "definition.nodes[2]",
                "the bodies of loops 'f1' and 'f2' share node 'shared', though neither loop is "
                "inside the other's body; loop bodies either nest or have no node in common",
            ),
        ],
        id="bodies-overlap-without-nesting",
    ),
    pytest.param(
        graph(
            [n("s", START), n("w", WHILE), n("f", FOR_EACH), n("x"), n("end", END)],
            [
                e("s", "w"),
                e("w", "f", "loop"),
                e("f", "x", "body"),
                e("x", "w"),
                e("w", "end", "exit"),
            ],
        ),
        [
            # x leads back to the outer loop: f's body then holds w and what follows it.
            (
                "definition.edges[0]",
                "node 'w' is inside the body of loop 'f' but is also entered from 's'",
            ),
            ("definition.nodes[4]", "END node 'end' is inside the body of loop 'f'"),
            (
                "definition.nodes[2]",
                "loop 'f' is inside the body of loop 'w', but its own body also holds node "
                "'end', outside that body; a nested loop's body lies entirely within the body "
                "of the loop around it",
            ),
        ],
        id="nested-body-leaves-outer-body",
    ),
    pytest.param(
        graph(
            [n("s", START), n("a"), n("b"), n("end", END)],
            [e("s", "a"), e("a", "b"), e("b", "a"), e("b", "end")],
        ),
        [("definition.edges", f"cycle a -> b -> a {NOT_A_LOOP}")],
        id="plain-cycle",
    ),
    pytest.param(
        graph(
            [n("s", START), n("a"), n("end", END)],
            [e("s", "a"), e("a", "a"), e("a", "end")],
        ),
        [("definition.edges", f"cycle a -> a {NOT_A_LOOP}")],
        id="self-loop",
    ),
    pytest.param(
        graph(
            [n("s", START), n("w", WHILE), n("b"), n("z"), n("end", END)],
            [
                e("s", "w"),
                e("w", "b", "loop"),
                e("b", "w"),
                e("w", "z", "exit"),
                e("z", "w"),
                e("z", "end"),
            ],
        ),
        [
            (
                "definition.edges",
                "cycle w -> z -> w is not the body of a loop, though it passes through loop "
                "node 'w'; only edges from a loop's body back to its loop node may repeat",
            )
        ],
        id="cycle-through-loop-exit",
    ),
]


def assert_problems(actual: list[tuple[str, str]], expected: list[tuple[str, str]]) -> None:
    """Every expected (path, message start) matches one problem, and nothing else is there."""
    remaining = list(actual)
    for path, fragment in expected:
        hit = next((a for a in remaining if a[0] == path and a[1].startswith(fragment)), None)
        assert hit is not None, f"no problem at {path} saying {fragment!r}; got {actual}"
        remaining.remove(hit)
    assert remaining == [], f"unexpected problems: {remaining}"


@pytest.mark.parametrize(("definition", "expected"), INVALID)
def test_broken_loop_rules_are_reported(
    definition: Definition, expected: list[tuple[str, str]]
) -> None:
    assert_problems(problems_of(definition), expected)


def test_a_body_entered_from_outside_keeps_its_loop_parts() -> None:
    definition = graph(
        [n("s", START), n("w", WHILE), n("b"), n("end", END)],
        [e("s", "w"), e("w", "b", "loop"), e("b", "w"), e("s", "b"), e("w", "end", "exit")],
    )
    structure = loop_structure(definition)
    assert structure.loops["w"].body == frozenset({"b"})
    assert structure.loops["w"].back_edges == (e("b", "w"),)


ROBUST: list[Any] = [
    pytest.param(graph([], []), id="empty"),
    pytest.param(
        graph([n("w", WHILE)], [e("w", "ghost", "loop"), e("ghost", "w"), e("a", "b")]),
        id="unknown-node-ids",
    ),
    pytest.param(
        graph(
            [n("w", WHILE), n("w", FOR_EACH), n("b"), n("b", WHILE)],
            [e("w", "b", "loop"), e("b", "w"), e("b", "w")],
        ),
        id="duplicate-ids",
    ),
    pytest.param(
        graph(
            [n("w1", WHILE), n("w2", WHILE)],
            [e("w1", "w2", "loop"), e("w2", "w1", "loop")],
        ),
        id="loops-in-each-others-body",
    ),
]


@pytest.mark.parametrize("definition", ROBUST)
def test_invalid_graphs_never_raise(definition: Definition) -> None:
    structure = loop_structure(definition)
    assert set(structure.parent) == {node.id for node in definition.nodes}
    assert all(isinstance(problem, Problem) for problem in structure.problems)


def test_unknown_node_ids_are_left_out() -> None:
    structure = loop_structure(
        graph([n("w", WHILE)], [e("w", "ghost", "loop"), e("ghost", "w"), e("a", "b")])
    )
    assert structure.loops["w"].body == frozenset()
    assert structure.loops["w"].entries == ()
    assert structure.back_edge_ids == frozenset()


def test_find_cycle() -> None:
    assert find_cycle(["a", "b"], {"a": ["b"]}) is None
    assert find_cycle(["a", "b"], {"a": ["b"], "b": ["a"]}) in (["a", "b"], ["b", "a"])
