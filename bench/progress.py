"""Agent progress relayed live: token and thinking reports in, Socket.IO events out.

Run: `.venv/bin/python -m bench.progress`, with PostgreSQL at TEST_DATABASE_URL (default: the
local server) and Redis at TEST_REDIS_URL (default redis://127.0.0.1:6379/0).

Two service processes share a fresh database and a Redis channel: A serves and runs nothing,
B serves and runs every execution. Each execution is one AGENT node of the stand-in's `slow`
agent (it waits, so the node stays RUNNING); the bench plays agent-service and posts the
progress reports itself, to A (so each one travels A -> bus -> B's driver -> commit -> Redis ->
A's clients), while one Socket.IO client per execution follows it through A.

1. One streaming agent: reports posted back to back (`--concurrency` in flight) for
   `--seconds`; the figure is the progress events the client received per second (token
   updates of a node are coalesced per flush, so fewer than the reports; thinking steps are
   all relayed).
2. `--executions` (100) executions streaming at once, each sent a thinking step every
   `--interval-ms` (250: 400 reports/s in all); each step carries its send time, and the
   client's receipt time minus it is the report-to-client latency (same machine, same clock).
   p50 / p99, and completeness: every step received once, in order.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import httpx
import socketio
from tests.databases import create_database, drop_database, url_for
from tests.flows import chain, create_active, execute, node
from tests.processes import base_url, running, service_process, standin_process

NAMESPACE = "/workflows"
TOKEN = "bench-internal-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


class Follower:
    """A Socket.IO client following one execution's progress events."""

    def __init__(self, url: str, execution_id: str) -> None:
        self.url = url
        self.execution_id = execution_id
        self.sio = socketio.AsyncClient(reconnection=False)
        self.thinking: list[tuple[dict[str, Any], float]] = []
        self.tokens = 0
        self.seqs: list[int] = []
        self.sio.on("*", self._record, namespace=NAMESPACE)

    def _record(self, name: str, data: Any = None) -> None:
        now = time.time()
        if not isinstance(data, dict) or data.get("executionId") != self.execution_id:
            return
        if name == "node:thinking":
            self.thinking.append((data, now))
        elif name == "node:token-update":
            self.tokens += 1
        if name in ("node:thinking", "node:token-update"):
            self.seqs.append(int(data["seq"]))

    async def start(self) -> None:
        """Connect and subscribe."""
        await self.sio.connect(
            self.url, namespaces=[NAMESPACE], transports=["websocket"], wait_timeout=30
        )
        ack = await self.sio.call(
            "subscribe", {"executionId": self.execution_id}, namespace=NAMESPACE, timeout=30
        )
        assert ack.get("ok"), ack

    async def close(self) -> None:
        """Disconnect."""
        await self.sio.disconnect()


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def wait_running(api: httpx.AsyncClient, execution_ids: list[str]) -> None:
    """Until each execution's agent node runs."""
    deadline = time.monotonic() + 60
    pending = set(execution_ids)
    while pending:
        for execution_id in list(pending):
            body = (await api.get(f"/workflows/executions/{execution_id}")).json()
            if any(
                n["nodeId"] == "agent" and n["status"] == "RUNNING" for n in body["nodeExecutions"]
            ):
                pending.discard(execution_id)
        assert time.monotonic() < deadline, f"{len(pending)} executions never ran"
        await asyncio.sleep(0.1)


async def throughput(args: argparse.Namespace, a_url: str, api: httpx.AsyncClient) -> None:
    """Figure 1: one streaming agent, reports back to back."""
    workflow_id = await create_active(api, agent_chain(args.seconds * 1000 + 20_000))
    execution_id = (await execute(api, workflow_id, {}))["id"]
    await wait_running(api, [execution_id])
    follower = Follower(a_url, execution_id)
    await follower.start()
    sent = 0
    stop_at = time.monotonic() + args.seconds

    async def sender(client: httpx.AsyncClient, lane: int) -> None:
        nonlocal sent
        step = lane
        while time.monotonic() < stop_at:
            step += args.concurrency
            body: dict[str, Any] = {"executionId": execution_id, "nodeId": "agent"}
            if step % 2:
                body |= {"step": step, "thought": "x"}
                route = "thinking-step"
            else:
                body |= {"inputTokens": 10, "outputTokens": step, "model": "bench"}
                route = "token-progress"
            response = await client.post(f"/internal/{route}", json=body, headers=HEADERS)
            assert response.status_code == 204, response.text
            sent += 1

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=a_url, timeout=30) as client:
        await asyncio.gather(*(sender(client, lane) for lane in range(args.concurrency)))
    elapsed = time.monotonic() - started
    await asyncio.sleep(2)  # the last flush and its fan-out
    received = len(follower.thinking) + follower.tokens
    await follower.close()
    await api.post(f"/workflows/executions/{execution_id}/cancel")
    print(f"one streaming agent, {args.seconds} s, {args.concurrency} reports in flight:")
    print(f"  reports posted           {sent / elapsed:10.0f} /s  ({sent})")
    print(
        f"  events relayed to client {received / elapsed:10.0f} /s  "
        f"({len(follower.thinking)} thinking, {follower.tokens} token updates)"
    )
    print(f"  in seq order             {follower.seqs == sorted(follower.seqs)!s:>10}")


