"""Scale-out on real processes and a real PostgreSQL: workers, takeover, fencing, shutdown.

The scenarios themselves live in tests/faults.py (bench/faults.py runs them with 100
executions); here they run with fewer, and each report is checked.
"""

from __future__ import annotations

import asyncio
import signal
import time

import asyncpg
import httpx
import pytest

from tests import faults
from tests.flows import agents, create_active, nodes_by_id, wait_node
from tests.processes import base_url

pytestmark = pytest.mark.timeout(90)

COUNT = 20
# The node the SIGTERM test cuts off: far longer than its 1 s grace.
NODE_MS = 5000


async def test_workers_run_what_any_api_replica_accepts(pg_url: str, standin: str) -> None:
    """API replicas without a runner accept executions; workers (no HTTP) run them."""
    async with faults.clients(standin) as (client, standin_client):
        with faults.Fleet(pg_url, standin, LOG_LEVEL="INFO") as fleet:
            apis = await asyncio.gather(
                fleet.start(RUNNER_ENABLED="false"), fleet.start(RUNNER_ENABLED="false")
            )
            urls = [base_url(api) for api in apis]
            for url in urls:
                ready = (await client.get(f"{url}/health/ready")).json()
                assert ready["runner"] == "off", ready
            workflow_id = await faults.new_workflow(urls[0])

            waiting = await faults.submit(client, lambda: urls, workflow_id, 10, "before")
            await asyncio.sleep(1.0)
            db = await faults.connect(pg_url)
            try:
                statuses = await faults.wait_finished(db, waiting, timeout=0)
                assert set(statuses.values()) == {"PENDING"}, "no runner runs anything yet"

                # Each worker drives at most 6 at a time, so both must take part.
                workers = await asyncio.gather(
                    fleet.start("worker", MAX_CONCURRENT_EXECUTIONS="6"),
                    fleet.start("worker", MAX_CONCURRENT_EXECUTIONS="6"),
                )
                more = await faults.submit(client, lambda: urls, workflow_id, 10, "after")
                ids = waiting + more
                statuses = await faults.wait_finished(db, ids, timeout=60)
                assert list(statuses.values()) == ["COMPLETED"] * len(ids), statuses
            finally:
                await db.close()

            calls = await faults.call_counts(standin_client, set(ids))
            assert len(calls) == len(ids) * faults.NODES
            assert set(calls.values()) == {1}, "every node was called exactly once"
            # httpx logs each outgoing call at INFO: only the workers called the agents.
            by_worker = [w.log_since_start().count("HTTP Request: POST") for w in workers]
            assert all(n > 0 for n in by_worker), by_worker
            assert sum(by_worker) == len(ids) * faults.NODES, by_worker
            assert not any("HTTP Request: POST" in api.log_since_start() for api in apis)
            assert not any(w.log_since_start().count("Traceback") for w in workers)


async def test_takeover_without_restart_within_the_lease(pg_url: str, standin: str) -> None:
    """kill -9 of one of two replicas: the other takes its executions over once the lease
    expires (not before), and finishes them without redoing completed nodes."""
    report = await faults.takeover_without_restart(pg_url, standin, COUNT)
    summary = report.summary()
    assert report.completed == COUNT, summary
    assert report.duplicates == [], summary
    orphaned = report.notes["orphaned"]
    assert orphaned > 0, summary
    assert len(report.takeover_s) == orphaned, summary
    # The victim renewed its lease at most a heartbeat before it died: nobody may claim
    # before the lease runs out, and the survivor claims at its next poll after that.
    lease, heartbeat = faults.LEASE_S, faults.HEARTBEAT_S
    assert min(report.takeover_s) >= lease - heartbeat - 0.3, summary
    assert max(report.takeover_s) <= lease + 1.5, summary
    assert sorted(report.recoveries.values()).count(1) == orphaned, summary
    # Only the nodes in flight at the kill were called again, each once more. (At the kill
    # none may be in flight: the victim's executions can all be between two steps.)
    assert len(report.repeated) <= orphaned, summary
    assert all(count == 2 for count in report.repeated.values()), summary


