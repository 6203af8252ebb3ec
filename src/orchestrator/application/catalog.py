"""The built-in templates: one per common shape of workflow, each valid as it stands and, with
its defaults, runnable against the stand-in agent and tool services (agent and tool "echo",
agent "scorer").

Where branches part for good, each ends at its own END: the execution's output is then the
result of the branch taken (one END joining several branches would give `{nodeId: output}`).
"""

from __future__ import annotations

from typing import Any

from orchestrator.domain.templates import Parameter, Template
from orchestrator.domain.workflow import Definition, Edge, Node, NodeType

COLUMN, ROW = 250.0, 120.0


def _node(node_id: str, kind: NodeType, name: str, at: tuple[float, float], **config: Any) -> Node:
    """A node named for the editor and placed on its grid (column, row)."""
    return Node(
        id=node_id,
        type=kind,
        config=config,
        name=name,
        position={"x": at[0] * COLUMN, "y": at[1] * ROW},
    )


def _edge(source: str, target: str, handle: str | None = None) -> Edge:
    """An edge, its id made from its ends (and its handle, which tells parallel edges apart)."""
    suffix = f":{handle}" if handle else ""
    return Edge(f"{source}->{target}{suffix}", source, target, source_handle=handle)


def _agent_id(default: str = "echo", what: str = "The agent to run") -> Parameter:
    return Parameter("agentId", "string", f"{what} (an agent-service agent id)", default)


def _tool_id(what: str = "The tool to call") -> Parameter:
    return Parameter("toolId", "string", f"{what} (a tool-service tool id)", "echo")


AGENT_THEN_TOOL = Template(
    id="agent-then-tool",
    name="Agent then tool",
    description="An agent works on the input, then a tool acts on the agent's answer (an object "
    "answer becomes the tool's parameters, anything else its `input` parameter).",
    category="basics",
    built_in=True,
    parameters=(_agent_id(), _tool_id("The tool that receives the agent's answer")),
    definition=Definition(
        nodes=(
            _node("start", NodeType.START, "Start", (0, 0)),
            _node("agent", NodeType.AGENT, "Agent", (1, 0), agentId="{{agentId}}"),
            _node("tool", NodeType.TOOL, "Tool", (2, 0), toolId="{{toolId}}"),
            _node("end", NodeType.END, "End", (3, 0)),
        ),
        edges=(_edge("start", "agent"), _edge("agent", "tool"), _edge("tool", "end")),
    ),
)

ROUTE_BY_CONDITION = Template(
    id="route-by-condition",
    name="Route by condition",
    description="An agent scores the input (it answers an object with a numeric `score`); at "
    "or above the threshold the input is accepted, below it is sent for review.",
    category="routing",
    built_in=True,
    parameters=(
        _agent_id("scorer", "The agent that scores the input"),
        Parameter("threshold", "number", "The lowest score that is accepted", 0.5),
    ),
    definition=Definition(
        nodes=(
            _node("start", NodeType.START, "Start", (0, 0)),
            _node("score", NodeType.AGENT, "Score", (1, 0), agentId="{{agentId}}"),
            _node(
                "check",
                NodeType.CONDITIONAL,
                "Score high enough?",
                (2, 0),
                condition="input.score >= {{threshold}}",
            ),
            _node(
                "accept",
                NodeType.TRANSFORM,
                "Accept",
                (3, -0.5),
                expression='{"decision": "accepted", "score": input.score}',
            ),
            _node(
                "review",
                NodeType.TRANSFORM,
                "Send for review",
                (3, 0.5),
                expression='{"decision": "review", "score": input.score}',
            ),
            _node("end", NodeType.END, "Accepted", (4, -0.5)),
            _node("end_review", NodeType.END, "For review", (4, 0.5)),
        ),
        edges=(
            _edge("start", "score"),
            _edge("score", "check"),
            _edge("check", "accept", "true"),
            _edge("check", "review", "false"),
            _edge("accept", "end"),
            _edge("review", "end_review"),
        ),
    ),
)

FAN_OUT_JOIN = Template(
    id="fan-out-join",
    name="Fan out and join",
    description="Two agents work on the same input at once; the join waits for both and "
    "gives `{first, second}`, their answers.",
    category="parallel",
    built_in=True,
    parameters=(
        Parameter("firstAgentId", "string", "The first agent (an agent-service agent id)", "echo"),
        Parameter(
            "secondAgentId", "string", "The second agent (an agent-service agent id)", "echo"
        ),
    ),
    definition=Definition(
        nodes=(
            _node("start", NodeType.START, "Start", (0, 0)),
            _node("first", NodeType.AGENT, "First agent", (1, -0.5), agentId="{{firstAgentId}}"),
            _node("second", NodeType.AGENT, "Second agent", (1, 0.5), agentId="{{secondAgentId}}"),
            _node(
                "join",
                NodeType.TRANSFORM,
                "Join",
                (2, 0),
                template={"first": "$output.first", "second": "$output.second"},
            ),
            _node("end", NodeType.END, "End", (3, 0)),
        ),
        edges=(
            _edge("start", "first"),
            _edge("start", "second"),
            _edge("first", "join"),
            _edge("second", "join"),
            _edge("join", "end"),
        ),
    ),
)

