"""Use cases of schedules: create, list, get, change, delete, and firing a due schedule.

A schedule belongs to its workflow's owner (or, for a workflow without one, to whoever made
it): its executions run as that user. Each tick starts its execution through
`execute_workflow` with a key of its own, so a tick fired twice (a process died after the
start but before it recorded it) gives back the same execution: never lost, never doubled.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.application.access import Caller
from orchestrator.application.executions import ExecutionServices, execute_workflow
from orchestrator.application.ports import Clock, Page, UnitOfWorkFactory
from orchestrator.application.workflows import get_workflow
from orchestrator.domain.errors import Conflict, DomainError, NotFound, Problem, ValidationFailed
from orchestrator.domain.schedules import CatchUp, Cron, NoTick, Schedule, iso, plan
from orchestrator.domain.values import ValueLimits
from orchestrator.domain.workflow import WorkflowStatus

# Fields a PATCH may not set to null (only `input` may be null).
REQUIRED_FIELDS = ("cron", "timezone", "enabled", "catch_up")
WIRE_NAMES = {"catch_up": "catchUp"}
# A tick this late is late, not missed: catchUp "none" still fires it (plus one poll interval).
LATE_GRACE = dt.timedelta(seconds=60)


class ScheduleRepository(Protocol):
    """Schedules in one transaction."""

    async def add(self, schedule: Schedule) -> None: ...

    async def get(self, schedule_id: str, lock: bool = False) -> Schedule | None:
        """The schedule; `lock` holds it until the transaction ends (the scheduler skips it)."""
        ...

    async def list_page(
        self, page: Page, workflow_id: str | None, owner: str | None
    ) -> tuple[list[Schedule], int]:
        """Schedules oldest first, of one workflow or all; of one owner or all (None)."""
        ...

    async def save(self, schedule: Schedule) -> None:
        """Write what a user may change, and the next tick."""
        ...

    async def delete(self, schedule_id: str) -> None: ...

    async def commit(self) -> None: ...


ScheduleStore = Callable[[], AbstractAsyncContextManager[ScheduleRepository]]


def _no_signal() -> None:
    """No scheduler in this process to wake."""


@dataclass(frozen=True)
class ScheduleServices:
    """What the schedule use cases call out to; `changed` wakes this process's scheduler."""

    store: ScheduleStore
    workflows: UnitOfWorkFactory
    clock: Clock
    limits: ValueLimits
    changed: Callable[[], None] = _no_signal


@dataclass(frozen=True)
class ScheduleSpec:
    """Fields of a schedule as sent; `sent` names those given (a PATCH changes only these)."""

    cron: str | None = None
    timezone: str | None = None
    input: Any = None
    enabled: bool | None = None
    catch_up: CatchUp | None = None
    sent: frozenset[str] = field(default_factory=frozenset)


def _check(services: ScheduleServices, spec: ScheduleSpec) -> None:
    """Nulls where a value is required, and an input over the value bounds, are refused."""
    nulls = [name for name in REQUIRED_FIELDS if name in spec.sent and getattr(spec, name) is None]
    if nulls:
        problems = [Problem(WIRE_NAMES.get(n, n), "may not be null") for n in nulls]
        raise ValidationFailed("; ".join(f"{p.path}: {p.message}" for p in problems), problems)
    if "input" in spec.sent:
        services.limits.check(spec.input, "input")


async def create_schedule(
    services: ScheduleServices, workflow_id: str, spec: ScheduleSpec, caller: Caller
) -> Schedule:
    """A new schedule of a workflow the caller may change; its first tick is the next one
    after now. An ARCHIVED workflow never runs again: a Conflict."""
    _check(services, spec)
    if spec.cron is None:
        raise ValidationFailed("cron: required", [Problem("cron", "required")])
    now = services.clock.now()
    cron = Cron.parse(spec.cron, spec.timezone, now)
    workflow = await get_workflow(services.workflows, workflow_id, caller)
    if not caller.may_change(workflow.user_id):
        raise NotFound("Workflow", workflow_id)
    if workflow.status == WorkflowStatus.ARCHIVED:
        raise Conflict(f"Workflow {workflow_id} is ARCHIVED; it can never run again")
    schedule = Schedule(
        id=str(uuid.uuid4()),
        workflow_id=workflow.id,
        user_id=workflow.user_id if workflow.user_id is not None else caller.user_id,
        cron=cron.expression,
        timezone=cron.timezone,
        input=spec.input,
        enabled=True if spec.enabled is None else spec.enabled,
        catch_up=spec.catch_up or CatchUp.LATEST,
        next_run_at=None,
        last_run_at=None,
        last_execution_id=None,
        last_error=None,
        created_at=now,
        updated_at=now,
    )
    schedule.reschedule(now)
    async with services.store() as schedules:
        await schedules.add(schedule)
        await schedules.commit()
    services.changed()
    return schedule


async def list_schedules(
    services: ScheduleServices, workflow_id: str | None, page: Page, caller: Caller
) -> tuple[list[Schedule], int]:
    """One page of the caller's schedules (of one workflow, or of all), oldest first."""
    if workflow_id is not None:
        await get_workflow(services.workflows, workflow_id, caller)
    async with services.store() as schedules:
        return await schedules.list_page(page, workflow_id, caller.only)


