"""Outages on real processes: PostgreSQL unreachable for 10 s, and poison executions.

The services reach PostgreSQL through tests/proxy.py, which drops and refuses connections;
the machine's PostgreSQL itself is never stopped (other tests share it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import asyncpg
import httpx
import pytest

from tests import faults
from tests.flows import agents, create_active
from tests.processes import Process, base_url

pytestmark = pytest.mark.timeout(90)

COUNT = 20


async def test_database_outage_answers_503_and_loses_nothing(pg_url: str, standin: str) -> None:
    """For 10 s every connection is dropped and new ones refused: the API answers 503 with
    the error envelope, at once; the runner pauses, then resumes on its own; every execution
    completes and no completed node runs again."""
    report = await faults.database_outage(pg_url, standin, COUNT, topology="api+worker")
    summary = report.summary()
    notes = report.notes
    assert notes["probes"] >= 20, summary
    assert notes["bad probes"] == [], summary  # each a 503 with the envelope, no traceback
    assert notes["probe max s"] < 5, "a request hung instead of failing fast"
    assert notes["refused while cut"] > 0, "the services did try to reconnect"
    assert notes["recovered API s"] < 5, summary
    assert notes["runner retries logged"] > 0, "the runner noticed the outage"
    assert notes["tracebacks in logs"] == 0, summary
    assert report.completed == COUNT, summary
    assert report.stuck == 0, summary
    assert report.duplicates == [], summary
    assert notes["finished s after restore"] < 20, summary


async def _running_on(
    db: asyncpg.Connection, execution_id: str, process: Process, since: dt.datetime
) -> bool:
    """The process holds the execution and has (re)started its node a1 since `since`.

    Holding the lease is not enough: a runner that claims an execution past MAX_RECOVERIES
    fails it without running anything, and a kill in that moment would be one too many.
    """
    row = await db.fetchrow(
        """
        SELECT e.lease_owner, (n.attempts -> -1 ->> 's')::timestamptz AS attempt_started
        FROM executions e JOIN node_executions n ON n.execution_id = e.id AND n.node_id = 'a1'
        WHERE e.id = $1 AND e.status = 'RUNNING' AND n.status = 'RUNNING'
        """,
        execution_id,
    )
    return (
        row is not None
        and isinstance(row["lease_owner"], str)
        and f":{process.pid}:" in row["lease_owner"]
        and row["attempt_started"] >= since
    )


async def test_poison_execution_fails_after_max_recoveries(pg_url: str, standin: str) -> None:
    """Whichever runner picks one execution up dies (kill -9) while its node runs: after
    MAX_RECOVERIES recoveries it is FAILED with a clear error; the others complete."""
    max_recoveries = 2
    env = {**faults.FAST_LEASES, "LEASE_SECONDS": "2", "MAX_RECOVERIES": str(max_recoveries)}
    async with faults.clients(standin) as (client, _):
        db = await faults.connect(pg_url)
        try:
            with faults.Fleet(pg_url, standin, **env) as fleet:
                replica = await fleet.start()
                async with httpx.AsyncClient(base_url=base_url(replica), timeout=30) as one:
                    poison_wf = await create_active(
                        one, agents(1, "slow", inputMapping={"delayMs": 6000}), "poison"
                    )
                    healthy_wf = await create_active(
                        one, agents(2, "slow", inputMapping={"delayMs": 100}), "healthy"
                    )
                apis = [base_url(replica)]
                (poison,) = await faults.submit(client, lambda: apis, poison_wf, 1, "poison")
                healthy: list[str] = []
                kills = 0
                since = dt.datetime.min.replace(tzinfo=dt.UTC)
                deadline = time.monotonic() + 60
                while True:
                    # Others run alongside on every replica, and finish before it dies.
                    batch = await faults.submit(
                        client, lambda: apis, healthy_wf, 3, f"healthy-{kills}"
                    )
                    healthy += batch
                    await faults.wait_finished(db, batch, timeout=20)
                    while not await _running_on(db, poison, replica, since):
                        status = await db.fetchval(
                            "SELECT status FROM executions WHERE id = $1", poison
                        )
                        if status != "RUNNING" or time.monotonic() > deadline:
                            break
                        await asyncio.sleep(0.05)
                    else:
                        replica.kill()  # it crashes while the poison's node runs
                        since = await db.fetchval("SELECT now()")
                        kills += 1
                        replica = await fleet.start()
                        apis[0] = base_url(replica)
                        continue
                    break
                after = await faults.submit(client, lambda: apis, healthy_wf, 3, "healthy-after")
                healthy += after
                statuses = await faults.wait_finished(db, [*healthy, poison], timeout=20)
            row = await db.fetchrow(
                "SELECT status, error, recoveries FROM executions WHERE id = $1", poison
            )
            nodes = await db.fetch(
                "SELECT node_id, status FROM node_executions WHERE execution_id = $1", poison
            )
        finally:
            await db.close()
    assert kills == max_recoveries + 1
    assert row["status"] == "FAILED", dict(row)
    assert row["recoveries"] == max_recoveries + 1
    assert f"after {max_recoveries + 1} recoveries" in row["error"], row["error"]
    assert {n["status"] for n in nodes if n["node_id"] == "a1"} <= {"CANCELLED", "FAILED"}
    assert [statuses[i] for i in healthy] == ["COMPLETED"] * len(healthy)
