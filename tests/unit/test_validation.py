"""validate_definition: every rule, with the exact set of problems each broken rule yields."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.domain.errors import Problem
from orchestrator.domain.validation import validate_definition
from orchestrator.domain.workflow import Definition, Edge, Node, NodeType

START = NodeType.START
END = NodeType.END
AGENT = NodeType.AGENT
TOOL = NodeType.TOOL
COND = NodeType.CONDITIONAL
TRANSFORM = NodeType.TRANSFORM

Expected = list[tuple[str, str]]


def n(node_id: str, node_type: NodeType, **config: Any) -> Node:
    return Node(id=node_id, type=node_type, config=config)


def e(
    edge_id: str, source: str, target: str, condition: str | None = None, handle: str | None = None
) -> Edge:
    return Edge(edge_id, source, target, condition=condition, source_handle=handle)


def graph(nodes: list[Node], edges: list[Edge]) -> Definition:
    return Definition(nodes=tuple(nodes), edges=tuple(edges))


def with_node(node: Node) -> Definition:
    """START -> node -> END: the node under test is `definition.nodes[1]`."""
    return graph(
        [n("s", START), node, n("end", END)], [e("e1", "s", node.id), e("e2", node.id, "end")]
    )


def agent(**config: Any) -> Node:
    return n("a", AGENT, agentId="writer", **config)


def assert_problems(problems: list[Problem], expected: Expected) -> None:
    """Every expected (path, message fragment) matches one problem, and nothing else is there."""
    actual = [(p.path, p.message) for p in problems]
    remaining = list(actual)
    for path, fragment in expected:
        hit = next((a for a in remaining if a[0] == path and fragment in a[1]), None)
        assert hit is not None, f"no problem at {path} saying {fragment!r}; got {actual}"
        remaining.remove(hit)
    assert remaining == [], f"unexpected problems: {remaining}"


N1 = "definition.nodes[1].config"
RETRY = f"{N1}.retry"
TIMEOUT = (f"{N1}.timeoutMs", "must be a whole number from 1 to 3600000")

INVALID: list[Any] = [
    pytest.param(graph([], []), [("definition.nodes", "at least one node")], id="no-nodes"),
    pytest.param(
        graph([agent(), n("end", END)], [e("e1", "a", "end")]),
        [("definition.nodes", "exactly one START node is required, found 0")],
        id="zero-start",
    ),
    pytest.param(
        graph(
            [n("s1", START), n("s2", START), n("end", END)],
            [e("e1", "s1", "end"), e("e2", "s2", "end")],
        ),
        [("definition.nodes", "exactly one START node is required, found 2")],
        id="two-starts",
    ),
    pytest.param(
        graph([n("s", START), agent()], [e("e1", "s", "a")]),
        [("definition.nodes", "at least one END node is required")],
        id="no-end",
    ),
    pytest.param(
        graph(
            [n("s", START), agent(), n("a", TOOL, toolId="t"), n("end", END)],
            [e("e1", "s", "a"), e("e2", "a", "end")],
        ),
        [("definition.nodes", "node id 'a' is used more than once")],
        id="duplicate-node-ids",
    ),
    pytest.param(
        graph([n("s", START), agent(), n("end", END)], [e("e1", "s", "a"), e("e1", "a", "end")]),
        [("definition.edges", "edge id 'e1' is used more than once")],
        id="duplicate-edge-ids",
    ),
    pytest.param(
        graph([n("s", START), n("end", END)], [e("e1", "s", "end"), e("e2", "s", "ghost")]),
        [("definition.edges[1].target", "edge 'e2' names unknown node 'ghost'")],
        id="edge-unknown-target",
    ),
    pytest.param(
        graph([n("s", START), n("end", END)], [e("e1", "s", "end"), e("e2", "ghost", "end")]),
        [("definition.edges[1].source", "edge 'e2' names unknown node 'ghost'")],
        id="edge-unknown-source",
    ),
    pytest.param(
        graph(
            [n("s", START), agent(), n("end", END)],
            [e("e1", "s", "a"), e("e2", "a", "s"), e("e3", "a", "end")],
        ),
        [("definition.edges[1].target", "no edge may lead into the START node")],
        id="edge-into-start",
    ),
    pytest.param(
        graph(
            [n("s", START), agent(), n("end", END)],
            [e("e1", "s", "a"), e("e2", "a", "end"), e("e3", "end", "a")],
        ),
        [("definition.edges[2].source", "no edge may leave an END node")],
        id="edge-out-of-end",
    ),
    pytest.param(
        graph(
            [n("s", START), n("c", COND, condition="input.ok"), agent(), n("end", END)],
            [
                e("e1", "s", "c"),
                e("e2", "c", "a", handle="yes"),
                e("e3", "c", "end", handle="false"),
                e("e4", "a", "end"),
            ],
        ),
        [("definition.edges[1].sourceHandle", 'a CONDITIONAL edge handle is "true" or "false"')],
        id="conditional-handle-not-true-false",
    ),
    pytest.param(
        with_node(n("a", AGENT)),
        [(f"{N1}.agentId", "a AGENT node needs config.agentId")],
        id="agent-without-agent-id",
    ),
    pytest.param(
        with_node(n("a", AGENT, agentId="   ")),
        [(f"{N1}.agentId", "a AGENT node needs config.agentId")],
        id="agent-with-blank-agent-id",
    ),
    pytest.param(
        with_node(n("t", TOOL, parameters={"q": 1})),
        [(f"{N1}.toolId", "a TOOL node needs config.toolId")],
        id="tool-without-tool-id",
    ),
    pytest.param(
        with_node(n("t", TOOL, toolId="search", parameters=["q"])),
        [(f"{N1}.parameters", "must be an object")],
        id="tool-parameters-not-object",
    ),
    pytest.param(
        with_node(n("c", COND)),
        [(f"{N1}.condition", "a CONDITIONAL node needs config.condition")],
        id="conditional-without-condition",
    ),
    pytest.param(
        with_node(n("c", COND, condition="input.ok &&")),
        [(f"{N1}.condition", "does not compile")],
        id="condition-does-not-compile",
    ),
    pytest.param(
        with_node(n("c", COND, condition=42)),
        [(f"{N1}.condition", "must be an expression string")],
        id="condition-not-a-string",
    ),
    pytest.param(
        graph(
            [n("s", START), agent(), n("end", END)],
            [e("e1", "s", "a"), e("e2", "a", "end", condition="output.score >")],
        ),
        [("definition.edges[1].condition", "does not compile")],
        id="edge-condition-does-not-compile",
    ),
    pytest.param(
        with_node(n("x", TRANSFORM, expression="input.x +")),
        [(f"{N1}.expression", "does not compile")],
        id="transform-expression-does-not-compile",
    ),
    pytest.param(
        with_node(n("x", TRANSFORM, template={"v": "{{ input.x + }}"})),
        [(f"{N1}.template", "does not compile")],
        id="transform-template-does-not-compile",
    ),
    pytest.param(
        with_node(agent(inputMapping="$variables.x")),
        [(f"{N1}.inputMapping", "must be an object")],
        id="input-mapping-not-object",
    ),
    pytest.param(
        with_node(agent(inputMapping={"v": "$output.ghost.field"})),
        [(f"{N1}.inputMapping", "$output.ghost names unknown node 'ghost'")],
        id="input-mapping-unknown-output",
    ),
    pytest.param(
        with_node(agent(inputMapping={"deep": ["{{ input.x * }}"]})),
        [(f"{N1}.inputMapping", "does not compile")],
        id="input-mapping-bad-expression",
    ),
    pytest.param(
        with_node(agent(retry={"maxAttempts": 0})),
        [(f"{RETRY}.maxAttempts", "must be a whole number between 1 and 50")],
        id="retry-max-attempts-0",
    ),
    pytest.param(
        with_node(agent(retry={"maxAttempts": 2.5})),
        [(f"{RETRY}.maxAttempts", "must be a whole number between 1 and 50")],
        id="retry-max-attempts-fraction",
    ),
    pytest.param(
        with_node(agent(retry={"tries": 3})),
        [(f"{RETRY}.tries", "unknown retry field")],
        id="retry-unknown-key",
    ),
    pytest.param(
        with_node(agent(retry={"multiplier": 0.5})),
        [(f"{RETRY}.multiplier", "must be a number between 1 and 10")],
        id="retry-multiplier-half",
    ),
    pytest.param(
        with_node(agent(retry={"jitter": 2})),
        [(f"{RETRY}.jitter", "must be a number between 0 and 1")],
        id="retry-jitter-2",
    ),
    pytest.param(
        with_node(agent(retry="3")),
        [(RETRY, "must be true, false or an object")],
        id="retry-not-object",
    ),
    pytest.param(with_node(agent(timeoutMs=0)), [TIMEOUT], id="timeout-zero"),
    pytest.param(with_node(agent(timeoutMs=-5)), [TIMEOUT], id="timeout-negative"),
    pytest.param(with_node(agent(timeoutMs=True)), [TIMEOUT], id="timeout-bool"),
    pytest.param(with_node(agent(timeoutMs=1.5)), [TIMEOUT], id="timeout-fraction"),
    pytest.param(
        graph(
            [n("s", START), agent(), n("b", AGENT, agentId="x"), n("end", END)],
            [e("e1", "s", "a"), e("e2", "a", "b"), e("e3", "b", "a"), e("e4", "b", "end")],
        ),
        [("definition.edges", "cycles are not supported yet: a -> b -> a")],
        id="cycle",
    ),
    pytest.param(
        graph(
            [
                n("s", START),
                n("x", TRANSFORM, expression="input"),
                n("y", TRANSFORM, expression="input"),
                n("z", TRANSFORM, expression="input"),
                n("end", END),
            ],
            [
                e("e1", "s", "x"),
                e("e2", "x", "y"),
                e("e3", "y", "z"),
                e("e4", "z", "x"),
                e("e5", "z", "end"),
            ],
        ),
        [("definition.edges", "cycles are not supported yet: x -> y -> z -> x")],
        id="cycle-of-three",
    ),
    pytest.param(
        graph(
            [n("s", START), n("x", TRANSFORM, expression="input"), n("end", END)],
            [e("e1", "s", "x"), e("e2", "x", "x"), e("e3", "x", "end")],
        ),
        [("definition.edges", "cycles are not supported yet: x -> x")],
        id="self-loop",
    ),
    pytest.param(
        graph(
            [n("s", START), n("end", END), n("orphan", AGENT, agentId="x")],
            [e("e1", "s", "end"), e("e2", "orphan", "end")],
        ),
        [("definition.nodes[2]", "node 'orphan' is not reachable from START")],
        id="unreachable-node",
    ),
    pytest.param(
        graph(
            [n("s", START), agent(), n("dead", AGENT, agentId="x"), n("end", END)],
            [e("e1", "s", "a"), e("e2", "a", "end"), e("e3", "s", "dead")],
        ),
        [("definition.nodes[2]", "no END node is reachable from node 'dead'")],
        id="no-end-reachable",
    ),
    pytest.param(
        graph(
            [
                n("s", START),
                n("a", AGENT),
                n("t", TOOL, toolId="search", retry={"maxAttempts": 0}, timeoutMs=0),
                n("orphan", TRANSFORM, expression="input"),
                n("end", END),
            ],
            [
                e("e1", "s", "a", condition="output.x >"),
                e("e2", "a", "t"),
                e("e3", "t", "end"),
                e("e4", "orphan", "end"),
            ],
        ),
        [
            ("definition.edges[0].condition", "does not compile"),
            ("definition.nodes[1].config.agentId", "a AGENT node needs config.agentId"),
            ("definition.nodes[2].config.retry.maxAttempts", "must be a whole number"),
            ("definition.nodes[2].config.timeoutMs", "must be a whole number"),
            ("definition.nodes[3]", "node 'orphan' is not reachable from START"),
        ],
        id="several-problems-config-and-graph",
    ),
    pytest.param(
        graph(
            [n("s1", START), n("s2", START), n("a", AGENT)],
            [e("e1", "s1", "a"), e("e1", "s2", "a"), e("e3", "a", "nowhere")],
        ),
        [
            ("definition.edges", "edge id 'e1' is used more than once"),
            ("definition.nodes", "exactly one START node is required, found 2"),
            ("definition.nodes", "at least one END node is required"),
            ("definition.edges[2].target", "edge 'e3' names unknown node 'nowhere'"),
            ("definition.nodes[2].config.agentId", "a AGENT node needs config.agentId"),
        ],
        id="several-problems-structure",
    ),
]


CONTROL_IDS = [
    pytest.param("a\nb", "U+000A", id="newline"),
    pytest.param("a\rb", "U+000D", id="carriage-return"),
    pytest.param("a\x00", "U+0000", id="nul"),
    pytest.param("\x7fa", "U+007F", id="delete"),
    pytest.param("a\x85b", "U+0085", id="c1-next-line"),
    pytest.param("a\ud800", "unpaired surrogate U+D800", id="lone-surrogate"),
]


@pytest.mark.parametrize(("bad", "named"), CONTROL_IDS)
def test_a_node_id_with_a_control_character_is_refused(bad: str, named: str) -> None:
    problems = validate_definition(with_node(n(bad, TRANSFORM, expression="input")))
    assert_problems(problems, [("definition.nodes[1].id", f"node id {bad!r} contains")])
    assert named in problems[0].message


@pytest.mark.parametrize(("bad", "named"), CONTROL_IDS)
def test_an_edge_id_with_a_control_character_is_refused(bad: str, named: str) -> None:
    definition = graph([n("s", START), n("end", END)], [e(bad, "s", "end")])
    problems = validate_definition(definition)
    assert_problems(problems, [("definition.edges[0].id", f"edge id {bad!r} contains")])
    assert named in problems[0].message


@pytest.mark.parametrize("bad", [" a", "a ", "\u00a0a", "a\u3000"])
def test_an_id_with_surrounding_whitespace_is_refused(bad: str) -> None:
    definition = graph(
        [n("s", START), n(bad, TRANSFORM, expression="input"), n("end", END)],
        [e(bad, "s", bad), e("e2", bad, "end")],
    )
    expected = [
        ("definition.nodes[1].id", f"node id {bad!r} starts or ends with whitespace"),
        ("definition.edges[0].id", f"edge id {bad!r} starts or ends with whitespace"),
    ]
    assert_problems(validate_definition(definition), expected)


@pytest.mark.parametrize(
    "good", ["agént", "名前", "a b", "step-1.v2", "x:y@z", "émoji 🙂", "..a", "a..b"]
)
def test_printable_node_and_edge_ids_are_accepted_whatever_their_script(good: str) -> None:
    definition = graph(
        [n("s", START), n(good, TRANSFORM, expression="input"), n("end", END)],
        [e(good, "s", good), e("e2", good, "end")],
    )
    assert validate_definition(definition) == []


SERVICE_ID_RULE = "an id is printable characters other than / \\ ? # % and whitespace"
UNSAFE_SERVICE_IDS = [
    pytest.param(".", "'.' is not allowed", id="dot"),
    pytest.param("..", "'..' is not allowed", id="dot-dot"),
    pytest.param("../admin", "contains '/'", id="parent-path"),
    pytest.param("a/b", "contains '/'", id="slash"),
    pytest.param("a\\b", "contains '\\\\'", id="backslash"),
    pytest.param("a?x=1", "contains '?'", id="question-mark"),
    pytest.param("a#frag", "contains '#'", id="hash"),
    pytest.param("%2e%2e", "contains '%'", id="percent"),
    pytest.param("my agent", "contains whitespace", id="space"),
    pytest.param(" agent", "contains whitespace", id="leading-space"),
    pytest.param("agent\u00a0", "contains whitespace", id="no-break-space"),
    pytest.param("a\nb", "contains the control character U+000A", id="newline"),
    pytest.param("a\x00", "contains the control character U+0000", id="nul"),
]


@pytest.mark.parametrize(("bad", "reason"), UNSAFE_SERVICE_IDS)
def test_an_agent_id_that_could_leave_its_path_segment_is_refused(bad: str, reason: str) -> None:
    problems = validate_definition(with_node(n("a", AGENT, agentId=bad)))
    assert_problems(problems, [(f"{N1}.agentId", f"agentId {bad!r} ")])
    assert reason in problems[0].message
    assert SERVICE_ID_RULE in problems[0].message


@pytest.mark.parametrize(("bad", "reason"), UNSAFE_SERVICE_IDS)
def test_an_unsafe_tool_id_is_refused(bad: str, reason: str) -> None:
    problems = validate_definition(with_node(n("t", TOOL, toolId=bad)))
    assert_problems(problems, [(f"{N1}.toolId", f"toolId {bad!r} ")])
    assert reason in problems[0].message


@pytest.mark.parametrize("good", ["writer", "agént", "web_search", "v1.2", "..x", "a:b@c", "名前"])
def test_safe_agent_and_tool_ids_are_accepted(good: str) -> None:
    assert validate_definition(with_node(n("a", AGENT, agentId=good))) == []
    assert validate_definition(with_node(n("t", TOOL, toolId=good))) == []


@pytest.mark.parametrize(("definition", "expected"), INVALID)
def test_invalid_definition_lists_exactly_its_problems(
    definition: Definition, expected: Expected
) -> None:
    assert_problems(validate_definition(definition), expected)


VALID: list[Any] = [
    pytest.param(
        graph(
            [
                n("s", START),
                agent(inputMapping={"q": "$variables.question"}),
                n("t", TOOL, toolId="search", parameters={"q": "$output.a", "n": "{{ 1 + 2 }}"}),
                n("end", END),
            ],
            [e("e1", "s", "a"), e("e2", "a", "t"), e("e3", "t", "end")],
        ),
        id="linear",
    ),
    pytest.param(
        graph(
            [
                n("s", START),
                n("c", COND, condition="input.score > 0.5 && input.ok"),
                agent(),
                n("b", TOOL, toolId="search"),
                n("end", END),
            ],
            [
                e("e1", "s", "c"),
                e("e2", "c", "a", handle="true"),
                e("e3", "c", "b", handle="false"),
                e("e4", "a", "end"),
                e("e5", "b", "end", condition="output.ok == true"),
            ],
        ),
        id="conditional-true-false",
    ),
    pytest.param(
        graph(
            [
                n("s", START),
                agent(),
                n("b", AGENT, agentId="x"),
                n("join", TRANSFORM, template={"left": "$output.a", "right": "$output.b"}),
                n("end1", END),
                n("end2", END),
            ],
            [
                e("e1", "s", "a"),
                e("e2", "s", "b"),
                e("e3", "a", "join"),
                e("e4", "b", "join"),
                e("e5", "join", "end1"),
                e("e6", "join", "end2"),
            ],
        ),
        id="parallel-fan-out-fan-in",
    ),
    pytest.param(with_node(n("x", TRANSFORM, template="Hello {{ input.name }}")), id="template"),
    pytest.param(with_node(n("x", TRANSFORM, inputMapping={"v": "$variables"})), id="mapping"),
    pytest.param(with_node(agent(retry=True, timeoutMs=30_000)), id="retry-true"),
    pytest.param(with_node(agent(retry=False)), id="retry-false"),
    pytest.param(
        with_node(
            agent(
                retry={
                    "maxAttempts": 3,
                    "initialDelayMs": 0,
                    "multiplier": 1.5,
                    "maxDelayMs": 5000,
                    "jitter": True,
                }
            )
        ),
        id="retry-object",
    ),
    pytest.param(with_node(agent(retry={"jitter": 0.25})), id="retry-numeric-jitter"),
]


@pytest.mark.parametrize("definition", VALID)
def test_valid_definition_has_no_problems(definition: Definition) -> None:
    assert validate_definition(definition) == []


def test_a_transform_without_config_and_template_paths_are_valid() -> None:
    definition = graph(
        [
            n("s", START),
            n("t", TRANSFORM),
            n("u", TRANSFORM, template='{"first": "{{items.0}}", "who": "{{user.name}}"}'),
            n("end", END),
        ],
        [e("e1", "s", "t"), e("e2", "t", "u"), e("e3", "u", "end")],
    )
    assert validate_definition(definition) == []
