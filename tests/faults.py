"""Fault scenarios on real processes, shared by the end-to-end tests and `bench.faults`.

Each scenario starts the service processes it needs on a fresh database, runs `count`
executions of a 5-node workflow against the `slow` stand-in, injects its fault, waits for
every execution to finish, and returns a `Report`: what completed, what was lost, which
calls were repeated, and how long the survivors took to take the orphaned executions over.

- a *duplicate* is an Idempotency-Key (executionId:nodeId) whose node had COMPLETED in the
  database before the fault and was called again: work done twice;
- a *repeated key* is any key called more than once, including a node that was in flight at
  the fault and was run again under the same key (the callee can drop it; expected);
- the *takeover latency* of an execution held by the failed process is the time from the
  fault to the first claim of it by another runner (its lease token changes), observed by
  polling the database every 20 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.databases import plain
from tests.flows import agents, create_active
from tests.processes import Process, base_url, service_process
from tests.proxy import Proxy, proxied_url, proxy_for

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")
NODES = 5
NODE_DELAY_MS = 300
WORKFLOW = agents(NODES, "slow", inputMapping={"delayMs": NODE_DELAY_MS})

# Small settings keep the scenarios short.
LEASE_S = 3.0
HEARTBEAT_S = 0.5
FAST_LEASES = {"LEASE_SECONDS": str(LEASE_S), "HEARTBEAT_SECONDS": str(HEARTBEAT_S)}
GRACE_S = 3.0
# Rolling restarts use a long lease: if a stopping replica did not release its leases, its
# executions would wait this long, which the takeover latency shows at once.
ROLLING_LEASE_S = 20.0
ROLLING = {
    "LOG_LEVEL": "INFO",
    "LEASE_SECONDS": str(ROLLING_LEASE_S),
    "HEARTBEAT_SECONDS": "1",
    "SHUTDOWN_GRACE_SECONDS": str(GRACE_S),
}
ACTIVE_SQL = "status IN ('PENDING', 'RUNNING')"


# --- the report ------------------------------------------------------------------------------


@dataclass
class Report:
    """The outcome of one scenario."""

    scenario: str
    executions: int
    statuses: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str | None] = field(default_factory=dict)
    recoveries: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    repeated: dict[str, int] = field(default_factory=dict)
    takeover_s: list[float] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def completed(self) -> int:
        """Executions COMPLETED."""
        return sum(1 for s in self.statuses.values() if s == "COMPLETED")

    @property
    def failed(self) -> int:
        """Executions FAILED or CANCELLED."""
        return sum(1 for s in self.statuses.values() if s in ("FAILED", "CANCELLED"))

    @property
    def stuck(self) -> int:
        """Executions still PENDING or RUNNING at the deadline."""
        return sum(1 for s in self.statuses.values() if s not in TERMINAL)

    @property
    def lost(self) -> int:
        """Executions that did not complete: failed, stuck, or never created."""
        return self.executions - self.completed

    def takeover(self, q: float) -> float:
        """A quantile of the takeover latency, in seconds (NaN when nothing was taken over)."""
        return quantile(self.takeover_s, q)

    def summary(self) -> str:
        """One line for assertion messages."""
        return (
            f"{self.scenario}: {self.completed}/{self.executions} completed, {self.failed} "
            f"failed, {self.stuck} stuck, {len(self.duplicates)} duplicates, "
            f"{len(self.repeated)} repeated keys, takeover p50 {self.takeover(0.5):.2f} s "
            f"p95 {self.takeover(0.95):.2f} s, notes {self.notes}"
        )


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile by nearest rank; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


# --- processes -------------------------------------------------------------------------------


class Fleet:
    """The processes of a scenario; every one of them is stopped at the end, whatever happens."""

    def __init__(self, database_url: str, standin_url: str, **env: str) -> None:
        self.database_url = database_url
        self.standin_url = standin_url
        self.env = env
        self.processes: list[Process] = []

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self.processes):
            with contextlib.suppress(Exception):
                process.stop()

    async def start(self, command: str = "serve", **env: str) -> Process:
        """Start one more service process (serve or worker) and wait until it is ready."""
        process = service_process(
            self.database_url, self.standin_url, command, **{**self.env, **env}
        )
        self.processes.append(process)
        await asyncio.to_thread(process.start)
        return process


def owner_pattern(process: Process) -> str:
    """A LIKE pattern for the lease owner ids of a process (host:pid:random)."""
    return f"%:{process.pid}:%"


# --- the database ----------------------------------------------------------------------------


async def connect(database_url: str) -> asyncpg.Connection:
    """A direct connection (never through a proxy), for observing."""
    return await asyncpg.connect(plain(database_url))


async def completed_keys(db: asyncpg.Connection, ids: Sequence[str]) -> set[str]:
    """Keys of the AGENT/TOOL nodes of these executions that are COMPLETED in the database."""
    rows = await db.fetch(
        "SELECT execution_id, node_id FROM node_executions WHERE execution_id = ANY($1) "
        "AND status = 'COMPLETED' AND node_type IN ('AGENT', 'TOOL')",
        list(ids),
    )
    return {f"{r['execution_id']}:{r['node_id']}" for r in rows}


async def running_keys(db: asyncpg.Connection, ids: Sequence[str]) -> set[str]:
    """Keys of the AGENT/TOOL nodes of these executions that are RUNNING in the database."""
    rows = await db.fetch(
        "SELECT execution_id, node_id FROM node_executions WHERE execution_id = ANY($1) "
        "AND status = 'RUNNING' AND node_type IN ('AGENT', 'TOOL')",
        list(ids),
    )
    return {f"{r['execution_id']}:{r['node_id']}" for r in rows}


async def held_by(db: asyncpg.Connection, process: Process) -> dict[str, int]:
    """Unfinished executions leased by the process, with their lease tokens."""
    rows = await db.fetch(
        f"SELECT id, lease_token FROM executions WHERE lease_owner LIKE $1 AND {ACTIVE_SQL}",
        owner_pattern(process),
    )
    return {r["id"]: r["lease_token"] for r in rows}


async def wait_progress(
    db: asyncpg.Connection, ids: Sequence[str], nodes: int, timeout: float
) -> None:
    """Until `nodes` AGENT nodes of these executions have COMPLETED (the work is under way)."""
    deadline = time.monotonic() + timeout
    while len(await completed_keys(db, ids)) < nodes:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {nodes} nodes completed in {timeout} s")
        await asyncio.sleep(0.05)


def halted(process: Process) -> bool:
    """The process is frozen (SIGSTOP) or has exited."""
    if not process.alive:
        return True
    try:
        stat = Path(f"/proc/{process.pid}/stat").read_text()
    except OSError:
        return True
    # The state follows the command name, which is in parentheses and may hold spaces.
    return stat.rpartition(")")[2].split()[0] in ("T", "t")


async def wait_landed(db: asyncpg.Connection, process: Process, timeout: float) -> None:
    """Until the process is frozen or dead and the database has finished every statement it
    had begun by then: whatever the process sent before its fault has landed."""
    deadline = time.monotonic() + timeout
    while not halted(process):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {process.pid} did not stop in {timeout} s")
        await asyncio.sleep(0.01)
    since = await db.fetchval("SELECT clock_timestamp()")
    # A statement waiting to send its answer to a frozen process (ClientWrite) has done what
    # it can until the process reads again.
    while await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
        "AND state = 'active' AND query_start <= $1 "
        "AND wait_event IS DISTINCT FROM 'ClientWrite'",
        since,
    ):
        if time.monotonic() > deadline:
            raise AssertionError(f"statements begun before the fault still ran after {timeout} s")
        await asyncio.sleep(0.01)


async def wait_completed(db: asyncpg.Connection, keys: set[str], timeout: float) -> None:
    """Until the AGENT/TOOL nodes with these keys (executionId:nodeId) are all COMPLETED."""
    ids = sorted({key.split(":", 1)[0] for key in keys})
    deadline = time.monotonic() + timeout
    while not keys <= await completed_keys(db, ids):
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(keys)} nodes did not all complete in {timeout} s")
        await asyncio.sleep(0.05)


async def wait_holding(db: asyncpg.Connection, process: Process, timeout: float) -> None:
    """Until the process holds the lease of at least one unfinished execution."""
    deadline = time.monotonic() + timeout
    while not await held_by(db, process):
        if time.monotonic() > deadline:
            raise AssertionError(f"process {process.pid} took no execution in {timeout} s")
        await asyncio.sleep(0.05)


async def wait_finished(
    db: asyncpg.Connection, ids: Sequence[str], timeout: float
) -> dict[str, str]:
    """Until every execution is terminal (or the timeout); returns the statuses."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await db.fetch("SELECT id, status FROM executions WHERE id = ANY($1)", list(ids))
        statuses = {r["id"]: r["status"] for r in rows}
        done = len(statuses) == len(ids) and all(s in TERMINAL for s in statuses.values())
        if done or time.monotonic() > deadline:
            return statuses
        await asyncio.sleep(0.2)


