"""Drives one claimed execution to its end: runs nodes, commits each step, publishes events."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchestrator.application.nodes import NodeRunner
from orchestrator.application.ports import (
    Clock,
    EventPublisher,
    ExecutionEvent,
    InvocationError,
)
from orchestrator.application.views import execution_error, execution_update, node_update
from orchestrator.domain.engine import CompiledWorkflow, Run, Skip
from orchestrator.domain.errors import ExpressionError
from orchestrator.domain.execution import (
    ExecutionStatus,
    NodeExecution,
    NodeStatus,
    WorkflowExecution,
)
from orchestrator.infrastructure.db.errors import is_refused_value, is_transient
from orchestrator.infrastructure.runner.store import Claim, LeaseLost, RunnerStore

log = logging.getLogger(__name__)

FIRST_RETRY_DELAY_S = 0.05


class Outcome(enum.Enum):
    """How a driver stopped."""

    FINISHED = "finished"  # the execution reached a terminal status
    DRAINED = "drained"  # shutdown: in-flight nodes finished, the rest is for another runner
    LOST = "lost"  # another runner holds the lease now, or the execution was cancelled
    ABANDONED = "abandoned"  # the database stayed unreachable


class DatabaseUnavailable(Exception):
    """Commits kept failing for longer than the driver waits."""


@dataclass
class _Step:
    """What one commit writes: changed nodes and the events that report them."""

    previous_seq: int
    nodes: dict[str, NodeExecution] = field(default_factory=dict)
    events: list[ExecutionEvent] = field(default_factory=list)


@dataclass(frozen=True)
class DriverConfig:
    """Limits of a driver."""

    max_recoveries: int
    execution_timeout_ms: int
    outage_patience_s: float = 60.0


class Driver:
    """Runs the nodes of one execution; each node's result is committed before the next starts."""

    def __init__(
        self,
        store: RunnerStore,
        claim: Claim,
        workflow: CompiledWorkflow,
        execution: WorkflowExecution,
        nodes: NodeRunner,
        publisher: EventPublisher,
        clock: Clock,
        config: DriverConfig,
    ) -> None:
        self._store = store
        self._claim = claim
        self._workflow = workflow
        self._execution = execution
        self._nodes = nodes
        self._publisher = publisher
        self._clock = clock
        self._config = config
        self._lock = asyncio.Lock()
        self._open: _Step | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._launched: set[str] = set()
        self._draining = False
        self._finish_order = 1 + max(
            (n.finished_order or 0 for n in execution.nodes.values()), default=0
        )

    @property
    def execution_id(self) -> str:
        """The execution this driver runs."""
        return self._execution.id

    def drain(self) -> None:
        """Let in-flight nodes finish, start no new ones."""
        self._draining = True

    async def run(self) -> Outcome:
        """Drive until the execution finishes, the lease is lost, or draining ends."""
        try:
            if self._claim.recoveries > self._config.max_recoveries:
                await self._fail_now(
                    f"Execution failed after {self._claim.recoveries} recoveries: the runners "
                    "driving it stopped again and again"
                )
                return Outcome.FINISHED
            remaining = (self._execution.deadline_at - self._clock.now()).total_seconds()
            deadline = asyncio.get_running_loop().time() + max(remaining, 0.0)
            try:
                async with asyncio.timeout_at(deadline) as timeout:
                    await self._drive()
            except TimeoutError:
                if not timeout.expired():
                    raise
                await self._stop_tasks()
                await self._fail_now(
                    "Execution timed out: it ran longer than EXECUTION_TIMEOUT "
                    f"({self._config.execution_timeout_ms} ms)"
                )
            return Outcome.FINISHED if self._execution.finished else Outcome.DRAINED
        except LeaseLost:
            await self._stop_tasks()
            return Outcome.LOST
        except DatabaseUnavailable:
            await self._stop_tasks()
            return Outcome.ABANDONED
        except asyncio.CancelledError:
            await self._stop_tasks()
            raise
        except Exception as exc:
            await self._stop_tasks()
            if is_refused_value(exc):
                log.warning(
                    "execution %s: the database refused a value: %s", self.execution_id, exc
                )
                message = (
                    "The database refused a value of this execution (for example a NUL "
                    "character in a node's output)"
                )
            else:
                log.exception("execution %s: unexpected error", self.execution_id)
                message = "Internal error while running the execution; see the service log"
            await self._fail_now(message)
            return Outcome.FINISHED

    async def _drive(self) -> None:
        execution = self._execution
        fresh = execution.status == ExecutionStatus.PENDING
        if fresh:
            # Left open: the commit of the first node carries it.
            execution.move(ExecutionStatus.RUNNING, self._clock.now())
            self._execution_event(self._step())
        for node_id, node in execution.nodes.items():
            if node.status == NodeStatus.RUNNING:
                # It was in flight when the last runner stopped: run it again under the same
                # idempotency key, so that the callee can drop the duplicate.
                self._launch(node_id, node.input)
        async with self._lock:
            step = self._step()
            runs = self._advance(step)
            started = self._prestart(step, runs)
            if not (fresh and runs):
                await self._commit(step)
            self._start(runs, started)
        while self._tasks and not execution.finished:
            done, _ = await asyncio.wait(
                set(self._tasks.values()), return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                task.result()

    def _step(self) -> _Step:
        """The step being built: changes wait in it until the next commit."""
        if self._open is None:
            self._open = _Step(previous_seq=self._execution.last_seq)
        return self._open

    def _event(self, step: _Step, name: str, payload: Callable[[int], dict[str, Any]]) -> None:
        self._execution.last_seq += 1
        seq = self._execution.last_seq
        step.events.append(ExecutionEvent(self._execution.id, seq, name, payload(seq)))

    def _node_event(self, step: _Step, node: NodeExecution) -> None:
        step.nodes[node.node_id] = node
        now = self._clock.now()
        self._event(
            step, "node:update", lambda seq: node_update(self._execution.id, node, seq, now)
        )

    def _execution_event(self, step: _Step) -> None:
        now = self._clock.now()
        self._event(
            step, "execution:update", lambda seq: execution_update(self._execution, seq, now)
        )

    async def _commit(self, step: _Step) -> None:
        self._open = None
        if not step.events and not step.nodes:
            return
        started = time.monotonic()
        delay = FIRST_RETRY_DELAY_S
        while True:
            try:
                await self._store.commit(
                    self._claim,
                    self._execution,
                    step.previous_seq,
                    list(step.nodes.values()),
                    step.events,
                    self._clock.now(),
                )
                break
            except LeaseLost:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if time.monotonic() - started > self._config.outage_patience_s:
                    raise DatabaseUnavailable(str(exc)) from exc
                # Once per outage and execution at warning level, not once per retry.
                level = logging.WARNING if delay == FIRST_RETRY_DELAY_S else logging.DEBUG
                log.log(level, "execution %s: commit failed (%s); retrying", self.execution_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        await self._publisher.publish(step.events)

    def _advance(self, step: _Step) -> list[Run]:
        """Apply skips, finish the execution when every node is done; returns the nodes to start."""
        execution = self._execution
        now = self._clock.now()
        try:
            decisions = self._workflow.decide(execution)
        except ExpressionError as exc:
            self._fail(step, f"Routing failed: {exc.message}", None)
            return []
        runs: list[Run] = []
        for decision in decisions:
            if isinstance(decision, Skip):
                node = execution.nodes[decision.node_id]
                node.move(NodeStatus.SKIPPED, now)
                self._node_event(step, node)
            elif decision.node_id not in self._launched:
                runs.append(decision)
        if not runs and self._workflow.is_complete(execution):
            execution.output = self._workflow.output(execution)
            execution.current_node_id = None
            execution.move(ExecutionStatus.COMPLETED, now)
            self._execution_event(step)
        return runs

    def _prestart(self, step: _Step, runs: list[Run]) -> dict[str, Any]:
        """Record the first attempt of the nodes about to call out in this step.

        Their start then rides with the commit that made them runnable, instead of a commit
        of its own; the call still begins only after that commit.
        """
        started: dict[str, Any] = {}
        if self._draining or self._execution.finished:
            return started
        now = self._clock.now()
        for run in runs:
            if not self._nodes.calls_out(self._workflow.nodes[run.node_id].type):
                continue
            try:
                node_input = self._workflow.node_input(run, self._execution)
            except ExpressionError:
                continue  # the node's own task reports it
            state = self._execution.nodes[run.node_id]
            state.input = node_input
            state.start_attempt(1, now)
            self._execution.current_node_id = run.node_id
            self._node_event(step, state)
            started[run.node_id] = node_input
        return started

    def _start(self, runs: list[Run], started: dict[str, Any]) -> None:
        if self._draining or self._execution.finished:
            return
        for run in runs:
            if run.node_id in started:
                self._launch(run.node_id, started[run.node_id], recorded=True)
            else:
                self._launch(run.node_id, None, run)

    def _launch(
        self, node_id: str, stored_input: Any, run: Run | None = None, recorded: bool = False
    ) -> None:
        self._launched.add(node_id)
        self._tasks[node_id] = asyncio.create_task(
            self._run_node(node_id, stored_input, run, recorded),
            name=f"{self._execution.id}:{node_id}",
        )

    async def _run_node(
        self, node_id: str, stored_input: Any, run: Run | None, recorded: bool
    ) -> None:
        workflow = self._workflow
        execution = self._execution
        state = execution.nodes[node_id]
        try:
            try:
                node_input = stored_input if run is None else workflow.node_input(run, execution)
            except ExpressionError as exc:
                await self._node_done(node_id, None, None, f"Input mapping failed: {exc.message}")
                return
            if not self._nodes.calls_out(workflow.nodes[node_id].type):
                try:
                    output = self._nodes.compute(workflow, node_id, node_input, execution)
                except ExpressionError as exc:
                    await self._node_done(node_id, node_input, None, exc.message)
                    return
                await self._node_done(node_id, node_input, output, None)
                return

            first = state.retry_count + 1 if state.status == NodeStatus.RUNNING else 1

            async def on_attempt(number: int) -> None:
                if recorded and number == first:
                    return  # committed with the step that made the node runnable
                async with self._lock:
                    if execution.finished:
                        raise asyncio.CancelledError
                    step = self._step()
                    state.input = node_input
                    state.start_attempt(number, self._clock.now())
                    execution.current_node_id = node_id
                    self._node_event(step, state)
                    await self._commit(step)

            async def on_failure(number: int, error: InvocationError, delay_s: float) -> None:
                state.fail_attempt(error.message, self._clock.now())

            try:
                output = await self._nodes.call(
                    workflow, node_id, node_input, execution, first, on_attempt, on_failure
                )
            except InvocationError as exc:
                await self._node_done(node_id, node_input, None, exc.message)
                return
            await self._node_done(node_id, node_input, output, None)
        finally:
            self._tasks.pop(node_id, None)

    async def _node_done(
        self, node_id: str, node_input: Any, output: Any, error: str | None
    ) -> None:
        async with self._lock:
            execution = self._execution
            if execution.finished:
                return
            state = execution.nodes[node_id]
            now = self._clock.now()
            step = self._step()
            if state.status == NodeStatus.PENDING:
                # A node that calls nothing: RUNNING and its result go in one commit.
                state.input = node_input
                state.start_attempt(1, now)
                execution.current_node_id = node_id
                self._node_event(step, state)
            runs: list[Run] = []
            if error is not None:
                state.fail_attempt(error, now)
                state.move(NodeStatus.FAILED, now)
                self._node_event(step, state)
                self._fail(step, f"Node {node_id} failed: {error}", node_id)
            else:
                if state.attempts:
                    state.attempts[-1].completed_at = now
                    state.attempts[-1].error = None
                state.output = output
                state.error = None
                state.finished_order = self._finish_order
                self._finish_order += 1
                state.move(NodeStatus.COMPLETED, now)
                self._node_event(step, state)
                runs = self._advance(step)
            started = self._prestart(step, runs)
            await self._commit(step)
            self._start(runs, started)
        if execution.finished:
            current = asyncio.current_task()
            for task in list(self._tasks.values()):
                if task is not current:
                    task.cancel()

    def _fail(self, step: _Step, message: str, node_id: str | None) -> None:
        """FAIL the execution; nodes still in flight are CANCELLED."""
        execution = self._execution
        now = self._clock.now()
        for other in execution.nodes.values():
            if other.status == NodeStatus.RUNNING and other.node_id != node_id:
                other.move(NodeStatus.CANCELLED, now)
                other.error = "Cancelled: the execution failed"
                self._node_event(step, other)
        execution.error = message
        execution.move(ExecutionStatus.FAILED, now)
        self._event(
            step,
            "execution:error",
            lambda seq: execution_error(execution.id, node_id, message, seq, now),
        )
        self._execution_event(step)

    async def _fail_now(self, message: str) -> None:
        """Fail from the state in the database (in-memory state may hold an unfinished step)."""
        loaded = await self._store.load(self._execution.id)
        if loaded is None or loaded[0].finished:
            return
        self._execution = loaded[0]
        self._open = None
        async with self._lock:
            step = self._step()
            self._fail(step, message, None)
            await self._commit(step)

    async def _stop_tasks(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks.clear()
