"""The transition tables of executions and nodes, and the attempt records of a node."""

from __future__ import annotations

import datetime as dt

import pytest

from orchestrator.domain.errors import IllegalTransition
from orchestrator.domain.execution import (
    EXECUTION_TRANSITIONS,
    NODE_TRANSITIONS,
    Attempt,
    ExecutionStatus,
    NodeExecution,
    NodeStatus,
    WorkflowExecution,
    check_execution_transition,
    check_node_transition,
)
from orchestrator.domain.workflow import NodeType

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(seconds=1)
T2 = T0 + dt.timedelta(seconds=2)
T3 = T0 + dt.timedelta(seconds=3)

ES = ExecutionStatus
NS = NodeStatus

ALLOWED_EXECUTION = [
    (ES.PENDING, ES.RUNNING),
    (ES.PENDING, ES.FAILED),
    (ES.PENDING, ES.CANCELLED),
    (ES.RUNNING, ES.COMPLETED),
    (ES.RUNNING, ES.FAILED),
    (ES.RUNNING, ES.CANCELLED),
]
ALLOWED_NODE = [
    (NS.PENDING, NS.RUNNING),
    (NS.PENDING, NS.SKIPPED),
    (NS.PENDING, NS.CANCELLED),
    (NS.RUNNING, NS.RUNNING),
    (NS.RUNNING, NS.COMPLETED),
    (NS.RUNNING, NS.FAILED),
    (NS.RUNNING, NS.CANCELLED),
    (NS.RUNNING, NS.WAITING_INPUT),
    (NS.WAITING_INPUT, NS.RUNNING),
    (NS.WAITING_INPUT, NS.COMPLETED),
    (NS.WAITING_INPUT, NS.FAILED),
    (NS.WAITING_INPUT, NS.CANCELLED),
]


def execution(status: ExecutionStatus) -> WorkflowExecution:
    return WorkflowExecution(
        id="x1",
        workflow_id="w1",
        workflow_version=1,
        status=status,
        input=None,
        user_id=None,
        created_at=T0,
        updated_at=T0,
        deadline_at=T0 + dt.timedelta(minutes=5),
        nodes={},
    )


def node(status: NodeStatus = NS.PENDING) -> NodeExecution:
    return NodeExecution("a", NodeType.AGENT, status=status)


def test_tables_list_exactly_the_allowed_transitions() -> None:
    assert {(a, b) for a, targets in EXECUTION_TRANSITIONS.items() for b in targets} == set(
        ALLOWED_EXECUTION
    )
    assert {(a, b) for a, targets in NODE_TRANSITIONS.items() for b in targets} == set(ALLOWED_NODE)


@pytest.mark.parametrize(("old", "new"), ALLOWED_EXECUTION, ids=lambda s: str(s))
def test_allowed_execution_transition(old: ExecutionStatus, new: ExecutionStatus) -> None:
    ex = execution(old)
    ex.move(new, T1)
    assert ex.status == new
    assert ex.updated_at == T1
    assert ex.completed_at == (T1 if new.terminal else None)
    assert ex.started_at == (T1 if new == ES.RUNNING else None)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (ES.PENDING, ES.COMPLETED),
        (ES.PENDING, ES.PENDING),
        (ES.RUNNING, ES.PENDING),
        (ES.RUNNING, ES.RUNNING),
    ],
    ids=lambda s: str(s),
)
def test_refused_execution_transition(old: ExecutionStatus, new: ExecutionStatus) -> None:
    ex = execution(old)
    with pytest.raises(IllegalTransition, match=f"execution cannot go from {old} to {new}"):
        ex.move(new, T1)
    assert ex.status == old
    assert ex.updated_at == T0


@pytest.mark.parametrize("terminal", [ES.COMPLETED, ES.FAILED, ES.CANCELLED])
@pytest.mark.parametrize("new", list(ES))
def test_terminal_execution_status_is_never_left(
    terminal: ExecutionStatus, new: ExecutionStatus
) -> None:
    ex = execution(terminal)
    assert ex.finished is True
    with pytest.raises(IllegalTransition):
        ex.move(new, T1)
    assert ex.status == terminal


