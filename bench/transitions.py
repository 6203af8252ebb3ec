"""Node transitions per second through the public API, against a raw asyncpg baseline.

Run: `make bench` (or `.venv/bin/python -m bench.transitions`), with PostgreSQL at
TEST_DATABASE_URL (default: the local server, user postgres). It starts the stand-in services
and the service as real processes on a fresh database, and prints one table.

- workloads: 10 TRANSFORM nodes, and 10 AGENT nodes against the `instant` stand-in
  (each workflow also has its START and END: 12 node transitions per execution);
- modes: sequential (executions one after another) and concurrent (N in flight);
- baseline: raw asyncpg doing one `BEGIN; UPDATE; INSERT; COMMIT` per step, the same
  number of steps, sequentially and with the same concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
from tests.databases import create_database, drop_database, plain, url_for
from tests.flows import agents, chain, create_active, node
from tests.processes import base_url, running, service_process, standin_process

from orchestrator.infrastructure.clients.http import build_http_client

NODES_PER_EXECUTION = 12


@dataclass
class Result:
    """One measured run."""

    name: str
    executions: int
    seconds: float
    per_node_ms: list[float]

    @property
    def transitions_per_s(self) -> float:
        """Node transitions per second."""
        return self.executions * NODES_PER_EXECUTION / self.seconds

    def percentile(self, q: float) -> float:
        """Percentile of the per-node step time, in ms."""
        if not self.per_node_ms:
            return float("nan")
        ordered = sorted(self.per_node_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Watcher:
    """One poller on the database that resolves a future when an execution finishes."""

    def __init__(self, db: asyncpg.Connection) -> None:
        self._db = db
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._task = asyncio.create_task(self._poll())

    async def wait(self, execution_id: str) -> None:
        """Until the execution reaches a terminal status."""
        future = asyncio.get_running_loop().create_future()
        self._waiting[execution_id] = future
        await future

    async def _poll(self) -> None:
        while True:
            if self._waiting:
                rows = await self._db.fetch(
                    "SELECT id FROM executions WHERE id = ANY($1::varchar[]) "
                    "AND status IN ('COMPLETED','FAILED','CANCELLED')",
                    list(self._waiting),
                )
                for row in rows:
                    self._waiting.pop(row["id"]).set_result(None)
            await asyncio.sleep(0.002)

    def close(self) -> None:
        """Stop polling."""
        self._task.cancel()


async def _per_node_ms(db: asyncpg.Connection, ids: list[str]) -> list[float]:
    rows = await db.fetch(
        "SELECT e.created_at, n.execution_id, n.finished_order, n.completed_at "
        "FROM node_executions n JOIN executions e ON e.id = n.execution_id "
        "WHERE n.execution_id = ANY($1::varchar[]) AND n.finished_order IS NOT NULL "
        "ORDER BY n.execution_id, n.finished_order",
        ids,
    )
    steps: list[float] = []
    previous: dict[str, Any] = {}
    for row in rows:
        before = previous.get(row["execution_id"], row["created_at"])
        steps.append((row["completed_at"] - before).total_seconds() * 1000)
        previous[row["execution_id"]] = row["completed_at"]
    return steps


async def _run_service(
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    name: str,
    workflow_id: str,
    count: int,
    in_flight: int,
) -> Result:
    watcher = Watcher(db)
    ids: list[str] = []
    semaphore = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with semaphore:
            response = await client.post(
                "/workflows/execute", json={"workflowId": workflow_id, "input": {"n": 1}}
            )
            assert response.status_code == 202, response.text
            execution_id = response.json()["id"]
            ids.append(execution_id)
            await watcher.wait(execution_id)

    started = time.perf_counter()
    if in_flight == 1:
        for _ in range(count):
            await one()
    else:
        await asyncio.gather(*(one() for _ in range(count)))
    seconds = time.perf_counter() - started
    watcher.close()
    await asyncio.sleep(0.01)
    failed = await db.fetchval(
        "SELECT count(*) FROM executions WHERE id = ANY($1::varchar[]) AND status <> 'COMPLETED'",
        ids,
    )
    assert failed == 0, f"{failed} executions did not complete"
    return Result(name, count, seconds, await _per_node_ms(db, ids))


async def _baseline(url: str, name: str, count: int, in_flight: int) -> Result:
    pool = await asyncpg.create_pool(plain(url), min_size=in_flight, max_size=in_flight)
    assert pool is not None
    async with pool.acquire() as setup:
        await setup.execute(
            "CREATE TABLE IF NOT EXISTS bench_exec (id uuid PRIMARY KEY, step int, "
            "updated_at timestamptz);"
            "CREATE TABLE IF NOT EXISTS bench_step (exec_id uuid, step int, payload jsonb, "
            "created_at timestamptz, PRIMARY KEY (exec_id, step))"
        )
    step_ms: list[float] = []
    semaphore = asyncio.Semaphore(in_flight)

    async def one() -> None:
        async with semaphore, pool.acquire() as conn:
            execution_id = uuid.uuid4()
            await conn.execute("INSERT INTO bench_exec VALUES ($1, 0, now())", execution_id)
            for step in range(1, NODES_PER_EXECUTION + 1):
                began = time.perf_counter()
                async with conn.transaction():
                    await conn.execute(
                        "UPDATE bench_exec SET step = $2, updated_at = now() WHERE id = $1",
                        execution_id,
                        step,
                    )
                    await conn.execute(
                        "INSERT INTO bench_step VALUES ($1, $2, $3, now())",
                        execution_id,
                        step,
                        json.dumps({"n": step}),
                    )
                step_ms.append((time.perf_counter() - began) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    seconds = time.perf_counter() - started
    await pool.close()
    return Result(name, count, seconds, step_ms)


def _print(rows: list[tuple[Result, Result]]) -> None:
    print(f"{'run':<34}{'trans/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'baseline/s':>12}{'ratio':>8}")
    for service, baseline in rows:
        print(
            f"{service.name:<34}{service.transitions_per_s:>10.0f}"
            f"{service.percentile(0.5):>9.2f}{service.percentile(0.95):>9.2f}"
            f"{baseline.transitions_per_s:>12.0f}"
            f"{service.transitions_per_s / baseline.transitions_per_s:>8.2f}"
        )


async def main(sequential: int, concurrent: int, in_flight: int) -> None:
    """Measure and print."""
    name = await create_database()
    url = url_for(name)
    try:
        with (
            running(standin_process()) as standin,
            running(
                service_process(url, base_url(standin), LOG_LEVEL="ERROR", DB_POOL_SIZE="20")
            ) as service,
        ):
            db = await asyncpg.connect(plain(url))
            # The load generator shares the two cores: it sends through the same cheap
            # transport the service uses, so that it leaves them to what is measured.
            async with build_http_client(in_flight + 10, 60.0) as client:
                client.base_url = httpx.URL(base_url(service))
                transform = await create_active(
                    client,
                    chain(
                        *(
                            node(f"t{i}", "TRANSFORM", expression="{'n': input.n + 1}")
                            for i in range(1, 11)
                        )
                    ),
                )
                agent = await create_active(client, agents(10, "instant"))
                await _run_service(client, db, "warm-up", transform, 20, 5)
                rows = []
                for label, workflow_id in (("TRANSFORM x10", transform), ("AGENT x10", agent)):
                    for mode, count, flight in (
                        ("sequential", sequential, 1),
                        (f"concurrent {in_flight}", concurrent, in_flight),
                    ):
                        result = await _run_service(
                            client, db, f"{label} {mode} ({count})", workflow_id, count, flight
                        )
                        baseline = await _baseline(url, "baseline", count, flight)
                        rows.append((result, baseline))
            await db.close()
        _print(rows)
    finally:
        await drop_database(name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=200)
    parser.add_argument("--concurrent", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.sequential, args.concurrent, args.in_flight))
