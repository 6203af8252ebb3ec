"""The CEL expression language: compile, evaluate, bounds, JSON results, templates."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from orchestrator.domain.errors import ExpressionError
from orchestrator.domain.expressions import (
    MAX_EXPRESSION_LENGTH,
    compile_expression,
    comprehension_nesting,
    input_path,
    javascript_equality,
    render_template_string,
    template_expressions,
    to_json,
    tokenize,
)

SCORE_OK = "output.score > 0.5 && output.ok"


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        pytest.param({"score": 1, "ok": True}, True, id="int-score-true"),
        pytest.param({"score": 0, "ok": True}, False, id="int-score-false"),
        pytest.param({"score": 0.75, "ok": True}, True, id="double-score-true"),
        pytest.param({"score": 0.25, "ok": True}, False, id="double-score-false"),
        pytest.param({"score": 0.9, "ok": False}, False, id="not-ok"),
    ],
)
def test_seed_style_condition_reads_like_javascript(output: dict[str, Any], expected: bool) -> None:
    assert compile_expression(SCORE_OK).evaluate({"output": output}) is expected


def test_arithmetic_and_strings_evaluate_to_plain_values() -> None:
    assert compile_expression("input.x * 2").evaluate({"input": {"x": 21}}) == 42
    assert compile_expression('input.name + "!"').evaluate({"input": {"name": "ada"}}) == "ada!"
    assert compile_expression("[input.a, input.b]").evaluate({"input": {"a": 1, "b": "two"}}) == [
        1,
        "two",
    ]


def test_missing_key_is_an_expression_error_naming_the_key() -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(SCORE_OK).evaluate({"output": {"ok": True}})
    assert caught.value.message == f"{SCORE_OK!r}: no such key 'score'"


def test_undefined_variable_is_an_expression_error_naming_the_expression() -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression("missing.field == 1").evaluate({})
    assert caught.value.message.startswith("'missing.field == 1': ")
    assert "missing" in caught.value.message.removeprefix("'missing.field == 1': ")


def test_type_mismatch_at_evaluation_is_an_expression_error() -> None:
    with pytest.raises(ExpressionError, match="string"):
        compile_expression('input.a + "x"').evaluate({"input": {"a": 1}})


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("output.score >", id="dangling-operator"),
        pytest.param("1 +* 2", id="double-operator"),
        pytest.param("(input.x", id="unclosed-paren"),
    ],
)
def test_syntax_error_is_an_expression_error(source: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(source)
    assert "Syntax error" in caught.value.message
    assert "\n" not in caught.value.message


def test_empty_expression_is_refused() -> None:
    with pytest.raises(ExpressionError, match="expression is empty"):
        compile_expression("   ")


def test_expression_length_is_bounded() -> None:
    longest = "1" + " + 1" * ((MAX_EXPRESSION_LENGTH - 1) // 4)
    assert len(longest) <= MAX_EXPRESSION_LENGTH
    assert compile_expression(longest).evaluate({}) == 1 + (MAX_EXPRESSION_LENGTH - 1) // 4
    with pytest.raises(ExpressionError, match=f"longer than {MAX_EXPRESSION_LENGTH}"):
        compile_expression("1" + " " * MAX_EXPRESSION_LENGTH)


def test_two_nested_comprehensions_are_allowed() -> None:
    source = "input.rows.map(r, r.filter(x, x > 1))"
    rows = {"rows": [[1, 2, 3], [0, 5]]}
    assert compile_expression(source).evaluate({"input": rows}) == [[2, 3], [5]]


def test_side_by_side_comprehensions_are_not_nesting() -> None:
    source = "input.a.all(x, x > 0) && input.b.exists(y, y == 2) && input.c.map(z, z).size() == 1"
    assert compile_expression(source).evaluate({"input": {"a": [1], "b": [2], "c": [3]}}) is True


def test_three_nested_comprehensions_are_refused() -> None:
    with pytest.raises(ExpressionError, match="nests comprehensions deeper than 2"):
        compile_expression("[[[1]]].map(a, a.map(b, b.map(c, c + 1)))")


def test_compile_cache_returns_the_same_object() -> None:
    first = compile_expression("input.cached == 1")
    assert compile_expression("input.cached == 1") is first
    assert compile_expression("input.cached == 2") is not first


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param(
            'timestamp("2024-01-02T03:04:05Z")', "2024-01-02T03:04:05+00:00", id="timestamp"
        ),
        pytest.param('duration("90s")', 90.0, id="duration"),
        pytest.param('b"abc"', "YWJj", id="bytes"),
        pytest.param(
            '{"when": timestamp("2024-01-02T00:00:00Z"), "n": [duration("1m")]}',
            {"when": "2024-01-02T00:00:00+00:00", "n": [60.0]},
            id="nested",
        ),
        pytest.param("null", None, id="null"),
        pytest.param("1.5", 1.5, id="double"),
    ],
)
def test_results_are_converted_to_json(source: str, expected: Any) -> None:
    assert compile_expression(source).evaluate({}) == expected


def test_to_json_converts_python_values() -> None:
    moment = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    value = {1: (moment, dt.timedelta(milliseconds=1500), b"\x00\x01")}
    assert to_json(value) == {"1": ["2024-05-06T07:08:09+00:00", 1.5, "AAE="]}


def test_template_expressions_lists_each_part() -> None:
    assert template_expressions("a {{ input.x }} b {{input.y + 1}}") == ["input.x", "input.y + 1"]
    assert template_expressions("no parts") == []


CONTEXT = {"input": {"n": 3, "name": "ada", "tags": ["a", "b"], "obj": {"k": 1}, "none": None}}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        pytest.param("{{ input.n }}", 3, id="whole-int-keeps-type"),
        pytest.param("  {{ input.tags }}  ", ["a", "b"], id="whole-list-keeps-type"),
        pytest.param("{{ input.obj }}", {"k": 1}, id="whole-object-keeps-type"),
        pytest.param("{{ input.n > 2 }}", True, id="whole-bool-keeps-type"),
        pytest.param("n={{ input.n }}", "n=3", id="embedded-int-becomes-text"),
        pytest.param("Hi {{ input.name }}!", "Hi ada!", id="embedded-string-unquoted"),
        pytest.param("obj={{ input.obj }}", 'obj={"k":1}', id="embedded-object-as-json"),
        pytest.param("tags={{ input.tags }}", 'tags=["a","b"]', id="embedded-list-as-json"),
        pytest.param("v={{ input.none }}", "v=null", id="embedded-null-as-json"),
        pytest.param("{{ input.n }}{{ input.n }}", "33", id="two-parts-become-text"),
        pytest.param("plain text", "plain text", id="no-parts"),
    ],
)
def test_render_template_string(template: str, expected: Any) -> None:
    assert render_template_string(template, CONTEXT) == expected


def test_render_template_string_reports_failing_part() -> None:
    with pytest.raises(ExpressionError, match="no such key 'missing'"):
        render_template_string("x={{ input.missing }}", CONTEXT)


HIDDEN_NESTING = (
    'input.exists(a, ")" == ")" && input.exists(b, ")" == ")" && '
    'input.exists(c, ")" == ")" && input.exists(d, a+b+c+d < 0))))'
)


def test_parentheses_inside_string_literals_do_not_hide_nesting() -> None:
    with pytest.raises(ExpressionError, match="nests comprehensions deeper than 2"):
        compile_expression(HIDDEN_NESTING)


@pytest.mark.parametrize(
    "literal",
    [
        pytest.param('")("', id="double"),
        pytest.param("')('", id="single"),
        pytest.param('"\\")("', id="double-escaped-quote"),
        pytest.param("'\\')('", id="single-escaped-quote"),
        pytest.param('"\\\\"', id="escaped-backslash"),
        pytest.param("''')'\n('''", id="triple-single"),
        pytest.param('""")"\n("""', id="triple-double"),
        pytest.param('"""\\""")("""', id="triple-escaped-quote"),
        pytest.param('r"\\"', id="raw-backslash-ends"),
        pytest.param("R')\\'", id="raw-upper"),
        pytest.param("r''')\\'''", id="raw-triple"),
        pytest.param('b")("', id="bytes"),
        pytest.param("B'\\x29'", id="bytes-upper"),
        pytest.param('br")\\"', id="raw-bytes"),
        pytest.param('bR""")"""', id="raw-bytes-triple"),
    ],
)
def test_string_literals_of_every_form_are_one_token(literal: str) -> None:
    source = f"{literal} == {literal}"
    assert tokenize(source) == [literal, "==", literal]
    assert compile_expression(source).evaluate({}) is True


