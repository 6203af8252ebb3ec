"""The driver in process, with fakes: a store that records committed steps, fake callees."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest

from orchestrator.application.nodes import NodeWork
from orchestrator.application.ports import CallContext, ExecutionEvent, InvocationError
from orchestrator.application.progress import thinking_report, token_report
from orchestrator.domain.engine import CompiledWorkflow, Limits, Step
from orchestrator.domain.evaluation import Analysis, Job, run
from orchestrator.domain.execution import ExecutionStatus, NodeStatus, WorkflowExecution
from orchestrator.domain.values import ValueLimits
from orchestrator.domain.workflow import Definition
from orchestrator.infrastructure.clients.retry import TenacityRetrier
from orchestrator.infrastructure.clock import SystemClock
from orchestrator.infrastructure.runner.driver import Driver, DriverConfig
from orchestrator.infrastructure.runner.store import Claim, LeaseLost, Outcome
from tests.unit.engine_builders import (
    COND,
    END,
    START,
    TOOL,
    TRANSFORM,
    compiled,
    e,
    n,
    new_execution,
)
from tests.unit.fakes import NoChildren


class TransientError(ConnectionError):
    """What an outage looks like to the driver."""


class FakeStore:
    """Records each committed step's events; can be told to fail the next commits."""

    def __init__(self, execution: WorkflowExecution) -> None:
        self.stored = copy.deepcopy(execution)
        self.events: list[ExecutionEvent] = []
        self.failures: list[BaseException] = []
        self.forced: list[str] = []
        self.definition: Definition | None = None

    async def commit(
        self, claim: Claim, execution: WorkflowExecution, step: Step, events: list[ExecutionEvent]
    ) -> None:
        for _ in range(5):  # a commit is I/O: other tasks run meanwhile
            await asyncio.sleep(0)
        if self.failures:
            raise self.failures.pop(0)
        if self.stored.finished or self.stored.last_seq != step.previous_seq:
            raise LeaseLost(execution.id)
        self.stored = copy.deepcopy(execution)
        self.events += events

    async def load(self, execution_id: str) -> tuple[WorkflowExecution, Definition] | None:
        assert self.definition is not None
        return copy.deepcopy(self.stored), self.definition

    async def force_fail(self, claim: Claim, execution_id: str, message: str) -> None:
        self.forced.append(message)

    def statuses(self, node_id: str) -> list[str]:
        return [
            ev.payload["status"]
            for ev in self.events
            if ev.name == "node:update" and ev.payload["nodeId"] == node_id
        ]


class FakeAgents:
    """Answers from a script per agent id: a value, an exception, or an awaitable to wait on."""

    def __init__(self, **script: list[Any]) -> None:
        self.script = script
        self.calls: list[tuple[str, Any, CallContext]] = []
        self.running = asyncio.Event()

    async def execute_agent(self, agent_id: str, node_input: Any, ctx: CallContext) -> Any:
        self.calls.append((agent_id, node_input, ctx))
        answer = (
            self.script[agent_id].pop(0)
            if len(self.script[agent_id]) > 1
            else self.script[agent_id][0]
        )
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, asyncio.Event):
            self.running.set()
            await answer.wait()
            return "late"
        return answer

    async def execute_tool(self, tool_id: str, parameters: dict[str, Any], ctx: CallContext) -> Any:
        self.calls.append((tool_id, parameters, ctx))
        return {"tool": tool_id, **parameters}


class InlineEvaluator:
    """Evaluates in process: the bounds are the pool's business, tested elsewhere."""

    async def evaluate(self, job: Job, analysis: Analysis) -> Any:
        return run(job)


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


LIMITS = Limits(ValueLimits(max_depth=16, max_bytes=10_000), max_state_bytes=100_000)


def driver_for(
    wf: CompiledWorkflow,
    agents: FakeAgents,
    execution_input: Any = None,
    recoveries: int = 0,
    timeout_s: float = 30.0,
) -> tuple[Driver, FakeStore, WorkflowExecution]:
    execution = new_execution(wf, execution_input)
    execution.status = ExecutionStatus.PENDING
    execution.deadline_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=timeout_s)
    store = FakeStore(execution)
    store.definition = wf.definition
    work = NodeWork(
        agents, agents, TenacityRetrier(sleep=no_sleep), InlineEvaluator(), 2, NoChildren()
    )
    config = DriverConfig(
        max_recoveries=3,
        execution_timeout_ms=int(timeout_s * 1000),
        limits=LIMITS,
        outage_patience_s=5.0,
    )
    driver = Driver(
        store,
        Claim(execution.id, 1, recoveries),
        wf,
        execution,
        work,
        Published(),
        SystemClock(),
        config,
    )
    return driver, store, execution


