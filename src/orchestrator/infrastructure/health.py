"""Readiness probes of the service's dependencies, cached so that probes cannot hammer them.

The database and Redis (when REDIS_URL is set) gate readiness; agent-service and tool-service
(`GET {base}/health`) are reported, not gating: without them executions wait and retry, but
the API still serves. Every probe has its own short timeout and they run concurrently. A
report is kept for `ttl_s`; requests meanwhile get it, and requests during a refresh share
that one refresh.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

import httpx
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
CACHE_TTL_S = 5.0


@dataclass(frozen=True)
class Check:
    """One dependency's state: `error` when down, `http_status` for the HTTP services."""

    status: Literal["up", "down"]
    latency_ms: float
    gating: bool
    error: str | None = None
    http_status: int | None = None


@dataclass(frozen=True)
class HealthReport:
    """Every dependency's check, by name (database, redis, agentService, toolService)."""

    checks: dict[str, Check]
    checked_at: dt.datetime

    @property
    def ready(self) -> bool:
        """Every gating dependency is up."""
        return all(check.status == "up" for check in self.checks.values() if check.gating)


class HttpStatusError(Exception):
    """The health route answered, but not 2xx."""


class DependencyHealth:
    """The dependencies' states, probed at most once per `ttl_s`."""

    def __init__(
        self,
        engine: AsyncEngine,
        http: httpx.AsyncClient,
        *,
        redis_url: str | None,
        agent_service_url: str,
        tool_service_url: str,
        timeout_s: float = PROBE_TIMEOUT_S,
        ttl_s: float = CACHE_TTL_S,
    ) -> None:
        self._engine = engine
        self._http = http
        self._redis_url = redis_url
        self._agent_url = agent_service_url
        self._tool_url = tool_service_url
        self._timeout_s = timeout_s
        self._ttl_s = ttl_s
        self._cached: HealthReport | None = None
        self._cached_at = 0.0
        self._refresh: asyncio.Task[HealthReport] | None = None
        self._last_status: dict[str, str] = {}

    async def report(self) -> HealthReport:
        """The cached report while fresh; else one refresh, shared by concurrent callers."""
        if self._cached is not None and time.monotonic() - self._cached_at < self._ttl_s:
            return self._cached
        if self._refresh is None:
            self._refresh = asyncio.create_task(self._probe_all(), name="dependency-health")
        # Shielded: a caller that goes away does not cancel the refresh the others await.
        return await asyncio.shield(self._refresh)

    async def _probe_all(self) -> HealthReport:
        try:
            probes: dict[str, tuple[bool, Callable[[], Awaitable[int | None]]]] = {
                "database": (True, self._database)
            }
            if self._redis_url:
                probes["redis"] = (True, self._redis)
            probes["agentService"] = (False, lambda: self._service(self._agent_url))
            probes["toolService"] = (False, lambda: self._service(self._tool_url))
            results = await asyncio.gather(
                *(self._timed(gating, probe) for gating, probe in probes.values())
            )
            report = HealthReport(dict(zip(probes, results, strict=True)), dt.datetime.now(dt.UTC))
            self._log_changes(report)
            self._cached, self._cached_at = report, time.monotonic()
            return report
        finally:
            self._refresh = None

    async def _timed(self, gating: bool, probe: Callable[[], Awaitable[int | None]]) -> Check:
        began = time.perf_counter()
        status: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                status = await probe()
        except TimeoutError:
            error = f"no answer within {self._timeout_s:g} s"
        except HttpStatusError as exc:
            status, error = int(str(exc)), f"HTTP {exc}"
        except Exception as exc:
            # The class only: the message may name hosts or users, and the route is open.
            error = type(exc).__name__
        latency_ms = round((time.perf_counter() - began) * 1000, 1)
        return Check("down" if error else "up", latency_ms, gating, error, status)

    async def _database(self) -> None:
        async with self._engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def _redis(self) -> None:
        assert self._redis_url is not None
        client = aioredis.Redis.from_url(
            self._redis_url,
            socket_connect_timeout=self._timeout_s,
            socket_timeout=self._timeout_s,
        )
        try:
            await client.ping()
        finally:
            await client.aclose()

    async def _service(self, base_url: str) -> int:
        response = await self._http.get(f"{base_url.rstrip('/')}/health", timeout=self._timeout_s)
        if not response.is_success:
            raise HttpStatusError(str(response.status_code))
        return response.status_code

    def _log_changes(self, report: HealthReport) -> None:
        for name, check in report.checks.items():
            before = self._last_status.get(name)
            if check.status != before and (before is not None or check.status == "down"):
                level = logging.WARNING if check.status == "down" else logging.INFO
                log.log(level, "dependency %s is %s (%s)", name, check.status, check.error or "ok")
            self._last_status[name] = check.status
