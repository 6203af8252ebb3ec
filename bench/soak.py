"""Soak: many executions through the REST API on a busy machine; every one must complete.

Run: `.venv/bin/python -m bench.soak` (`--executions`, `--in-flight`, `--workload`...), with
PostgreSQL at TEST_DATABASE_URL (default: the local server, user postgres). It starts the
stand-in services and the service as real processes on a fresh database, and keeps
`--busy-cores` cores busy with `while 1: pass` processes for the whole run, so that event
loops stall now and then, as on a loaded machine.

The load generator is a plain httpx client (httpx's own transport, as API users have) that
keeps idle connections for less time than the service does (`--client-keepalive` below
`--server-keep-alive`). It keeps `--in-flight` executions going: each worker POSTs
/workflows/execute, then waits until the execution is terminal (one poller reads the
statuses from the database, so waiting costs the service nothing), then starts the next.

It counts connection errors (any httpx.TransportError), HTTP errors (anything but 202),
executions lost (started, yet not COMPLETED or FAILED within `--deadline` seconds) and the
final statuses; prints a table; and exits 1 if there was any error or any execution that
did not COMPLETE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg
import httpx
from tests.databases import create_database, drop_database, plain, url_for
from tests.flows import agents, chain, create_active, node
from tests.processes import base_url, running, service_process, standin_process

POLL_S = 0.05
PROGRESS_S = 30.0
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")
LOST = "LOST"
WORKLOADS = {
    "TRANSFORM x10": chain(
        *(node(f"t{i}", "TRANSFORM", expression="{'n': input.n + 1}") for i in range(1, 11))
    ),
    "AGENT x10 (instant)": agents(10, "instant"),
}
CHOICES = {"transform": ["TRANSFORM x10"], "agent": ["AGENT x10 (instant)"], "both": [*WORKLOADS]}


@contextlib.contextmanager
def busy_cores(count: int) -> Iterator[None]:
    """`count` processes spinning a core each, killed at the end whatever happens."""
    spinners: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            spinners.append(subprocess.Popen([sys.executable, "-c", "while 1: pass"]))
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


class StatusWatcher:
    """One poller on the database that tells each waiter its execution's terminal status."""

    def __init__(self, db: asyncpg.Connection) -> None:
        self._db = db
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._task = asyncio.create_task(self._poll())

    async def wait(self, execution_id: str, timeout: float) -> str:
        """The terminal status, or LOST when there is none within `timeout` seconds."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[execution_id] = future
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return LOST
        finally:
            self._waiting.pop(execution_id, None)

    async def _poll(self) -> None:
        try:
            while True:
                if self._waiting:
                    rows = await self._db.fetch(
                        "SELECT id, status FROM executions WHERE id = ANY($1::varchar[]) "
                        "AND status = ANY($2::varchar[])",
                        list(self._waiting),
                        list(TERMINAL),
                    )
                    for row in rows:
                        future = self._waiting.get(row["id"])
                        if future is not None and not future.done():
                            future.set_result(row["status"])
                await asyncio.sleep(POLL_S)
        except Exception as exc:
            # Waiters must not mistake a broken poller for lost executions.
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(exc)
            raise

    async def close(self) -> None:
        """Stop polling."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@dataclass
class Tally:
    """What happened to the executions of one workload."""

    name: str
    executions: int
    seconds: float = 0.0
    started: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    connection_errors: Counter[str] = field(default_factory=Counter)
    http_errors: Counter[int] = field(default_factory=Counter)

    @property
    def errors(self) -> int:
        """Connection errors and HTTP errors."""
        return sum(self.connection_errors.values()) + sum(self.http_errors.values())

    @property
    def finished(self) -> int:
        """Executions that were refused, failed to start, or reached an end (or were lost)."""
        return self.errors + sum(self.statuses.values())

    @property
    def ok(self) -> bool:
        """No error, and every execution COMPLETED."""
        return self.errors == 0 and self.statuses["COMPLETED"] == self.executions


async def drive(
    client: httpx.AsyncClient,
    watcher: StatusWatcher,
    tally: Tally,
    workflow_id: str,
    in_flight: int,
    deadline_s: float,
) -> None:
    """Keep `in_flight` executions going until `tally.executions` were tried."""
    numbers = iter(range(tally.executions))

    async def worker() -> None:
        for number in numbers:
            try:
                response = await client.post(
                    "/workflows/execute", json={"workflowId": workflow_id, "input": {"n": number}}
                )
            except httpx.TransportError as exc:
                tally.connection_errors[type(exc).__name__] += 1
                continue
            if response.status_code != 202:
                tally.http_errors[response.status_code] += 1
                continue
            tally.started += 1
            tally.statuses[await watcher.wait(response.json()["id"], deadline_s)] += 1

    async def progress() -> None:
        while True:
            await asyncio.sleep(PROGRESS_S)
            print(
                f"  {tally.name}: {tally.finished}/{tally.executions} done, "
                f"{tally.errors} errors, {time.perf_counter() - began:.0f} s",
                flush=True,
            )

    began = time.perf_counter()
    reporter = asyncio.create_task(progress())
    try:
        await asyncio.gather(*(worker() for _ in range(in_flight)))
    finally:
        reporter.cancel()
    tally.seconds = time.perf_counter() - began


