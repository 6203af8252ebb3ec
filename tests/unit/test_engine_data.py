"""CompiledWorkflow data flow: input mapping, variables, transforms, tool parameters, output."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.domain.engine import CompiledWorkflow, tool_parameters, variables
from orchestrator.domain.evaluation import run
from orchestrator.domain.execution import NodeStatus, WorkflowExecution
from tests.unit.engine_builders import (
    END,
    START,
    T0,
    TOOL,
    TRANSFORM,
    compiled,
    e,
    finish,
    n,
    new_execution,
    start,
)


def node_input(wf: CompiledWorkflow, ex: WorkflowExecution, node_id: str) -> Any:
    """The node's default input, through its input mapping when it has one."""
    default = wf.default_input(node_id, ex)
    work = wf.job(node_id, "inputMapping", ex, default)
    return default if work is None else run(work[0])


def transform(wf: CompiledWorkflow, ex: WorkflowExecution, node_id: str, value: Any) -> Any:
    """What a TRANSFORM node outputs for `value`."""
    for key in ("expression", "template"):
        work = wf.job(node_id, key, ex, value)
        if work is not None:
            return run(work[0])
    return value


def test_input_mapping_resolves_references_expressions_and_literals() -> None:
    mapping = {
        "x": "$variables.x",
        "deep": "$variables.a.b",
        "prev": "$output.a",
        "field": "$output.a.field",
        "double": "{{ input.x * 2 }}",
        "text": "x is {{ input.x }}",
        "missing": "$variables.nope",
        "number": 5,
        "flag": False,
        "word": "hello",
        "nested": {"list": ["$variables.x", {"k": "$output.a.field"}, 1]},
    }
    wf = compiled(
        [n("s", START), n("a"), n("m", inputMapping=mapping), n("end", END)],
        [e("s", "a"), e("a", "m"), e("m", "end")],
    )
    ex = new_execution(wf, {"x": 3, "a": {"b": "deep"}})
    finish(ex, "s", {"x": 3, "a": {"b": "deep"}}, wf)
    finish(ex, "a", {"field": "F", "x": 7}, wf)

    assert node_input(wf, ex, "m") == {
        "x": 7,
        "deep": "deep",
        "prev": {"field": "F", "x": 7},
        "field": "F",
        "double": 14,
        "text": "x is 7",
        "missing": None,
        "number": 5,
        "flag": False,
        "word": "hello",
        "nested": {"list": [7, {"k": "F"}, 1]},
    }


def test_input_mapping_on_start_sees_the_execution_input() -> None:
    wf = compiled(
        [n("s", START, inputMapping={"q": "$variables.query", "all": "{{ input }}"}), n("e", END)],
        [e("s", "e")],
    )
    ex = new_execution(wf, {"query": "cats"})
    assert node_input(wf, ex, "s") == {"q": "cats", "all": {"query": "cats"}}


def test_variables_merge_object_outputs_in_finish_order() -> None:
    wf = compiled(
        [n("s", START), n("a"), n("b"), n("c"), n("r"), n("end", END)],
        [e("s", "a"), e("s", "b"), e("s", "c"), e("s", "r"), e("a", "end"), e("b", "end")],
    )
    ex = new_execution(wf, {"k": "input", "keep": 1})
    finish(ex, "s", {"k": "start"})
    finish(ex, "b", {"k": "b", "only_b": True})
    finish(ex, "c", "not an object")
    finish(ex, "a", {"k": "a"})
    start(ex, "r")
    ex.nodes["r"].output = {"k": "running"}

    assert variables(ex) == {"k": "a", "keep": 1, "only_b": True}


def test_variables_start_empty_when_the_input_is_not_an_object() -> None:
    wf = compiled([n("s", START), n("end", END)], [e("s", "end")])
    ex = new_execution(wf, ["a", "list"])
    assert variables(ex) == {}
    finish(ex, "s", {"x": 1})
    assert variables(ex) == {"x": 1}


