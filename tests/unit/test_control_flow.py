"""Control flow in process: waits for a person, SWITCH, WHILE and FOR_EACH, through the driver.

The fake store keeps what each step committed; a wait ends the driver with Outcome.WAITING,
and a new driver on the stored execution is what a runner does when the execution wakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
from typing import Any

from orchestrator.application.nodes import NodeWork
from orchestrator.domain.engine import CompiledWorkflow
from orchestrator.domain.execution import (
    ExecutionStatus,
    NodeExecution,
    NodeStatus,
    WorkflowExecution,
)
from orchestrator.domain.workflow import NodeType
from orchestrator.infrastructure.clients.retry import TenacityRetrier
from orchestrator.infrastructure.clock import SystemClock
from orchestrator.infrastructure.runner.driver import Driver, DriverConfig
from orchestrator.infrastructure.runner.store import Claim, Outcome
from tests.unit.engine_builders import END, START, TRANSFORM, compiled, e, n
from tests.unit.fakes import NoChildren
from tests.unit.test_driver import (
    LIMITS,
    FakeAgents,
    FakeStore,
    InlineEvaluator,
    Published,
    driver_for,
    no_sleep,
)

PROMPT, SWITCH = NodeType.PROMPT, NodeType.SWITCH
WHILE, FOR_EACH = NodeType.WHILE, NodeType.FOR_EACH


def again(
    wf: CompiledWorkflow, store: FakeStore, agents: FakeAgents, token: int = 2
) -> tuple[Driver, WorkflowExecution]:
    """A driver on the stored execution, as a runner that claims it again builds one."""
    execution = copy.deepcopy(store.stored)
    work = NodeWork(
        agents, agents, TenacityRetrier(sleep=no_sleep), InlineEvaluator(), 2, NoChildren()
    )
    config = DriverConfig(3, 30_000, LIMITS, 5.0)
    driver = Driver(
        store,
        Claim(execution.id, token, 0),
        wf,
        execution,
        work,
        Published(),
        SystemClock(),
        config,
    )
    return driver, execution


def node_events(store: FakeStore, node_id: str) -> list[dict[str, Any]]:
    return [
        ev.payload
        for ev in store.events
        if ev.name == "node:update" and ev.payload["nodeId"] == node_id
    ]


def past(node: NodeExecution) -> None:
    """Move a wait's timeout into the past."""
    assert node.state is not None
    node.state["timeoutAt"] = "2020-01-01T00:00:00+00:00"


def approval(**config: Any) -> CompiledWorkflow:
    return compiled(
        [
            n("s", START),
            n("ask", PROMPT, prompt="Publish {{title}}?", **config),
            n("end", END),
        ],
        [e("s", "ask"), e("ask", "end")],
    )


async def test_a_prompt_waits_holding_nothing_and_completes_with_the_answer() -> None:
    wf = approval()
    driver, store, _ = driver_for(wf, FakeAgents(), {"title": "Q3 report"})

    assert await driver.run() == Outcome.WAITING

    node = store.stored.nodes["ask"]
    assert store.stored.status == ExecutionStatus.RUNNING
    assert node.status == NodeStatus.WAITING_INPUT
    assert node.state == {"wait": "input", "prompt": "Publish Q3 report?"}
    assert store.stored.waiting_since is not None
    assert driver.wake_at() is None  # no timeout: only an answer wakes it
    waiting = node_events(store, "ask")[-1]
    assert waiting["status"] == "WAITING_INPUT"
    assert waiting["data"]["prompt"] == "Publish Q3 report?"

    store.stored.nodes["ask"].answer = "yes"  # what a resume writes
    resumed, _ = again(wf, store, FakeAgents())
    assert await resumed.run() == Outcome.FINISHED

    assert store.stored.output == {"prompt": "Publish Q3 report?", "response": "yes"}
    assert [p["status"] for p in node_events(store, "ask")] == [
        "RUNNING",
        "WAITING_INPUT",
        "RUNNING",
        "COMPLETED",
    ]
    assert store.stored.waiting_since is None
    assert store.stored.status == ExecutionStatus.COMPLETED