def test_a_literal_ending_in_an_escaped_backslash_does_not_swallow_what_follows() -> None:
    source = '"\\\\" + ")" + [[1]].map(a, a.map(b, b)).size()'
    assert tokenize(source)[:4] == ['"\\\\"', "+", '")"', "+"]
    assert compile_expression(source).comprehensions == 2


@pytest.mark.parametrize(
    ("source", "tokens"),
    [
        pytest.param("1.5e3 + .5 + 0x1Fu + 3u", ["1.5e3", "+", ".5", "+", "0x1Fu", "+", "3u"]),
        pytest.param("1.exists(x, true)", ["1", ".", "exists", "(", "x", ",", "true", ")"]),
        pytest.param("a.b_2 >= 1 || !c", ["a", ".", "b_2", ">=", "1", "||", "!", "c"]),
        pytest.param("x // ) ( comment\n + 1", ["x", "+", "1"]),
        pytest.param("bytes(br)", ["bytes", "(", "br", ")"]),
    ],
)
def test_tokenize_numbers_identifiers_punctuation_and_comments(
    source: str, tokens: list[str]
) -> None:
    assert tokenize(source) == tokens


def test_comments_do_not_hide_nesting() -> None:
    source = "[[[1]]].map(a, // )\n a.map(b, b.map(c, c)))"
    with pytest.raises(ExpressionError, match="nests comprehensions deeper than 2"):
        compile_expression(source)


