"""Waits: many executions parked on a PROMPT at once, their resumes, and a big FOR_EACH.

Run: `.venv/bin/python -m bench.waits` (`--waiting`, `--in-flight`, `--items`...), with
PostgreSQL at TEST_DATABASE_URL (default: the local server, user postgres). It starts the
service as a real process on a fresh database, with its default settings (no stand-ins: the
workflows call no agent and no tool), and measures, through an httpx client on the aiohttp
transport the service itself uses (cheap on CPU: the load shares the cores):

1. `--waiting` executions of START -> PROMPT -> END started through the REST API
   (`--in-flight` requests at a time): the time until every PROMPT is WAITING_INPUT (counted
   in the database), how many executions still hold a lease then and how long until none
   does (a waiting execution is parked: no lease, no task, no memory), and the service's RSS
   after start and warm-up, and once all are parked;
2. resuming them all (`--in-flight` at a time): resumes/s (HTTP 200s per second), the time
   until every execution is COMPLETED (counted in the database), and the RSS after;
3. one FOR_EACH over `--items` items, `--for-each-concurrency` at a time (a TRANSFORM body):
   the wall time until it is COMPLETED and the RSS before, after and at most meanwhile
   (sampled every `--sample-ms`).

RSS is VmRSS (/proc/<pid>/status) of the service's process; the RSS of its child processes
(the expression workers, which evaluate the TRANSFORMs) is shown beside it, summed.
Waiting is polling the database with a deadline (`--deadline`), never fixed sleeps. It prints
a table and what the service logged, and exits 1 if anything did not go as it should.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from tests.databases import create_database, drop_database, plain, url_for
from tests.flows import create_active, edge, node
from tests.processes import base_url, free_port, running, service_process

from orchestrator.infrastructure.clients.http import build_http_client

POLL_S = 0.1
PROGRESS_S = 30.0
WARM_UP = 20
ASK = "ask"
LOGGED = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback")

APPROVAL = {
    "nodes": [
        node("start", "START"),
        node(ASK, "PROMPT", prompt="Publish {{title}}?"),
        node("end", "END"),
    ],
    "edges": [edge("start", ASK), edge(ASK, "end")],
}


def for_each(concurrency: int, max_items: int) -> dict[str, Any]:
    """START -> FOR_EACH input.items (body: TRANSFORM item * 2) -> END."""
    return {
        "nodes": [
            node("start", "START"),
            node(
                "each",
                "FOR_EACH",
                collection="input.items",
                concurrency=concurrency,
                maxItems=max_items,
            ),
            node("double", "TRANSFORM", expression="item * 2"),
            node("end", "END"),
        ],
        "edges": [
            edge("start", "each"),
            edge("each", "double", sourceHandle="body"),
            edge("each", "end", sourceHandle="exit"),
        ],
    }


def rss_mb(pid: int) -> float:
    """VmRSS of a process, in MiB (0 for a kernel thread or a process gone meanwhile)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the service's expression workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            children.append(int(entry.name))
    return children


@dataclass(frozen=True)
class Memory:
    """The RSS of the service's process, and of its child processes together."""

    service: float
    children: float

    @classmethod
    def of(cls, pid: int) -> Memory:
        """Read it now."""
        return cls(rss_mb(pid), sum(rss_mb(child) for child in children_of(pid)))

    def __str__(self) -> str:
        return f"{self.service:.1f} (+{self.children:.1f} in child processes)"


def peak(samples: list[Memory]) -> Memory:
    """The largest of each."""
    return Memory(max(m.service for m in samples), max(m.children for m in samples))


@contextlib.asynccontextmanager
async def rss_peak(pid: int, every_s: float) -> AsyncIterator[list[Memory]]:
    """Sample the RSS every `every_s` meanwhile (and at both ends)."""
    samples = [Memory.of(pid)]

    async def sample() -> None:
        while True:
            await asyncio.sleep(every_s)
            samples.append(Memory.of(pid))

    task = asyncio.create_task(sample())
    try:
        yield samples
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        samples.append(Memory.of(pid))


async def poll_until(
    what: str,
    count: Callable[[], Awaitable[int]],
    done: Callable[[int], bool],
    deadline_s: float,
) -> tuple[int, float]:
    """Poll `count` until `done(count)`, at most `deadline_s` s; the last count and the time.

    Returns when the deadline passes too (the caller reports the shortfall).
    """
    began = time.perf_counter()
    last_report = began
    while True:
        value = await count()
        now = time.perf_counter()
        if done(value) or now - began > deadline_s:
            return value, now - began
        if now - last_report >= PROGRESS_S:
            print(f"  {what}: {value} after {now - began:.0f} s", flush=True)
            last_report = now
        await asyncio.sleep(POLL_S)


