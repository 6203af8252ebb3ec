"""Drives one claimed execution: the stepper decides, the driver does the I/O.

Each happening (a claim, a node's result, an attempt, a timeout) goes through `advance`; the
step it returns is committed (fenced by the lease), then published, then its nodes start.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from dataclasses import dataclass, field

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

from orchestrator.application.events import render
from orchestrator.application.nodes import NodeWork
from orchestrator.application.ports import Clock, EventPublisher, ExecutionEvent
from orchestrator.domain.engine import (
    Began,
    CompiledWorkflow,
    Happening,
    Limits,
    NodeStart,
    Progressed,
    ProgressReport,
    Step,
    Stopped,
    advance,
    wait_deadline,
)
from orchestrator.domain.execution import WorkflowExecution
from orchestrator.infrastructure import tracing
from orchestrator.infrastructure.db.errors import is_refused_value, is_transient
from orchestrator.infrastructure.expressions.pool import EvaluatorUnavailable
from orchestrator.infrastructure.logs import bind
from orchestrator.infrastructure.metrics import Metrics
from orchestrator.infrastructure.runner.store import (
    Claim,
    DatabaseUnavailable,
    LeaseLost,
    Outcome,
    StepStore,
)

log = logging.getLogger(__name__)

# A child's end wakes its parent at once; this recheck covers a crash between the two.
CHILD_RECHECK = dt.timedelta(minutes=5)
# Progress reports held for one flush at most (token updates of a node count once: the last).
MAX_BUFFERED_REPORTS = 1000


@dataclass(frozen=True)
class DriverConfig:
    """Limits of a driver."""

    max_recoveries: int
    execution_timeout_ms: int
    limits: Limits = field(default_factory=Limits)
    outage_patience_s: float = 60.0
    metrics: Metrics | None = None
    # Progress reports of one execution are stepped (stored, sent) together this often.
    progress_flush_s: float = 0.1


class Driver:
    """Runs the nodes of one execution; each step is committed before the nodes it starts."""

    def __init__(
        self,
        store: StepStore,
        claim: Claim,
        workflow: CompiledWorkflow,
        execution: WorkflowExecution,
        work: NodeWork,
        publisher: EventPublisher,
        clock: Clock,
        config: DriverConfig,
    ) -> None:
        self._store = store
        self._claim = claim
        self._workflow = workflow
        self._names = workflow.definition.display_names()
        self._execution = execution
        self._work = work
        self._publisher = publisher
        self._clock = clock
        self._config = config
        self._lock = asyncio.Lock()
        # Node tasks stay here until their outcome has been read: a task that ended with an
        # error nobody read would be reported as "never retrieved".
        self._tasks: set[asyncio.Task[None]] = set()
        self._draining = False
        self._reports: list[ProgressReport] = []
        self._flushing = False  # a flush of the reports is due
        self._stopped = False  # run() has returned or is returning: nothing new starts

    @property
    def execution_id(self) -> str:
        """The execution this driver runs."""
        return self._execution.id

    def drain(self) -> None:
        """Let in-flight nodes finish, start no new ones."""
        self._draining = True

    @property
    def execution(self) -> WorkflowExecution:
        """The execution as this driver last stepped it."""
        return self._execution

    def progress(self, report: ProgressReport) -> None:
        """Take an agent's progress report: it is stepped with the others of the next flush.

        A node's token counts are cumulative within an attempt, so a newer one replaces the
        one still waiting here; thinking steps are all kept (up to MAX_BUFFERED_REPORTS).
        """
        if self._draining or self._stopped or self._execution.finished:
            self._dropped(1)
            return
        if report.kind == "tokens":
            for i, held in enumerate(self._reports):
                if held.kind == "tokens" and _same_node(held, report):
                    del self._reports[i]
                    break
        if len(self._reports) >= MAX_BUFFERED_REPORTS:
            self._dropped(1)
            return
        self._reports.append(report)
        if not self._flushing:
            self._flushing = True
            self._tasks.add(
                asyncio.create_task(self._flush(), name=f"{self.execution_id}:progress")
            )

    async def _flush(self) -> None:
        await asyncio.sleep(self._config.progress_flush_s)
        reports, self._reports, self._flushing = tuple(self._reports), [], False
        await self._apply(Progressed(reports))

    def _dropped(self, count: int) -> None:
        if self._config.metrics is not None:
            self._config.metrics.progress_reports.labels("dropped").inc(count)

    def wake_at(self) -> dt.datetime | None:
        """When a parked execution must be claimed again: its first wait's timeout, and soon
        when it waits for a child (in case the child's end could not wake it); None: never."""
        times: list[dt.datetime] = []
        for node in self._execution.nodes.values():
            if node.waiting == "child":
                times.append(self._clock.now() + CHILD_RECHECK)
            deadline = wait_deadline(node)
            if deadline is not None:
                times.append(deadline)
        return min(times, default=None)

    async def run(self) -> Outcome:
        """Drive until the execution finishes or waits, the lease is lost, or draining ends."""
        bind(executionId=self._execution.id, workflowId=self._execution.workflow_id)
        trace_parent = tracing.valid_traceparent(self._execution.trace_parent)
        if trace_parent is not None:
            bind(traceId=tracing.trace_id_of(trace_parent))
        try:
            await self._drive()
            if self._execution.finished:
                return Outcome.FINISHED
            return Outcome.DRAINED if self._draining else Outcome.WAITING
        except LeaseLost:
            return Outcome.LOST
        except (DatabaseUnavailable, EvaluatorUnavailable):
            return Outcome.ABANDONED
        except Exception as exc:
            await self._stop_tasks()
            await self._end_after(exc)
            return Outcome.FINISHED
        finally:
            self._stopped = True
            await self._stop_tasks()

    async def _drive(self) -> None:
        if self._claim.recoveries > self._config.max_recoveries:
            await self._apply(Stopped.poisoned(self._claim.recoveries))
            return
        now = self._clock.now()
        deadline_at = self._execution.deadline_at
        if self._execution.waiting_since is not None:  # nobody worked while it waited
            deadline_at += now - self._execution.waiting_since
        remaining = (deadline_at - now).total_seconds()
        if remaining <= 0:  # taken over past its deadline
            await self._apply(Stopped.timed_out(self._config.execution_timeout_ms))
            return
        deadline = asyncio.get_running_loop().time() + remaining
        try:
            async with asyncio.timeout_at(deadline) as timeout:
                await self._apply(Began(await self._work.unrouted(self._workflow, self._execution)))
                # Until every node task has ended: a task whose step finished the execution in
                # memory is still committing it.
                while self._tasks:
                    done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                    self._tasks -= done
                    errors = [t.exception() for t in done if not t.cancelled()]
                    for error in errors:
                        if error is not None:
                            raise error
        except TimeoutError:
            if not timeout.expired():
                raise
            await self._stop_tasks()
            await self._end(Stopped.timed_out(self._config.execution_timeout_ms))

    async def _end(self, stopped: Stopped) -> None:
        """End FAILED from the stored state: in memory, a step may have been cut off."""
        loaded = await self._store.load(self._execution.id)
        if loaded is not None and not loaded[0].finished:
            self._execution = loaded[0]
            await self._apply(stopped)

    async def _apply(self, happening: Happening) -> None:
        """Step, commit, publish, then start the nodes the step made runnable (in a span, when
        traced: the nodes' calls nest under the step that started them)."""
        if tracing.enabled():
            attributes = {
                "executionId": self._execution.id,
                "workflowId": self._execution.workflow_id,
            }
            name = type(happening).__name__
            with tracing.step_span(self._execution.trace_parent, name, attributes):
                await self._step(happening)
        else:
            await self._step(happening)

    async def _step(self, happening: Happening) -> None:
        async with self._lock:
            if self._reports and not isinstance(happening, Progressed):
                # What an agent reported before its node's result comes first: once the node
                # has ended, its reports would find it not running.
                reports, self._reports = tuple(self._reports), []
                await self._advance(Progressed(reports))
            await self._advance(happening)
        if self._execution.finished or self._execution.paused is not None:
            # Its in-flight calls stop now: a finished execution needs none of them, and a
            # paused one runs them again once its budget is raised.
            current = asyncio.current_task()
            for task in self._tasks:
                if task is not current:
                    task.cancel()

    async def _advance(self, happening: Happening) -> None:
        step = advance(
            self._workflow, self._execution, happening, self._clock.now(), self._config.limits
        )
        if step.dropped:
            self._dropped(step.dropped)
        if step.execution_changed:
            await self._commit(step)
        if not self._draining and not self._execution.finished:
            for start in step.starts:
                self._tasks.add(
                    asyncio.create_task(
                        self._run_node(start), name=f"{self._execution.id}:{start.key}"
                    )
                )

    async def _run_node(self, start: NodeStart) -> None:
        node = self._execution.nodes[start.key]
        bind(nodeId=node.node_id, attempt=start.attempt)
        if node.iteration:
            bind(iteration=list(node.iteration))
        result = await self._work.run(self._workflow, self._execution, start, self._apply)
        await self._apply(result)

    async def _commit(self, step: Step) -> None:
        events = render(self._execution, step.events, self._names)
        started = time.perf_counter()
        try:
            await self._store.commit(self._claim, self._execution, step, events)
        except Exception as exc:
            if not is_transient(exc):
                raise
            # Most commits succeed at once: the retry controller is built only for an outage.
            self._log_retry(exc, first=True)
            await self._commit_again(step, events)
        metrics = self._config.metrics
        if metrics is not None:
            metrics.commit_duration.observe(time.perf_counter() - started)
            metrics.observe(self._execution, step.events)
        await self._publisher.publish(events)

    async def _commit_again(self, step: Step, events: list[ExecutionEvent]) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=wait_exponential(multiplier=0.05, max=2.0),
            stop=stop_after_delay(self._config.outage_patience_s),
            before_sleep=lambda state: self._log_retry(
                state.outcome.exception() if state.outcome else None, first=False
            ),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._store.commit(self._claim, self._execution, step, events)
        except Exception as exc:
            if is_transient(exc):
                raise DatabaseUnavailable(str(exc)) from exc
            raise

    def _log_retry(self, error: BaseException | None, first: bool) -> None:
        # Once per outage and execution at warning level, not once per retry.
        level = logging.WARNING if first else logging.DEBUG
        log.log(level, "execution %s: commit failed (%s); retrying", self.execution_id, error)

    async def _end_after(self, exc: Exception) -> None:
        """A step that cannot be stored (not an outage) ends the execution FAILED, once."""
        refused = is_refused_value(exc)
        if refused:
            log.warning("execution %s: the database refused a value: %s", self.execution_id, exc)
        else:
            log.exception("execution %s: unexpected error", self.execution_id, exc_info=exc)
        stopped = Stopped.unstorable(refused)
        try:
            await self._end(stopped)
        except LeaseLost:
            return
        except Exception:
            log.exception("execution %s: could not record its failure", self.execution_id)
            # The smallest write there is: the status, the error and one event.
            with contextlib.suppress(Exception):
                await self._store.force_fail(self._claim, self.execution_id, stopped.message)

    async def _stop_tasks(self) -> None:
        """Cancel the node tasks and read how each ended."""
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def _same_node(a: ProgressReport, b: ProgressReport) -> bool:
    return (a.node_id, a.loop, a.attempt) == (b.node_id, b.loop, b.attempt)