@pytest.mark.parametrize(
    ("source", "depth"),
    [
        pytest.param("has(input.x) && size(input) > 0", 0, id="has-and-calls-are-not-loops"),
        pytest.param("input.all(x, x > 0)", 1, id="all"),
        pytest.param("input.existsOne(x, x > 0)", 1, id="existsOne"),
        pytest.param("input.map(x, x > 0, x)", 1, id="map-with-filter"),
        pytest.param("input.map(x, [x].exists_one(y, y == x))", 2, id="nested"),
        pytest.param("input.filter(x, x > 0).map(x, x)", 1, id="chained"),
        pytest.param("(input).map(x, [(x)].all(y, (y) > 0))", 2, id="parenthesized"),
    ],
)
def test_comprehension_depth_is_counted_on_macro_calls(source: str, depth: int) -> None:
    assert comprehension_nesting(tokenize(source)) == depth
    assert compile_expression(source).comprehensions == depth


def test_compile_time_facts() -> None:
    expression = compile_expression('input.score > 0.5 && variables.name.matches("^a")')
    assert expression.names == frozenset({"input", "variables"})
    assert expression.tokens == 14
    assert expression.comprehensions == 0
    assert "matches" in expression.functions
    assert compile_expression("1").tokens == 1
    assert compile_expression("input.l.map(x, x)").names == frozenset({"input", "x"})


def test_syntax_errors_are_reported_before_nesting() -> None:
    with pytest.raises(ExpressionError, match="Syntax error"):
        compile_expression('[1].map(a, a.map(b, b.map(c, c))) + "')


@pytest.mark.parametrize(
    ("source", "data", "expected"),
    [
        ("input.status === 'error'", {"status": "error"}, True),
        ("input.status !== 'error'", {"status": "error"}, False),
        ('input.count > 0 && input.kind === "a"', {"count": 1, "kind": "a"}, True),
        # Inside a string literal `===` is text.
        ("input.text == 'a === b'", {"text": "a === b"}, True),
        ('input.text == "x !== y"', {"text": "x !== y"}, True),
    ],
)
def test_javascript_equality_reads_as_cel_equality_outside_strings(
    source: str, data: Any, expected: bool
) -> None:
    assert compile_expression(source).evaluate({"input": data}) is expected


def test_javascript_equality_leaves_string_literals_alone() -> None:
    assert javascript_equality("a === 'b === c' && d !== \"e !== f\"") == (
        "a == 'b === c' && d != \"e !== f\""
    )


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{delayMs}}", 300),
        ("{{user.name}}", "ada"),
        ("{{items.1}}", "b"),
        ("{{missing.path}}", None),
        ("waited {{delayMs}} ms", "waited 300 ms"),
        ("{{ input.delayMs * 2 }}", 600),
        ('{"value": "{{delayMs}}"}', '{"value": "300"}'),
    ],
)
def test_template_paths_read_the_node_input(template: str, expected: Any) -> None:
    node_input = {"delayMs": 300, "user": {"name": "ada"}, "items": ["a", "b"]}
    assert render_template_string(template, {"input": node_input}) == expected


def test_a_path_that_starts_with_a_context_name_is_an_expression() -> None:
    assert input_path("delayMs") == ["delayMs"]
    assert input_path("items.0") == ["items", "0"]
    assert input_path("input.delayMs") is None
    assert input_path("input.delayMs + 1") is None