class Published:
    def __init__(self) -> None:
        self.events: list[ExecutionEvent] = []

    async def publish(self, events: list[ExecutionEvent]) -> None:
        self.events += events


def chain(**config: Any) -> CompiledWorkflow:
    return compiled(
        [n("s", START), n("a", agentId="writer", **config), n("end", END)],
        [e("s", "a"), e("a", "end")],
    )


async def test_a_chain_completes_and_every_event_is_committed_in_seq_order() -> None:
    agents = FakeAgents(writer=['{"answer": 42}'])
    driver, store, execution = driver_for(chain(), agents, {"q": "hi"})

    assert await driver.run() == Outcome.FINISHED

    assert store.stored.status == ExecutionStatus.COMPLETED
    assert store.stored.output == '{"answer": 42}'
    assert [ev.seq for ev in store.events] == list(range(1, len(store.events) + 1))
    assert store.statuses("a") == ["RUNNING", "COMPLETED"]
    assert agents.calls[0][2].idempotency_key == f"{execution.id}:a"


async def test_retries_with_backoff_record_every_attempt() -> None:
    busy = InvocationError("HTTP 503", retryable=True, status_code=503)
    agents = FakeAgents(writer=[busy, busy, "ok"])
    driver, store, _ = driver_for(chain(retry={"maxAttempts": 3}), agents)

    assert await driver.run() == Outcome.FINISHED

    node = store.stored.nodes["a"]
    assert node.status == NodeStatus.COMPLETED
    assert node.retry_count == 2
    assert [(a.number, a.error) for a in node.attempts] == [
        (1, "HTTP 503"),
        (2, "HTTP 503"),
        (3, None),
    ]
    attempts = [ev.payload["attempt"] for ev in store.events if ev.payload.get("nodeId") == "a"]
    assert attempts == [1, 2, 3, 3]
    assert len({ctx.idempotency_key for _, _, ctx in agents.calls}) == 1


async def test_a_per_node_timeout_reaches_the_call_and_a_timeout_fails_the_node() -> None:
    slow = InvocationError("agent writer timed out after 50 ms", retryable=True)
    agents = FakeAgents(writer=[slow])
    driver, store, _ = driver_for(chain(timeoutMs=50), agents)

    assert await driver.run() == Outcome.FINISHED

    assert agents.calls[0][2].timeout_s == pytest.approx(0.05)
    assert store.stored.status == ExecutionStatus.FAILED
    assert store.stored.error == "Node a failed: agent writer timed out after 50 ms"


async def test_a_cancel_while_a_node_runs_stops_the_driver_at_its_next_commit() -> None:
    gate = asyncio.Event()
    agents = FakeAgents(writer=[gate])
    driver, store, _ = driver_for(chain(), agents)
    task = asyncio.create_task(driver.run())
    await asyncio.wait_for(agents.running.wait(), 10)

    store.stored.status = ExecutionStatus.CANCELLED  # what the cancel route commits
    gate.set()

    assert await asyncio.wait_for(task, 10) == Outcome.LOST
    assert store.stored.status == ExecutionStatus.CANCELLED


def branching() -> CompiledWorkflow:
    """s -> c; c true -> yes (an agent) -> end; c false -> no (a tool) -> end."""
    return compiled(
        [
            n("s", START),
            n("c", COND, condition="input.score > 0.5"),
            n("yes", agentId="writer"),
            n("no", TOOL, toolId="t"),
            n("end", END),
        ],
        [
            e("s", "c"),
            e("c", "yes", handle="true"),
            e("c", "no", handle="false"),
            e("yes", "end"),
            e("no", "end"),
        ],
    )