async def test_time_spent_waiting_does_not_count_against_the_execution_timeout() -> None:
    wf = approval()
    driver, store, _ = driver_for(wf, FakeAgents(), {"title": "t"})
    assert await driver.run() == Outcome.WAITING
    deadline = store.stored.deadline_at
    store.stored.waiting_since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    store.stored.deadline_at = deadline - dt.timedelta(hours=2)  # would be long past
    store.stored.nodes["ask"].answer = "ok"

    resumed, _ = again(wf, store, FakeAgents())
    assert await resumed.run() == Outcome.FINISHED

    assert store.stored.status == ExecutionStatus.COMPLETED
    assert store.stored.deadline_at >= deadline - dt.timedelta(seconds=5)


async def test_a_wait_past_its_timeout_fails_the_node() -> None:
    wf = approval(timeoutMs=60_000)
    driver, store, _ = driver_for(wf, FakeAgents(), {"title": "t"})
    assert await driver.run() == Outcome.WAITING
    wake = driver.wake_at()
    assert wake is not None
    assert dt.timedelta(seconds=50) < wake - dt.datetime.now(dt.UTC) <= dt.timedelta(seconds=60)

    past(store.stored.nodes["ask"])
    woken, _ = again(wf, store, FakeAgents())
    assert await woken.run() == Outcome.FINISHED

    assert store.stored.status == ExecutionStatus.FAILED
    assert store.stored.nodes["ask"].status == NodeStatus.FAILED
    assert store.stored.error == "Node ask failed: no answer within timeoutMs (60000 ms)"


async def test_a_wait_past_its_timeout_follows_the_timeout_edge() -> None:
    wf = compiled(
        [
            n("s", START),
            n("ask", PROMPT, prompt="ok?", timeoutMs=1000),
            n("yes", TRANSFORM, expression="'answered'"),
            n("late", TRANSFORM, expression="'timed out'"),
            n("end", END),
        ],
        [
            e("s", "ask"),
            e("ask", "yes"),
            e("ask", "late", handle="timeout"),
            e("yes", "end"),
            e("late", "end"),
        ],
    )
    driver, store, _ = driver_for(wf, FakeAgents())
    assert await driver.run() == Outcome.WAITING
    past(store.stored.nodes["ask"])

    woken, _ = again(wf, store, FakeAgents())
    assert await woken.run() == Outcome.FINISHED

    assert store.stored.status == ExecutionStatus.COMPLETED
    assert store.stored.nodes["yes"].status == NodeStatus.SKIPPED
    assert store.stored.output == {"late": "timed out"}
    assert store.stored.nodes["ask"].output == {"prompt": "ok?", "response": None, "timedOut": True}


async def test_a_wait_woken_early_keeps_waiting() -> None:
    wf = approval(timeoutMs=600_000)
    driver, store, _ = driver_for(wf, FakeAgents(), {"title": "t"})
    assert await driver.run() == Outcome.WAITING
    events = len(store.events)

    woken, _ = again(wf, store, FakeAgents())
    assert await woken.run() == Outcome.WAITING
    assert store.stored.nodes["ask"].status == NodeStatus.WAITING_INPUT
    assert len(store.events) == events


async def test_an_agent_that_asks_the_user_waits_then_is_called_again_with_the_answer() -> None:
    wf = compiled(
        [n("s", START), n("a", agentId="writer", allowAskUser=True), n("end", END)],
        [e("s", "a"), e("a", "end")],
    )
    question = '__ASK_USER__{"question": "Which tone?", "proposals": ["formal", "casual"]}'
    agents = FakeAgents(writer=[question, "Dear Sir"])
    driver, store, execution = driver_for(wf, agents, "write a letter")

    assert await driver.run() == Outcome.WAITING
    waiting = node_events(store, "a")[-1]
    assert waiting["status"] == "WAITING_INPUT"
    assert waiting["data"]["prompt"] == "Which tone?"
    assert waiting["data"]["proposals"] == ["formal", "casual"]

    store.stored.nodes["a"].answer = "formal"
    resumed, _ = again(wf, store, agents)
    assert await resumed.run() == Outcome.FINISHED

    assert store.stored.output == "Dear Sir"
    second_input, second_ctx = agents.calls[1][1], agents.calls[1][2]
    assert second_input == ("write a letter\n\nYou asked: Which tone?\nThe user answered: formal")
    assert second_ctx.idempotency_key == f"{execution.id}:a:answer-1"


