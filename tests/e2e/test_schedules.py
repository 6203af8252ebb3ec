"""Schedules over real HTTP and real processes: the routes, and two API replicas plus a worker
on one PostgreSQL database starting each due tick exactly once, also across kill -9 of one.

Ticks are made due by writing `next_run_at` into the past in the database (as if the time had
come): no test waits for a real minute.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import uuid
import zoneinfo
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests import faults
from tests.flows import agents, create_active
from tests.processes import Process, base_url

pytestmark = pytest.mark.timeout(120)

FAST = {"SCHEDULE_POLL_MS": "100"}
DEADLINE_S = 45.0
UTC_TIME_Z = "%Y-%m-%dT%H:%M:%SZ"


def user() -> str:
    """A user of this test's own."""
    return f"user-{uuid.uuid4().hex[:12]}"


async def create(
    api: httpx.AsyncClient, workflow_id: str, body: dict[str, Any], who: str
) -> dict[str, Any]:
    response = await api.post(
        f"/workflows/{workflow_id}/schedules", json=body, params={"userId": who}
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def this_minute() -> tuple[dt.datetime, str]:
    """The current UTC minute, and a daily cron whose tick is that minute: it is due once
    `next_run_at` is set to it, and its next tick is a day away."""
    minute = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    return minute, f"{minute.minute} {minute.hour} * * *"


async def make_due(db: asyncpg.Connection, ids: list[str], tick: dt.datetime) -> None:
    await db.execute(
        "UPDATE schedules SET next_run_at = $2 WHERE id = ANY($1)", ids, tick.replace(tzinfo=None)
    )


async def fired(db: asyncpg.Connection, ids: list[str]) -> list[tuple[str, str]]:
    """(scheduleId, scheduledFor) of every execution these schedules started."""
    rows = await db.fetch(
        "SELECT trigger FROM executions WHERE trigger->>'scheduleId' = ANY($1)", ids
    )
    triggers = [json.loads(row["trigger"]) for row in rows]
    assert all(t["type"] == "schedule" for t in triggers), triggers
    return [(t["scheduleId"], t["scheduledFor"]) for t in triggers]


async def wait_recorded(db: asyncpg.Connection, ids: list[str], tick: dt.datetime) -> None:
    """Until every schedule recorded the tick (its next tick is after it)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        pending = await db.fetchval(
            "SELECT count(*) FROM schedules WHERE id = ANY($1) AND next_run_at <= $2",
            ids,
            tick.replace(tzinfo=None),
        )
        if pending == 0:
            return
        assert time.monotonic() < deadline, f"{pending} schedules never recorded their tick"
        await asyncio.sleep(0.05)


# --- the routes --------------------------------------------------------------------------------


async def test_create_list_get_patch_delete(api: httpx.AsyncClient, service: Process) -> None:
    who = user()
    workflow_id = await create_active(api, agents(1), f"scheduled-{who}")
    created = await create(
        api,
        workflow_id,
        {"cron": "30 2 * * *", "timezone": "Europe/Berlin", "input": {"n": 1}},
        who,
    )
    assert set(created) == {
        "id", "workflowId", "userId", "cron", "timezone", "input", "enabled", "catchUp",
        "nextRunAt", "lastRunAt", "lastExecutionId", "lastError", "createdAt", "updatedAt",
    }  # fmt: skip
    assert created["workflowId"] == workflow_id
    assert (created["enabled"], created["catchUp"], created["lastRunAt"]) == (True, "latest", None)
    next_run = dt.datetime.strptime(created["nextRunAt"], UTC_TIME_Z).replace(tzinfo=dt.UTC)
    assert next_run > dt.datetime.now(dt.UTC)
    local = next_run.astimezone(zoneinfo.ZoneInfo("Europe/Berlin"))
    assert local.strftime("%H:%M") in {"02:30", "03:00"}, "03:00 on a spring-forward day"
    path = f"/workflows/{workflow_id}/schedules/{created['id']}"
    mine = {"userId": who}

    listed = (await api.get(f"/workflows/{workflow_id}/schedules", params=mine)).json()
    assert (listed["total"], [s["id"] for s in listed["schedules"]]) == (1, [created["id"]])
    everywhere = (await api.get("/schedules", params=mine)).json()
    assert [s["id"] for s in everywhere["schedules"]] == [created["id"]]
    assert (await api.get(path, params=mine)).json() == created

    off = (await api.patch(path, json={"enabled": False}, params=mine)).json()
    assert (off["enabled"], off["nextRunAt"], off["cron"]) == (False, None, "30 2 * * *")
    on = await api.patch(path, json={"enabled": True, "cron": "*/5 * * * *"}, params=mine)
    assert on.status_code == 200, on.text
    assert on.json()["nextRunAt"].endswith(("0:00Z", "5:00Z"))
    assert on.json()["input"] == {"n": 1}, "fields not sent stay"

    other = {"userId": user()}
    assert (await api.get(path, params=other)).status_code == 404
    assert (await api.delete(path, params=other)).status_code == 404
    assert (
        await api.get(f"/workflows/{uuid.uuid4()}/schedules/{created['id']}")
    ).status_code == 404
    assert (await api.delete(path, params=mine)).status_code == 204
    assert (await api.get(path, params=mine)).status_code == 404


@pytest.mark.parametrize(
    ("body", "field", "why"),
    [
        ({"cron": "* * * * * *"}, "cron", "expected 5 fields"),
        ({"cron": "@reboot"}, "cron", "unknown macro"),
        ({"cron": "99 * * * *"}, "cron", "invalid"),
        ({"cron": "0 0 30 2 *"}, "cron", "never matches"),
        ({"cron": "* * * * *", "timezone": "Mars/Base"}, "timezone", "unknown timezone"),
        ({"cron": "* * * * *", "catchUp": "some"}, "catchUp", "latest"),
        ({"cron": "* * * * *", "enabled": "yes"}, "enabled", "bool"),
        ({"timezone": "UTC"}, "cron", "required"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(
    api: httpx.AsyncClient, body: dict[str, Any], field: str, why: str
) -> None:
    workflow_id = await create_active(api, agents(1))
    response = await api.post(f"/workflows/{workflow_id}/schedules", json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["statusCode"] == 400
    paths = [detail["path"] for detail in error.get("details", [])]
    assert field in paths or error["message"].startswith(f"{field}: "), error
    assert why.lower() in str(error).lower(), error
    listed = (await api.get(f"/workflows/{workflow_id}/schedules")).json()
    assert listed["total"] == 0, "nothing was stored"


async def test_patch_refuses_nulls_and_an_archived_workflow_refuses_new_schedules(
    api: httpx.AsyncClient,
) -> None:
    workflow_id = await create_active(api, agents(1))
    created = await create(api, workflow_id, {"cron": "@hourly"}, user())
    path = f"/workflows/{workflow_id}/schedules/{created['id']}"
    response = await api.patch(path, json={"cron": None})
    assert response.status_code == 400, response.text
    assert "cron: may not be null" in response.json()["message"]
    assert (await api.delete(f"/workflows/{workflow_id}")).status_code == 200  # archived
    refused = await api.post(f"/workflows/{workflow_id}/schedules", json={"cron": "@daily"})
    assert refused.status_code == 409, refused.text
    assert "ARCHIVED" in refused.json()["message"]


async def test_a_due_tick_of_an_archived_workflow_says_why(
    api: httpx.AsyncClient, service_db: str
) -> None:
    workflow_id = await create_active(api, agents(1))
    created = await create(api, workflow_id, {"cron": "* * * * *"}, user())
    assert (await api.delete(f"/workflows/{workflow_id}")).status_code == 200
    db = await faults.connect(service_db)
    try:
        tick = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        await make_due(db, [created["id"]], tick)
        await wait_recorded(db, [created["id"]], tick)
        assert await fired(db, [created["id"]]) == []
    finally:
        await db.close()
    shown = (await api.get(f"/workflows/{workflow_id}/schedules/{created['id']}")).json()
    assert "is ARCHIVED; only ACTIVE workflows can be executed" in shown["lastError"], shown
    assert shown["lastRunAt"] is not None
    assert shown["lastExecutionId"] is None


# --- replicas -------------------------------------------------------------------------------------


@pytest.fixture
async def fleet(pg_url: str, standin: str) -> AsyncIterator[tuple[faults.Fleet, list[Process]]]:
    """Two API replicas and one worker on one fresh database, polling every 100 ms."""
    with faults.Fleet(pg_url, standin, **FAST) as fleet:
        processes = await asyncio.gather(fleet.start(), fleet.start(), fleet.start("worker"))
        yield fleet, list(processes)


async def new_schedules(url: str, count: int, cron: str) -> list[str]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        workflow_id = await create_active(client, agents(1))
        gate = asyncio.Semaphore(20)

        async def one() -> str:
            async with gate:
                created = await create(client, workflow_id, {"cron": cron}, "ops")
                return str(created["id"])

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_replicas_and_a_worker_start_each_tick_exactly_once(
    fleet: tuple[faults.Fleet, list[Process]], pg_url: str
) -> None:
    _, processes = fleet
    tick, cron = this_minute()
    ids = await new_schedules(base_url(processes[0]), 100, cron)
    db = await faults.connect(pg_url)
    try:
        await make_due(db, ids, tick)
        await wait_recorded(db, ids, tick)
        started = await fired(db, ids)
        rows = await db.fetch(
            "SELECT last_run_at, last_execution_id, last_error FROM schedules WHERE id = ANY($1)",
            ids,
        )
    finally:
        await db.close()
    expected = {(i, tick.strftime(UTC_TIME_Z)) for i in ids}
    assert Counter(started) == Counter(expected), "each tick started exactly one execution"
    assert all(r["last_error"] is None and r["last_execution_id"] for r in rows), rows[:3]
    assert {r["last_run_at"].replace(tzinfo=dt.UTC) for r in rows} == {tick}
    assert not any("Traceback" in p.log_since_start() for p in processes)


async def test_kill_9_of_a_firing_replica_neither_loses_nor_doubles_a_tick(
    fleet: tuple[faults.Fleet, list[Process]], pg_url: str
) -> None:
    """300 ticks come due at once; one replica is killed while they are being started: the
    others start every remaining tick, and each tick has exactly one execution."""
    _, processes = fleet
    victim, survivor = processes[0], processes[1]
    tick, cron = this_minute()
    ids = await new_schedules(base_url(survivor), 300, cron)
    db = await faults.connect(pg_url)
    try:
        await make_due(db, ids, tick)
        deadline = time.monotonic() + DEADLINE_S
        while len(await fired(db, ids)) < 20:
            assert time.monotonic() < deadline, "no tick started"
            await asyncio.sleep(0.005)
        victim.kill()
        at_kill = len(await fired(db, ids))
        await wait_recorded(db, ids, tick)
        started = await fired(db, ids)
    finally:
        await db.close()
    assert at_kill < len(ids), "the kill came while ticks were being started"
    expected = {(i, tick.strftime(UTC_TIME_Z)) for i in ids}
    assert Counter(started) == Counter(expected), "each tick started exactly one execution"