async def get_schedule(
    services: ScheduleServices, workflow_id: str, schedule_id: str, caller: Caller
) -> Schedule:
    """The schedule, or NotFound (also for one of another workflow or user)."""
    async with services.store() as schedules:
        schedule = await schedules.get(schedule_id)
    if schedule is None or schedule.workflow_id != workflow_id:
        raise NotFound("Schedule", schedule_id)
    if not caller.may_read(schedule.user_id):
        raise NotFound("Schedule", schedule_id)
    return schedule


async def update_schedule(
    services: ScheduleServices,
    workflow_id: str,
    schedule_id: str,
    spec: ScheduleSpec,
    caller: Caller,
) -> Schedule:
    """Change the fields sent. A new cron, timezone or enabling computes the next tick from
    now; disabling clears it. Waits for a tick of it being started to be recorded first."""
    _check(services, spec)
    now = services.clock.now()
    async with services.store() as schedules:
        schedule = await schedules.get(schedule_id, lock=True)
        if (
            schedule is None
            or schedule.workflow_id != workflow_id
            or not caller.may_change(schedule.user_id)
        ):
            raise NotFound("Schedule", schedule_id)
        cron = Cron.parse(
            spec.cron if "cron" in spec.sent and spec.cron is not None else schedule.cron,
            spec.timezone if "timezone" in spec.sent else schedule.timezone,
            now,
        )
        timing = (cron.expression, cron.timezone) != (schedule.cron, schedule.timezone)
        enabling = spec.enabled is not None and spec.enabled != schedule.enabled
        schedule.cron, schedule.timezone = cron.expression, cron.timezone
        if "input" in spec.sent:
            schedule.input = spec.input
        if spec.catch_up is not None:
            schedule.catch_up = spec.catch_up
        if spec.enabled is not None:
            schedule.enabled = spec.enabled
        schedule.updated_at = now
        if timing or enabling:
            schedule.reschedule(now)
        await schedules.save(schedule)
        await schedules.commit()
    services.changed()
    return schedule


async def delete_schedule(
    services: ScheduleServices, workflow_id: str, schedule_id: str, caller: Caller
) -> None:
    """Delete it; no tick of it starts afterwards."""
    async with services.store() as schedules:
        schedule = await schedules.get(schedule_id, lock=True)
        if (
            schedule is None
            or schedule.workflow_id != workflow_id
            or not caller.may_change(schedule.user_id)
        ):
            raise NotFound("Schedule", schedule_id)
        await schedules.delete(schedule_id)
        await schedules.commit()


@dataclass(frozen=True)
class Firing:
    """How due schedules fire: the executions' services, the grace of a late tick, the most
    missed ticks that catchUp "all" starts, and who is told how each tick went ("started",
    "refused": the workflow could not run; "skipped": missed, per catchUp)."""

    services: ExecutionServices
    grace: dt.timedelta
    catch_up_max: int
    outcome: Callable[[str], None] = lambda outcome: None


def tick_key(schedule_id: str, tick: dt.datetime) -> str:
    """The Idempotency-Key of one tick: the same tick always starts the same execution."""
    return f"schedule:{schedule_id}:{iso(tick)}"


async def fire_tick(services: ExecutionServices, schedule: Schedule, tick: dt.datetime) -> bool:
    """Start the tick's execution, or record why none started (the workflow is not ACTIVE,
    or gone): False then; a failure of the database propagates (the tick is fired again
    later)."""
    trigger = {"type": "schedule", "scheduleId": schedule.id, "scheduledFor": iso(tick)}
    # The access was checked when the schedule was made: it runs as its owner.
    owner = Caller(schedule.user_id)
    try:
        execution = await execute_workflow(
            services,
            schedule.workflow_id,
            schedule.input,
            owner,
            tick_key(schedule.id, tick),
            trigger=trigger,
        )
    except DomainError as exc:
        schedule.record(tick, None, f"the tick of {iso(tick)} started nothing: {exc}")
        return False
    schedule.record(tick, execution.id, None)
    return True


async def fire_due(firing: Firing, schedule: Schedule, now: dt.datetime) -> Schedule:
    """Fire what is due of a claimed schedule (per its catchUp) and move it to its next tick.

    The ticks are computed off the event loop: catchUp "all" may walk many of them.
    """
    if schedule.next_run_at is None:
        return schedule
    try:
        due = await asyncio.to_thread(
            plan,
            schedule.parsed,
            schedule.catch_up,
            schedule.next_run_at,
            now,
            firing.grace,
            firing.catch_up_max,
        )
    except NoTick as exc:  # never claimed again, rather than failing every pass
        schedule.next_run_at = None
        schedule.last_error = exc.message
        return schedule
    for tick in due.ticks:
        started = await fire_tick(firing.services, schedule, tick)
        firing.outcome("started" if started else "refused")
    if due.note is not None:
        schedule.last_error = due.note
    schedule.next_run_at = due.next_run_at
    return schedule