def switch(cases: list[Any]) -> CompiledWorkflow:
    return compiled(
        [
            n("s", START),
            n("sw", SWITCH, switchOn="input.kind", cases=[{"value": c} for c in cases]),
            n("c0", TRANSFORM, expression="'first'"),
            n("c1", TRANSFORM, expression="'second'"),
            n("other", TRANSFORM, expression="'default'"),
            n("end", END),
        ],
        [
            e("s", "sw"),
            e("sw", "c0", handle="case_0"),
            e("sw", "c1", handle="case_1"),
            e("sw", "other", handle="default"),
            e("c0", "end"),
            e("c1", "end"),
            e("other", "end"),
        ],
    )


async def test_a_switch_follows_the_first_equal_case_else_default() -> None:
    outputs = {}
    for kind in ("bug", "idea", "spam", 1):
        driver, store, _ = driver_for(switch(["bug", "idea", 1.0]), FakeAgents(), {"kind": kind})
        assert await driver.run() == Outcome.FINISHED
        outputs[kind] = store.stored.output
    assert outputs == {
        "bug": {"c0": "first"},
        "idea": {"c1": "second"},
        "spam": {"other": "default"},
        1: None,  # case_2 (1.0) is equal, and has no edge: nothing runs after the switch
    }


def counter(condition: str, max_iterations: int | None = None) -> CompiledWorkflow:
    config: dict[str, Any] = {"condition": condition}
    if max_iterations is not None:
        config["maxIterations"] = max_iterations
    return compiled(
        [
            n("s", START),
            n("w", WHILE, **config),
            n("step", TRANSFORM, expression='{"n": input.n + 1, "seen": index}'),
            n("end", END),
        ],
        [
            e("s", "w"),
            e("w", "step", handle="loop"),
            e("step", "w"),
            e("w", "end", handle="exit"),
        ],
    )


async def test_a_while_loop_runs_its_body_until_the_condition_is_false() -> None:
    driver, store, _ = driver_for(counter("input.n < 3"), FakeAgents(), {"n": 0})

    assert await driver.run() == Outcome.FINISHED

    assert store.stored.status == ExecutionStatus.COMPLETED
    assert store.stored.output == {"n": 3, "seen": 2}
    steps = [node for node in store.stored.nodes.values() if node.node_id == "step"]
    assert [(s.iteration, s.output) for s in steps] == [
        ((0,), {"n": 1, "seen": 0}),
        ((1,), {"n": 2, "seen": 1}),
        ((2,), {"n": 3, "seen": 2}),
    ]
    iterations = [p.get("iteration") for p in node_events(store, "step")]
    assert iterations == [[0], [0], [1], [1], [2], [2]]


async def test_a_while_loop_that_never_ends_fails_at_max_iterations() -> None:
    driver, store, _ = driver_for(counter("true", max_iterations=5), FakeAgents(), {"n": 0})

    assert await driver.run() == Outcome.FINISHED

    assert store.stored.status == ExecutionStatus.FAILED
    assert store.stored.error == (
        "Node w failed: WHILE node 'w' reached maxIterations (5) and its condition is still true"
    )
    assert len([x for x in store.stored.nodes.values() if x.node_id == "step"]) == 5


def for_each(collection: str = "input.items", **config: Any) -> CompiledWorkflow:
    return compiled(
        [
            n("s", START),
            n("each", FOR_EACH, collection=collection, **config),
            n("ask", agentId="writer"),
            n("shape", TRANSFORM, expression='{"i": index, "item": item, "said": input}'),
            n("end", END),
        ],
        [
            e("s", "each"),
            e("each", "ask", handle="body"),
            e("ask", "shape"),
            e("shape", "each"),
            e("each", "end", handle="exit"),
        ],
    )


