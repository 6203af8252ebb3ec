"""The scheduler on a real database (PostgreSQL and SQLite), driven by a fixed clock: each due
tick starts one execution, across two schedulers and across a crash between start and record;
catch-up policies; workflows that cannot run say why."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.application import schedules as use
from orchestrator.application.access import Caller
from orchestrator.application.executions import ExecutionServices
from orchestrator.application.ports import Page, UnitOfWork
from orchestrator.domain.errors import NotFound, ValidationFailed
from orchestrator.domain.execution import WorkflowExecution
from orchestrator.domain.schedules import CatchUp, Schedule
from orchestrator.domain.values import ValueLimits, ValueTooLarge
from orchestrator.domain.workflow import Definition, Edge, Node, NodeType, Workflow, WorkflowStatus
from orchestrator.infrastructure.clients.retry import retry_conflicts
from orchestrator.infrastructure.db.engine import create_engine
from orchestrator.infrastructure.db.repositories import SqlUnitOfWork
from orchestrator.infrastructure.db.schedules import SqlScheduleStore
from orchestrator.infrastructure.db.tables import executions, schedules
from orchestrator.infrastructure.scheduler import Scheduler, schedules_changed
from orchestrator.settings import async_database_url
from tests.processes import free_port
from tests.unit.fakes import FixedClock

T0 = dt.datetime(2026, 6, 1, 12, 0, 20, tzinfo=dt.UTC)
MINUTE = dt.timedelta(minutes=1)
OWNER = "alice"
DEADLINE_S = 30.0


class Started:
    """Runner signals that remember the executions created."""

    def __init__(self) -> None:
        self.ids: list[str] = []

    def created(self, execution: WorkflowExecution, definition: Definition) -> None:
        self.ids.append(execution.id)

    def cancelled(self, execution_id: str) -> None:
        """Not used by schedules."""

    def woken(self, execution_id: str) -> None:
        """Not used by schedules."""


class NoEvents:
    """Nobody listens."""

    async def publish(self, events: list[Any]) -> None:
        """Dropped."""


class Counted:
    """A unit-of-work factory that counts the units opened: one per start attempted."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.opened = 0

    def __call__(self) -> UnitOfWork:
        self.opened += 1
        return SqlUnitOfWork(self.engine)


def execution_services(
    factory: Callable[[], UnitOfWork], clock: FixedClock, signals: Started
) -> ExecutionServices:
    return ExecutionServices(
        uow_factory=factory,
        clock=clock,
        publisher=NoEvents(),
        signals=signals,
        retry_conflicts=retry_conflicts,
        execution_timeout_s=3600,
    )


