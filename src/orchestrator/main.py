"""The composition root: FastAPI and Socket.IO as one ASGI app, and the runtime they share."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import socketio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.application.executions import ExecutionServices, Subworkflows
from orchestrator.application.nodes import NodeWork
from orchestrator.application.ports import EventPublisher, RunnerSignals
from orchestrator.domain.engine import Limits
from orchestrator.domain.execution import WorkflowExecution
from orchestrator.domain.values import ValueLimits
from orchestrator.domain.workflow import Definition
from orchestrator.infrastructure.bus import Bus, BusSignals, build_bus
from orchestrator.infrastructure.clients.http import AgentClient, ToolClient, build_http_client
from orchestrator.infrastructure.clients.retry import TenacityRetrier, retry_conflicts
from orchestrator.infrastructure.clock import SystemClock
from orchestrator.infrastructure.db.engine import create_engine, migrate
from orchestrator.infrastructure.db.repositories import SqlUnitOfWork
from orchestrator.infrastructure.expressions.pool import BoundedEvaluator
from orchestrator.infrastructure.health import DependencyHealth
from orchestrator.infrastructure.metrics import Metrics
from orchestrator.infrastructure.progress import ProgressRelay
from orchestrator.infrastructure.realtime.publisher import SocketIOPublisher, build_server
from orchestrator.infrastructure.retention import Retention
from orchestrator.infrastructure.runner.runner import Runner, RunnerConfig, lease_of, new_owner_id
from orchestrator.infrastructure.runner.store import RunnerStore
from orchestrator.infrastructure.scheduler import Scheduler
from orchestrator.infrastructure.tracing import enabled as tracing_enabled
from orchestrator.presentation.api import errors, openapi
from orchestrator.presentation.api.deps import AppContext
from orchestrator.presentation.api.middleware import (
    BodyLimit,
    RequestId,
    RequestMetrics,
    RequestSpan,
)
from orchestrator.presentation.api.routers import (
    executions,
    health,
    internal,
    retention,
    schedules,
    templates,
    usage,
    webhooks,
    workflows,
)
from orchestrator.presentation.api.routers import metrics as metrics_route
from orchestrator.presentation.auth import Authenticator
from orchestrator.presentation.fair_use import FairUse
from orchestrator.presentation.gateway import Gateway
from orchestrator.settings import Settings

log = logging.getLogger(__name__)


class NoRunner:
    """Signals for a process that runs no executions itself (another process's runner will)."""

    def created(self, execution: WorkflowExecution, definition: Definition) -> None:
        """Another process's runner claims it at its next poll."""

    def cancelled(self, execution_id: str) -> None:
        """Nothing in flight here."""

    def woken(self, execution_id: str) -> None:
        """Another process's runner claims it at its next poll."""


@dataclass
class Runtime:
    """What the API and the runner share in one process."""

    settings: Settings
    engine: AsyncEngine
    http: httpx.AsyncClient
    runner: Runner | None
    evaluator: BoundedEvaluator | None
    services: ExecutionServices
    bus: Bus
    signals: BusSignals
    progress: ProgressRelay
    scheduler: Scheduler | None = None
    retention: Retention | None = None

    @classmethod
    async def start(
        cls,
        settings: Settings,
        publisher: EventPublisher,
        with_runner: bool,
        metrics: Metrics | None = None,
    ) -> Runtime:
        """Connect, migrate if asked, and start the runner if asked."""
        engine = create_engine(settings.database_url, settings.db_pool_size)
        if settings.auto_migrate:
            await migrate(engine)
        http = build_http_client(settings.http_max_connections)
        clock = SystemClock()
        runner: Runner | None = None
        evaluator: BoundedEvaluator | None = None
        children = Subworkflows(settings.max_subworkflow_depth, settings.auth_mode != "none")
        # Listening before the runner claims anything: nothing meant for it is missed.
        bus = build_bus(settings.database_url)
        await bus.start()
        if with_runner:
            config = RunnerConfig(
                max_concurrent=settings.max_concurrent_executions,
                lease_seconds=settings.lease_seconds,
                heartbeat_seconds=settings.heartbeat_seconds,
                poll_interval_s=settings.poll_interval_ms / 1000,
                max_recoveries=settings.max_recoveries,
                execution_timeout_ms=settings.execution_timeout,
                limits=Limits(
                    ValueLimits(settings.max_value_depth, settings.max_node_output_bytes),
                    settings.max_execution_state_bytes,
                    settings.model_prices,
                ),
                metrics=metrics,
                progress_flush_s=settings.progress_flush_ms / 1000,
            )
            evaluator = BoundedEvaluator(
                timeout_ms=settings.expression_timeout_ms,
                workers=settings.expression_workers,
                memory_mb=settings.expression_memory_mb,
                max_result_bytes=settings.max_node_output_bytes,
            )
            await evaluator.start()
            # A reply carries the output as JSON text, escaped: room for more than the output.
            reply_cap = 4 * settings.max_node_output_bytes
            work = NodeWork(
                AgentClient(
                    http, settings.agent_service_url, max_reply_bytes=reply_cap, metrics=metrics
                ),
                ToolClient(
                    http, settings.tool_service_url, max_reply_bytes=reply_cap, metrics=metrics
                ),
                TenacityRetrier(),
                evaluator,
                settings.max_retry_attempts,
                children,
            )
            store = RunnerStore(engine, new_owner_id(), lease_of(config), metrics)
            runner = Runner(store, work, publisher, clock, config)
            await runner.start()
        # Agents' progress reports reach the runner of their execution, on any replica.
        progress = ProgressRelay(engine, runner, bus, metrics)
        local: RunnerSignals = runner if runner is not None else NoRunner()
        # A cancel or wake-up reaches the runner that holds the execution, on any replica.
        signals = BusSignals(local, bus)
        if runner is not None:
            signals.follow(runner)
        lease_for = runner.lease_for if runner is not None else None
        services = ExecutionServices(
            uow_factory=lambda: SqlUnitOfWork(engine, lease_for),
            clock=clock,
            publisher=publisher,
            signals=signals,
            retry_conflicts=retry_conflicts,
            execution_timeout_s=settings.execution_timeout_s,
            observer=metrics,
        )
        children.services = services
        runtime = cls(settings, engine, http, runner, evaluator, services, bus, signals, progress)
        if with_runner:
            # Every process that runs executions also starts due ticks and sweeps old ones;
            # the database makes each happen once across them.
            runtime.scheduler = Scheduler(
                engine,
                services,
                clock,
                settings.schedule_poll_ms / 1000,
                settings.schedule_catch_up_max,
                metrics,
            )
            runtime.retention = Retention(
                engine,
                clock,
                settings.execution_retention_days,
                settings.event_retention_hours,
                settings.retention_interval_seconds,
                settings.retention_batch_size,
                metrics,
            )
            await runtime.scheduler.start()
            await runtime.retention.start()
        return runtime

    async def stop(self) -> None:
        """Stop starting ticks and sweeping, drain the runner, then close connections."""
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.retention is not None:
            await self.retention.stop()
        if self.runner is not None:
            await self.runner.stop(self.settings.shutdown_grace_seconds)
        await self.signals.settle()
        await self.bus.stop()
        if self.evaluator is not None:
            await self.evaluator.close()
        await self.http.aclose()
        await self.engine.dispose()


def create_app(settings: Settings | None = None) -> Any:
    """The ASGI app: REST under FastAPI, Socket.IO at /socket.io (namespace /workflows)."""
    settings = settings or Settings()
    sio = build_server(settings.cors_origin, settings.redis_url, settings.redis_channel)
    authenticator = Authenticator(settings)
    metrics = Metrics()
    runtime: Runtime | None = None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal runtime
        runtime = await Runtime.start(
            settings, SocketIOPublisher(sio, metrics), settings.runner_enabled, metrics
        )
        app.state.context = AppContext(
            settings=settings,
            engine=runtime.engine,
            uow_factory=runtime.services.uow_factory,
            clock=runtime.services.clock,
            executions=runtime.services,
            authenticator=authenticator,
            metrics=metrics,
            health=DependencyHealth(
                runtime.engine,
                runtime.http,
                redis_url=settings.redis_url,
                agent_service_url=settings.agent_service_url,
                tool_service_url=settings.tool_service_url,
            ),
            progress=runtime.progress,
            runner_running=runtime.runner is not None,
            fair_use=FairUse(settings, runtime.engine),
        )
        gateway.subscriptions = app.state.context.fair_use.subscriptions
        try:
            yield
        finally:
            await app.state.context.fair_use.close()
            await runtime.stop()

    api = FastAPI(
        title="Orchestration service",
        version="0.1.0",
        description="Stores AI-agent workflows and runs them durably against agent-service and "
        "tool-service; live progress over Socket.IO (namespace /workflows).",
        lifespan=lifespan,
    )
    errors.install(api)
    openapi.install(api)
    api.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origin,
        allow_methods=["*"],
        allow_headers=["*"],
        allow_credentials="*" not in settings.cors_origin,
    )
    api.include_router(metrics_route.router)
    # For agent-service, not browsers: never under API_PREFIX.
    api.include_router(internal.router)
    for router in (
        health.router,
        executions.router,
        schedules.router,
        webhooks.router,
        webhooks.hooks,
        templates.router,
        retention.router,
        usage.router,
        workflows.router,
    ):
        api.include_router(router)
        if settings.api_prefix:
            api.include_router(router, prefix=settings.api_prefix, include_in_schema=False)

    def services() -> ExecutionServices:
        if runtime is None:
            raise RuntimeError("the service is not started yet")
        return runtime.services

    gateway = Gateway(sio, services, settings.max_subscriptions_per_client, authenticator, metrics)
    limited: Any = RequestId(RequestMetrics(BodyLimit(api, settings.max_body_bytes), metrics))
    if tracing_enabled():
        limited = RequestSpan(limited)
    return socketio.ASGIApp(sio, other_asgi_app=limited, socketio_path="socket.io")


class NoPublisher:
    """For a worker without Redis: events are stored, not pushed."""

    async def publish(self, events: list[Any]) -> None:
        """Drop: clients catch up through the events route."""