HUMAN_APPROVAL = Template(
    id="human-approval",
    name="Human approval",
    description="An agent drafts; a person is asked to approve (resume the `ask` node with "
    '"yes" to publish through the tool, anything else rejects). Without an answer within '
    "the timeout the draft expires.",
    category="human-in-the-loop",
    built_in=True,
    parameters=(
        _agent_id(what="The agent that writes the draft"),
        _tool_id("The tool that publishes an approved draft"),
        Parameter(
            "question",
            "string",
            "What the person is asked; {{path}} placeholders read the draft",
            'Publish this draft? Answer "yes" to approve.',
        ),
        Parameter(
            "timeoutMs",
            "number",
            "How long to wait for the answer, in milliseconds (up to 30 days)",
            86_400_000,
        ),
    ),
    definition=Definition(
        nodes=(
            _node("start", NodeType.START, "Start", (0, 0)),
            _node("draft", NodeType.AGENT, "Draft", (1, 0), agentId="{{agentId}}"),
            _node(
                "ask",
                NodeType.PROMPT,
                "Ask for approval",
                (2, 0),
                prompt="{{question}}",
                timeoutMs="{{timeoutMs}}",
            ),
            _node(
                "decide",
                NodeType.CONDITIONAL,
                "Approved?",
                (3, 0),
                condition="input.response == 'yes'",
            ),
            _node(
                "publish",
                NodeType.TOOL,
                "Publish",
                (4, -0.5),
                toolId="{{toolId}}",
                parameters={"draft": "$output.draft", "approved": True},
            ),
            _node(
                "rejected",
                NodeType.TRANSFORM,
                "Rejected",
                (4, 0.5),
                expression='{"published": false, "response": input.response}',
            ),
            _node(
                "expired",
                NodeType.TRANSFORM,
                "Nobody answered",
                (3, 1),
                expression='{"published": false, "reason": "nobody answered in time"}',
            ),
            _node("end", NodeType.END, "Published", (5, -0.5)),
            _node("end_rejected", NodeType.END, "Rejected", (5, 0.5)),
            _node("end_expired", NodeType.END, "Expired", (4, 1)),
        ),
        edges=(
            _edge("start", "draft"),
            _edge("draft", "ask"),
            _edge("ask", "decide"),
            _edge("ask", "expired", "timeout"),
            _edge("decide", "publish", "true"),
            _edge("decide", "rejected", "false"),
            _edge("publish", "end"),
            _edge("rejected", "end_rejected"),
            _edge("expired", "end_expired"),
        ),
    ),
)

FOR_EACH_LOOP = Template(
    id="for-each-loop",
    name="For each item",
    description="An agent runs once per item of a list (by default the input's `items`), "
    "several at a time; the output is the list of its answers, in item order.",
    category="loops",
    built_in=True,
    parameters=(
        _agent_id(what="The agent that handles each item"),
        Parameter(
            "collection",
            "string",
            "The expression that gives the list, over the input",
            "input.items",
        ),
        Parameter(
            "concurrency", "number", "How many items run at once (a whole number, 1 to 100)", 4
        ),
    ),
    definition=Definition(
        nodes=(
            _node("start", NodeType.START, "Start", (0, 0)),
            _node(
                "each",
                NodeType.FOR_EACH,
                "For each item",
                (1, 0),
                collection="{{collection}}",
                concurrency="{{concurrency}}",
            ),
            _node("handle", NodeType.AGENT, "Handle the item", (1, 1), agentId="{{agentId}}"),
            _node("end", NodeType.END, "End", (2, 0)),
        ),
        edges=(
            _edge("start", "each"),
            _edge("each", "handle", "body"),
            _edge("each", "end", "exit"),
        ),
    ),
)

WHILE_LOOP = Template(
    id="while-loop",
    name="Refine in rounds",
    description="An agent refines a draft (the input) for a number of rounds: each round it "
    "gets `{draft, round}` and answers an object whose `draft` is the next draft. The output "
    "is `{round, draft}` after the last round.",
    category="loops",
    built_in=True,
    parameters=(
        _agent_id(what="The agent that refines the draft"),
        Parameter("rounds", "number", "How many rounds (a whole number, 1 to 10000)", 3),
    ),
    definition=Definition(
        nodes=(
            _node("start", NodeType.START, "Start", (0, 0)),
            _node(
                "init",
                NodeType.TRANSFORM,
                "First draft",
                (1, 0),
                expression='{"round": 0, "draft": input}',
            ),
            _node(
                "loop",
                NodeType.WHILE,
                "Rounds left?",
                (2, 0),
                condition="input.round < {{rounds}}",
                maxIterations="{{rounds}}",
            ),
            _node(
                "refine",
                NodeType.AGENT,
                "Refine",
                (2, 1),
                agentId="{{agentId}}",
                inputMapping={"draft": "{{ item.draft }}", "round": "{{ item.round }}"},
            ),
            _node(
                "next",
                NodeType.TRANSFORM,
                "Next round",
                (3, 1),
                expression='{"round": item.round + 1, "draft": input.draft}',
            ),
            _node("end", NodeType.END, "End", (3, 0)),
        ),
        edges=(
            _edge("start", "init"),
            _edge("init", "loop"),
            _edge("loop", "refine", "loop"),
            _edge("refine", "next"),
            _edge("next", "loop"),
            _edge("loop", "end", "exit"),
        ),
    ),
)

BUILT_IN: tuple[Template, ...] = (
    AGENT_THEN_TOOL,
    ROUTE_BY_CONDITION,
    FAN_OUT_JOIN,
    HUMAN_APPROVAL,
    FOR_EACH_LOOP,
    WHILE_LOOP,
)
BY_ID = {template.id: template for template in BUILT_IN}
