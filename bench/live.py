"""Live updates under load: Socket.IO clients following running executions.

Run: `.venv/bin/python -m bench.live` (defaults: 1000 clients over 100 executions, 10 per
execution), with PostgreSQL at TEST_DATABASE_URL (default: the local server, user postgres).
It starts the stand-in services and one service process on a fresh database, starts the
executions (a chain of `slow` agent nodes, ~15 s each), then connects the clients in batches
from a few client processes (one Python process cannot decode thousands of messages a second
and still time them fairly); each client subscribes to one execution and follows it to its end.

Measured:
- latency: the client's receipt time minus the event's `timestamp`, which the runner sets just
  before the commit of the state change the event reports (same machine, same clock: it is
  commit + publish + delivery + the client's decoding, a little more than commit to receipt);
  over every node:update / execution:update / execution:error received after the subscription
  (the snapshot that answers a subscription is not counted);
- completeness: per client, the events after its snapshot must be seq S+1..final, each once;
- the service's memory (VmRSS from /proc) before the clients connect, at its peak while they
  follow, and at the end; and its CPU time over the run.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import multiprocessing
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import socketio
from tests.databases import create_database, drop_database, url_for
from tests.flows import chain, create_active, execute, node
from tests.processes import base_url, running, service_process, standin_process

NAMESPACE = "/workflows"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
EXECUTION_EVENTS = {"execution:update", "node:update", "execution:error"}


@dataclass
class ClientResult:
    """What one client saw after its snapshot."""

    expected: int = 0
    received: int = 0
    in_order: bool = False
    finished: bool = False
    latencies_ms: list[float] = field(default_factory=list)


class BenchClient:
    """One socketio.AsyncClient following one execution."""

    def __init__(self, url: str, execution_id: str) -> None:
        self.url = url
        self.execution_id = execution_id
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, dict[str, Any], float]] = []
        self.finished = asyncio.Event()
        self.sio.on("*", self._record, namespace=NAMESPACE)

    def _record(self, name: str, data: Any = None) -> None:
        now = time.time()
        if name in EXECUTION_EVENTS and isinstance(data, dict):
            self.events.append((name, data, now))
            if name == "execution:update" and data.get("status") in TERMINAL:
                self.finished.set()

    async def start(self) -> None:
        """Connect and subscribe."""
        await self.sio.connect(
            self.url, namespaces=[NAMESPACE], transports=["websocket"], wait_timeout=30
        )
        ack = await self.sio.call(
            "subscribe", {"executionId": self.execution_id}, namespace=NAMESPACE, timeout=60
        )
        if not (isinstance(ack, dict) and ack.get("ok")):
            raise RuntimeError(f"subscription refused: {ack}")

    def result(self) -> ClientResult:
        """Latencies and completeness of what followed the snapshot."""
        result = ClientResult(finished=self.finished.is_set())
        if not self.events:
            return result
        snapshot, rest = self.events[0], self.events[1:]
        first = int(snapshot[1]["seq"]) + 1
        final = max([int(snapshot[1]["seq"]), *(int(e[1]["seq"]) for e in rest)])
        seqs = [int(e[1]["seq"]) for e in rest]
        result.expected = final - first + 1
        result.received = len(rest)
        result.in_order = seqs == list(range(first, final + 1))
        for _, data, received_at in rest:
            sent_at = dt.datetime.fromisoformat(data["timestamp"]).timestamp()
            result.latencies_ms.append((received_at - sent_at) * 1000)
        return result


async def _follow(
    url: str, execution_ids: list[str], batch: int, timeout_s: float
) -> tuple[list[ClientResult], float]:
    clients = [BenchClient(url, execution_id) for execution_id in execution_ids]
    started = time.monotonic()
    for i in range(0, len(clients), batch):
        await asyncio.gather(*(c.start() for c in clients[i : i + batch]))
    connect_s = time.monotonic() - started
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(c.finished.wait() for c in clients)), timeout=timeout_s
        )
    results = [c.result() for c in clients]
    await asyncio.gather(*(c.sio.disconnect() for c in clients), return_exceptions=True)
    return results, connect_s


def follow(
    url: str, execution_ids: list[str], batch: int, timeout_s: float
) -> tuple[list[ClientResult], float]:
    """In a client process: follow the executions, one client each; results and connect time."""
    return asyncio.run(_follow(url, execution_ids, batch, timeout_s))


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass  # it exited
    return 0


def cpu_s(pid: int) -> float:
    """User + system CPU time of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace) -> None:
    """Measure and print."""
    started = time.monotonic()
    database = await create_database()
    try:
        with (
            running(standin_process()) as standin,
            running(service_process(url_for(database), base_url(standin))) as service,
        ):
            await _measure(args, base_url(service), service.pid)
            stopping = time.monotonic()
    finally:
        await drop_database(database)
    print(
        f"(wall time {time.monotonic() - started:.0f} s, of which stopping the service and "
        f"the stand-ins {time.monotonic() - stopping:.1f} s)"
    )