async def test_a_for_each_runs_its_body_per_item_and_gives_the_results_in_order() -> None:
    agents = FakeAgents(writer=["said it"])
    driver, store, execution = driver_for(
        for_each(concurrency=3), agents, {"items": ["a", "b", "c", "d", "e"]}
    )

    assert await driver.run() == Outcome.FINISHED

    assert store.stored.status == ExecutionStatus.COMPLETED
    assert store.stored.output == [
        {"i": i, "item": item, "said": "said it"} for i, item in enumerate("abcde")
    ]
    assert sorted(str(call[1]) for call in agents.calls) == list("abcde")
    keys = {ctx.idempotency_key for _, _, ctx in agents.calls}
    assert keys == {f"{execution.id}:ask@{i}" for i in range(5)}


async def test_a_for_each_over_nothing_gives_an_empty_list() -> None:
    driver, store, _ = driver_for(for_each(), FakeAgents(writer=["x"]), {"items": []})
    assert await driver.run() == Outcome.FINISHED
    assert store.stored.output == []


async def test_a_for_each_refuses_more_items_than_max_items() -> None:
    wf = for_each(maxItems=2)
    driver, store, _ = driver_for(wf, FakeAgents(writer=["x"]), {"items": [1, 2, 3]})
    assert await driver.run() == Outcome.FINISHED
    assert store.stored.status == ExecutionStatus.FAILED
    assert store.stored.error == (
        "Node each failed: collection has 3 items, more than maxItems (2)"
    )


async def test_a_for_each_whose_collection_is_not_a_list_fails() -> None:
    driver, store, _ = driver_for(for_each(), FakeAgents(writer=["x"]), {"items": "abc"})
    assert await driver.run() == Outcome.FINISHED
    assert store.stored.error == "Node each failed: collection must give a list, got str"


async def test_nested_for_each_loops_keep_their_iterations_apart() -> None:
    wf = compiled(
        [
            n("s", START),
            n("rows", FOR_EACH, collection="input"),
            n("cells", FOR_EACH, collection="input"),
            n("double", TRANSFORM, expression="item * 2"),
            n("end", END),
        ],
        [
            e("s", "rows"),
            e("rows", "cells", handle="body"),
            e("cells", "double", handle="body"),
            e("cells", "rows", handle="exit"),
            e("rows", "end", handle="exit"),
        ],
    )
    driver, store, _ = driver_for(wf, FakeAgents(), [[1, 2], [3], []])

    assert await driver.run() == Outcome.FINISHED

    assert store.stored.output == [[2, 4], [6], []]
    keys = sorted(k for k, node in store.stored.nodes.items() if node.node_id == "double")
    assert keys == ["double@0.0", "double@0.1", "double@1.0"]


async def test_a_for_each_taken_over_mid_way_runs_only_what_was_not_done() -> None:
    gate = asyncio.Event()
    agents = FakeAgents(writer=["done"])
    wf = for_each(concurrency=2)
    driver, store, _ = driver_for(wf, agents, {"items": ["a", "b", "c", "d"]})
    # Items a and b complete; c and d block until the runner is gone.
    answers: list[Any] = ["said a", "said b", gate, gate]
    agents.script["writer"] = answers
    task = asyncio.create_task(driver.run())
    await asyncio.wait_for(agents.running.wait(), timeout=10)
    for _ in range(50):  # the other blocked call starts a few steps later
        await asyncio.sleep(0)
    assert len(agents.calls) == 4
    task.cancel()  # the runner died with c and d in flight
    with contextlib.suppress(asyncio.CancelledError):
        await task
    stored = store.stored
    assert [stored.nodes[f"shape@{i}"].status for i in range(2)] == [NodeStatus.COMPLETED] * 2
    assert stored.nodes["ask@2"].status == NodeStatus.RUNNING

    agents.script["writer"] = ["said again"]
    taken_over, _ = again(wf, store, agents)
    assert await taken_over.run() == Outcome.FINISHED

    assert store.stored.status == ExecutionStatus.COMPLETED
    said = [r["said"] for r in store.stored.output]
    assert sorted(said[:2]) == ["said a", "said b"]
    assert said[2:] == ["said again", "said again"]
    items = [str(call[1]) for call in agents.calls]
    assert sorted(items) == ["a", "b", "c", "c", "d", "d"]  # c and d again, a and b not