async def test_frozen_replica_is_fenced_after_it_wakes_up(pg_url: str, standin: str) -> None:
    """SIGSTOP past the lease, takeover, SIGCONT: the woken replica's writes are refused by
    the lease token, and it stops working on the executions it lost."""
    report = await faults.sigstop_fencing(pg_url, standin, COUNT)
    summary = report.summary()
    assert report.completed == COUNT, summary
    assert report.duplicates == [], summary
    orphaned = report.notes["orphaned"]
    assert orphaned > 0, summary
    assert len(report.takeover_s) == orphaned, summary
    assert max(report.takeover_s) <= faults.LEASE_S + 1.5, summary
    # The woken replica is up and serving, yet it started no node of the executions it lost
    # (only nodes in flight at the freeze were called twice; none three times).
    assert report.notes["victim answers after SIGCONT"], summary
    assert report.notes["victim alive"], summary
    assert report.notes["repeats beyond in-flight"] == [], summary
    assert report.notes["keys called 3+ times"] == 0, summary
    assert report.notes["victim tracebacks"] == 0, summary
    # Each execution was claimed once, or once more by the survivor: the woken replica's
    # late writes and releases changed no lease (an unfenced release would show as a claim).
    assert max(report.tokens.values()) <= 2, summary
    assert sum(1 for t in report.tokens.values() if t == 2) == orphaned, summary


async def test_rolling_restart_of_three_replicas_loses_nothing(pg_url: str, standin: str) -> None:
    """Three replicas under load get SIGTERM one after another (each replaced by a new one):
    in-flight nodes finish, the leases are released and picked up at once, nothing is lost
    and no call is made twice."""
    report = await faults.rolling_restart(pg_url, standin, 30, replicas=3, spread_s=10.0)
    summary = report.summary()
    assert report.completed == 30, summary
    assert report.repeated == {}, summary
    assert set(report.recoveries.values()) == {0}, "released leases are no recoveries"
    assert report.notes["runner stopped (logged)"] == [True] * 3, summary
    for code, seconds in report.notes["exit codes, seconds"]:
        # uvicorn re-raises SIGTERM once its graceful shutdown is done.
        assert code in (0, -signal.SIGTERM), summary
        assert seconds < faults.GRACE_S + 5, summary
    assert sum(report.notes["handed over"]) > 0, summary
    # The lease is 20 s: only released leases can be claimed this fast.
    assert max(report.takeover_s) < 3.0, summary


async def test_sigterm_waits_at_most_the_grace_then_hands_over(pg_url: str, standin: str) -> None:
    """A node that outlasts SHUTDOWN_GRACE_SECONDS: the worker exits after the grace, releases
    the lease, and another worker takes over at once (the lease is 20 s) and finishes it.

    (Nodes that end within the grace are not run again: see the rolling restart.)"""
    env = {"LEASE_SECONDS": "20", "HEARTBEAT_SECONDS": "1", "SHUTDOWN_GRACE_SECONDS": "1"}
    async with faults.clients(standin) as (client, standin_client):
        with faults.Fleet(pg_url, standin, **env) as fleet:
            api = await fleet.start(RUNNER_ENABLED="false")
            # The worker that takes over is started first and frozen until the SIGTERM: on a
            # busy machine, starting it between the node's start and the SIGTERM took long
            # enough for the node to end within the grace, and then nothing was cut off.
            successor = await fleet.start("worker")
            successor.signal(signal.SIGSTOP)
            first = await fleet.start("worker")
            async with httpx.AsyncClient(base_url=base_url(api), timeout=30) as one:
                workflow_id = await create_active(
                    one, agents(1, "slow", inputMapping={"delayMs": NODE_MS})
                )
                ids = await faults.submit(client, lambda: [base_url(api)], workflow_id, 3, "g")
                for execution_id in ids:
                    await wait_node(one, execution_id, "a1", "RUNNING")
                db = await faults.connect(pg_url)
                try:
                    held = await faults.held_by(db, first)
                    assert set(held) == set(ids)
                    successor.signal(signal.SIGCONT)
                    first.signal(signal.SIGTERM)
                    stopped_at = time.monotonic()
                    watch = faults.TakeoverWatch(db, held, stopped_at)
                    code = await asyncio.to_thread(first.wait, 15)
                    exited_s = time.monotonic() - stopped_at
                    await watch.wait(timeout=10)
                    statuses = await faults.wait_finished(db, ids, timeout=30)
                    recoveries = await db.fetch(
                        "SELECT recoveries FROM executions WHERE id = ANY($1)", ids
                    )
                finally:
                    await db.close()
                finished = [
                    nodes_by_id((await one.get(f"/workflows/executions/{i}")).json()) for i in ids
                ]
            assert code == 0, first.log_tail()
            # The grace, not the rest of the node (which would take more than 4 s).
            assert 1.0 <= exited_s < NODE_MS / 1000 - 1, exited_s
            assert len(watch.latency_s) == len(ids)
            assert max(watch.latency_s.values()) < 3.0, watch.latency_s
            assert list(statuses.values()) == ["COMPLETED"] * len(ids)
            assert {r["recoveries"] for r in recoveries} == {0}
            assert all(n["a1"]["status"] == "COMPLETED" for n in finished)
            calls = await faults.call_counts(standin_client, set(ids))
            # a1 was cut off by the grace and run again, under the same key, by the other.
            assert [calls[f"{i}:a1"] for i in ids] == [2] * len(ids), calls


