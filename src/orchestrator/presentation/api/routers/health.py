"""Liveness and readiness."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from orchestrator.infrastructure.db.engine import ping
from orchestrator.presentation.api.deps import ContextDep
from orchestrator.presentation.api.errors import envelope
from orchestrator.presentation.api.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health)
async def health() -> Health:
    """Liveness: the process answers."""
    return Health(status="ok", service="orchestration-service", timestamp=dt.datetime.now(dt.UTC))


@router.get("/health/ready", response_model=Readiness, responses={503: {}})
async def ready(context: ContextDep) -> Readiness | JSONResponse:
    """Readiness: the database answers."""
    if not await ping(context.engine):
        return JSONResponse(
            envelope("/health/ready", "GET", 503, "The database is unavailable"), status_code=503
        )
    return Readiness(
        status="ok",
        database="ok",
        runner="running" if context.runner_running else "off",
    )
