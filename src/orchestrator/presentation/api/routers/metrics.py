"""GET /metrics: the Prometheus text exposition of the service's metrics."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Response

from orchestrator.infrastructure.metrics import CONTENT_TYPE
from orchestrator.presentation.api.deps import ContextDep

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
async def metrics(context: ContextDep) -> Response:
    """Every metric (the database-derived gauges are read at most every few seconds)."""
    await context.metrics.read_database(context.engine, dt.datetime.now(dt.UTC))
    return Response(context.metrics.render(), media_type=CONTENT_TYPE)