def transform_workflow(**config: Any) -> tuple[CompiledWorkflow, WorkflowExecution]:
    wf = compiled(
        [n("s", START), n("t", TRANSFORM, **config), n("end", END)], [e("s", "t"), e("t", "end")]
    )
    ex = new_execution(wf, {"name": "ada", "x": 2})
    finish(ex, "s", {"name": "ada", "x": 2}, wf)
    return wf, ex


def test_transform_expression_sees_input_variables_and_outputs() -> None:
    wf, ex = transform_workflow(
        expression='{"hi": "hi " + input.name, "sum": input.x + variables.x + outputs.s.x}',
        template={"ignored": True},
    )
    assert transform(wf, ex, "t", {"name": "bob", "x": 10}) == {"hi": "hi bob", "sum": 14}


def test_transform_template_is_resolved_recursively() -> None:
    wf, ex = transform_workflow(
        template={
            "greeting": "Hello {{ input.name }}",
            "start": "$output.s",
            "n": [1, "$variables.x"],
        }
    )
    assert transform(wf, ex, "t", {"name": "bob"}) == {
        "greeting": "Hello bob",
        "start": {"name": "ada", "x": 2},
        "n": [1, 2],
    }


def test_transform_without_expression_or_template_passes_its_input_through() -> None:
    wf, ex = transform_workflow(inputMapping={"who": "$variables.name"})
    value = node_input(wf, ex, "t")
    assert value == {"who": "ada"}
    assert transform(wf, ex, "t", value) == {"who": "ada"}


@pytest.mark.parametrize(
    ("given", "parameters", "expected"),
    [
        pytest.param(
            {"q": "cats", "n": 1},
            {"n": 2, "shout": "{{ input.q + '!' }}"},
            {"q": "cats", "n": 2, "shout": "cats!"},
            id="object-input-under-parameters",
        ),
        pytest.param("text", {"lang": "en"}, {"input": "text", "lang": "en"}, id="scalar-input"),
        pytest.param(None, {"lang": "$variables.lang"}, {"lang": "fr"}, id="no-input"),
        pytest.param({"q": "cats"}, None, {"q": "cats"}, id="no-parameters"),
        pytest.param(7, None, {"input": 7}, id="scalar-no-parameters"),
    ],
)
def test_tool_parameters_merge_config_over_input(
    given: Any, parameters: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    config: dict[str, Any] = {"toolId": "search"}
    if parameters is not None:
        config["parameters"] = parameters
    wf = compiled(
        [n("s", START), n("t", TOOL, **config), n("end", END)], [e("s", "t"), e("t", "end")]
    )
    ex = new_execution(wf, {"lang": "fr"})
    finish(ex, "s", {"lang": "fr"}, wf)
    work = wf.job("t", "parameters", ex, given)
    assert tool_parameters(given, None if work is None else run(work[0])) == expected


def two_ends() -> CompiledWorkflow:
    return compiled(
        [n("s", START), n("end1", END), n("end2", END)], [e("s", "end1"), e("s", "end2")]
    )


def test_output_with_two_completed_ends_is_keyed_by_end_id() -> None:
    wf = two_ends()
    ex = new_execution(wf)
    finish(ex, "s", 1)
    finish(ex, "end2", "two")
    finish(ex, "end1", "one")
    assert wf.output(ex) == {"end1": "one", "end2": "two"}


def test_output_with_one_completed_end_of_two_is_that_end() -> None:
    wf = two_ends()
    ex = new_execution(wf)
    finish(ex, "s", 1)
    ex.nodes["end1"].move(NodeStatus.SKIPPED, T0)
    finish(ex, "end2", {"v": 2})
    assert wf.output(ex) == {"v": 2}


def test_output_without_a_completed_end_is_none() -> None:
    wf = two_ends()
    ex = new_execution(wf)
    finish(ex, "s", 1)
    assert wf.output(ex) is None