async def _measure(args: argparse.Namespace, url: str, pid: int) -> None:
    nodes = [
        node("gate", "AGENT", agentId="slow", inputMapping={"delayMs": args.first_delay_ms}),
        *(
            node(f"n{i}", "AGENT", agentId="slow", inputMapping={"delayMs": args.delay_ms})
            for i in range(1, args.nodes + 1)
        ),
    ]
    async with httpx.AsyncClient(base_url=url, timeout=60) as api:
        workflow_id = await create_active(api, chain(*nodes), "bench-live")
        rss_before = rss_kib(pid)
        cpu_before = cpu_s(pid)

        async def start(i: int) -> dict[str, Any]:
            await asyncio.sleep(i * args.stagger_ms / 1000 / args.executions)
            return await execute(api, workflow_id, {"i": i})

        ids = list(await asyncio.gather(*(start(i) for i in range(args.executions))))
    execution_ids = [e["id"] for e in ids]
    assignments: list[list[str]] = [[] for _ in range(args.processes)]
    for i in range(args.clients):
        assignments[i % args.processes].append(execution_ids[i % len(execution_ids)])

    peak = rss_before
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, rss_kib(pid))
            await asyncio.sleep(0.2)

    sampler = asyncio.create_task(sample())
    context = multiprocessing.get_context("spawn")
    started = time.monotonic()
    with concurrent.futures.ProcessPoolExecutor(args.processes, mp_context=context) as pool:
        futures = [
            asyncio.wrap_future(pool.submit(follow, url, part, args.batch, args.timeout_s))
            for part in assignments
        ]
        outcomes = await asyncio.gather(*futures)
    elapsed = time.monotonic() - started
    sampling = False
    await sampler
    rss_after = rss_kib(pid)
    cpu_used = cpu_s(pid) - cpu_before

    results = [r for part, _ in outcomes for r in part]
    latencies = [ms for r in results for ms in r.latencies_ms]
    expected = sum(r.expected for r in results)
    received = sum(r.received for r in results)
    in_order = sum(r.in_order for r in results)
    finished = sum(r.finished for r in results)
    connect_s = max(c for _, c in outcomes)

    print(
        f"live updates: {args.clients} clients over {args.executions} executions "
        f"({args.clients // args.executions} per execution), {args.processes} client "
        f"process(es), {os.cpu_count()} CPU(s) shared by everything"
    )
    print(
        f"workflow: START, slow {args.first_delay_ms} ms, {args.nodes} x slow {args.delay_ms} ms, "
        f"END; starts spread over {args.stagger_ms} ms; clients connected in {connect_s:.1f} s; "
        f"run took {elapsed:.1f} s"
    )
    print("latency = client receipt - event timestamp (set by the runner just before its commit)")
    print()
    rows = [
        ("events received / expected", f"{received} / {expected}"),
        ("clients in order, none missing", f"{in_order} / {len(results)}"),
        ("clients that saw the end", f"{finished} / {len(results)}"),
        ("latency p50", f"{percentile(latencies, 0.50):.1f} ms"),
        ("latency p90", f"{percentile(latencies, 0.90):.1f} ms"),
        ("latency p99", f"{percentile(latencies, 0.99):.1f} ms"),
        ("latency max", f"{max(latencies, default=float('nan')):.1f} ms"),
        ("latency mean", f"{statistics.fmean(latencies) if latencies else float('nan'):.1f} ms"),
        ("service RSS before clients", f"{rss_before / 1024:.0f} MiB"),
        ("service RSS peak with clients", f"{peak / 1024:.0f} MiB"),
        ("service RSS at the end", f"{rss_after / 1024:.0f} MiB"),
        ("per client (peak - before)", f"{(peak - rss_before) / max(1, args.clients):.0f} KiB"),
        ("service CPU time over the run", f"{cpu_used:.1f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:>16}")


def main() -> None:
    """Parse the sizes and run."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.live", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--executions", type=int, default=100)
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--batch", type=int, default=50, help="clients connecting at once")
    parser.add_argument("--nodes", type=int, default=5, help="slow nodes after the first")
    parser.add_argument("--delay-ms", type=int, default=2000, help="each slow node's delay")
    parser.add_argument(
        "--first-delay-ms", type=int, default=5000, help="the first node's (lets clients connect)"
    )
    parser.add_argument(
        "--stagger-ms",
        type=int,
        default=2000,
        help="spread the executions' starts evenly over this time (0: all at once, so that "
        "their transitions come in bursts)",
    )
    parser.add_argument("--timeout-s", type=float, default=120.0)
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