async def bounded(count: int, in_flight: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Run one(0..count-1) with at most `in_flight` at a time; the seconds it took."""
    numbers = iter(range(count))

    async def worker() -> None:
        for number in numbers:
            await one(number)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return time.perf_counter() - began


@dataclass
class Row:
    """One line of the table."""

    what: str
    value: str


@dataclass
class Results:
    """The table, and what went wrong."""

    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, what: str, value: str) -> None:
        """A line of the table."""
        self.rows.append(Row(what, value))
        print(f"  {what}: {value}", flush=True)

    def check(self, ok: bool, problem: str) -> None:
        """Note a problem unless `ok`."""
        if not ok:
            self.problems.append(problem)
            print(f"  PROBLEM: {problem}", flush=True)


class Bench:
    """The three measurements against one running service."""

    def __init__(
        self,
        args: argparse.Namespace,
        client: httpx.AsyncClient,
        db: asyncpg.Connection,
        pid: int,
        results: Results,
    ) -> None:
        self.args = args
        self.client = client
        self.db = db
        self.pid = pid
        self.results = results

    async def _count(self, sql: str, *params: Any) -> int:
        value = await self.db.fetchval(sql, *params)
        return int(value)

    async def start(
        self, workflow_id: str, count: int, data: Callable[[int], Any]
    ) -> tuple[list[str], Counter[str], float]:
        """POST /workflows/execute `count` times; the ids, the failures and the seconds."""
        ids: list[str] = []
        failures: Counter[str] = Counter()

        async def one(number: int) -> None:
            try:
                response = await self.client.post(
                    "/workflows/execute", json={"workflowId": workflow_id, "input": data(number)}
                )
            except httpx.TransportError as exc:
                failures[type(exc).__name__] += 1
                return
            if response.status_code != 202:
                failures[f"HTTP {response.status_code}"] += 1
                return
            ids.append(response.json()["id"])

        seconds = await bounded(count, self.args.in_flight, one)
        return ids, failures, seconds

    async def resume_all(self, ids: list[str]) -> tuple[int, Counter[str], float]:
        """Answer every PROMPT; the 200s, the other answers and the seconds."""
        answers: Counter[str] = Counter()

        async def one(number: int) -> None:
            try:
                response = await self.client.post(
                    f"/workflows/executions/{ids[number]}/nodes/{ASK}/resume",
                    json={"input": f"yes {number}"},
                )
            except httpx.TransportError as exc:
                answers[type(exc).__name__] += 1
                return
            answers[f"HTTP {response.status_code}"] += 1

        seconds = await bounded(len(ids), self.args.in_flight, one)
        ok = answers.pop("HTTP 200", 0)
        return ok, answers, seconds

    async def statuses(self, ids: list[str]) -> Counter[str]:
        """The executions' statuses."""
        rows = await self.db.fetch(
            "SELECT status, count(*) AS n FROM executions WHERE id = ANY($1::varchar[]) "
            "GROUP BY status",
            ids,
        )
        return Counter({row["status"]: int(row["n"]) for row in rows})

    async def completed(self, ids: list[str], deadline_s: float) -> tuple[int, float]:
        """Poll until every execution is terminal; how many COMPLETED and the time."""
        terminal = await poll_until(
            "terminal",
            lambda: self._count(
                "SELECT count(*) FROM executions WHERE id = ANY($1::varchar[]) "
                "AND status IN ('COMPLETED', 'FAILED', 'CANCELLED')",
                ids,
            ),
            lambda n: n >= len(ids),
            deadline_s,
        )
        return (await self.statuses(ids))["COMPLETED"], terminal[1]

    async def warm_up(self, approval: str, loop: str) -> None:
        """A few approvals through wait and resume, and a small FOR_EACH."""
        ids, failures, _ = await self.start(approval, WARM_UP, lambda n: {"title": f"w{n}"})
        self.results.check(not failures, f"warm-up: execute failed {dict(failures)}")
        waiting, _ = await poll_until(
            "warm-up waiting",
            lambda: self._count(
                "SELECT count(*) FROM node_executions WHERE status = 'WAITING_INPUT' "
                "AND execution_id = ANY($1::varchar[])",
                ids,
            ),
            lambda n: n >= len(ids),
            self.args.deadline,
        )
        self.results.check(waiting == len(ids), f"warm-up: {waiting}/{len(ids)} waiting")
        ok, others, _ = await self.resume_all(ids)
        self.results.check(ok == len(ids), f"warm-up: resume answered {dict(others)}")
        small, failures, _ = await self.start(loop, 1, lambda n: {"items": list(range(10))})
        self.results.check(not failures, f"warm-up: execute failed {dict(failures)}")
        done, _ = await self.completed(ids + small, self.args.deadline)
        self.results.check(
            done == len(ids) + len(small), f"warm-up: {done}/{len(ids) + 1} COMPLETED"
        )

    async def waits(self, approval: str) -> list[str]:
        """Measurement 1: N executions waiting at once; their ids."""
        r, n = self.results, self.args.waiting
        print(f"{n} executions to wait at once...", flush=True)
        r.add("RSS after start + warm-up (MiB)", f"{Memory.of(self.pid)}")
        async with rss_peak(self.pid, self.args.sample_ms / 1000) as samples:
            began = time.perf_counter()
            ids, failures, post_s = await self.start(approval, n, lambda i: {"title": f"t{i}"})
            r.check(not failures, f"execute failed: {dict(failures)}")
            waiting, _ = await poll_until(
                "WAITING_INPUT",
                lambda: self._count(
                    "SELECT count(*) FROM node_executions WHERE status = 'WAITING_INPUT'"
                ),
                lambda count: count >= len(ids),
                self.args.deadline,
            )
            all_waiting_s = time.perf_counter() - began
            leased_then = await self._count(
                "SELECT count(*) FROM executions WHERE lease_owner IS NOT NULL "
                "AND status = 'RUNNING'"
            )
            leased, unleased_s = await poll_until(
                "holding a lease",
                lambda: self._count(
                    "SELECT count(*) FROM executions WHERE lease_owner IS NOT NULL "
                    "AND status = 'RUNNING'"
                ),
                lambda count: count == 0,
                self.args.deadline,
            )
        r.add("executes accepted (202)", f"{len(ids)} in {post_s:.1f} s, {len(ids) / post_s:.0f}/s")
        r.add(
            "all WAITING_INPUT (from 1st execute)",
            f"{waiting} in {all_waiting_s:.1f} s, {waiting / all_waiting_s:.0f} executes/s",
        )
        r.add("holding a lease when all waited", str(leased_then))
        r.add("holding a lease after", f"{leased} ({unleased_s:.1f} s later)")
        statuses = await self.statuses(ids)
        r.add("execution statuses while waiting", repr(dict(sorted(statuses.items()))))
        r.add(f"RSS with {n} waiting (MiB)", f"{Memory.of(self.pid)}")
        r.add("RSS max while starting them (MiB)", str(peak(samples)))
        r.check(waiting == n, f"{waiting}/{n} WAITING_INPUT within {self.args.deadline:g} s")
        r.check(leased == 0, f"{leased} executions still hold a lease while waiting")
        r.check(statuses["RUNNING"] == len(ids), f"not all RUNNING while waiting: {statuses}")
        return ids

    async def resumes(self, ids: list[str]) -> None:
        """Measurement 2: resume them all."""
        r = self.results
        print(f"resuming {len(ids)}...", flush=True)
        async with rss_peak(self.pid, self.args.sample_ms / 1000) as samples:
            began = time.perf_counter()
            ok, others, resume_s = await self.resume_all(ids)
            completed, _ = await self.completed(ids, self.args.deadline)
            all_s = time.perf_counter() - began
        r.add("resumes answered 200", f"{ok} in {resume_s:.1f} s, {ok / resume_s:.0f} resumes/s")
        r.add(
            "all COMPLETED (from 1st resume)",
            f"{completed} in {all_s:.1f} s, {completed / all_s:.0f} completions/s",
        )
        r.add("RSS after (MiB)", f"{Memory.of(self.pid)}")
        r.add("RSS max while resuming (MiB)", str(peak(samples)))
        r.check(ok == len(ids) and not others, f"resume answers besides 200: {dict(others)}")
        r.check(completed == len(ids), f"{completed}/{len(ids)} COMPLETED")

    async def loop(self, loop: str) -> None:
        """Measurement 3: one FOR_EACH over many items."""
        r, items = self.results, self.args.items
        print(f"FOR_EACH over {items} items...", flush=True)
        r.add("RSS before FOR_EACH (MiB)", f"{Memory.of(self.pid)}")
        async with rss_peak(self.pid, self.args.sample_ms / 1000) as samples:
            began = time.perf_counter()
            ids, failures, _ = await self.start(loop, 1, lambda n: {"items": list(range(items))})
            completed, _ = await self.completed(ids, self.args.deadline)
            wall_s = time.perf_counter() - began
        r.add(
            f"FOR_EACH {items} items, {self.args.for_each_concurrency} at a time",
            f"{'COMPLETED' if completed else 'not COMPLETED'} in {wall_s:.2f} s, "
            f"{items / wall_s:.0f} items/s",
        )
        r.add("RSS max during FOR_EACH (MiB)", f"{peak(samples)}, {len(samples)} samples")
        r.add("RSS after FOR_EACH (MiB)", f"{Memory.of(self.pid)}")
        r.check(not failures, f"FOR_EACH: execute failed {dict(failures)}")
        if ids:
            row = await self.db.fetchrow(
                "SELECT status, error, output FROM executions WHERE id = $1", ids[0]
            )
            results = _json(row["output"]) if row["output"] is not None else None
            r.check(
                completed == 1 and results == [i * 2 for i in range(items)],
                f"FOR_EACH ended {row['status']} ({row['error']}): not with {items} doubled items",
            )


def _json(value: Any) -> Any:
    """A JSON column's value, decoded if asyncpg hands it over as text."""
    return json.loads(value) if isinstance(value, str) else value


def log_counts(log: str) -> str:
    """What the service logged at WARNING and above."""
    lines = log.splitlines()
    counts = {
        level: sum(1 for line in lines if f" {level} " in line)
        for level in ("WARNING", "ERROR", "CRITICAL")
    }
    counts["tracebacks"] = log.count("Traceback")
    return ", ".join(f"{n} {name}" for name, n in counts.items())


def report(results: Results, service_log: str, failed: bool) -> None:
    """The table, the problems, and what the service logged (its tail if anything failed)."""
    width = max((len(row.what) for row in results.rows), default=10) + 2
    print()
    print(f"{'measure':<{width}}value")
    for row in results.rows:
        print(f"{row.what:<{width}}{row.value}")
    for problem in results.problems:
        print(f"PROBLEM: {problem}")
    print(f"service log: {log_counts(service_log)}")
    lines = [line for line in service_log.splitlines() if line.strip()]
    failed = failed or bool(results.problems)
    shown = lines[-30:] if failed else [line for line in lines if LOGGED.search(line)][:20]
    if shown:
        print("service log tail:" if failed else "service log, WARNING and above:")
        print("\n".join(shown))


async def main(args: argparse.Namespace) -> bool:
    """Measure and print; True when everything went as it should."""
    name = await create_database()
    url = url_for(name)
    results = Results()
    service_log = ""
    exit_code: int | None = None
    try:
        # Nothing here calls an agent or a tool: the stand-ins' URL points at nobody.
        nobody = f"http://127.0.0.1:{free_port()}"
        with running(service_process(url, nobody, PYTHONFAULTHANDLER="1")) as service:
            try:
                db = await asyncpg.connect(plain(url))
                try:
                    # The load generator shares the cores with the service: it sends through
                    # the cheap transport the service uses (as bench.transitions does).
                    async with build_http_client(args.in_flight, 60.0) as client:
                        client.base_url = httpx.URL(base_url(service))
                        approval = await create_active(client, APPROVAL, name="approval")
                        loop = await create_active(
                            client,
                            for_each(args.for_each_concurrency, max(args.items, 10)),
                            name="for-each",
                        )
                        bench = Bench(args, client, db, service.pid, results)
                        await bench.warm_up(approval, loop)
                        ids = await bench.waits(approval)
                        await bench.resumes(ids)
                        await bench.loop(loop)
                finally:
                    await db.close()
            finally:
                service_log = service.log_since_start()
                exit_code = None if service.alive else service.wait(0)
    finally:
        await drop_database(name)
        report(results, service_log, failed=sys.exc_info()[0] is not None)
    if exit_code is not None:
        print(f"the service died during the bench (exit code {exit_code})")
    return exit_code is None and not results.problems


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=10_000, help="executions waiting at once")
    parser.add_argument("--in-flight", type=int, default=50, help="requests at a time")
    parser.add_argument("--items", type=int, default=1000, help="items of the FOR_EACH")
    parser.add_argument("--for-each-concurrency", type=int, default=10)
    parser.add_argument("--sample-ms", type=float, default=100.0, help="RSS sampling period")
    parser.add_argument(
        "--deadline", type=float, default=600.0, help="s each wait for the database may take"
    )
    sys.exit(0 if asyncio.run(main(parser.parse_args())) else 1)