class TakeoverWatch:
    """Polls the leases of the executions a failed process held; notes when each is claimed."""

    def __init__(self, db: asyncpg.Connection, held: dict[str, int], fault_at: float) -> None:
        self.held = dict(held)
        self.fault_at = fault_at
        self.latency_s: dict[str, float] = {}
        self.finished_unclaimed: set[str] = set()
        self._db = db
        self._task = asyncio.create_task(self._poll())

    @property
    def done(self) -> bool:
        """Every held execution was claimed by another runner or finished."""
        return len(self.latency_s) + len(self.finished_unclaimed) >= len(self.held)

    async def wait(self, timeout: float) -> None:
        """Until done, or the timeout."""
        with contextlib.suppress(TimeoutError):
            # The poller ends by itself once done.
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        await self.close()

    async def close(self) -> None:
        """Stop polling (and raise what the poller raised)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _poll(self) -> None:
        while not self.done:
            rows = await self._db.fetch(
                "SELECT id, lease_token, status FROM executions WHERE id = ANY($1)",
                list(self.held),
            )
            now = time.monotonic()
            for row in rows:
                execution_id = row["id"]
                if execution_id in self.latency_s or execution_id in self.finished_unclaimed:
                    continue
                if row["lease_token"] != self.held[execution_id]:
                    self.latency_s[execution_id] = now - self.fault_at
                elif row["status"] in TERMINAL:
                    self.finished_unclaimed.add(execution_id)
            await asyncio.sleep(0.02)


async def fill_report(
    report: Report,
    db: asyncpg.Connection,
    standin: httpx.AsyncClient,
    ids: Sequence[str],
    done_before_fault: set[str],
) -> Report:
    """Statuses, recoveries and the stand-in's call counts of these executions."""
    rows = await db.fetch(
        "SELECT id, status, error, recoveries, lease_token FROM executions WHERE id = ANY($1)",
        list(ids),
    )
    for row in rows:
        report.statuses[row["id"]] = row["status"]
        report.errors[row["id"]] = row["error"]
        report.recoveries[row["id"]] = row["recoveries"]
        report.tokens[row["id"]] = row["lease_token"]
    calls = await call_counts(standin, set(ids))
    report.repeated = {key: n for key, n in calls.items() if n > 1}
    report.duplicates = sorted(key for key in done_before_fault if calls.get(key, 0) > 1)
    report.notes["never called"] = len(await completed_keys(db, ids) - set(calls))
    return report