async def test_branches_join_and_skips_propagate_through_real_expressions() -> None:
    wf = branching()
    agents = FakeAgents(writer=["good"])
    driver, store, _ = driver_for(wf, agents, {"score": 0.9})

    assert await driver.run() == Outcome.FINISHED

    assert store.stored.nodes["no"].status == NodeStatus.SKIPPED
    assert store.stored.output == {"yes": "good"}


async def test_the_execution_deadline_fails_it_and_stops_its_calls() -> None:
    gate = asyncio.Event()
    agents = FakeAgents(writer=[gate])
    driver, store, _ = driver_for(chain(), agents, timeout_s=0.5)

    assert await asyncio.wait_for(driver.run(), 10) == Outcome.FINISHED

    assert store.stored.status == ExecutionStatus.FAILED
    assert "EXECUTION_TIMEOUT (500 ms)" in (store.stored.error or "")
    assert store.stored.nodes["a"].status == NodeStatus.CANCELLED


async def test_a_transient_commit_failure_is_retried() -> None:
    agents = FakeAgents(writer=["ok"])
    driver, store, _ = driver_for(chain(), agents)
    store.failures = [TransientError("connection reset"), TransientError("connection reset")]

    assert await driver.run() == Outcome.FINISHED
    assert store.stored.status == ExecutionStatus.COMPLETED


async def test_a_step_that_cannot_be_stored_fails_the_execution_once() -> None:
    agents = FakeAgents(writer=["ok"])
    driver, store, _ = driver_for(chain(), agents)
    store.failures = [ValueError("cannot store this")]

    assert await driver.run() == Outcome.FINISHED

    assert store.stored.status == ExecutionStatus.FAILED
    assert "Internal error" in (store.stored.error or "")
    assert [ev.name for ev in store.events][-2:] == ["execution:error", "execution:update"]
    assert agents.calls == []


async def test_when_even_the_failure_cannot_be_stored_the_smallest_write_ends_it() -> None:
    agents = FakeAgents(writer=["ok"])
    driver, store, _ = driver_for(chain(), agents)
    store.failures = [ValueError("bad"), ValueError("still bad")]

    assert await driver.run() == Outcome.FINISHED
    assert store.forced == ["Internal error while running the execution; see the service log"]


async def test_an_execution_recovered_too_often_fails_as_poisonous() -> None:
    agents = FakeAgents(writer=["ok"])
    driver, store, _ = driver_for(chain(), agents, recoveries=4)

    assert await driver.run() == Outcome.FINISHED

    assert store.stored.status == ExecutionStatus.FAILED
    assert "after 4 recoveries" in (store.stored.error or "")
    assert agents.calls == []


async def test_an_oversized_answer_fails_only_its_node_with_the_limit_named() -> None:
    agents = FakeAgents(writer=["x" * 20_000])
    driver, store, _ = driver_for(chain(), agents)

    assert await driver.run() == Outcome.FINISHED

    assert "MAX_NODE_OUTPUT_BYTES" in (store.stored.nodes["a"].error or "")


async def test_tool_parameters_and_encoded_idempotency_keys() -> None:
    wf = compiled(
        [
            n("s", START),
            n("tül", TOOL, toolId="t", parameters={"n": "{{ input.n + 1 }}"}),
            n("end", END),
        ],
        [e("s", "tül"), e("tül", "end")],
    )
    agents = FakeAgents()
    driver, store, execution = driver_for(wf, agents, {"n": 1})

    assert await driver.run() == Outcome.FINISHED

    assert store.stored.output == {"tool": "t", "n": 2}
    assert agents.calls[0][2].idempotency_key == f"{execution.id}:t%C3%BCl"
    agents.calls[0][2].idempotency_key.encode("ascii")


async def test_the_step_that_finishes_the_execution_is_committed_before_the_driver_ends() -> None:
    wf = compiled(
        [
            n("s", START),
            n("a", agentId="writer"),
            n("shape", TRANSFORM, expression="{'wrapped': input}"),
            n("end", END),
        ],
        [e("s", "a"), e("a", "shape"), e("shape", "end")],
    )
    driver, store, _ = driver_for(wf, FakeAgents(writer=["ok"]))

    assert await driver.run() == Outcome.FINISHED

    assert store.stored.status == ExecutionStatus.COMPLETED
    assert store.stored.output == {"wrapped": "ok"}


