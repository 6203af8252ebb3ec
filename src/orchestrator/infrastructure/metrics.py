"""Prometheus metrics: what the service does, how fast, and how much waits.

One `Metrics` per process, its own registry; with PROMETHEUS_MULTIPROC_DIR set (several
workers on one host), values are shared through that directory and `render` adds them up.
Label values stay bounded: statuses, node types, services, status classes, route templates
and workflow ids; never execution ids.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.domain.execution import (
    ACTIVE_EXECUTION,
    DomainEvent,
    ExecutionStatus,
    ExecutionUpdated,
    NodeStatus,
    NodeUpdated,
    WorkflowExecution,
)
from orchestrator.infrastructure.db.tables import executions

CONTENT_TYPE = CONTENT_TYPE_LATEST
DURATIONS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
BATCHES = (1, 2, 5, 10, 20, 50, 100, 200)
DATABASE_GAUGES_TTL_S = 5.0
_ACTIVE = [s.value for s in ACTIVE_EXECUTION]


def status_class(status: int | None) -> str:
    """`2xx`, `4xx`, `5xx`...; `error` for no answer at all (unreachable, timed out)."""
    return "error" if status is None else f"{status // 100}xx"


class Metrics:
    """Every metric of the service."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.executions_started = Counter(
            "orchestrator_executions_started_total",
            "Executions that began running",
            ["workflow"],
            registry=r,
        )
        self.executions_finished = Counter(
            "orchestrator_executions_finished_total",
            "Executions that ended, by final status",
            ["workflow", "status"],
            registry=r,
        )
        self.execution_duration = Histogram(
            "orchestrator_execution_duration_seconds",
            "From start to end of an execution (time spent waiting included)",
            ["status"],
            buckets=DURATIONS,
            registry=r,
        )
        self.node_attempts = Counter(
            "orchestrator_node_attempts_total",
            "Node attempts by node type and outcome (succeeded, failed, cancelled)",
            ["type", "outcome"],
            registry=r,
        )
        self.node_duration = Histogram(
            "orchestrator_node_duration_seconds",
            "From a node's start to its end, every attempt included",
            ["type", "status"],
            buckets=DURATIONS,
            registry=r,
        )
        self.calls = Counter(
            "orchestrator_service_calls_total",
            "Calls to agent-service and tool-service by answer status class",
            ["service", "status_class"],
            registry=r,
        )
        self.call_duration = Histogram(
            "orchestrator_service_call_duration_seconds",
            "Latency of calls to agent-service and tool-service",
            ["service"],
            buckets=DURATIONS,
            registry=r,
        )
        self.commit_duration = Histogram(
            "orchestrator_step_commit_duration_seconds",
            "Latency of committing one step of an execution",
            buckets=FAST,
            registry=r,
        )
        self.batch_size = Histogram(
            "orchestrator_step_batch_size",
            "Steps written by one statement of the group commit (PostgreSQL)",
            buckets=BATCHES,
            registry=r,
        )
        self.held = Gauge(
            "orchestrator_runner_executions_held",
            "Executions this runner drives now",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.leases_lost = Counter(
            "orchestrator_runner_leases_lost_total",
            "Leases found lost by a heartbeat (taken over, cancelled or woken elsewhere)",
            registry=r,
        )
        self.takeovers = Counter(
            "orchestrator_runner_takeovers_total",
            "Claims of executions that had been taken over from a stopped runner before "
            "(their recovery count is above zero)",
            registry=r,
        )
        self.waiting = Gauge(
            "orchestrator_executions_waiting",
            "Executions parked while they wait for a person or a sub-workflow (database)",
            registry=r,
            multiprocess_mode="max",
        )
        self.claim_lag = Gauge(
            "orchestrator_claim_lag_seconds",
            "Age of the oldest execution that could be claimed now (database)",
            registry=r,
            multiprocess_mode="max",
        )
        self.socket_clients = Gauge(
            "orchestrator_socketio_clients",
            "Socket.IO connections on /workflows",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.socket_subscriptions = Gauge(
            "orchestrator_socketio_subscriptions",
            "Executions followed by Socket.IO connections",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.events_emitted = Counter(
            "orchestrator_socketio_events_emitted_total",
            "Execution events handed to Socket.IO, by event name",
            ["event"],
            registry=r,
        )
        self.events_dropped = Counter(
            "orchestrator_socketio_events_dropped_total",
            "Execution events that could not be handed to Socket.IO (clients catch up)",
            registry=r,
        )
        self.progress_reports = Counter(
            "orchestrator_progress_reports_total",
            "Agent progress reports (token updates, thinking steps) by outcome: relayed to "
            "clients, or dropped (their node was not running: late, duplicate, unknown)",
            ["outcome"],
            registry=r,
        )
        self.schedule_ticks = Counter(
            "orchestrator_schedule_ticks_total",
            "Schedule ticks fired, by outcome: started, or refused (the workflow could not run)",
            ["outcome"],
            registry=r,
        )
        self.retention_deleted = Counter(
            "orchestrator_retention_deleted_total",
            "Executions deleted by retention, with their node executions and events",
            registry=r,
        )
        self.retention_compacted = Counter(
            "orchestrator_retention_compacted_total",
            "Executions whose events retention compacted",
            registry=r,
        )
        self.retention_failures = Counter(
            "orchestrator_retention_failures_total",
            "Retention sweeps that failed (tried again at the next interval)",
            registry=r,
        )
        self.http_duration = Histogram(
            "orchestrator_http_request_duration_seconds",
            "REST request latency by route template",
            ["method", "route", "status_class"],
            buckets=(*FAST, 5, 10),
            registry=r,
        )
        self._database_read_at = 0.0
        # Children by label values, found once: `labels()` takes a lock and builds a key.
        self._attempts: dict[tuple[str, str], Any] = {}
        self._durations: dict[tuple[str, str], Any] = {}
        self._emitted: dict[str, Any] = {}

    def emitted(self, event: str) -> None:
        """One event handed to Socket.IO."""
        child = self._emitted.get(event)
        if child is None:
            child = self._emitted[event] = self.events_emitted.labels(event)
        child.inc()

    def _attempt(self, kind: str, outcome: str, count: float = 1) -> None:
        child = self._attempts.get((kind, outcome))
        if child is None:
            child = self._attempts[kind, outcome] = self.node_attempts.labels(kind, outcome)
        child.inc(count)

    def observe(self, execution: WorkflowExecution, events: Sequence[DomainEvent]) -> None:
        """Count what a committed step of `execution` reports."""
        workflow = execution.workflow_id
        for event in events:
            if isinstance(event, NodeUpdated):
                self._node(event)
            elif isinstance(event, ExecutionUpdated):
                if event.status == ExecutionStatus.RUNNING:  # only `begin` reports RUNNING
                    self.executions_started.labels(workflow).inc()
                elif event.status.terminal:
                    status = event.status.value
                    self.executions_finished.labels(workflow, status).inc()
                    if execution.started_at is not None:
                        seconds = (event.at - execution.started_at).total_seconds()
                        self.execution_duration.labels(status).observe(max(0.0, seconds))

    def _node(self, event: NodeUpdated) -> None:
        node = event.node
        if not node.status.terminal or node.status == NodeStatus.SKIPPED:
            return
        kind = node.node_type.value
        failed = sum(1 for a in node.attempts if a.error is not None)
        last = {
            NodeStatus.COMPLETED: "succeeded",
            NodeStatus.FAILED: "failed",
            NodeStatus.CANCELLED: "cancelled",
        }[node.status]
        earlier = failed - (1 if node.status == NodeStatus.FAILED and failed else 0)
        if earlier > 0:
            self._attempt(kind, "failed", earlier)
        if node.attempts or node.status != NodeStatus.CANCELLED:
            self._attempt(kind, last)
        if node.started_at is not None and node.completed_at is not None:
            seconds = (node.completed_at - node.started_at).total_seconds()
            key = (kind, node.status.value)
            child = self._durations.get(key)
            if child is None:
                child = self._durations[key] = self.node_duration.labels(*key)
            child.observe(max(0.0, seconds))

    def call(self, service: str, status: int | None, seconds: float) -> None:
        """One call to agent-service or tool-service, answered with `status` (None: none)."""
        self.calls.labels(service, status_class(status)).inc()
        self.call_duration.labels(service).observe(seconds)

    async def read_database(self, engine: AsyncEngine, now: dt.datetime) -> None:
        """Refresh the gauges that only the database knows, at most every few seconds."""
        if time.monotonic() - self._database_read_at < DATABASE_GAUGES_TTL_S:
            return
        self._database_read_at = time.monotonic()
        claimable = (
            executions.c.status.in_(_ACTIVE),
            or_(executions.c.lease_expires_at.is_(None), executions.c.lease_expires_at < now),
            or_(executions.c.wake_at.is_(None), executions.c.wake_at <= now),
        )
        async with engine.connect() as connection:
            waiting = (
                await connection.execute(
                    select(func.count())
                    .select_from(executions)
                    .where(executions.c.status.in_(_ACTIVE), executions.c.wake_at > now)
                )
            ).scalar_one()
            oldest_claimable = select(func.min(executions.c.created_at)).where(*claimable)
            oldest = (await connection.execute(oldest_claimable)).scalar_one()
        self.waiting.set(waiting)
        lag = 0.0 if oldest is None else max(0.0, (now - _aware(oldest)).total_seconds())
        self.claim_lag.set(lag)

    def render(self) -> bytes:
        """The text exposition of every metric (of every process with a multiprocess dir)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
