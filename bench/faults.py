"""Faults under load: what completes, what is lost, what runs twice, how fast others take over.

Run: `.venv/bin/python -m bench.faults` (about 2-3 minutes), with PostgreSQL at
TEST_DATABASE_URL (default: the local server, user postgres). Each scenario runs COUNT
executions (default 100) of a 5-node workflow against the `slow` stand-in (300 ms a node) on
real service processes and a fresh database, and injects its fault once the work is under way:

- kill -9, restart: the only replica is killed; a new one is started at once;
- takeover, no restart: replica A of two is killed and stays dead; B takes A's work over;
- SIGSTOP fencing: A is frozen past its lease; B takes over; A is woken up (SIGCONT);
- rolling restart x3: three replicas under load each get SIGTERM in turn and are replaced;
- database outage: a TCP proxy between the services and PostgreSQL drops every connection
  and refuses new ones for 10 s.

Columns: completed / lost (did not complete) of COUNT; dup = Idempotency-Keys whose node had
COMPLETED before the fault and were called again (work done twice); rep = keys called more
than once at all (nodes in flight at the fault run again under the same key, which the callee
can drop); takeover = time from the fault to the first claim of each execution the failed
process held by another runner (p50 / p95 / max, n of them). The leases are 3 s (heartbeat
0.5 s) except in the rolling restart, where they are 20 s: only released leases are picked
up at once there.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from tests import faults
from tests.databases import create_database, create_migrated_template, drop_database, url_for
from tests.processes import base_url, running, standin_process

Scenario = Callable[[str, str, int], Awaitable[faults.Report]]

SCENARIOS: dict[str, Scenario] = {
    "kill9": faults.kill_9_with_restart,
    "takeover": faults.takeover_without_restart,
    "sigstop": faults.sigstop_fencing,
    "rolling": faults.rolling_restart,
    "outage": faults.database_outage,
}


def _seconds(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _print(reports: list[tuple[faults.Report, float]]) -> None:
    header = (
        f"{'scenario':<24}{'n':>5}{'completed':>11}{'lost':>6}{'dup':>5}{'rep':>5}"
        f"{'takeover p50':>14}{'p95':>7}{'max':>7}{'of':>5}{'wall s':>8}"
    )
    print(header)
    print("-" * len(header))
    for report, wall in reports:
        latencies = report.takeover_s
        print(
            f"{report.scenario:<24}{report.executions:>5}{report.completed:>11}{report.lost:>6}"
            f"{len(report.duplicates):>5}{len(report.repeated):>5}"
            f"{_seconds(report.takeover(0.5)):>14}{_seconds(report.takeover(0.95)):>7}"
            f"{_seconds(max(latencies) if latencies else math.nan):>7}{len(latencies):>5}"
            f"{wall:>8.1f}"
        )
    print()
    for report, _ in reports:
        print(f"{report.scenario}:")
        failed = {e for e in report.errors.values() if e}
        if report.failed or report.stuck:
            print(f"  failed {report.failed}, stuck {report.stuck}; errors {sorted(failed)[:3]}")
        print(f"  recoveries: {dict(sorted(_histogram(report.recoveries).items()))}")
        for name, value in report.notes.items():
            print(f"  {name}: {value}")


def _histogram(values: dict[str, int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for value in values.values():
        counts[value] = counts.get(value, 0) + 1
    return counts


async def main(count: int, only: list[str]) -> None:
    """Run the scenarios and print one table."""
    template = await create_migrated_template()
    reports: list[tuple[faults.Report, float]] = []
    try:
        with running(standin_process()) as standin:
            for name in only:
                database = await _copy(template)
                began = time.monotonic()
                try:
                    report = await SCENARIOS[name](url_for(database), base_url(standin), count)
                finally:
                    await drop_database(database)
                wall = time.monotonic() - began
                print(f"# {report.summary()} ({wall:.1f} s)", flush=True)
                reports.append((report, wall))
    finally:
        await drop_database(template)
    print()
    _print(reports)


async def _copy(template: str) -> str:
    return await create_database(template)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--count", type=int, default=100, help="executions per scenario")
    parser.add_argument(
        "--only", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS), help="scenarios"
    )
    args = parser.parse_args()
    asyncio.run(main(args.count, args.only))