async def call_counts(standin: httpx.AsyncClient, ids: set[str]) -> Counter[str]:
    """How many calls the stand-ins received under each key of these executions."""
    response = await standin.get("/_calls")
    response.raise_for_status()
    counts: Counter[str] = Counter()
    for call in response.json()["calls"]:
        key = call.get("idempotencyKey")
        if isinstance(key, str) and key.split(":", 1)[0] in ids:
            counts[key] += 1
    return counts


# --- load ------------------------------------------------------------------------------------


async def submit(
    client: httpx.AsyncClient,
    apis: Callable[[], Sequence[str]],
    workflow_id: str,
    count: int,
    prefix: str,
    *,
    spread_s: float = 0.0,
    concurrency: int = 20,
    timeout: float = 60.0,
) -> list[str]:
    """Start `count` executions through the API replicas `apis()` lists at the time.

    Each carries an Idempotency-Key, so a request that fails (a replica stopping, a 503) is
    sent again to the next replica without creating a second execution. `spread_s` spaces
    the starts over that many seconds.
    """
    ids: list[str | None] = [None] * count
    semaphore = asyncio.Semaphore(concurrency)
    began = time.monotonic()

    async def one(i: int) -> None:
        await asyncio.sleep(spread_s * i / count)
        async with semaphore:
            deadline = time.monotonic() + timeout
            attempt = 0
            while True:
                live = apis()
                url = live[(i + attempt) % len(live)] if live else None
                attempt += 1
                if url is not None:
                    with contextlib.suppress(httpx.TransportError):
                        response = await client.post(
                            f"{url}/workflows/execute",
                            json={"workflowId": workflow_id, "input": {"i": i}},
                            headers={"Idempotency-Key": f"{prefix}-{i}"},
                        )
                        if response.status_code == 202:
                            ids[i] = response.json()["id"]
                            return
                        assert response.status_code == 503, response.text
                if time.monotonic() > deadline:
                    raise AssertionError(f"execution {i} could not be started")
                await asyncio.sleep(0.1)

    await asyncio.gather(*(one(i) for i in range(count)))
    assert time.monotonic() - began < timeout + spread_s
    return [i for i in ids if i is not None]


