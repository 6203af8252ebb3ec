"""Templates without I/O: placeholder substitution, parameter errors, declared parameters, and
every built-in template valid once filled in."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.application.catalog import BUILT_IN, BY_ID
from orchestrator.application.workflows import DEFAULT_LIMITS, definition_problems
from orchestrator.domain.errors import ValidationFailed
from orchestrator.domain.templates import (
    Parameter,
    Template,
    declared_parameter_problems,
    fill,
    parameter_values,
    placeholders,
)
from orchestrator.domain.workflow import Definition, Edge, Node, NodeType

SHAPE = Definition(
    nodes=(
        Node("start", NodeType.START, name="Start {{label}}"),
        Node(
            "work",
            NodeType.AGENT,
            {
                "agentId": "{{agentId}}",
                "timeoutMs": "{{timeout}}",
                "note": "agent {{agentId}} for {{ input.user }} in {{title}}",
                "nested": [{"flag": "{{strict}}", "{{agentId}}": "key stays"}],
                "options": "{{options}}",
            },
            description="{{timeout}}",
        ),
        Node("end", NodeType.END),
    ),
    edges=(
        Edge("e1", "start", "work", condition="input.n > {{timeout}}"),
        Edge("e2", "work", "end"),
    ),
    input_schema={"title": "{{label}}"},
)
TEMPLATE = Template(
    id="shape",
    name="Shape",
    description=None,
    category="tests",
    parameters=(
        Parameter("agentId", "string", "the agent", "echo"),
        Parameter("timeout", "number", "ms"),
        Parameter("strict", "boolean", "", False),
        Parameter("options", "object", "", {"a": 1}),
        Parameter("label", "string", "", "x"),
    ),
    definition=SHAPE,
)


def filled(**given: Any) -> Definition:
    return fill(SHAPE, parameter_values(TEMPLATE, given))


def test_a_whole_placeholder_takes_the_value_with_its_type() -> None:
    definition = filled(agentId="writer", timeout=1500, strict=True, options={"k": [1, 2]})
    config = definition.node("work").config
    assert config["agentId"] == "writer"
    assert config["timeoutMs"] == 1500
    assert config["nested"][0]["flag"] is True
    assert config["options"] == {"k": [1, 2]}


def test_an_embedded_placeholder_is_replaced_as_text_and_others_are_left_alone() -> None:
    definition = filled(agentId="writer", timeout=2.5)
    config = definition.node("work").config
    assert config["note"] == "agent writer for {{ input.user }} in {{title}}"
    assert config["nested"][0]["{{agentId}}"] == "key stays"
    assert definition.edges[0].condition == "input.n > 2.5"
    assert definition.input_schema == {"title": "x"}


def test_text_fields_get_a_whole_value_as_text() -> None:
    definition = filled(timeout=30, label="now")
    assert definition.node("work").description == "30"
    assert definition.node("start").name == "Start now"


def test_defaults_fill_what_is_not_given() -> None:
    assert parameter_values(TEMPLATE, {"timeout": 1}) == {
        "agentId": "echo",
        "timeout": 1,
        "strict": False,
        "options": {"a": 1},
        "label": "x",
    }


def test_unknown_missing_and_mistyped_parameters_are_all_named() -> None:
    with pytest.raises(ValidationFailed) as caught:
        parameter_values(TEMPLATE, {"agentID": "x", "strict": "yes", "options": [1], "label": 3})
    problems = {p.path: p.message for p in caught.value.problems}
    assert set(problems) == {
        "parameters.agentID",
        "parameters.timeout",
        "parameters.strict",
        "parameters.options",
        "parameters.label",
    }
    assert "has no parameter 'agentID'" in problems["parameters.agentID"]
    assert "'agentId'" in problems["parameters.agentID"]  # the names it does have
    assert "'timeout' (number) is required" in problems["parameters.timeout"]
    assert "must be a boolean, got string" in problems["parameters.strict"]
    assert "must be an object, got array" in problems["parameters.options"]
    assert "must be a string, got number" in problems["parameters.label"]


@pytest.mark.parametrize("value", [True, "3", None, float("nan"), float("inf")])
def test_a_number_is_neither_a_boolean_nor_text_nor_null_nor_infinite(value: Any) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parameter_values(TEMPLATE, {"timeout": value})
    assert [p.path for p in caught.value.problems] == ["parameters.timeout"]


def test_placeholders_are_found_everywhere_but_in_keys() -> None:
    assert placeholders(SHAPE) == {"agentId", "timeout", "title", "strict", "options", "label"}


def test_declared_parameters_must_be_well_formed_and_used() -> None:
    declared = (
        Parameter("agentId", "string", "", "echo"),
        Parameter("agentId", "string"),
        Parameter("unused", "string"),
        Parameter("9lives", "string"),
        Parameter("timeout", "integer"),
        Parameter("strict", "boolean", "", "no"),
    )
    problems = {(p.path, p.message) for p in declared_parameter_problems(declared, SHAPE)}
    assert problems == {
        ("parameters[1].name", "parameter 'agentId' is repeated"),
        ("parameters[2].name", "the definition has no placeholder {{unused}} to fill"),
        (
            "parameters[3].name",
            "a parameter name is a letter or _ then letters, digits or _ (at most 64 characters)",
        ),
        ("parameters[4].type", "must be one of string, number, boolean, object"),
        ("parameters[5].default", "parameter 'strict' must be a boolean, got string"),
    }
    assert declared_parameter_problems((Parameter("timeout", "number"),), SHAPE) == []


def test_the_catalog_has_the_shapes_the_issue_asks_for() -> None:
    assert {"agent-then-tool", "route-by-condition", "fan-out-join", "human-approval"} <= set(BY_ID)
    kinds = {node.type for t in BUILT_IN for node in t.definition.nodes}
    assert {NodeType.PROMPT, NodeType.FOR_EACH, NodeType.WHILE, NodeType.CONDITIONAL} <= kinds
    assert len(BY_ID) == len(BUILT_IN)
    assert all(t.built_in and t.user_id is None for t in BUILT_IN)


@pytest.mark.parametrize("template", BUILT_IN, ids=lambda t: t.id)
def test_every_built_in_template_is_valid_once_filled_with_its_defaults(template: Template) -> None:
    assert all(not p.required for p in template.parameters), "defaults must run on stand-ins"
    definition = fill(template.definition, parameter_values(template, {}))
    assert definition_problems(definition, DEFAULT_LIMITS) == []
    declared = {p.name for p in template.parameters}
    assert declared <= placeholders(template.definition), "every parameter fills something"
    assert not placeholders(definition) & declared, "no parameter is left unfilled"
    assert declared_parameter_problems(template.parameters, template.definition) == []


def test_a_built_in_template_filled_with_bad_values_is_invalid() -> None:
    template = BY_ID["for-each-loop"]
    definition = fill(template.definition, parameter_values(template, {"concurrency": 0}))
    problems = definition_problems(definition, DEFAULT_LIMITS)
    assert [p.path for p in problems] == ["definition.nodes[1].config.concurrency"]
