"""Schedules: 1,000 schedules due in the same minute on two replicas; ticks fired, doubled, lag.

Run: `.venv/bin/python -m bench.schedules` (`--schedules`, `--replicas`, `--poll-ms`), with
PostgreSQL at TEST_DATABASE_URL (default: the local server, user postgres). It starts the
stand-in services and `--replicas` service processes (each with its runner and scheduler) on
a fresh database, creates the schedules through the REST API, all with a daily cron whose
tick is the same coming minute (at least `--lead-s` seconds away, so that creating them is
done before), and waits for the tick in real time (up to about 90 s).

It then counts, from the database, the ticks that started an execution, those that started
more than one (doubled) and those that started none (lost), and prints the lag from each
tick's time (`trigger.scheduledFor`) to its execution's creation (the scheduler's part) and
to its start by a runner (`started_at`): p50, p95 and max. Exits 1 if a tick was lost or
doubled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import sys
import time
from collections import Counter

import asyncpg
import httpx
from tests.databases import create_database, drop_database, plain, url_for
from tests.flows import agents
from tests.processes import Process, base_url, running, service_process, standin_process

CREATE_CONCURRENCY = 50
RECORD_DEADLINE_S = 120.0


def quantile(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of the values; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def target_minute(lead_s: float) -> dt.datetime:
    """The first whole UTC minute at least `lead_s` seconds from now."""
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lead_s)
    minute = soon.replace(second=0, microsecond=0)
    return minute if minute >= soon else minute + dt.timedelta(minutes=1)


async def create_schedules(urls: list[str], count: int, cron: str) -> list[str]:
    """`count` schedules of one workflow, created round-robin through the replicas."""
    gate = asyncio.Semaphore(CREATE_CONCURRENCY)
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(
            f"{urls[0]}/workflows",
            json={"name": "bench-schedules", "definition": agents(1), "status": "ACTIVE"},
        )
        response.raise_for_status()
        workflow_id = response.json()["id"]

        async def one(i: int) -> str:
            async with gate:
                created = await client.post(
                    f"{urls[i % len(urls)]}/workflows/{workflow_id}/schedules",
                    json={"cron": cron, "input": {"i": i}},
                )
                created.raise_for_status()
                return str(created.json()["id"])

        return list(await asyncio.gather(*(one(i) for i in range(count))))


async def wait_recorded(db: asyncpg.Connection, tick: dt.datetime) -> float:
    """Wait until no schedule is due at `tick` any more; seconds after the tick."""
    naive = tick.replace(tzinfo=None)
    deadline = time.monotonic() + RECORD_DEADLINE_S + max(0.0, (tick - now()).total_seconds())
    while time.monotonic() < deadline:
        if now() >= tick:
            pending = await db.fetchval(
                "SELECT count(*) FROM schedules WHERE next_run_at <= $1", naive
            )
            if pending == 0:
                return (now() - tick).total_seconds()
        await asyncio.sleep(0.05)
    raise SystemExit("the tick was not recorded by every schedule in time")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def wait_started(db: asyncpg.Connection, count: int) -> None:
    """Wait (bounded) until the runners started every execution."""
    deadline = time.monotonic() + RECORD_DEADLINE_S
    while time.monotonic() < deadline:
        started = await db.fetchval("SELECT count(*) FROM executions WHERE started_at IS NOT NULL")
        if started >= count:
            return
        await asyncio.sleep(0.1)


async def measure(args: argparse.Namespace, database_url: str, replicas: list[Process]) -> bool:
    """Create, wait for the tick, count and print; True when nothing was lost or doubled."""
    urls = [base_url(p) for p in replicas]
    tick = target_minute(args.lead_s)
    cron = f"{tick.minute} {tick.hour} * * *"
    began = time.monotonic()
    ids = await create_schedules(urls, args.schedules, cron)
    print(f"created {len(ids)} schedules ({cron!r}) in {time.monotonic() - began:.1f} s")
    if now() >= tick:
        raise SystemExit("creating the schedules took past their tick: raise --lead-s")
    print(f"waiting for the tick at {tick:%H:%M:%S} UTC ...")
    db = await asyncpg.connect(plain(database_url))
    try:
        all_recorded_s = await wait_recorded(db, tick)
        await wait_started(db, len(ids))
        rows = await db.fetch("SELECT trigger, created_at, started_at FROM executions")
    finally:
        await db.close()
    per_tick: Counter[tuple[str, str]] = Counter()
    created_lag: list[float] = []
    started_lag: list[float] = []
    for row in rows:
        trigger = json.loads(row["trigger"])
        per_tick[(trigger["scheduleId"], trigger["scheduledFor"])] += 1
        due = dt.datetime.strptime(trigger["scheduledFor"], "%Y-%m-%dT%H:%M:%SZ")
        created_lag.append((row["created_at"].replace(tzinfo=None) - due).total_seconds())
        if row["started_at"] is not None:
            started_lag.append((row["started_at"].replace(tzinfo=None) - due).total_seconds())
    expected = {(i, f"{tick:%Y-%m-%dT%H:%M:%SZ}") for i in ids}
    fired = len(expected & set(per_tick))
    doubled = sum(1 for n in per_tick.values() if n > 1)
    unexpected = len(set(per_tick) - expected)
    lost = len(expected) - fired
    table = [
        ("schedules / replicas / poll", f"{len(ids)} / {len(replicas)} / {args.poll_ms} ms"),
        ("ticks fired", str(fired)),
        ("ticks doubled", str(doubled)),
        ("ticks lost", str(lost)),
        ("unexpected ticks", str(unexpected)),
        ("all recorded after", f"{all_recorded_s:.2f} s"),
    ]
    for name, lags in (("created", created_lag), ("started", started_lag)):
        table.append(
            (
                f"lag to {name} p50 / p95 / max",
                f"{quantile(lags, 0.5):.3f} / {quantile(lags, 0.95):.3f} / "
                f"{max(lags, default=float('nan')):.3f} s",
            )
        )
    width = max(len(name) for name, _ in table)
    for name, value in table:
        print(f"{name:<{width}}  {value}")
    return lost == doubled == unexpected == 0


async def run(args: argparse.Namespace) -> bool:
    """Start the processes on a fresh database, measure, and stop everything."""
    database = await create_database()
    try:
        url = url_for(database)
        env = {"SCHEDULE_POLL_MS": str(args.poll_ms)}
        with contextlib.ExitStack() as stack:
            standin = stack.enter_context(running(standin_process()))
            first = stack.enter_context(running(service_process(url, base_url(standin), **env)))
            replicas = [first]
            for _ in range(args.replicas - 1):
                process = service_process(url, base_url(standin), **env)
                replicas.append(stack.enter_context(running(process)))
            return await measure(args, url, replicas)
    finally:
        await drop_database(database)


def main() -> None:
    """Parse the sizes and run."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.schedules", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--poll-ms", type=int, default=1000, help="SCHEDULE_POLL_MS")
    parser.add_argument(
        "--lead-s", type=float, default=30.0, help="the tick is at least this far ahead"
    )
    args = parser.parse_args()
    if not asyncio.run(run(args)):
        sys.exit(1)


if __name__ == "__main__":
    main()