async def test_a_late_heartbeat_does_not_make_a_runner_reclaim_its_own_work(
    pg_url: str, standin: str
) -> None:
    """One runner, nobody dies, its heartbeat is late once: its executions must complete,
    with no recovery counted and no node called twice.

    The heartbeat is made late by lock contention: a transaction holds the executions' rows
    for longer than the lease, so the heartbeat's UPDATE waits, then writes an expiry that has
    already passed. The claim skips locked rows and does not wait; it polls every 0.2 s, the
    heartbeat comes every 0.9 s, so the runner's own claim loop sees the lapse first.
    """
    lease_s = 2.0
    env = {"LEASE_SECONDS": str(lease_s), "HEARTBEAT_SECONDS": "0.9", "MAX_RECOVERIES": "2"}
    async with faults.clients(standin) as (client, standin_client):
        with faults.Fleet(pg_url, standin, **env) as fleet:
            replica = await fleet.start()
            async with httpx.AsyncClient(base_url=base_url(replica), timeout=30) as one:
                workflow_id = await create_active(
                    one, agents(1, "slow", inputMapping={"delayMs": 6000})
                )
                ids = await faults.submit(client, lambda: [base_url(replica)], workflow_id, 3, "hb")
                for execution_id in ids:
                    await wait_node(one, execution_id, "a1", "RUNNING")
            db = await faults.connect(pg_url)
            try:
                async with db.transaction():
                    await db.execute("SELECT id FROM executions WHERE id = ANY($1) FOR UPDATE", ids)
                    await wait_blocked_by(db, longer_than_s=lease_s + 0.5, timeout=30)
                statuses = await faults.wait_finished(db, ids, timeout=30)
                rows = await db.fetch(
                    "SELECT recoveries, error FROM executions WHERE id = ANY($1)", ids
                )
            finally:
                await db.close()
            calls = await faults.call_counts(standin_client, set(ids))
    assert list(statuses.values()) == ["COMPLETED"] * len(ids), [r["error"] for r in rows]
    assert set(calls.values()) == {1}, calls
    assert {r["recoveries"] for r in rows} == {0}


async def wait_blocked_by(db: asyncpg.Connection, longer_than_s: float, timeout: float) -> None:
    """Until another session has waited for longer than `longer_than_s` on a lock that `db`
    holds (its statement started before that, so whatever time it writes is that old)."""
    deadline = time.monotonic() + timeout
    while not await db.fetchval(
        "SELECT count(*) > 0 FROM pg_stat_activity "
        "WHERE pg_backend_pid() = ANY(pg_blocking_pids(pid)) "
        "AND query_start < clock_timestamp() - make_interval(secs => $1)",
        longer_than_s,
    ):
        assert time.monotonic() < deadline, f"nothing waited {longer_than_s} s on the locks"
        await asyncio.sleep(0.05)
