"""CompiledWorkflow stepping: linear chains, conditions, fan-out, joins, skips."""

from __future__ import annotations

import re

import pytest

from orchestrator.domain.engine import CompiledWorkflow, Run, Skip
from orchestrator.domain.errors import ExpressionError
from tests.unit.engine_builders import (
    COND,
    END,
    START,
    TRANSFORM,
    apply_skips,
    compiled,
    e,
    finish,
    n,
    new_execution,
    start,
)


def test_linear_chain_steps_one_node_at_a_time() -> None:
    wf = compiled([n("s", START), n("a"), n("end", END)], [e("s", "a"), e("a", "end")])
    ex = new_execution(wf, {"q": "hello"})

    assert wf.decide(ex) == [Run("s")]
    assert wf.node_input(Run("s"), ex) == {"q": "hello"}
    finish(ex, "s", {"q": "hello"})
    assert wf.decide(ex) == [Run("a", ("s",))]
    start(ex, "a")
    assert wf.decide(ex) == []
    finish(ex, "a", {"answer": 42})
    assert wf.decide(ex) == [Run("end", ("a",))]
    assert wf.node_input(Run("end", ("a",)), ex) == {"answer": 42}
    assert wf.is_complete(ex) is False
    finish(ex, "end", {"answer": 42})
    assert wf.decide(ex) == []
    assert wf.is_complete(ex) is True
    assert wf.output(ex) == {"answer": 42}


def branching() -> CompiledWorkflow:
    """s -> c; c true -> yes -> end; c false -> no -> after_no -> end."""
    return compiled(
        [
            n("s", START),
            n("c", COND, condition="input.score > 0.5"),
            n("yes"),
            n("no"),
            n("after_no"),
            n("end", END),
        ],
        [
            e("s", "c"),
            e("c", "yes", handle="true"),
            e("c", "no", handle="false"),
            e("no", "after_no"),
            e("yes", "end"),
            e("after_no", "end"),
        ],
    )


def test_conditional_true_runs_true_branch_and_skips_all_of_false_branch() -> None:
    wf = branching()
    ex = new_execution(wf, {"score": 0.9})
    finish(ex, "s", {"score": 0.9})
    assert wf.decide(ex) == [Run("c", ("s",))]
    assert wf.condition("c", {"score": 0.9}) is True
    finish(ex, "c", {"score": 0.9})

    decisions = wf.decide(ex)
    assert set(decisions) == {Run("yes", ("c",)), Skip("no"), Skip("after_no")}
    apply_skips(ex, decisions)
    finish(ex, "yes", "done")
    assert wf.decide(ex) == [Run("end", ("yes",))]
    assert wf.node_input(Run("end", ("yes",)), ex) == {"yes": "done"}  # a join keeps its shape


def test_conditional_false_runs_false_branch_and_skips_true_branch() -> None:
    wf = branching()
    ex = new_execution(wf, {"score": 0})
    finish(ex, "s", {"score": 0})
    finish(ex, "c", {"score": 0})

    decisions = wf.decide(ex)
    assert set(decisions) == {Skip("yes"), Run("no", ("c",))}
    apply_skips(ex, decisions)
    finish(ex, "no", 1)
    assert wf.decide(ex) == [Run("after_no", ("no",))]
    finish(ex, "after_no", 2)
    assert wf.decide(ex) == [Run("end", ("after_no",))]


def test_edge_condition_is_evaluated_on_its_source_output() -> None:
    wf = compiled(
        [n("s", START), n("a"), n("hi"), n("lo"), n("end", END)],
        [
            e("s", "a"),
            e("a", "hi", condition="output.score > 0.5"),
            e("a", "lo", condition="output.score <= 0.5"),
            e("hi", "end"),
            e("lo", "end"),
        ],
    )
    ex = new_execution(wf)
    finish(ex, "s", None)
    finish(ex, "a", {"score": 1})
    assert set(wf.decide(ex)) == {Run("hi", ("a",)), Skip("lo")}

    ex = new_execution(wf)
    finish(ex, "s", None)
    finish(ex, "a", {"score": 0.25})
    assert set(wf.decide(ex)) == {Skip("hi"), Run("lo", ("a",))}


