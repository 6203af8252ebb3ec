"""Liveness and readiness."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from orchestrator.infrastructure.health import HealthReport
from orchestrator.presentation.api.deps import ContextDep
from orchestrator.presentation.api.errors import envelope
from orchestrator.presentation.api.schemas import Health, WireModel

router = APIRouter(tags=["health"])


class DependencyCheck(WireModel):
    """One dependency's state."""

    status: Literal["up", "down"]
    latency_ms: float
    gating: bool
    http_status: int | None = None
    error: str | None = None


class Readiness(WireModel):
    """Answer of GET /health/ready."""

    status: Literal["ok", "unavailable"]
    runner: Literal["running", "off"]
    checks: dict[str, DependencyCheck]
    timestamp: dt.datetime


class NotReady(Readiness):
    """Answer of GET /health/ready with a gating dependency down: the error envelope too."""

    status_code: int
    error: str
    message: str
    path: str
    method: str


@router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok", service="orchestration-service", timestamp=dt.datetime.now(dt.UTC))


@router.get(
    "/health/ready",
    response_model=Readiness,
    response_model_exclude_none=True,
    responses={503: {"model": NotReady, "description": "A gating dependency is down"}},
)
async def ready(context: ContextDep) -> Readiness | JSONResponse:
    """Readiness: 200 when every gating dependency is up, else 503.

    `checks` holds one entry per dependency: `database` and, when REDIS_URL is set, `redis`
    gate readiness; `agentService` and `toolService` (`GET {base}/health`, up on a 2xx) are
    reported with `"gating": false` and never fail it. Each entry has `status` (`up` or
    `down`), `latencyMs` and `gating`; the HTTP services add `httpStatus` when they answered,
    and a dependency that is down adds a short `error`. Probes run concurrently, each within
    2 s; the report is kept 5 s (`timestamp`: when it was made), so probes cannot hammer the
    dependencies. `runner`: whether this process runs executions. The 503 carries the error
    envelope's fields as well (`statusCode`, `error`, `message`, `path`, `method`).
    """
    report = await context.health.report()
    answer = Readiness(
        status="ok" if report.ready else "unavailable",
        runner="running" if context.runner_running else "off",
        checks={name: DependencyCheck(**vars(check)) for name, check in report.checks.items()},
        timestamp=report.checked_at,
    )
    if report.ready:
        return answer
    body = envelope("/health/ready", "GET", 503, _unavailable(report))
    body.update(answer.model_dump(mode="json", exclude_none=True))
    return JSONResponse(body, status_code=503)


def _unavailable(report: HealthReport) -> str:
    down = [name for name, check in report.checks.items() if check.gating and check.status != "up"]
    if down == ["database"]:
        return "The database is unavailable"
    return f"Not ready: {', '.join(down)} unavailable"