@contextlib.asynccontextmanager
async def clients(standin_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """An HTTP client for the services (absolute URLs) and one on the stand-ins."""
    limits = httpx.Limits(max_connections=100)
    async with (
        httpx.AsyncClient(timeout=30, limits=limits) as api,
        httpx.AsyncClient(base_url=standin_url, timeout=30) as standin,
    ):
        yield api, standin


async def new_workflow(api_url: str) -> str:
    """The scenarios' workflow, ACTIVE."""
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as client:
        return await create_active(client, WORKFLOW, name="faults")


# --- scenarios -------------------------------------------------------------------------------


async def kill_9_with_restart(database_url: str, standin_url: str, count: int) -> Report:
    """One replica, kill -9 mid-flight, a new replica started at once on the same database."""
    report = Report("kill -9, restart", count)
    db = await connect(database_url)
    try:
        async with clients(standin_url) as (client, standin):
            with Fleet(database_url, standin_url, **FAST_LEASES) as fleet:
                first = await fleet.start()
                workflow_id = await new_workflow(base_url(first))
                ids = await submit(client, lambda: [base_url(first)], workflow_id, count, "k9")
                await wait_progress(db, ids, count, timeout=60)
                first.kill()
                fault_at = time.monotonic()
                done_before = await completed_keys(db, ids)
                watch = TakeoverWatch(db, await held_by(db, first), fault_at)
                await fleet.start()  # the replacement
                report.notes["restart s"] = round(time.monotonic() - fault_at, 2)
                await watch.wait(timeout=30)
                report.takeover_s = list(watch.latency_s.values())
                await wait_finished(db, ids, timeout=60)
                report.notes["orphaned"] = len(watch.held)
            return await fill_report(report, db, standin, ids, done_before)
    finally:
        await db.close()


async def _two_replicas_and_a_fault(
    report: Report,
    database_url: str,
    standin_url: str,
    count: int,
    fault: str,
) -> Report:
    """Replicas A and B, executions started through both; then A is killed or frozen."""
    db = await connect(database_url)
    try:
        async with clients(standin_url) as (client, standin):
            with Fleet(database_url, standin_url, LOG_LEVEL="INFO", **FAST_LEASES) as fleet:
                victim, survivor = await asyncio.gather(fleet.start(), fleet.start())
                workflow_id = await new_workflow(base_url(survivor))
                apis = [base_url(victim), base_url(survivor)]
                ids = await submit(client, lambda: apis, workflow_id, count, fault)
                await wait_progress(db, ids, count, timeout=60)
                if fault == "kill":
                    victim.kill()
                else:
                    victim.signal(signal.SIGSTOP)
                fault_at = time.monotonic()
                await wait_landed(db, victim, timeout=30)
                done_before = await completed_keys(db, ids)
                in_flight = await running_keys(db, ids)
                held = await held_by(db, victim)
                report.notes["orphaned"] = len(held)
                watch = TakeoverWatch(db, held, fault_at)
                await watch.wait(timeout=LEASE_S * 4)
                report.takeover_s = list(watch.latency_s.values())
                if fault == "stop":
                    # Let the survivor redo the in-flight nodes; then wake the victim, whose
                    # in-flight calls now return into a lease it lost.
                    await wait_completed(db, in_flight, timeout=60)
                    victim.signal(signal.SIGCONT)
                    report.notes["victim answers after SIGCONT"] = await _answers(client, victim)
                await wait_finished(db, ids, timeout=60)
                if fault == "stop":
                    await asyncio.sleep(HEARTBEAT_S * 2)  # let it log what it did
                    report.notes["victim alive"] = victim.alive
                    log = victim.log_since_start()
                    report.notes["victim: executions it stopped (lease lost)"] = log.count(
                        "lease lost or cancelled; stopping"
                    )
                    report.notes["victim tracebacks"] = log.count("Traceback")
                    if "Traceback" in log:
                        # The first one, so that a failure says why.
                        start = log.index("Traceback")
                        report.notes["victim's first traceback"] = log[start - 300 : start + 2500]
                    calls = await call_counts(standin, set(ids))
                    # Only the nodes in flight at the freeze may be run twice (by the victim
                    # before it froze, and by the survivor); any other repeated key would
                    # mean the victim kept working after it woke up.
                    report.notes["repeats beyond in-flight"] = sorted(
                        key for key, n in calls.items() if n > 1 and key not in in_flight
                    )
                    report.notes["keys called 3+ times"] = sum(1 for n in calls.values() if n > 2)
                    report.notes["in flight at fault"] = len(in_flight)
            return await fill_report(report, db, standin, ids, done_before)
    finally:
        await db.close()


async def _answers(client: httpx.AsyncClient, process: Process) -> bool:
    # Generous: a process just woken up on a busy machine has a backlog to work through.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if (await client.get(process.health_url, timeout=5)).status_code == 200:
                return True
        await asyncio.sleep(0.1)
    return False


async def takeover_without_restart(database_url: str, standin_url: str, count: int) -> Report:
    """Replicas A and B; A is killed (-9) and never restarted; B takes its executions over."""
    return await _two_replicas_and_a_fault(
        Report("takeover, no restart", count), database_url, standin_url, count, "kill"
    )


async def sigstop_fencing(database_url: str, standin_url: str, count: int) -> Report:
    """Replicas A and B; A is frozen past its lease, B takes over, then A is woken up."""
    return await _two_replicas_and_a_fault(
        Report("SIGSTOP fencing", count), database_url, standin_url, count, "stop"
    )


async def rolling_restart(
    database_url: str, standin_url: str, count: int, replicas: int = 3, spread_s: float = 12.0
) -> Report:
    """`replicas` replicas under load; each in turn gets SIGTERM and is replaced by a new one.

    The lease is long (ROLLING_LEASE_S): only released leases are picked up at once.
    """
    report = Report(f"rolling restart x{replicas}", count)
    db = await connect(database_url)
    try:
        async with clients(standin_url) as (client, standin):
            with Fleet(database_url, standin_url, **ROLLING) as fleet:
                live = list(await asyncio.gather(*(fleet.start() for _ in range(replicas))))
                workflow_id = await new_workflow(base_url(live[0]))
                load = asyncio.create_task(
                    submit(
                        client,
                        lambda: [base_url(p) for p in live],
                        workflow_id,
                        count,
                        "rolling",
                        spread_s=spread_s,
                    )
                )
                done_before: set[str] = set()
                exits: list[tuple[int, float]] = []
                await wait_holding(db, live[0], timeout=30)
                for old in list(live):
                    live.remove(old)  # out of the load balancer first, then SIGTERM
                    old.signal(signal.SIGTERM)
                    fault_at = time.monotonic()
                    done_before |= await _done_so_far(db)
                    watch = TakeoverWatch(db, await held_by(db, old), fault_at)
                    code = await asyncio.to_thread(old.wait, GRACE_S + 15)
                    exits.append((code, round(time.monotonic() - fault_at, 2)))
                    report.notes.setdefault("runner stopped (logged)", []).append(
                        re.search(r"runner \S+ stopped", old.log_since_start()) is not None
                    )
                    await watch.wait(timeout=ROLLING_LEASE_S * 2)
                    report.takeover_s += list(watch.latency_s.values())
                    report.notes.setdefault("handed over", []).append(len(watch.latency_s))
                    live.append(await fleet.start())
                    await asyncio.sleep(1.0)
                ids = await load
                await wait_finished(db, ids, timeout=60)
                report.notes["exit codes, seconds"] = exits
            return await fill_report(report, db, standin, ids, done_before)
    finally:
        await db.close()


async def _done_so_far(db: asyncpg.Connection) -> set[str]:
    rows = await db.fetch(
        "SELECT execution_id, node_id FROM node_executions "
        "WHERE status = 'COMPLETED' AND node_type IN ('AGENT', 'TOOL')"
    )
    return {f"{r['execution_id']}:{r['node_id']}" for r in rows}


@dataclass
class Probe:
    """One API call during the outage."""

    route: str
    status: int | None
    seconds: float
    body: str


async def database_outage(
    database_url: str,
    standin_url: str,
    count: int,
    outage_s: float = 10.0,
    topology: str = "serve+worker",
) -> Report:
    """The services reach PostgreSQL through a proxy, which drops every connection and
    refuses new ones for `outage_s`; then lets them through again.

    topology "serve+worker": an API replica with a runner and a worker (two runners);
    "api+worker": an API replica without runner and one worker (the only runner).
    """
    report = Report(f"database outage {outage_s:.0f} s", count)
    db = await connect(database_url)
    proxy: Proxy = proxy_for(plain(database_url))
    try:
        proxy.start()
        through = proxied_url(database_url, proxy)
        async with clients(standin_url) as (client, standin):
            with Fleet(through, standin_url, LOG_LEVEL="INFO", **FAST_LEASES) as fleet:
                runner = "false" if topology == "api+worker" else "true"
                api, worker = await asyncio.gather(
                    fleet.start(RUNNER_ENABLED=runner), fleet.start("worker")
                )
                workflow_id = await new_workflow(base_url(api))
                ids = await submit(client, lambda: [base_url(api)], workflow_id, count, "outage")
                await wait_progress(db, ids, count, timeout=60)
                proxy.cut()
                fault_at = time.monotonic()
                done_before = await completed_keys(db, ids)
                probes = await _probe_outage(client, base_url(api), ids[0], workflow_id, outage_s)
                proxy.restore()
                report.notes["recovered API s"] = await _until_api_answers(client, base_url(api))
                await wait_finished(db, ids, timeout=90)
                report.notes["finished s after restore"] = round(
                    time.monotonic() - fault_at - outage_s, 1
                )
                report.notes["probes"] = len(probes)
                report.notes["probe statuses"] = dict(Counter(p.status for p in probes))
                report.notes["probe max s"] = round(max(p.seconds for p in probes), 2)
                report.notes["bad probes"] = [
                    (p.route, p.status, p.body[:300]) for p in probes if not _is_503(p)
                ]
                report.notes["refused while cut"] = proxy.refused
                logs = api.log_since_start() + worker.log_since_start()
                report.notes["runner retries logged"] = sum(
                    logs.count(s) for s in ("claim failed", "heartbeat failed", "commit failed")
                )
                report.notes["tracebacks in logs"] = logs.count("Traceback")
            return await fill_report(report, db, standin, ids, done_before)
    finally:
        proxy.stop()
        await db.close()


def _is_503(probe: Probe) -> bool:
    if probe.status != 503 or "Traceback" in probe.body or 'File "' in probe.body:
        return False
    try:
        body = json.loads(probe.body)
    except ValueError:
        return False
    return bool(
        body.get("statusCode") == 503
        and body.get("error") == "Service Unavailable"
        and isinstance(body.get("message"), str)
        and "timestamp" in body
        and "path" in body
    )


async def _probe_outage(
    client: httpx.AsyncClient, api: str, execution_id: str, workflow_id: str, outage_s: float
) -> list[Probe]:
    """Call the API's database routes over and over until the outage ends."""
    routes: list[tuple[str, str, dict[str, Any] | None]] = [
        ("GET", f"/workflows/executions/{execution_id}", None),
        ("GET", "/workflows/executions", None),
        ("GET", "/workflows", None),
        ("POST", "/workflows/execute", {"workflowId": workflow_id, "input": {"during": True}}),
        ("GET", "/health/ready", None),
    ]
    probes: list[Probe] = []
    end = time.monotonic() + outage_s
    index = 0
    while time.monotonic() < end:
        method, path, body = routes[index % len(routes)]
        index += 1
        began = time.monotonic()
        try:
            response = await client.request(method, f"{api}{path}", json=body, timeout=15)
            probes.append(Probe(f"{method} {path}", response.status_code, 0.0, response.text))
        except httpx.HTTPError as exc:
            probes.append(Probe(f"{method} {path}", None, 0.0, repr(exc)))
        probes[-1].seconds = time.monotonic() - began
        await asyncio.sleep(0.25)
    return probes


async def _until_api_answers(client: httpx.AsyncClient, api: str) -> float:
    began = time.monotonic()
    while time.monotonic() - began < 30:
        with contextlib.suppress(httpx.TransportError):
            if (await client.get(f"{api}/workflows/executions", timeout=5)).status_code == 200:
                return round(time.monotonic() - began, 2)
        await asyncio.sleep(0.1)
    return float("inf")
