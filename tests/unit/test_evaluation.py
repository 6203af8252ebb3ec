"""Expression work as data: what `analyze` finds at compile time and what `run` returns."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.domain.errors import ExpressionError
from orchestrator.domain.evaluation import Analysis, Job, JobKind, analyze, run

WHAT = "node 'check' condition"


@pytest.mark.parametrize(
    ("kind", "spec", "expected"),
    [
        pytest.param(
            "condition",
            "output.score > 0.5 && output.ok",
            Analysis(frozenset({"output"}), 9, comprehensions=False),
            id="condition",
        ),
        pytest.param(
            "expression",
            "input.l.map(x, x + variables.k)",
            Analysis(frozenset({"input", "variables"}), 14, comprehensions=True),
            id="comprehension-variable-is-not-a-context-name",
        ),
        pytest.param(
            "expression",
            'input.name.matches("^a+$")',
            Analysis(frozenset({"input"}), 8, comprehensions=True),
            id="matches-counts-as-a-loop",
        ),
        pytest.param(
            "resolve",
            {"a": "$variables.x", "b": "$output.n.y", "c": "{{ input.z + 1 }}", "d": [1, "t"]},
            # 7 values (the object, its 4 values, the list's 2 items) + 5 tokens of `input.z + 1`
            Analysis(frozenset({"variables", "outputs", "input"}), 12, comprehensions=False),
            id="mapping",
        ),
        pytest.param(
            "resolve",
            "$variables",
            Analysis(frozenset({"variables"}), 1, comprehensions=False),
            id="all-variables",
        ),
        pytest.param(
            "resolve",
            "$output.n {{ input.x }}",
            Analysis(frozenset({"outputs"}), 1, comprehensions=False),
            id="an-output-reference-is-not-a-template",
        ),
        pytest.param(
            "resolve",
            ["{{ output.l.filter(x, x > 1) }}", "n={{ variables.n }}"],
            Analysis(frozenset({"output", "variables"}), 3 + 12 + 3, comprehensions=True),
            id="templates",
        ),
        pytest.param(
            "resolve",
            {"k": 1},
            Analysis(frozenset(), 2, comprehensions=False),
            id="literals",
        ),
    ],
)
def test_analyze(kind: JobKind, spec: Any, expected: Analysis) -> None:
    assert analyze(kind, spec) == expected


@pytest.mark.parametrize(
    ("kind", "spec", "message"),
    [
        pytest.param("condition", "output.score >", "Syntax error", id="syntax"),
        pytest.param("expression", 3, "must be a string", id="not-a-string"),
        pytest.param("resolve", {"a": ["{{ input. }}"]}, "Syntax error", id="template-syntax"),
        pytest.param(
            "resolve",
            "{{ [[[1]]].map(a, a.map(b, b.map(c, c))) }}",
            "nests comprehensions deeper than 2",
            id="template-nesting",
        ),
    ],
)
def test_analyze_refuses_what_does_not_compile(kind: JobKind, spec: Any, message: str) -> None:
    with pytest.raises(ExpressionError, match=message):
        analyze(kind, spec)


def test_run_expression_returns_json() -> None:
    job = Job("expression", 'input.map(x, {"v": x * 2})', {"input": [1, 2]}, WHAT)
    assert run(job) == [{"v": 2}, {"v": 4}]


def test_run_condition_must_be_a_boolean() -> None:
    assert run(Job("condition", "input.n > 1", {"input": {"n": 2}}, WHAT)) is True
    with pytest.raises(ExpressionError) as caught:
        run(Job("condition", "input.n", {"input": {"n": 2}}, WHAT))
    assert caught.value.message == f"{WHAT} must be true or false, got 2"


def test_a_long_non_boolean_is_cut_short_in_the_message() -> None:
    with pytest.raises(ExpressionError) as caught:
        run(Job("condition", "input", {"input": "x" * 10_000}, WHAT))
    assert caught.value.message.startswith(f"{WHAT} must be true or false, got 'xxx")
    assert caught.value.message.endswith("...")
    assert len(caught.value.message) < 300


def test_run_errors_start_with_who_asks() -> None:
    with pytest.raises(ExpressionError) as caught:
        run(Job("condition", "input.missing > 1", {"input": {}}, WHAT))
    assert caught.value.message == f"{WHAT}: 'input.missing > 1': no such key 'missing'"


def test_run_resolve_reads_variables_outputs_and_templates() -> None:
    spec = {
        "all": "$variables",
        "x": "$variables.x",
        "y": "$output.n.y",
        "sum": "{{ input.a + variables.x }}",
        "text": "a={{ input.a }}",
        "list": [True, None, "plain"],
    }
    context = {"input": {"a": 1}, "variables": {"x": 2}, "outputs": {"n": {"y": [3]}}}
    assert run(Job("resolve", spec, context, "node 'n' inputMapping")) == {
        "all": {"x": 2},
        "x": 2,
        "y": [3],
        "sum": 3,
        "text": "a=1",
        "list": [True, None, "plain"],
    }


def test_run_resolve_errors_start_with_who_asks() -> None:
    with pytest.raises(ExpressionError) as caught:
        run(Job("resolve", {"a": "{{ input.nope }}"}, {"input": {}}, "node 'n' inputMapping"))
    assert caught.value.message.startswith("node 'n' inputMapping: 'input.nope': no such key")
