"""The stepper: every happening of an execution turned into the step to commit, without I/O."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from orchestrator.domain.engine import (
    AttemptStarted,
    Began,
    CompiledWorkflow,
    Happening,
    InputResolved,
    Limits,
    NodeFailed,
    NodeStart,
    NodeSucceeded,
    Step,
    Stopped,
    advance,
)
from orchestrator.domain.execution import (
    ExecutionErrored,
    ExecutionStatus,
    ExecutionUpdated,
    NodeStatus,
    NodeUpdated,
    WorkflowExecution,
)
from orchestrator.domain.values import ValueLimits
from tests.unit.engine_builders import COND, END, START, TRANSFORM, compiled, e, n, new_execution

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
LIMITS = Limits(ValueLimits(max_depth=8, max_bytes=1000), max_state_bytes=2500)


def pending(workflow: CompiledWorkflow, execution_input: Any = None) -> WorkflowExecution:
    execution = new_execution(workflow, execution_input)
    execution.status = ExecutionStatus.PENDING
    return execution


def step(wf: CompiledWorkflow, ex: WorkflowExecution, happening: Happening) -> Step:
    return advance(wf, ex, happening, T0, LIMITS)


def described(step: Step) -> list[str]:
    """`node:STATUS` and `execution:STATUS` for each event, in order."""
    out = []
    for event in step.events:
        if isinstance(event, NodeUpdated):
            out.append(f"{event.node.node_id}:{event.node.status}")
        elif isinstance(event, ExecutionUpdated):
            out.append(f"execution:{event.status}")
        elif isinstance(event, ExecutionErrored):
            out.append(f"error:{event.node_id}")
    return out


def chain() -> CompiledWorkflow:
    return compiled([n("s", START), n("a"), n("end", END)], [e("s", "a"), e("a", "end")])


def test_a_chain_runs_pass_through_nodes_in_the_step_and_starts_the_agent() -> None:
    wf = chain()
    ex = pending(wf, {"q": 1})

    first = step(wf, ex, Began())

    assert described(first) == [
        "execution:RUNNING",
        "s:RUNNING",
        "s:COMPLETED",
        "a:RUNNING",
    ]
    assert first.starts == [NodeStart("a", 1)]
    assert ex.nodes["a"].input == {"q": 1}
    assert [e.seq for e in first.events] == [1, 2, 3, 4]
    assert first.previous_seq == 0
    assert ex.last_seq == 4

    last = step(wf, ex, NodeSucceeded("a", {"q": 1}, {"answer": 2}, ["a->end"]))

    assert described(last) == ["a:COMPLETED", "end:RUNNING", "end:COMPLETED", "execution:COMPLETED"]
    assert ex.status == ExecutionStatus.COMPLETED
    assert ex.output == {"answer": 2}
    assert set(last.nodes) == {"a", "end"}
    assert last.starts == []


def test_events_carry_the_state_at_their_moment() -> None:
    wf = chain()
    ex = pending(wf, "x")
    first = step(wf, ex, Began())
    running, completed = first.events[1], first.events[2]
    assert isinstance(running, NodeUpdated)
    assert isinstance(completed, NodeUpdated)
    assert running.node.status == NodeStatus.RUNNING
    assert running.node.output is None
    assert completed.node.status == NodeStatus.COMPLETED
    assert completed.node.output == "x"


def branches() -> CompiledWorkflow:
    """s -> c; c true -> yes -> end; c false -> no -> after -> end (a join)."""
    return compiled(
        [
            n("s", START),
            n("c", COND, condition="input > 1"),
            n("yes"),
            n("no"),
            n("after"),
            n("end", END),
        ],
        [
            e("s", "c"),
            e("c", "yes", handle="true"),
            e("c", "no", handle="false"),
            e("no", "after"),
            e("yes", "end"),
            e("after", "end"),
        ],
    )


def test_routes_decide_the_branch_and_skips_propagate_to_the_join() -> None:
    wf = branches()
    ex = pending(wf, 5)
    assert step(wf, ex, Began()).starts == [NodeStart("c", 1)]

    routed = step(wf, ex, NodeSucceeded("c", 5, 5, ["c->yes"]))

    assert described(routed) == ["c:COMPLETED", "yes:RUNNING", "no:SKIPPED", "after:SKIPPED"]
    assert routed.starts == [NodeStart("yes", 1)]
    done = step(wf, ex, NodeSucceeded("yes", 5, "Y", ["yes->end"]))
    assert ex.nodes["end"].input == {"yes": "Y"}
    assert ex.status == ExecutionStatus.COMPLETED
    assert described(done)[-1] == "execution:COMPLETED"


def test_a_join_waits_for_every_branch_that_can_still_arrive() -> None:
    wf = compiled(
        [n("s", START), n("a"), n("b"), n("end", END)],
        [e("s", "a"), e("s", "b"), e("a", "end"), e("b", "end")],
    )
    ex = pending(wf)
    assert step(wf, ex, Began()).starts == [NodeStart("a", 1), NodeStart("b", 1)]
    assert step(wf, ex, NodeSucceeded("a", None, 1, ["a->end"])).starts == []
    assert ex.nodes["end"].status == NodeStatus.PENDING
    step(wf, ex, NodeSucceeded("b", None, 2, ["b->end"]))
    assert ex.output == {"a": 1, "b": 2}


def test_a_node_whose_edges_are_not_taken_skips_what_only_it_reaches() -> None:
    wf = compiled(
        [n("s", START), n("a"), n("b"), n("end", END)],
        [e("s", "a"), e("a", "b", condition="output > 1"), e("a", "end"), e("b", "end")],
    )
    ex = pending(wf)
    step(wf, ex, Began())
    routed = step(wf, ex, NodeSucceeded("a", None, 0, ["a->end"]))
    assert described(routed) == [
        "a:COMPLETED",
        "b:SKIPPED",
        "end:RUNNING",
        "end:COMPLETED",
        "execution:COMPLETED",
    ]
    assert ex.output == {"a": 0}


def test_a_failed_node_fails_the_execution_and_cancels_what_runs_beside_it() -> None:
    wf = compiled(
        [n("s", START), n("a"), n("b"), n("end", END)],
        [e("s", "a"), e("s", "b"), e("a", "end"), e("b", "end")],
    )
    ex = pending(wf)
    step(wf, ex, Began())

    failed = step(wf, ex, NodeFailed("a", {"in": 1}, "agent said no"))

    assert described(failed) == [
        "a:FAILED",
        "b:CANCELLED",
        "error:a",
        "execution:FAILED",
    ]
    assert ex.error == "Node a failed: agent said no"
    assert ex.nodes["a"].error == "agent said no"
    assert ex.nodes["a"].input == {"in": 1}
    assert ex.nodes["b"].error == "Cancelled: the execution failed"
    assert ex.nodes["end"].status == NodeStatus.PENDING


def test_stopped_fails_the_execution_without_blaming_a_node() -> None:
    wf = chain()
    ex = pending(wf)
    step(wf, ex, Began())
    stopped = step(wf, ex, Stopped("Execution timed out"))
    assert described(stopped) == ["a:CANCELLED", "error:None", "execution:FAILED"]
    assert ex.error == "Execution timed out"


def test_nothing_happens_to_a_finished_execution() -> None:
    wf = chain()
    ex = pending(wf)
    step(wf, ex, Began())
    step(wf, ex, Stopped("stop"))
    late = step(wf, ex, NodeSucceeded("a", None, 1, ["a->end"]))
    assert late.events == []
    assert late.nodes == {}
    assert not late.execution_changed
    assert ex.status == ExecutionStatus.FAILED


def test_a_resumed_execution_runs_its_in_flight_node_again_as_the_same_attempt() -> None:
    wf = chain()
    ex = pending(wf)
    step(wf, ex, Began())
    step(wf, ex, AttemptStarted("a", 2, "503"))

    resumed = step(wf, ex, Began())

    assert resumed.starts == [NodeStart("a", 2)]
    assert described(resumed) == ["a:RUNNING"]
    assert [a.number for a in ex.nodes["a"].attempts] == [1, 2]


def test_attempts_are_recorded_with_their_errors() -> None:
    wf = chain()
    ex = pending(wf)
    step(wf, ex, Began())
    retried = step(wf, ex, AttemptStarted("a", 2, "HTTP 503"))
    assert described(retried) == ["a:RUNNING"]
    node = ex.nodes["a"]
    assert node.retry_count == 1
    assert [(a.number, a.error) for a in node.attempts] == [(1, "HTTP 503"), (2, None)]
    step(wf, ex, NodeSucceeded("a", None, "ok", ["a->end"]))
    assert node.attempts[-1].completed_at == T0
    assert node.error is None


def test_a_mapped_node_starts_without_input_until_it_is_resolved() -> None:
    wf = compiled(
        [n("s", START), n("a", inputMapping={"q": "$variables.q"}), n("end", END)],
        [e("s", "a"), e("a", "end")],
    )
    ex = pending(wf, {"q": 1})
    step(wf, ex, Began())
    assert ex.nodes["a"].status == NodeStatus.RUNNING
    assert ex.nodes["a"].input is None
    resolved = step(wf, ex, InputResolved("a", {"q": 1}))
    assert described(resolved) == ["a:RUNNING"]
    assert ex.nodes["a"].input == {"q": 1}


@pytest.mark.parametrize(
    ("output", "limit"),
    [
        ("x" * 1001, "MAX_NODE_OUTPUT_BYTES"),
        ([[[[[[[[[[1]]]]]]]]]], "MAX_VALUE_DEPTH"),
    ],
)
def test_an_output_over_a_bound_fails_the_node_naming_the_limit(output: Any, limit: str) -> None:
    wf = chain()
    ex = pending(wf)
    step(wf, ex, Began())
    refused = step(wf, ex, NodeSucceeded("a", None, output, ["a->end"]))
    assert described(refused)[:1] == ["a:FAILED"]
    assert limit in (ex.nodes["a"].error or "")
    assert ex.nodes["a"].output is None
    assert ex.status == ExecutionStatus.FAILED


def test_the_stored_state_of_an_execution_is_capped() -> None:
    wf = compiled(
        [n("s", START), n("a"), n("b"), n("c"), n("end", END)],
        [e("s", "a"), e("a", "b"), e("b", "c"), e("c", "end")],
    )
    ex = pending(wf)
    step(wf, ex, Began())
    step(wf, ex, NodeSucceeded("a", None, "x" * 900, ["a->b"]))
    step(wf, ex, NodeSucceeded("b", None, "x" * 900, ["b->c"]))
    step(wf, ex, NodeSucceeded("c", None, "x" * 900, ["c->end"]))
    assert ex.status == ExecutionStatus.FAILED
    assert "MAX_EXECUTION_STATE_BYTES" in (ex.nodes["c"].error or "")


def test_pass_through_transform_and_conditioned_start_edges() -> None:
    wf = compiled(
        [n("s", START), n("t", TRANSFORM), n("end", END)],
        [e("s", "t", condition="output.go"), e("t", "end")],
    )
    ex = pending(wf, {"go": True})
    first = step(wf, ex, Began())
    # START has a conditioned edge: its routes need an expression, so it runs as work.
    assert first.starts == [NodeStart("s", 1)]
    second = step(wf, ex, NodeSucceeded("s", {"go": True}, {"go": True}, ["s->t"]))
    assert second.starts == []
    assert ex.status == ExecutionStatus.COMPLETED
    assert ex.output == {"go": True}


def test_cancel_stops_every_unfinished_node_and_reports_only_those_that_had_started() -> None:
    wf = chain()
    ex = pending(wf)
    step(wf, ex, Began())
    events = ex.cancel(T0)
    assert [type(ev).__name__ for ev in events] == ["NodeUpdated", "ExecutionUpdated"]
    assert ex.status == ExecutionStatus.CANCELLED
    assert {nid: s.status for nid, s in ex.nodes.items()} == {
        "s": NodeStatus.COMPLETED,
        "a": NodeStatus.CANCELLED,
        "end": NodeStatus.CANCELLED,
    }


def test_routes_missing_from_nodes_stored_before_they_were_recorded_are_filled_on_begin() -> None:
    wf = branches()
    ex = pending(wf, 5)
    step(wf, ex, Began())
    step(wf, ex, NodeSucceeded("c", 5, 5, ["c->yes"]))
    ex.nodes["c"].routes = None  # as a row written before routes were stored

    resumed = step(wf, ex, Began({"c": ["c->yes"]}))

    assert "c" in resumed.nodes
    assert ex.nodes["c"].routes == ["c->yes"]
    assert resumed.starts == [NodeStart("yes", 1)]