def test_fan_out_decides_both_targets_and_join_waits_for_every_branch() -> None:
    wf = compiled(
        [n("s", START), n("a"), n("b"), n("j", TRANSFORM, expression="input"), n("end", END)],
        [e("s", "a"), e("s", "b"), e("a", "j"), e("b", "j"), e("j", "end")],
    )
    ex = new_execution(wf)
    finish(ex, "s", {"x": 1})
    assert wf.decide(ex) == [Run("a", ("s",)), Run("b", ("s",))]
    start(ex, "a")
    start(ex, "b")
    finish(ex, "a", "A")
    assert wf.decide(ex) == []
    finish(ex, "b", "B")
    assert wf.decide(ex) == [Run("j", ("a", "b"))]
    assert wf.node_input(Run("j", ("a", "b")), ex) == {"a": "A", "b": "B"}


def join_after_condition() -> CompiledWorkflow:
    """s -> c; c true -> a; c false -> b; s -> p; a, b, p -> j -> end."""
    return compiled(
        [
            n("s", START),
            n("c", COND, condition="input.go"),
            n("a"),
            n("b"),
            n("p"),
            n("j", TRANSFORM, expression="input"),
            n("end", END),
        ],
        [
            e("s", "c"),
            e("c", "a", handle="true"),
            e("c", "b", handle="false"),
            e("s", "p"),
            e("a", "j"),
            e("b", "j"),
            e("p", "j"),
            e("j", "end"),
        ],
    )


def test_join_runs_with_the_taken_branches_only_when_one_was_skipped() -> None:
    wf = join_after_condition()
    ex = new_execution(wf)
    finish(ex, "s", {"go": True})
    finish(ex, "c", {"go": True})
    decisions = wf.decide(ex)
    assert set(decisions) == {Run("a", ("c",)), Skip("b"), Run("p", ("s",))}
    apply_skips(ex, decisions)
    finish(ex, "a", "A")
    assert wf.decide(ex) == [Run("p", ("s",))]
    finish(ex, "p", "P")
    assert wf.decide(ex) == [Run("j", ("a", "p"))]
    assert wf.node_input(Run("j", ("a", "p")), ex) == {"a": "A", "p": "P"}


def test_join_reached_by_a_single_taken_branch_shows_only_that_branch() -> None:
    wf = compiled(
        [n("s", START), n("c", COND, condition="input"), n("a"), n("b"), n("end", END)],
        [
            e("s", "c"),
            e("c", "a", handle="true"),
            e("c", "b", handle="false"),
            e("a", "end"),
            e("b", "end"),
        ],
    )
    ex = new_execution(wf)
    finish(ex, "s", False)
    finish(ex, "c", False)
    apply_skips(ex, wf.decide(ex))
    finish(ex, "b", {"from": "b"})
    assert wf.decide(ex) == [Run("end", ("b",))]
    assert wf.node_input(Run("end", ("b",)), ex) == {"b": {"from": "b"}}


def test_join_is_skipped_when_every_incoming_branch_is_skipped() -> None:
    wf = compiled(
        [
            n("s", START),
            n("c", COND, condition="input.go"),
            n("a"),
            n("b"),
            n("j", TRANSFORM, expression="input"),
            n("other"),
            n("end", END),
        ],
        [
            e("s", "c"),
            e("c", "a", handle="true"),
            e("c", "b", handle="true"),
            e("c", "other", handle="false"),
            e("a", "j"),
            e("b", "j"),
            e("j", "end"),
            e("other", "end"),
        ],
    )
    ex = new_execution(wf)
    finish(ex, "s", {"go": False})
    finish(ex, "c", {"go": False})
    decisions = wf.decide(ex)
    assert set(decisions) == {Skip("a"), Skip("b"), Skip("j"), Run("other", ("c",))}
    apply_skips(ex, decisions)
    finish(ex, "other", "O")
    assert wf.decide(ex) == [Run("end", ("other",))]


def test_conditional_returning_a_non_boolean_is_an_expression_error() -> None:
    wf = compiled(
        [n("s", START), n("c", COND, condition="input.score"), n("a"), n("end", END)],
        [e("s", "c"), e("c", "a", handle="true"), e("c", "end", handle="false"), e("a", "end")],
    )
    ex = new_execution(wf)
    finish(ex, "s", {"score": 0.9})
    finish(ex, "c", {"score": 0.9})
    with pytest.raises(
        ExpressionError, match=re.escape("node 'c' condition must be true or false, got 0.9")
    ):
        wf.decide(ex)


def test_edge_condition_returning_a_non_boolean_is_an_expression_error() -> None:
    wf = compiled(
        [n("s", START), n("a"), n("end", END)], [e("s", "a"), e("a", "end", condition="output")]
    )
    ex = new_execution(wf)
    finish(ex, "s", None)
    finish(ex, "a", "yes")
    with pytest.raises(ExpressionError, match="edge 'a->end' condition must be true or false"):
        wf.decide(ex)