async def latency(args: argparse.Namespace, a_url: str, api: httpx.AsyncClient) -> None:
    """Figure 2: many executions streaming at once."""
    # Long enough for the node to keep running however far the posting falls behind.
    workflow_id = await create_active(api, agent_chain(args.stream_s * 1000 * 6 + 60_000))
    ids = [(await execute(api, workflow_id, {"n": i}))["id"] for i in range(args.executions)]
    await wait_running(api, ids)
    followers = [Follower(a_url, execution_id) for execution_id in ids]
    for batch in range(0, len(followers), 25):
        await asyncio.gather(*(f.start() for f in followers[batch : batch + 25]))
    steps = max(1, args.stream_s * 1000 // args.interval_ms)

    async def stream(client: httpx.AsyncClient, execution_id: str) -> None:
        await asyncio.sleep(args.interval_ms / 1000 * (hash(execution_id) % 100) / 100)
        for step in range(1, steps + 1):
            body = {
                "executionId": execution_id,
                "nodeId": "agent",
                "step": step,
                "thought": repr(time.time()),
            }
            response = await client.post("/internal/thinking-step", json=body, headers=HEADERS)
            assert response.status_code == 204, response.text
            await asyncio.sleep(args.interval_ms / 1000)

    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=a_url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(stream(client, execution_id) for execution_id in ids))
    for _ in range(300):  # the last ones in flight: 30 s at most
        if all(len(f.thinking) >= steps for f in followers):
            break
        await asyncio.sleep(0.1)
    latencies = [(at - float(data["thought"])) * 1000 for f in followers for data, at in f.thinking]
    complete = all(
        [data["step"] for data, _ in f.thinking] == list(range(1, steps + 1)) for f in followers
    )
    for follower in followers:
        await follower.close()
    for execution_id in ids:
        await api.post(f"/workflows/executions/{execution_id}/cancel")
    rate = args.executions * 1000 / args.interval_ms
    print(
        f"{args.executions} executions streaming at once, a thinking step each every "
        f"{args.interval_ms} ms ({rate:.0f} reports/s), {steps} steps each:"
    )
    print(f"  report-to-client p50     {percentile(latencies, 0.5):10.1f} ms")
    print(f"  report-to-client p99     {percentile(latencies, 0.99):10.1f} ms")
    print(f"  received                 {len(latencies):10d} of {steps * args.executions}")
    print(f"  every step once, in order {complete!s:>9}")


async def outcomes(url: str) -> dict[str, int]:
    """orchestrator_progress_reports_total of one replica, by outcome."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        text = (await client.get("/metrics")).text
    found = {}
    for line in text.splitlines():
        if line.startswith("orchestrator_progress_reports_total{"):
            name, value = line.rsplit(" ", 1)
            found[name.split('"')[1]] = int(float(value))
    return found


def agent_chain(delay_ms: int) -> dict[str, Any]:
    """START -> a slow agent that keeps its node RUNNING for `delay_ms` -> END (its call may
    take that long: the default call timeout is 30 s)."""
    return chain(
        node(
            "agent",
            "AGENT",
            agentId="slow",
            inputMapping={"delayMs": delay_ms},
            timeoutMs=delay_ms + 60_000,
        )
    )


async def run(args: argparse.Namespace) -> None:
    """Start the processes, measure, stop them."""
    database = await create_database()
    redis_url = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    shared = {
        "REDIS_URL": redis_url,
        "REDIS_CHANNEL": f"orchestrator-bench-{uuid.uuid4().hex}",
        "INTERNAL_TOKEN": TOKEN,
        "MAX_CONCURRENT_EXECUTIONS": "500",
        "USER_EXECUTIONS_PER_MINUTE": "0",
        "USER_RUNNING_EXECUTIONS": "0",
    }
    try:
        with running(standin_process()) as standin:
            url = url_for(database)
            with (
                running(
                    service_process(url, base_url(standin), RUNNER_ENABLED="false", **shared)
                ) as a,
                running(service_process(url, base_url(standin), **shared)) as b,
            ):
                async with httpx.AsyncClient(base_url=base_url(a), timeout=60) as api:
                    await throughput(args, base_url(a), api)
                    await latency(args, base_url(a), api)
                    for name, process in (("A", a), ("B", b)):
                        print(f"  reports on {name}: {await outcomes(base_url(process))}")
    finally:
        await drop_database(database)


def main() -> None:
    """Parse the sizes and run."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.progress", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=int, default=10, help="figure 1: how long")
    parser.add_argument("--concurrency", type=int, default=8, help="figure 1: reports in flight")
    parser.add_argument("--executions", type=int, default=100, help="figure 2: how many")
    parser.add_argument("--interval-ms", type=int, default=250, help="figure 2: between steps")
    parser.add_argument("--stream-s", type=int, default=10, help="figure 2: how long each streams")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