class World:
    """A database with a clock, the execution services, and the schedule use cases."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.clock = FixedClock(T0)
        self.started = Started()
        self.counted = Counted(engine)
        self.services = execution_services(self.counted, self.clock, self.started)
        self.schedules = use.ScheduleServices(
            store=SqlScheduleStore(engine),
            workflows=lambda: SqlUnitOfWork(engine),
            clock=self.clock,
            limits=ValueLimits(max_depth=8, max_bytes=1000),
        )

    def scheduler(self, catch_up_max: int = 100) -> Scheduler:
        return Scheduler(self.engine, self.services, self.clock, 0.05, catch_up_max)

    async def workflow(
        self, status: WorkflowStatus = WorkflowStatus.ACTIVE, user_id: str | None = OWNER
    ) -> str:
        graph = Definition(
            nodes=(Node("start", NodeType.START), Node("end", NodeType.END)),
            edges=(Edge("start->end", "start", "end", source_handle=None),),
            version=1,
        )
        workflow = Workflow(
            id=str(uuid.uuid4()),
            name="scheduled",
            description=None,
            status=status,
            definition=graph,
            user_id=user_id,
            created_at=T0,
            updated_at=T0,
        )
        async with SqlUnitOfWork(self.engine) as uow:
            await uow.workflows.add(workflow)
            await uow.commit()
        return workflow.id

    async def schedule(self, workflow_id: str, cron: str = "* * * * *", **fields: Any) -> Schedule:
        spec = use.ScheduleSpec(cron=cron, sent=frozenset({"cron", *fields}), **fields)
        return await use.create_schedule(self.schedules, workflow_id, spec, Caller(OWNER))

    async def stored(self, schedule_id: str) -> Schedule:
        return await use.get_schedule(
            self.schedules, await self._workflow_of(schedule_id), schedule_id, Caller(OWNER)
        )

    async def _workflow_of(self, schedule_id: str) -> str:
        async with self.engine.connect() as connection:
            query = select(schedules.c.workflow_id).where(schedules.c.id == schedule_id)
            return str((await connection.execute(query)).scalar_one())

    async def triggers(self) -> list[dict[str, Any]]:
        """The trigger of every execution, by time due."""
        async with self.engine.connect() as connection:
            rows = (await connection.execute(select(executions.c.trigger))).all()
        return sorted((row.trigger for row in rows), key=lambda t: str(t["scheduledFor"]))


@pytest.fixture
async def world(engine: AsyncEngine) -> World:
    return World(engine)


async def drain(scheduler: Scheduler) -> int:
    """Run passes until one claims nothing; how many schedules were claimed."""
    total = 0
    while claimed := await scheduler.run_once():
        total += claimed
    return total


# --- one tick, one execution ------------------------------------------------------------------


async def test_a_due_tick_starts_one_execution_with_its_trigger(world: World) -> None:
    workflow_id = await world.workflow()
    schedule = await world.schedule(workflow_id, input={"hello": "world"})
    assert schedule.next_run_at == dt.datetime(2026, 6, 1, 12, 1, tzinfo=dt.UTC)
    scheduler = world.scheduler()
    assert await scheduler.run_once() == 0, "nothing is due yet"

    world.clock.advance(45)  # 12:01:05
    assert await scheduler.run_once() == 1
    assert await scheduler.run_once() == 0, "the tick is not fired again"
    assert await world.triggers() == [
        {"type": "schedule", "scheduleId": schedule.id, "scheduledFor": "2026-06-01T12:01:00Z"}
    ]
    async with world.engine.connect() as connection:
        row = (await connection.execute(select(executions))).one()
    assert (row.input, row.user_id, row.workflow_id) == ({"hello": "world"}, OWNER, workflow_id)
    stored = await world.stored(schedule.id)
    assert stored.last_run_at == dt.datetime(2026, 6, 1, 12, 1, tzinfo=dt.UTC)
    assert stored.next_run_at == dt.datetime(2026, 6, 1, 12, 2, tzinfo=dt.UTC)
    assert stored.last_execution_id == row.id == world.started.ids[0]
    assert stored.last_error is None


async def test_a_crash_between_start_and_record_neither_loses_nor_doubles(world: World) -> None:
    """The process that started the tick died before it recorded it: the next pass (any
    process) fires the tick again and gets the same execution back."""
    schedule = await world.schedule(await world.workflow())
    world.clock.advance(45)
    claimed = await world.stored(schedule.id)
    crashed = await use.fire_due(
        use.Firing(world.services, dt.timedelta(seconds=61), 100), claimed, world.clock.now()
    )
    first = crashed.last_execution_id
    assert first is not None
    assert (await world.stored(schedule.id)).last_run_at is None, "nothing was recorded"

    assert await world.scheduler().run_once() == 1
    stored = await world.stored(schedule.id)
    assert stored.last_execution_id == first
    assert len(await world.triggers()) == 1
    assert world.started.ids == [first], "the second start found the first execution"
    assert world.counted.opened == 2, "it was started twice, and stored once"


async def test_each_minute_starts_its_own_execution(world: World) -> None:
    schedule = await world.schedule(await world.workflow())
    scheduler = world.scheduler()
    for _ in range(3):
        world.clock.advance(60)
        assert await scheduler.run_once() == 1
    assert [t["scheduledFor"] for t in await world.triggers()] == [
        "2026-06-01T12:01:00Z",
        "2026-06-01T12:02:00Z",
        "2026-06-01T12:03:00Z",
    ]
    assert (await world.stored(schedule.id)).next_run_at == T0.replace(minute=4, second=0)


# --- two schedulers on one database -----------------------------------------------------------


@pytest.fixture
async def pg_world(pg_url: str) -> AsyncIterator[World]:
    engine = create_engine(async_database_url(pg_url))
    yield World(engine)
    await engine.dispose()


async def test_two_schedulers_start_each_due_tick_once(pg_world: World, pg_url: str) -> None:
    """Two schedulers (each with its own pool, as two processes) claim the same 120 due
    schedules at once: every tick is started by exactly one of them."""
    workflow_id = await pg_world.workflow()
    for _ in range(120):
        await pg_world.schedule(workflow_id)
    pg_world.clock.advance(45)
    other = create_engine(async_database_url(pg_url))
    counted = Counted(other)
    try:
        services = execution_services(counted, pg_world.clock, pg_world.started)
        second = Scheduler(other, services, pg_world.clock, 0.05, 100)
        claims = await asyncio.gather(drain(pg_world.scheduler()), drain(second))
        attempts = pg_world.counted.opened + counted.opened
    finally:
        await other.dispose()
    assert sum(claims) == 120, claims
    assert min(claims) > 0, f"both took part: {claims}"
    assert attempts == 120, "no tick was started by both"
    ticks = [(t["scheduleId"], t["scheduledFor"]) for t in await pg_world.triggers()]
    assert len(ticks) == len(set(ticks)) == 120


async def test_a_claimed_schedule_is_skipped_by_another_scheduler(pg_world: World) -> None:
    await pg_world.schedule(await pg_world.workflow())
    pg_world.clock.advance(45)
    holder = SqlScheduleStore(pg_world.engine)
    async with holder() as held:
        assert len(await held.claim_due(pg_world.clock.now(), 10)) == 1
        assert await pg_world.scheduler().run_once() == 0, "the row is held: skipped"
    assert await pg_world.scheduler().run_once() == 1, "released: claimed"


# --- catch-up -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "fired"),
    [
        (CatchUp.LATEST, ["2026-06-01T12:10:00Z"]),
        (CatchUp.NONE, ["2026-06-01T12:10:00Z"]),
        (CatchUp.ALL, [f"2026-06-01T12:{m:02}:00Z" for m in range(6, 11)]),
    ],
)
async def test_missed_ticks_follow_the_catch_up_policy(
    world: World, policy: CatchUp, fired: list[str]
) -> None:
    """Ticks 12:01..12:09 were missed (every process was down) and 12:10 is 30 s late; the
    cap of "all" is 5."""
    schedule = await world.schedule(await world.workflow(), catch_up=policy)
    world.clock.current = dt.datetime(2026, 6, 1, 12, 10, 30, tzinfo=dt.UTC)
    assert await world.scheduler(catch_up_max=5).run_once() == 1
    assert [t["scheduledFor"] for t in await world.triggers()] == fired
    stored = await world.stored(schedule.id)
    assert stored.next_run_at == dt.datetime(2026, 6, 1, 12, 11, tzinfo=dt.UTC)
    if policy == CatchUp.NONE:
        assert stored.last_error is not None
        assert "catchUp none: missed ticks before 2026-06-01T12:10:00Z" in stored.last_error
    elif policy == CatchUp.ALL:
        assert stored.last_error is not None
        assert "more than 5 ticks were missed" in stored.last_error
    else:
        assert stored.last_error is None


async def test_catch_up_none_fires_a_late_tick_but_no_missed_one(world: World) -> None:
    schedule = await world.schedule(await world.workflow(), cron="0 * * * *", catch_up=CatchUp.NONE)
    world.clock.current = dt.datetime(2026, 6, 1, 13, 0, 40, tzinfo=dt.UTC)
    await world.scheduler().run_once()
    assert [t["scheduledFor"] for t in await world.triggers()] == ["2026-06-01T13:00:00Z"]
    assert (await world.stored(schedule.id)).last_error is None
    world.clock.current = dt.datetime(2026, 6, 1, 16, 30, tzinfo=dt.UTC)
    assert await world.scheduler().run_once() == 1
    assert len(await world.triggers()) == 1, "14:00..16:00 were missed: none fired"
    stored = await world.stored(schedule.id)
    assert stored.last_run_at == dt.datetime(2026, 6, 1, 13, tzinfo=dt.UTC)
    assert stored.next_run_at == dt.datetime(2026, 6, 1, 17, tzinfo=dt.UTC)
    assert stored.last_error == "catchUp none: missed ticks up to 2026-06-01T16:00:00Z were skipped"


# --- workflows that cannot run ------------------------------------------------------------------


@pytest.mark.parametrize("status", [WorkflowStatus.INACTIVE, WorkflowStatus.DRAFT])
async def test_a_workflow_that_is_not_active_starts_nothing_and_says_why(
    world: World, status: WorkflowStatus
) -> None:
    schedule = await world.schedule(await world.workflow(status))
    world.clock.advance(45)
    assert await world.scheduler().run_once() == 1
    assert await world.triggers() == []
    stored = await world.stored(schedule.id)
    assert stored.last_error is not None
    assert f"is {status}; only ACTIVE workflows can be executed" in stored.last_error
    assert "2026-06-01T12:01:00Z" in stored.last_error
    assert stored.next_run_at == dt.datetime(2026, 6, 1, 12, 2, tzinfo=dt.UTC), "it moved on"
    assert stored.last_execution_id is None


async def test_an_archived_workflow_starts_nothing_and_says_why(world: World) -> None:
    workflow_id = await world.workflow()
    schedule = await world.schedule(workflow_id)
    scheduler = world.scheduler()
    world.clock.advance(45)
    await scheduler.run_once()
    async with SqlUnitOfWork(world.engine) as uow:
        workflow = await uow.workflows.get(workflow_id)
        assert workflow is not None
        workflow.change_status(WorkflowStatus.ARCHIVED, world.clock.now())
        await uow.workflows.save(workflow, new_version=False)
        await uow.commit()
    world.clock.advance(60)
    await scheduler.run_once()
    stored = await world.stored(schedule.id)
    assert len(await world.triggers()) == 1, "only the tick before the archiving started"
    assert stored.last_error is not None
    assert "is ARCHIVED" in stored.last_error
    assert stored.last_execution_id == world.started.ids[0], "the last one it started"


async def test_a_schedule_without_dates_stops_without_blocking_the_others(world: World) -> None:
    """A row whose expression matches no date (written behind the API's back) is parked with
    its reason; the other due schedules fire in the same pass."""
    workflow_id = await world.workflow()
    broken, fine = await world.schedule(workflow_id), await world.schedule(workflow_id)
    async with world.engine.begin() as connection:
        await connection.execute(
            update(schedules).where(schedules.c.id == broken.id).values(cron="0 0 30 2 *")
        )
    world.clock.advance(45)
    assert await world.scheduler().run_once() == 2
    assert [t["scheduleId"] for t in await world.triggers()] == [fine.id]
    parked = await world.stored(broken.id)
    assert (parked.next_run_at, parked.last_error) == (None, "the cron expression matches no date")
    assert await world.scheduler().run_once() == 0


# --- the use cases ----------------------------------------------------------------------------


async def test_disabling_clears_the_next_tick_and_enabling_computes_it_from_now(
    world: World,
) -> None:
    workflow_id = await world.workflow()
    schedule = await world.schedule(workflow_id, cron="*/5 * * * *")
    off = use.ScheduleSpec(enabled=False, sent=frozenset({"enabled"}))
    disabled = await use.update_schedule(
        world.schedules, workflow_id, schedule.id, off, Caller(OWNER)
    )
    assert disabled.next_run_at is None
    world.clock.current = dt.datetime(2026, 6, 1, 13, 7, tzinfo=dt.UTC)
    assert await world.scheduler().run_once() == 0
    on = use.ScheduleSpec(enabled=True, sent=frozenset({"enabled"}))
    enabled = await use.update_schedule(
        world.schedules, workflow_id, schedule.id, on, Caller(OWNER)
    )
    assert enabled.next_run_at == dt.datetime(2026, 6, 1, 13, 10, tzinfo=dt.UTC)
    hourly = use.ScheduleSpec(
        cron="0 9 * * *", timezone="Europe/Berlin", sent=frozenset({"cron", "timezone"})
    )
    moved = await use.update_schedule(
        world.schedules, workflow_id, schedule.id, hourly, Caller(OWNER)
    )
    assert moved.next_run_at == dt.datetime(2026, 6, 2, 7, tzinfo=dt.UTC)
    assert (await world.stored(schedule.id)).next_run_at == moved.next_run_at
    await use.delete_schedule(world.schedules, workflow_id, schedule.id, Caller(OWNER))
    with pytest.raises(NotFound):
        await use.get_schedule(world.schedules, workflow_id, schedule.id, Caller(OWNER))


async def test_only_the_owner_sees_and_changes_a_schedule(world: World) -> None:
    workflow_id = await world.workflow()
    schedule = await world.schedule(workflow_id)
    mallory = Caller("mallory", scoped=True)
    with pytest.raises(NotFound):
        await use.get_schedule(world.schedules, workflow_id, schedule.id, mallory)
    spec = use.ScheduleSpec(cron="* * * * *", sent=frozenset({"cron"}))
    with pytest.raises(NotFound):
        await use.create_schedule(world.schedules, workflow_id, spec, mallory)
    off = use.ScheduleSpec(enabled=False, sent=frozenset({"enabled"}))
    with pytest.raises(NotFound):
        await use.update_schedule(world.schedules, workflow_id, schedule.id, off, mallory)
    with pytest.raises(NotFound):
        await use.delete_schedule(world.schedules, workflow_id, schedule.id, mallory)
    with pytest.raises(NotFound):
        await use.get_schedule(world.schedules, str(uuid.uuid4()), schedule.id, Caller(OWNER))
    assert (await use.list_schedules(world.schedules, None, Page(1, 10), mallory))[1] == 0
    mine, total = await use.list_schedules(world.schedules, workflow_id, Page(1, 10), Caller(OWNER))
    assert (total, [s.id for s in mine]) == (1, [schedule.id])


async def test_bad_input_is_refused_and_nothing_is_stored(world: World) -> None:
    workflow_id = await world.workflow()
    with pytest.raises(ValueTooLarge):
        await world.schedule(workflow_id, input={"big": "x" * 2000})
    with pytest.raises(ValidationFailed) as caught:
        await world.schedule(workflow_id, cron="0 0 * * * *", timezone="Nowhere/Else")
    assert {p.path for p in caught.value.problems} == {"cron", "timezone"}
    nulls = use.ScheduleSpec(cron=None, sent=frozenset({"cron"}))
    with pytest.raises(ValidationFailed, match="cron: may not be null"):
        await use.create_schedule(world.schedules, workflow_id, nulls, Caller(OWNER))
    assert (await use.list_schedules(world.schedules, None, Page(1, 10), Caller(OWNER)))[1] == 0


# --- the loop ---------------------------------------------------------------------------------


async def wait_for(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_the_loop_fires_due_ticks_and_stops_promptly(world: World) -> None:
    schedule = await world.schedule(await world.workflow())
    scheduler = world.scheduler()
    await scheduler.start()
    try:
        world.clock.advance(45)

        async def fired() -> bool:
            return len(await world.triggers()) == len(world.started.ids) == 1

        await wait_for(fired, "the tick to fire")
        world.clock.advance(60)

        async def fired_again() -> bool:
            return (await world.stored(schedule.id)).next_run_at == T0.replace(minute=3, second=0)

        await wait_for(fired_again, "the next tick to be recorded")
    finally:
        began = time.monotonic()
        await scheduler.stop()
        assert time.monotonic() - began < 2.0


async def test_a_change_in_this_process_wakes_the_loop(world: World) -> None:
    """With a 30 s poll, a due tick fires at once when a schedule changes in this process."""
    await world.schedule(await world.workflow())
    scheduler = Scheduler(world.engine, world.services, world.clock, 30.0, 10)
    await scheduler.start()
    try:
        await asyncio.sleep(0.2)  # the first pass: nothing due; then it sleeps up to 30 s
        world.clock.advance(45)
        schedules_changed()

        async def fired() -> bool:
            return len(world.started.ids) == 1

        began = time.monotonic()
        await wait_for(fired, "the tick to fire")
        assert time.monotonic() - began < 10.0, "woken, not polled"
    finally:
        await scheduler.stop()


async def test_the_loop_survives_an_unreachable_database(caplog: pytest.LogCaptureFixture) -> None:
    engine = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nowhere")
    clock = FixedClock(T0)
    scheduler = Scheduler(
        engine, execution_services(Counted(engine), clock, Started()), clock, 0.05, 10
    )
    caplog.set_level(logging.WARNING, "orchestrator.infrastructure.scheduler")
    await scheduler.start()
    try:

        async def failed_twice() -> bool:
            return sum("scheduler pass failed" in r.message for r in caplog.records) >= 2

        await wait_for(failed_twice, "two failed passes")
        # An outage is expected: one line each, no traceback.
        failed = [r for r in caplog.records if "scheduler pass failed" in r.message]
        assert all(r.levelno == logging.WARNING and r.exc_info is None for r in failed)
    finally:
        began = time.monotonic()
        await scheduler.stop()
        assert time.monotonic() - began < 2.0
        await engine.dispose()
