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
NOT_A_LOOP = "does not pass through a WHILE or FOR_EACH loop node; only loops may repeat"

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
        [("definition.edges", f"cycle a -> b -> a {NOT_A_LOOP}")],
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
        [("definition.edges", f"cycle x -> y -> z -> x {NOT_A_LOOP}")],
        id="cycle-of-three",
    ),
    pytest.param(
        graph(
            [n("s", START), n("x", TRANSFORM, expression="input"), n("end", END)],
            [e("e1", "s", "x"), e("e2", "x", "x"), e("e3", "x", "end")],
        ),
        [("definition.edges", f"cycle x -> x {NOT_A_LOOP}")],
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


# --- Loops, SWITCH, PROMPT, SUBWORKFLOW and asking the user ---------------------------------

PROMPT = NodeType.PROMPT
WHILE = NodeType.WHILE
FOR_EACH = NodeType.FOR_EACH
SWITCH = NodeType.SWITCH
SUB = NodeType.SUBWORKFLOW
HANDLE = "definition.edges[{}].sourceHandle"
WAIT = (f"{N1}.timeoutMs", "must be a whole number from 1 to 2592000000")


def loop(node: Node, *, back: bool = True) -> Definition:
    """START -> loop -(body)-> b [-> loop]; loop -(exit)-> END. The loop is `nodes[1]`."""
    body = "loop" if node.type == WHILE else "body"
    edges = [e("e1", "s", node.id), e("e2", node.id, "b", handle=body)]
    if back:
        edges.append(e("e3", "b", node.id))
    edges.append(e("e4", node.id, "end", handle="exit"))
    return graph([n("s", START), node, n("b", TRANSFORM), n("end", END)], edges)


def while_(**config: Any) -> Node:
    return n("w", WHILE, **({"condition": "input.more"} | config))


def for_each(**config: Any) -> Node:
    return n("f", FOR_EACH, **({"collection": "input.items"} | config))


def switch(*cases: Any, **config: Any) -> Node:
    return n("sw", SWITCH, **({"switchOn": "input.kind", "cases": list(cases)} | config))


def switch_graph(node: Node, *handles: str | None) -> Definition:
    """START -> sw -(each handle)-> END: the edge of the i-th handle is `definition.edges[i+1]`."""
    edges = [e("e0", "s", "sw")]
    edges += [e(f"h{i}", "sw", "end", handle=handle) for i, handle in enumerate(handles)]
    return graph([n("s", START), node, n("end", END)], edges)


def asking(allow: Any = True, **config: Any) -> Node:
    return agent(allowAskUser=allow, **config)


def with_timeout_edge(node: Node, handle: str = "timeout") -> Definition:
    """START -> node -> END, and node -(handle)-> END as `definition.edges[2]`."""
    return graph(
        [n("s", START), node, n("end", END)],
        [e("e1", "s", node.id), e("e2", node.id, "end"), e("e3", node.id, "end", handle=handle)],
    )


NEW_VALID: list[Any] = [
    pytest.param(loop(while_()), id="while-loop"),
    pytest.param(loop(while_(maxIterations=1)), id="while-max-iterations-1"),
    pytest.param(loop(while_(maxIterations=10_000)), id="while-max-iterations-10000"),
    pytest.param(loop(for_each()), id="for-each-loop"),
    pytest.param(loop(for_each(), back=False), id="for-each-without-back-edge"),
    pytest.param(
        loop(for_each(maxItems=10_000, concurrency=100)), id="for-each-max-items-concurrency"
    ),
    pytest.param(loop(for_each(maxItems=1, concurrency=1)), id="for-each-minimums"),
    pytest.param(
        graph(
            [
                n("s", START),
                while_(),
                for_each(),
                n("x", TRANSFORM),
                n("y", TRANSFORM),
                n("end", END),
            ],
            [
                e("e1", "s", "w"),
                e("e2", "w", "f", handle="loop"),
                e("e3", "f", "x", handle="body"),
                e("e4", "x", "f"),
                e("e5", "f", "y", handle="exit"),
                e("e6", "y", "w"),
                e("e7", "w", "end"),
            ],
        ),
        id="for-each-nested-in-while",
    ),
    pytest.param(
        graph(
            [n("s", START), for_each(), n("x", TRANSFORM), n("y", TRANSFORM), n("end", END)],
            [
                e("e1", "s", "f"),
                e("e2", "f", "x", handle="body"),
                e("e3", "x", "y", condition="output.ok"),
                e("e4", "x", "f"),
                e("e5", "f", "end", handle="exit"),
            ],
        ),
        id="for-each-body-branch-ends-inside",
    ),
    pytest.param(
        switch_graph(switch({"value": "a"}, {"value": None}), "case_0", "case_1", "default"),
        id="switch-handles",
    ),
    pytest.param(switch_graph(switch(), "default"), id="switch-without-cases"),
    pytest.param(
        switch_graph(switch(*[{"value": i} for i in range(100)]), "case_99"),
        id="switch-100-cases",
    ),
    pytest.param(with_node(n("p", PROMPT, prompt="Approve {{ input.title }}?")), id="prompt"),
    pytest.param(with_node(n("p", PROMPT, prompt="Approve {{title}}?")), id="prompt-path"),
    pytest.param(with_timeout_edge(n("p", PROMPT, prompt="ok?")), id="prompt-timeout-handle"),
    pytest.param(
        with_node(n("p", PROMPT, prompt="ok?", timeoutMs=30 * 24 * 3_600_000)),
        id="prompt-waits-30-days",
    ),
    pytest.param(with_node(asking(False)), id="agent-allow-ask-user-false"),
    pytest.param(with_node(n("c", SUB, workflowId="child")), id="subworkflow"),
    pytest.param(with_node(n("c", SUB, workflowId="child", version=3)), id="subworkflow-version"),
    pytest.param(
        with_node(n("t", TOOL, toolId="search", timeoutMs=3_600_000)), id="tool-timeout-1h"
    ),
]


@pytest.mark.parametrize("definition", NEW_VALID)
def test_valid_control_flow_has_no_problems(definition: Definition) -> None:
    assert validate_definition(definition) == []


def whole(key: str, span: str) -> tuple[str, str]:
    return (f"{N1}.{key}", f"must be a whole number {span}")


NEW_INVALID: list[Any] = [
    # Loops: the structure comes from loop_structure, the rest is reachability.
    pytest.param(
        loop(while_(), back=False),
        [
            ("definition.nodes[1]", "the body of WHILE node 'w' never leads back to it"),
            ("definition.nodes[2]", "no END node is reachable from node 'b'"),
        ],
        id="while-without-back-edge",
    ),
    pytest.param(
        graph(
            [n("s", START), while_(), n("end", END)],
            [e("e1", "s", "w"), e("e2", "w", "end", handle="exit")],
        ),
        [("definition.nodes[1]", "WHILE node 'w' has no edge from its \"loop\" handle")],
        id="while-without-body",
    ),
    pytest.param(
        graph(
            [n("s", START), while_(), n("b", TRANSFORM), n("end", END)],
            [
                e("e1", "s", "w"),
                e("e2", "w", "b", handle="loop"),
                e("e3", "b", "w"),
                e("e4", "s", "b"),
                e("e5", "w", "end", handle="exit"),
            ],
        ),
        [
            (
                "definition.edges[3]",
                "node 'b' is inside the body of loop 'w' but is also entered from 's', outside it",
            )
        ],
        id="body-entered-from-outside",
    ),
    pytest.param(
        graph(
            [n("s", START), while_(), n("b", TRANSFORM), n("end", END)],
            [
                e("e1", "s", "w"),
                e("e2", "w", "b", handle="loop"),
                e("e3", "b", "w"),
                e("e4", "b", "end"),
            ],
        ),
        [
            ("definition.nodes[3]", "END node 'end' is inside the body of loop 'w'"),
        ],
        id="end-inside-body",
    ),
    pytest.param(
        graph(
            [n("s", START), while_(), n("b", TRANSFORM), n("end", END)],
            [
                e("e1", "s", "w"),
                e("e2", "w", "b", handle="loop"),
                e("e3", "b", "w"),
            ],
        ),
        [
            ("definition.nodes[0]", "no END node is reachable from node 's'"),
            ("definition.nodes[1]", "no END node is reachable from node 'w'"),
            ("definition.nodes[2]", "no END node is reachable from node 'b'"),
            ("definition.nodes[3]", "node 'end' is not reachable from START"),
        ],
        id="loop-without-exit",
    ),
    # Handles.
    pytest.param(
        graph(
            [n("s", START), while_(), n("b", TRANSFORM), n("end", END)],
            [
                e("e1", "s", "w"),
                e("e2", "w", "b", handle="body"),
                e("e3", "b", "w"),
                e("e4", "w", "end", handle="exit"),
            ],
        ),
        [
            (
                HANDLE.format(1),
                "a WHILE edge handle is 'loop' (into the loop's body) or 'exit' (out of the "
                "loop, also taken by an edge without handle), found 'body'",
            ),
            ("definition.nodes[1]", "WHILE node 'w' has no edge from its \"loop\" handle"),
            # with a wrong handle, b -> w is not a back edge: w -> b counts as an exit
            ("definition.edges", "cycle w -> b -> w is not the body of a loop"),
        ],
        id="while-handle-body",
    ),
    pytest.param(
        graph(
            [n("s", START), for_each(), n("b", TRANSFORM), n("end", END)],
            [
                e("e1", "s", "f"),
                e("e2", "f", "b", handle="body"),
                e("e3", "f", "end", handle="done"),
            ],
        ),
        [(HANDLE.format(2), "a FOR_EACH edge handle is 'body' (into the loop's body) or 'exit'")],
        id="for-each-handle-done",
    ),
    pytest.param(
        switch_graph(switch({"value": 1}, {"value": 2}), "case_0", "case_2", "other", None),
        [
            (
                HANDLE.format(2),
                "a SWITCH edge handle is 'case_0' to 'case_1' (one per case, from 0) or "
                "'default', found 'case_2'",
            ),
            (HANDLE.format(3), "a SWITCH edge handle is 'case_0' to 'case_1'"),
            (HANDLE.format(4), "a SWITCH edge handle is 'case_0' to 'case_1'"),
        ],
        id="switch-bad-handles",
    ),
    pytest.param(
        switch_graph(switch(), "case_0"),
        [
            (
                HANDLE.format(1),
                "a SWITCH edge handle is 'default' (the node has no cases), found 'case_0'",
            )
        ],
        id="switch-without-cases-case-handle",
    ),
    pytest.param(
        switch_graph(switch(cases="a"), "case_7", "default", "case_x", None),
        [
            (f"{N1}.cases", 'must be a list of objects each with a "value" key'),
            (
                HANDLE.format(3),
                "a SWITCH edge handle is \"case_<index>\" (one per case, from 0) or 'default', "
                "found 'case_x'",
            ),
            (
                HANDLE.format(4),
                'a SWITCH edge handle is "case_<index>"',
            ),
        ],
        id="switch-handles-when-cases-are-invalid",
    ),
    pytest.param(
        with_timeout_edge(n("p", PROMPT, prompt="ok?"), "late"),
        [
            (
                HANDLE.format(2),
                "a PROMPT edge has no handle, or 'timeout' for the way taken when nobody "
                "answers in time, found 'late'",
            )
        ],
        id="prompt-handle",
    ),
    # Config.
    pytest.param(
        with_node(n("p", PROMPT)),
        [(f"{N1}.prompt", "a PROMPT node needs config.prompt, the text shown to the person")],
        id="prompt-missing",
    ),
    pytest.param(
        with_node(n("p", PROMPT, prompt=["a"])),
        [(f"{N1}.prompt", "a PROMPT node needs config.prompt")],
        id="prompt-not-string",
    ),
    pytest.param(
        with_node(n("p", PROMPT, prompt="{{ input.x + }}")),
        [(f"{N1}.prompt", "does not compile")],
        id="prompt-placeholder-does-not-compile",
    ),
    pytest.param(
        with_node(n("p", PROMPT, prompt="ok?", timeoutMs=30 * 24 * 3_600_000 + 1)),
        [WAIT],
        id="prompt-timeout-over-30-days",
    ),
    pytest.param(with_node(n("p", PROMPT, prompt="ok?", timeoutMs=0)), [WAIT], id="prompt-t0"),
    pytest.param(
        with_node(asking("yes")),
        [(f"{N1}.allowAskUser", "must be true or false")],
        id="allow-ask-user-not-boolean",
    ),
    pytest.param(
        with_node(agent(timeoutMs=3_600_001)), [TIMEOUT], id="agent-not-asking-timeout-over-1h"
    ),
    pytest.param(
        with_node(asking("yes", timeoutMs=3_600_001)),
        [(f"{N1}.allowAskUser", "must be true or false"), TIMEOUT],
        id="agent-asking-not-boolean",
    ),
    pytest.param(
        loop(n("w", WHILE)),
        [(f"{N1}.condition", "a WHILE node needs config.condition")],
        id="while-without-condition",
    ),
    pytest.param(
        loop(while_(condition="input.x >")),
        [(f"{N1}.condition", "does not compile")],
        id="while-condition-does-not-compile",
    ),
    pytest.param(
        loop(while_(condition=True)),
        [(f"{N1}.condition", "must be an expression string")],
        id="while-condition-not-string",
    ),
    *[
        pytest.param(
            loop(while_(maxIterations=bad)),
            [whole("maxIterations", "from 1 to 10000 (the most iterations allowed; default 100)")],
            id=f"while-max-iterations-{bad!r}",
        )
        for bad in (0, 10_001, 2.5, True, "5")
    ],
    pytest.param(
        loop(n("f", FOR_EACH)),
        [(f"{N1}.collection", "a FOR_EACH node needs config.collection")],
        id="for-each-without-collection",
    ),
    pytest.param(
        loop(for_each(collection="input.items[")),
        [(f"{N1}.collection", "does not compile")],
        id="for-each-collection-does-not-compile",
    ),
    *[
        pytest.param(
            loop(for_each(maxItems=bad)),
            [whole("maxItems", "from 1 to 10000 (the most items allowed; default 1000)")],
            id=f"for-each-max-items-{bad!r}",
        )
        for bad in (0, 10_001, 1.0, False)
    ],
    *[
        pytest.param(
            loop(for_each(concurrency=bad)),
            [whole("concurrency", "from 1 to 100 (items run at once; default 1)")],
            id=f"for-each-concurrency-{bad!r}",
        )
        for bad in (0, 101, None, True)
    ],
    pytest.param(
        switch_graph(n("sw", SWITCH, cases=[]), "default"),
        [(f"{N1}.switchOn", "a SWITCH node needs config.switchOn")],
        id="switch-without-switch-on",
    ),
    pytest.param(
        switch_graph(switch(switchOn="input.kind =="), "default"),
        [(f"{N1}.switchOn", "does not compile")],
        id="switch-on-does-not-compile",
    ),
    pytest.param(
        switch_graph(n("sw", SWITCH, switchOn="input.kind"), "default"),
        [
            (
                f"{N1}.cases",
                'a SWITCH node needs config.cases, a list of objects each with a "value"',
            )
        ],
        id="switch-without-cases",
    ),
    pytest.param(
        switch_graph(switch({"value": 1}, {"label": "x"}, "a", {"value": None}), "default"),
        [
            (f"{N1}.cases[1]", 'must be an object with a "value" key'),
            (f"{N1}.cases[2]", 'must be an object with a "value" key'),
        ],
        id="switch-case-without-value",
    ),
    pytest.param(
        switch_graph(switch(*[{"value": i} for i in range(101)]), "default"),
        [(f"{N1}.cases", "at most 100 cases are allowed, found 101")],
        id="switch-101-cases",
    ),
    pytest.param(
        with_node(n("c", SUB)),
        [(f"{N1}.workflowId", "a SUBWORKFLOW node needs config.workflowId")],
        id="subworkflow-without-workflow-id",
    ),
    pytest.param(
        with_node(n("c", SUB, workflowId=" ")),
        [(f"{N1}.workflowId", "a SUBWORKFLOW node needs config.workflowId")],
        id="subworkflow-blank-workflow-id",
    ),
    pytest.param(
        with_node(n("c", SUB, workflowId="a/b")),
        [(f"{N1}.workflowId", f"workflowId 'a/b' contains '/': {SERVICE_ID_RULE}")],
        id="subworkflow-unsafe-workflow-id",
    ),
    *[
        pytest.param(
            with_node(n("c", SUB, workflowId="child", version=bad)),
            [whole("version", "of at least 1 (the version of the child workflow to run")],
            id=f"subworkflow-version-{bad!r}",
        )
        for bad in (0, -1, 1.5, True, "2")
    ],
]


@pytest.mark.parametrize(("definition", "expected"), NEW_INVALID)
def test_invalid_control_flow_lists_exactly_its_problems(
    definition: Definition, expected: Expected
) -> None:
    assert_problems(validate_definition(definition), expected)


def test_exported_limits() -> None:
    from orchestrator.domain import validation

    assert validation.MAX_WAIT_MS == 30 * 24 * 3_600_000
    assert validation.MAX_LOOP_ITERATIONS == 10_000
    assert validation.DEFAULT_MAX_ITERATIONS == 100
    assert validation.DEFAULT_MAX_ITEMS == 1000
    assert validation.MAX_CONCURRENCY == 100
    assert validation.case_handle(3) == "case_3"


def test_an_edge_leaving_a_loop_cannot_have_a_condition() -> None:
    definition = Definition(
        nodes=(
            Node("s", NodeType.START),
            Node("w", NodeType.WHILE, {"condition": "input.n < 3"}),
            Node("b", NodeType.TRANSFORM),
            Node("end", NodeType.END),
        ),
        edges=(
            Edge("e1", "s", "w"),
            Edge("e2", "w", "b", source_handle="loop"),
            Edge("e3", "b", "w"),
            Edge("e4", "w", "end", condition="input.n > 1", source_handle="exit"),
        ),
    )
    assert validate_definition(definition) == [
        Problem(
            "definition.edges[3].condition",
            "an edge leaving WHILE node 'w' cannot have a condition: the loop itself decides "
            "(its condition, its items)",
        )
    ]