async def test_a_condition_stored_without_its_routes_is_routed_again_on_takeover() -> None:
    wf = branching()
    agents = FakeAgents(writer=["good"])
    driver, store, execution = driver_for(wf, agents, {"score": 0.2})
    for node_id, value in (("s", {"score": 0.2}), ("c", {"score": 0.2})):
        node = execution.nodes[node_id]
        node.start_attempt(1, execution.created_at)
        node.input = node.output = value
        node.move(NodeStatus.COMPLETED, execution.created_at)
    execution.status = ExecutionStatus.RUNNING

    assert await driver.run() == Outcome.FINISHED

    assert store.stored.nodes["c"].routes == ["c->no"]
    assert store.stored.nodes["yes"].status == NodeStatus.SKIPPED
    assert store.stored.output == {"no": {"tool": "t", "score": 0.2}}


async def test_an_execution_taken_over_past_its_deadline_fails_without_running_anything() -> None:
    agents = FakeAgents(writer=["ok"])
    driver, store, execution = driver_for(chain(), agents)
    execution.deadline_at = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)

    assert await driver.run() == Outcome.FINISHED

    assert store.stored.status == ExecutionStatus.FAILED
    assert "EXECUTION_TIMEOUT" in (store.stored.error or "")
    assert agents.calls == []


async def test_transforms_as_the_platform_editor_writes_them() -> None:
    # No config: the input passes through. A JSON text template with {{path}} placeholders
    # into the input becomes the value it spells. A condition written with ===.
    wf = compiled(
        [
            n("s", START),
            n("same", TRANSFORM),
            n("json", TRANSFORM, language="json", template='{"value": "{{delayMs}}", "n": 1}'),
            n("check", COND, condition="input.value === '300'"),
            n("end", END),
        ],
        [
            e("s", "same"),
            e("same", "json"),
            e("json", "check"),
            e("check", "end", handle="true"),
        ],
    )
    driver, store, _ = driver_for(wf, FakeAgents(), {"delayMs": 300})

    assert await driver.run() == Outcome.FINISHED

    assert store.stored.nodes["same"].output == {"delayMs": 300}
    assert store.stored.output == {"value": "300", "n": 1}


async def test_progress_reports_are_stepped_together_and_token_updates_coalesce() -> None:
    gate = asyncio.Event()
    agents = FakeAgents(writer=[gate])
    driver, store, _ = driver_for(chain(), agents)
    task = asyncio.create_task(driver.run())
    await asyncio.wait_for(agents.running.wait(), 10)

    for out in (1, 2, 3):
        driver.progress(token_report("a", {"outputTokens": out}, "m", out, None, None))
    driver.progress(thinking_report("a", 1, "hm", None, None, None, None))
    await wait_for(lambda: any(ev.name == "node:thinking" for ev in store.events))
    gate.set()
    assert await asyncio.wait_for(task, 10) == Outcome.FINISHED

    progress = [ev for ev in store.events if ev.name.startswith("node:t")]
    # One step for all four: the three token updates as their last one, then the thought.
    assert [(ev.name, ev.payload.get("outputTokens")) for ev in progress] == [
        ("node:token-update", 3),
        ("node:thinking", None),
    ]
    assert progress[1].seq == progress[0].seq + 1
    assert [ev.seq for ev in store.events] == list(range(1, len(store.events) + 1))
    assert store.stored.usage is not None
    assert store.stored.usage["totalTokens"] == 3


async def test_a_budget_pause_stops_the_call_and_parks_the_execution() -> None:
    gate = asyncio.Event()
    agents = FakeAgents(writer=[gate])
    driver, store, execution = driver_for(chain(), agents)
    execution.budget = {"maxTotalTokens": 5, "onExceed": "pause"}
    task = asyncio.create_task(driver.run())
    await asyncio.wait_for(agents.running.wait(), 10)

    driver.progress(token_report("a", {"outputTokens": 6}, "m", 1, None, None))

    assert await asyncio.wait_for(task, 10) == Outcome.WAITING
    assert store.stored.paused == "Budget exceeded: 6 tokens used, maxTotalTokens is 5"
    assert store.stored.nodes["a"].status == NodeStatus.RUNNING  # runs again once raised
    assert driver.wake_at() is None


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