def test_execution_keeps_its_first_start_time() -> None:
    ex = execution(ES.PENDING)
    ex.move(ES.RUNNING, T1)
    ex.move(ES.COMPLETED, T2)
    assert (ex.started_at, ex.completed_at, ex.finished) == (T1, T2, True)


def test_active_statuses_are_not_terminal() -> None:
    assert [s for s in ES if not s.terminal] == [ES.PENDING, ES.RUNNING]
    assert [s for s in NS if not s.terminal] == [NS.PENDING, NS.RUNNING, NS.WAITING_INPUT]


@pytest.mark.parametrize(("old", "new"), ALLOWED_NODE, ids=lambda s: str(s))
def test_allowed_node_transition(old: NodeStatus, new: NodeStatus) -> None:
    state = node(old)
    state.move(new, T1)
    assert state.status == new
    assert state.completed_at == (T1 if new.terminal else None)
    assert state.started_at == (T1 if new == NS.RUNNING else None)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (NS.PENDING, NS.COMPLETED),
        (NS.PENDING, NS.FAILED),
        (NS.PENDING, NS.PENDING),
        (NS.RUNNING, NS.PENDING),
        (NS.RUNNING, NS.SKIPPED),
    ],
    ids=lambda s: str(s),
)
def test_refused_node_transition(old: NodeStatus, new: NodeStatus) -> None:
    state = node(old)
    with pytest.raises(IllegalTransition, match=f"node a cannot go from {old} to {new}"):
        state.move(new, T1)
    assert state.status == old
    assert state.completed_at is None


@pytest.mark.parametrize("terminal", [NS.COMPLETED, NS.FAILED, NS.SKIPPED, NS.CANCELLED])
@pytest.mark.parametrize("new", list(NS))
def test_terminal_node_status_is_never_left(terminal: NodeStatus, new: NodeStatus) -> None:
    with pytest.raises(IllegalTransition):
        check_node_transition("a", terminal, new)
    state = node(terminal)
    with pytest.raises(IllegalTransition):
        state.start_attempt(1, T1)
    assert state.status == terminal
    assert state.attempts == []


def test_check_execution_transition_accepts_and_refuses() -> None:
    check_execution_transition(ES.PENDING, ES.RUNNING)
    with pytest.raises(IllegalTransition):
        check_execution_transition(ES.CANCELLED, ES.RUNNING)


def test_attempts_are_numbered_and_retry_count_follows() -> None:
    state = node()
    state.start_attempt(1, T0)
    state.fail_attempt("503 from tool-service", T1)
    state.start_attempt(2, T2)

    assert state.status == NS.RUNNING
    assert state.retry_count == 1
    assert state.started_at == T0
    assert state.attempts == [
        Attempt(1, T0, completed_at=T1, error="503 from tool-service"),
        Attempt(2, T2),
    ]
    assert state.error == "503 from tool-service"


def test_same_attempt_again_after_a_restart_keeps_one_record() -> None:
    state = node()
    state.start_attempt(1, T0)
    state.fail_attempt("timeout", T1)
    state.start_attempt(2, T2)
    state.start_attempt(2, T3)

    assert [a.number for a in state.attempts] == [1, 2]
    assert state.attempts[-1] == Attempt(2, T3)
    assert state.retry_count == 1
    assert state.started_at == T0


def test_fail_attempt_records_the_error_without_changing_status() -> None:
    state = node()
    state.start_attempt(1, T0)
    state.fail_attempt("boom", T1)
    assert state.status == NS.RUNNING
    assert state.attempts == [Attempt(1, T0, completed_at=T1, error="boom")]
    state.move(NS.FAILED, T2)
    assert (state.status, state.error, state.completed_at) == (NS.FAILED, "boom", T2)


def test_fail_attempt_without_an_attempt_sets_the_node_error() -> None:
    state = node()
    state.fail_attempt("input mapping failed", T1)
    assert state.error == "input mapping failed"
    assert state.attempts == []
