"""Takes agents' progress reports to the runner that drives their execution.

A report reaches whichever replica the load balancer picks. If this process's runner drives
the execution, its driver takes the report at once; otherwise the report goes over the bus,
addressed to the lease owner read from the database (cached for a second: an execution
changes hands rarely), and only that runner takes it. A report whose execution no runner
holds (not started, parked, finished, unknown) is dropped and counted.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.domain.engine import ProgressReport
from orchestrator.infrastructure.bus import Bus, MessageTooLarge
from orchestrator.infrastructure.db.tables import executions
from orchestrator.infrastructure.metrics import Metrics
from orchestrator.infrastructure.runner.runner import Runner

PROGRESS_TOPIC = "progress"
OWNER_TTL_S = 1.0
OWNER_CACHE_SIZE = 10_000


class ProgressRelay:
    """The ProgressSink of a process: its runner (if it has one), else the bus."""

    def __init__(
        self,
        engine: AsyncEngine,
        runner: Runner | None,
        bus: Bus,
        metrics: Metrics | None = None,
    ) -> None:
        self._engine = engine
        self._runner = runner
        self._bus = bus
        self._metrics = metrics
        self._owners: OrderedDict[str, tuple[str | None, float]] = OrderedDict()
        if runner is not None:
            bus.subscribe(PROGRESS_TOPIC, self._heard)

    async def deliver(self, execution_id: str, report: ProgressReport) -> None:
        """Hand the report to the runner of its execution, here or over the bus."""
        if self._runner is not None and self._runner.progress(execution_id, report):
            self._count("relayed")
            return
        owner = await self._owner(execution_id)
        if owner is None or (self._runner is not None and owner == self._runner.owner):
            self._count("dropped")
            return
        message = {"owner": owner, "executionId": execution_id, **_encode(report)}
        try:
            await self._bus.publish(PROGRESS_TOPIC, message)
        except MessageTooLarge:
            self._count("dropped")
            return
        self._count("forwarded")

    def _heard(self, message: dict[str, Any]) -> None:
        """A report forwarded by another process: taken if this runner is its owner."""
        runner = self._runner
        if runner is None or message.get("owner") != runner.owner:
            return
        report = _decode(message)
        if report is None or not runner.progress(str(message.get("executionId")), report):
            self._count("dropped")
            return
        self._count("relayed")

    async def _owner(self, execution_id: str) -> str | None:
        cached = self._owners.get(execution_id)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        async with self._engine.connect() as connection:
            owner = (
                await connection.execute(
                    select(executions.c.lease_owner).where(
                        executions.c.id == execution_id,
                        executions.c.status.in_(("PENDING", "RUNNING")),
                    )
                )
            ).scalar_one_or_none()
        self._owners[execution_id] = (owner, time.monotonic() + OWNER_TTL_S)
        self._owners.move_to_end(execution_id)
        if len(self._owners) > OWNER_CACHE_SIZE:
            self._owners.popitem(last=False)
        return owner

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.progress_reports.labels(outcome).inc()


def _encode(report: ProgressReport) -> dict[str, Any]:
    return {
        "kind": report.kind,
        "nodeId": report.node_id,
        "data": report.data,
        "attempt": report.attempt,
        "loop": None if report.loop is None else list(report.loop),
    }


def _decode(message: dict[str, Any]) -> ProgressReport | None:
    try:
        loop = message.get("loop")
        return ProgressReport(
            kind=str(message["kind"]),
            node_id=str(message["nodeId"]),
            data=dict(message["data"]),
            attempt=message.get("attempt"),
            loop=None if loop is None else tuple(int(i) for i in loop),
        )
    except (KeyError, TypeError, ValueError):
        return None