def log_counts(log: str) -> str:
    """What the service logged at WARNING and above."""
    lines = log.splitlines()
    counts = {
        level: sum(1 for line in lines if f" {level} " in line)
        for level in ("WARNING", "ERROR", "CRITICAL")
    }
    counts["tracebacks"] = log.count("Traceback")
    return ", ".join(f"{n} {name}" for name, n in counts.items())


def report(tallies: list[Tally], service_log: str) -> None:
    """One row per workload, then the error details."""
    print(
        f"{'workload':<22}{'executions':>11}{'s':>8}{'exec/s':>8}{'COMPLETED':>11}"
        f"{'FAILED':>8}{'CANCELLED':>11}{'lost':>6}{'conn err':>10}{'HTTP err':>10}"
    )
    for t in tallies:
        print(
            f"{t.name:<22}{t.executions:>11}{t.seconds:>8.0f}{t.executions / t.seconds:>8.0f}"
            f"{t.statuses['COMPLETED']:>11}{t.statuses['FAILED']:>8}"
            f"{t.statuses['CANCELLED']:>11}{t.statuses[LOST]:>6}"
            f"{sum(t.connection_errors.values()):>10}{sum(t.http_errors.values()):>10}"
        )
    for t in tallies:
        if t.connection_errors:
            print(f"{t.name}: connection errors {dict(t.connection_errors)}")
        if t.http_errors:
            print(f"{t.name}: HTTP errors {dict(t.http_errors)}")
    print(f"service log: {log_counts(service_log)}")


async def main(args: argparse.Namespace) -> bool:
    """Soak and print; True when every execution COMPLETED without any error."""
    if args.client_keepalive >= args.server_keep_alive:
        print(
            f"note: the client keeps idle connections {args.client_keepalive:g} s, the service "
            f"{args.server_keep_alive} s: expect connections reset at the service's end",
            flush=True,
        )
    name = await create_database()
    url = url_for(name)
    tallies: list[Tally] = []
    try:
        with (
            running(standin_process()) as standin,
            running(
                service_process(
                    url,
                    base_url(standin),
                    LOG_LEVEL="WARNING",
                    KEEP_ALIVE_SECONDS=str(args.server_keep_alive),
                    # A crash in native code then leaves the Python stacks in the log.
                    PYTHONFAULTHANDLER="1",
                )
            ) as service,
        ):
            limits = httpx.Limits(
                max_connections=args.in_flight,
                max_keepalive_connections=args.in_flight,
                keepalive_expiry=args.client_keepalive,
            )
            db = await asyncpg.connect(plain(url))
            try:
                async with httpx.AsyncClient(
                    base_url=base_url(service), timeout=60.0, limits=limits
                ) as client:
                    workflows = {
                        label: await create_active(client, WORKLOADS[label], name=label)
                        for label in CHOICES[args.workload]
                    }
                    watcher = StatusWatcher(db)
                    try:
                        with busy_cores(args.busy_cores):
                            for label, workflow_id in workflows.items():
                                tally = Tally(label, args.executions)
                                tallies.append(tally)
                                await drive(
                                    client,
                                    watcher,
                                    tally,
                                    workflow_id,
                                    args.in_flight,
                                    args.deadline,
                                )
                    finally:
                        await watcher.close()
            finally:
                await db.close()
            service_log = service.log_since_start()
            exit_code = None if service.alive else service.wait(0)
    finally:
        await drop_database(name)
    report(tallies, service_log)
    if exit_code is not None:
        print(f"the service died during the soak (exit code {exit_code})")
    return exit_code is None and all(t.ok for t in tallies)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=20_000, help="per workload")
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--workload", choices=sorted(CHOICES), default="transform")
    parser.add_argument("--busy-cores", type=int, default=1, help="cores kept busy meanwhile")
    parser.add_argument(
        "--deadline", type=float, default=300.0, help="s an execution may take before it is lost"
    )
    parser.add_argument(
        "--client-keepalive", type=float, default=5.0, help="s the client keeps idle connections"
    )
    parser.add_argument(
        "--server-keep-alive", type=int, default=75, help="the service's KEEP_ALIVE_SECONDS"
    )
    sys.exit(0 if asyncio.run(main(parser.parse_args())) else 1)
