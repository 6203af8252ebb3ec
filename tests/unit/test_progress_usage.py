"""Agents' progress in the stepper: relayed as events, tokens counted once, budgets enforced."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from orchestrator.application.events import render
from orchestrator.application.progress import MAX_THOUGHT_CHARS, thinking_report, token_report
from orchestrator.domain import usage as tokens
from orchestrator.domain.engine import (
    LATE_GRACE,
    AttemptStarted,
    Began,
    CompiledWorkflow,
    Happening,
    Limits,
    NodeFailed,
    NodeStart,
    NodeSucceeded,
    Progressed,
    ProgressReport,
    Step,
    advance,
)
from orchestrator.domain.execution import (
    ExecutionStatus,
    NodeProgressed,
    NodeStatus,
    WorkflowExecution,
)
from tests.unit.engine_builders import END, START, compiled, e, n, new_execution

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
PRICES = {"big": {"input": 10.0, "output": 30.0}}
LIMITS = Limits(prices=PRICES)


def two_agents() -> CompiledWorkflow:
    return compiled(
        [n("start", START), n("a"), n("b"), n("end", END)],
        [e("start", "a"), e("a", "b"), e("b", "end")],
    )


def running(budget: dict[str, Any] | None = None) -> tuple[CompiledWorkflow, WorkflowExecution]:
    """An execution whose node `a` runs (attempt 1)."""
    wf = two_agents()
    ex = new_execution(wf)
    ex.status = ExecutionStatus.PENDING
    ex.budget = budget
    step = advance(wf, ex, Began(), T0, LIMITS)
    assert [s.key for s in step.starts] == ["a"]
    return wf, ex


def step(wf: CompiledWorkflow, ex: WorkflowExecution, happening: Happening) -> Step:
    return advance(wf, ex, happening, T0, LIMITS)


def counts(i: int, o: int, model: str = "m1") -> ProgressReport:
    """A token report of node `a`, as the internal route makes it."""
    return token_report(
        "a", {"inputTokens": i, "outputTokens": o, "totalTokens": None}, model, None, None, None
    )


def _data(i: int, o: int, model: str) -> dict[str, Any]:
    return {"inputTokens": i, "outputTokens": o, "totalTokens": i + o, "model": model}


def total(ex: WorkflowExecution) -> int:
    return tokens.totals(tokens.parse(ex.usage))["totalTokens"]


def test_a_token_report_becomes_a_numbered_event_and_counts_in() -> None:
    wf, ex = running()
    before = ex.last_seq
    result = step(wf, ex, Progressed((counts(10, 5),)))
    assert [type(ev) for ev in result.events] == [NodeProgressed]
    assert result.events[0].seq == before + 1
    assert result.nodes.keys() == {"a"}
    assert ex.usage == {
        "inputTokens": 10,
        "outputTokens": 5,
        "totalTokens": 15,
        "byModel": {"m1": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15}},
    }
    wire = render(ex, result.events, wf.definition.display_names())[0]
    assert wire.name == "node:token-update"
    assert wire.payload["nodeId"] == "a"
    assert wire.payload["totalTokens"] == 15
    assert wire.payload["model"] == "m1"
    assert wire.payload["attempt"] == 1
    assert wire.payload["seq"] == before + 1


def test_cumulative_reports_replace_each_other_and_the_reply_is_the_final_word() -> None:
    wf, ex = running()
    step(wf, ex, Progressed((counts(10, 5), counts(10, 9))))
    assert total(ex) == 19
    step(wf, ex, NodeSucceeded("a", None, "out", ["a->b"], {tokens.UNKNOWN_MODEL: _c(10, 12)}))
    # The reply named no model: it takes the one the reports named.
    assert tokens.parse(ex.usage) == {"m1": _c(10, 12)}
    assert ex.nodes["a"].attempts[-1].usage == {"m1": _c(10, 12)}


def _c(i: int, o: int) -> dict[str, int]:
    return {"inputTokens": i, "outputTokens": o, "totalTokens": i + o}


def test_a_failed_attempt_keeps_its_tokens_and_the_retry_adds_its_own() -> None:
    wf, ex = running()
    step(wf, ex, Progressed((counts(10, 20),)))
    step(wf, ex, AttemptStarted("a", 2, "503"))
    assert total(ex) == 30
    step(wf, ex, Progressed((counts(10, 4),)))
    assert total(ex) == 44
    step(wf, ex, NodeSucceeded("a", None, "out", ["a->b"], {"m1": _c(10, 5)}))
    assert total(ex) == 45
    assert [a.usage for a in ex.nodes["a"].attempts] == [{"m1": _c(10, 20)}, {"m1": _c(10, 5)}]
    assert ex.nodes["a"].usage is not None
    assert ex.nodes["a"].usage["totalTokens"] == 45


@pytest.mark.parametrize(
    "report",
    [
        ProgressReport("tokens", "b", _data(1, 1, "m1")),  # b does not run
        ProgressReport("tokens", "nope", _data(1, 1, "m1")),  # no such node
        ProgressReport("tokens", "a", _data(1, 1, "m1"), attempt=2),  # not its attempt
    ],
)
def test_a_report_about_a_node_that_does_not_run_is_dropped_and_counted(
    report: ProgressReport,
) -> None:
    wf, ex = running()
    result = step(wf, ex, Progressed((report,)))
    assert result.dropped == 1
    assert result.events == []
    assert not result.execution_changed
    assert ex.usage is None


def test_a_report_just_after_the_node_completed_is_relayed_but_not_counted() -> None:
    wf, ex = running()
    step(wf, ex, NodeSucceeded("a", None, "out", ["a->b"], {"m1": _c(5, 5)}))
    result = step(wf, ex, Progressed((counts(1, 1),)))
    assert [type(ev) for ev in result.events] == [NodeProgressed]
    assert total(ex) == 10  # the reply was the final word


def test_a_report_long_after_the_node_completed_is_dropped() -> None:
    wf, ex = running()
    step(wf, ex, NodeSucceeded("a", None, "out", ["a->b"]))
    later = T0 + LATE_GRACE + dt.timedelta(milliseconds=1)
    result = advance(wf, ex, Progressed((counts(1, 1),)), later, LIMITS)
    assert result.dropped == 1
    assert result.events == []


def test_a_thinking_step_is_relayed_bounded() -> None:
    wf, ex = running()
    report = thinking_report(
        "a", 3, "x" * (MAX_THOUGHT_CHARS + 10), ["look", "act"], {"huge": "y" * 5000}, None, None
    )
    result = step(wf, ex, Progressed((report,)))
    wire = render(ex, result.events, {})[0]
    assert wire.name == "node:thinking"
    assert wire.payload["step"] == 3
    assert len(wire.payload["thought"]) == MAX_THOUGHT_CHARS
    assert wire.payload["plan"] == ["look", "act"]
    assert "toolCalls" not in wire.payload
    assert wire.payload["truncated"] is True
    assert ex.usage is None  # thinking counts no tokens


def test_past_max_total_tokens_the_running_node_fails_naming_the_budget() -> None:
    wf, ex = running({"maxTotalTokens": 100, "onExceed": "fail"})
    step(wf, ex, Progressed((counts(50, 50),)))
    assert not ex.finished  # at the budget, not past it
    result = step(wf, ex, Progressed((counts(50, 51),)))
    assert ex.status == ExecutionStatus.FAILED
    assert ex.nodes["a"].status == NodeStatus.FAILED
    assert ex.error is not None
    assert "Budget exceeded: 101 tokens used, maxTotalTokens is 100" in ex.error
    assert result.starts == []


def test_a_reply_past_the_budget_completes_its_node_but_nothing_after_starts() -> None:
    wf, ex = running({"maxCostUsd": 0.001, "onExceed": "fail"})
    result = step(wf, ex, NodeSucceeded("a", None, "out", ["a->b"], {"big": _c(100, 10)}))
    # 100 * 10 / 1e6 + 10 * 30 / 1e6 = 0.0013 USD
    assert ex.nodes["a"].status == NodeStatus.COMPLETED
    assert ex.nodes["b"].status == NodeStatus.PENDING
    assert result.starts == []
    assert ex.status == ExecutionStatus.FAILED
    assert ex.error is not None
    assert "maxCostUsd is 0.001" in ex.error
    assert "after node a" in ex.error


def test_a_paused_execution_starts_nothing_until_its_budget_is_raised() -> None:
    wf, ex = running({"maxTotalTokens": 10, "onExceed": "pause"})
    result = step(wf, ex, NodeSucceeded("a", None, "out", ["a->b"], {"m1": _c(10, 5)}))
    assert ex.status == ExecutionStatus.RUNNING
    assert ex.paused is not None
    assert result.starts == []
    assert ex.waiting_since == T0
    # Claimed again, still past its budget: it waits on.
    assert step(wf, ex, Began()).starts == []
    ex.set_budget({"maxTotalTokens": 1000, "onExceed": "pause"}, T0)
    result = step(wf, ex, Began())
    assert ex.paused is None
    assert [s.key for s in result.starts] == ["b"]


def test_pausing_abandons_the_running_node_which_runs_again_after_the_raise() -> None:
    wf, ex = running({"maxTotalTokens": 10, "onExceed": "pause"})
    step(wf, ex, Progressed((counts(10, 5),)))
    assert ex.paused is not None
    assert ex.nodes["a"].status == NodeStatus.RUNNING
    ex.set_budget({"maxTotalTokens": 100, "onExceed": "pause"}, T0)
    result = step(wf, ex, Began())
    assert result.starts == [NodeStart("a", 1)]


def test_a_failed_sub_workflow_still_counts_its_tokens() -> None:
    wf, ex = running()
    step(wf, ex, NodeFailed("a", None, "child failed", {"m2": _c(3, 4)}))
    assert tokens.parse(ex.usage) == {"m2": _c(3, 4)}
