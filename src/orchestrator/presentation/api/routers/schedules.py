"""Routes of schedules: cron schedules that start executions of a workflow."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response, status
from pydantic import Field, StrictBool

from orchestrator.application import schedules as use
from orchestrator.domain.schedules import (
    MAX_CRON_LENGTH,
    MAX_TIMEZONE_LENGTH,
    CatchUp,
    Schedule,
)
from orchestrator.infrastructure.db.schedules import SqlScheduleStore
from orchestrator.infrastructure.scheduler import schedules_changed
from orchestrator.presentation.api.deps import (
    CallerDep,
    ContextDep,
    PageDep,
    WorkflowId,
    unstorable_ids_are_unknown,
)
from orchestrator.presentation.api.readable import ReadableRoute, StoredValue
from orchestrator.presentation.api.schemas import WireModel

router = APIRouter(
    tags=["schedules"],
    route_class=ReadableRoute,
    dependencies=[Depends(unstorable_ids_are_unknown)],
)

ScheduleId = Annotated[str, Path()]
CronText = Annotated[
    str,
    Field(
        max_length=MAX_CRON_LENGTH,
        description="5 fields (minute hour day-of-month month day-of-week) or a macro "
        "such as @hourly; seconds, years and @reboot are not supported",
    ),
]
TimezoneName = Annotated[
    str, Field(max_length=MAX_TIMEZONE_LENGTH, description="An IANA timezone (default UTC)")
]


class ScheduleIn(WireModel):
    """A new schedule."""

    cron: CronText
    timezone: TimezoneName | None = None
    input: StoredValue = None
    enabled: StrictBool = True
    catch_up: CatchUp = Field(
        CatchUp.LATEST,
        description="Missed ticks (every process was down): latest (fire the most recent), "
        "none (fire none), all (fire each, oldest first, at most SCHEDULE_CATCH_UP_MAX)",
    )

    def spec(self) -> use.ScheduleSpec:
        """The use case's form."""
        return use.ScheduleSpec(
            cron=self.cron,
            timezone=self.timezone,
            input=self.input,
            enabled=self.enabled,
            catch_up=self.catch_up,
            sent=frozenset(self.model_fields_set),
        )


class SchedulePatch(WireModel):
    """The fields to change; those left out stay."""

    cron: CronText | None = None
    timezone: TimezoneName | None = None
    input: StoredValue = None
    enabled: StrictBool | None = None
    catch_up: CatchUp | None = None

    def spec(self) -> use.ScheduleSpec:
        """The use case's form: only the fields sent change."""
        return use.ScheduleSpec(
            cron=self.cron,
            timezone=self.timezone,
            input=self.input,
            enabled=self.enabled,
            catch_up=self.catch_up,
            sent=frozenset(self.model_fields_set),
        )


class ScheduleOut(WireModel):
    """A schedule; `nextRunAt` is null while it is disabled, `lastError` says why the last
    due tick started nothing (or which missed ticks were skipped)."""

    id: str
    workflow_id: str
    user_id: str | None
    cron: str
    timezone: str
    input: StoredValue
    enabled: bool
    catch_up: CatchUp
    next_run_at: dt.datetime | None
    last_run_at: dt.datetime | None
    last_execution_id: str | None
    last_error: str | None
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, schedule: Schedule) -> ScheduleOut:
        """From the domain schedule."""
        return cls(
            id=schedule.id,
            workflow_id=schedule.workflow_id,
            user_id=schedule.user_id,
            cron=schedule.cron,
            timezone=schedule.timezone,
            input=schedule.input,
            enabled=schedule.enabled,
            catch_up=schedule.catch_up,
            next_run_at=schedule.next_run_at,
            last_run_at=schedule.last_run_at,
            last_execution_id=schedule.last_execution_id,
            last_error=schedule.last_error,
            created_at=schedule.created_at,
            updated_at=schedule.updated_at,
        )


class ScheduleList(WireModel):
    """A page of schedules, oldest first."""

    schedules: list[ScheduleOut]
    total: int
    page: int
    limit: int


def _services(context: ContextDep) -> use.ScheduleServices:
    return use.ScheduleServices(
        store=SqlScheduleStore(context.engine),
        workflows=context.uow_factory,
        clock=context.clock,
        limits=context.value_limits,
        changed=schedules_changed,
    )


ServicesDep = Annotated[use.ScheduleServices, Depends(_services)]


@router.post(
    "/workflows/{workflow_id}/schedules",
    status_code=status.HTTP_201_CREATED,
    response_model=ScheduleOut,
)
async def create_schedule(
    workflow_id: WorkflowId, body: ScheduleIn, services: ServicesDep, caller: CallerDep
) -> ScheduleOut:
    """Start an execution of the workflow at each tick of a cron expression.

    Each tick starts one execution across all replicas, with `trigger: {type: "schedule",
    scheduleId, scheduledFor}`. A tick of a workflow that is not ACTIVE starts nothing, and
    `lastError` says why. A bad cron, timezone or catchUp is a 400 naming it; an ARCHIVED
    workflow a 409.
    """
    schedule = await use.create_schedule(services, workflow_id, body.spec(), caller)
    return ScheduleOut.of(schedule)


@router.get("/workflows/{workflow_id}/schedules", response_model=ScheduleList)
async def list_workflow_schedules(
    workflow_id: WorkflowId, services: ServicesDep, page: PageDep, caller: CallerDep
) -> ScheduleList:
    """The workflow's schedules, oldest first."""
    items, total = await use.list_schedules(services, workflow_id, page, caller)
    return ScheduleList(
        schedules=[ScheduleOut.of(s) for s in items], total=total, page=page.page, limit=page.limit
    )


@router.get("/schedules", response_model=ScheduleList)
async def list_schedules(services: ServicesDep, page: PageDep, caller: CallerDep) -> ScheduleList:
    """The caller's schedules of every workflow, oldest first."""
    items, total = await use.list_schedules(services, None, page, caller)
    return ScheduleList(
        schedules=[ScheduleOut.of(s) for s in items], total=total, page=page.page, limit=page.limit
    )


@router.get("/workflows/{workflow_id}/schedules/{schedule_id}", response_model=ScheduleOut)
async def get_schedule(
    workflow_id: WorkflowId, schedule_id: ScheduleId, services: ServicesDep, caller: CallerDep
) -> ScheduleOut:
    """One schedule, with its next and last tick."""
    return ScheduleOut.of(await use.get_schedule(services, workflow_id, schedule_id, caller))


@router.patch("/workflows/{workflow_id}/schedules/{schedule_id}", response_model=ScheduleOut)
async def update_schedule(
    workflow_id: WorkflowId,
    schedule_id: ScheduleId,
    body: SchedulePatch,
    services: ServicesDep,
    caller: CallerDep,
) -> ScheduleOut:
    """Change the fields sent. A new cron or timezone, or enabling, computes `nextRunAt` from
    now; disabling clears it."""
    schedule = await use.update_schedule(services, workflow_id, schedule_id, body.spec(), caller)
    return ScheduleOut.of(schedule)


@router.delete(
    "/workflows/{workflow_id}/schedules/{schedule_id}", status_code=status.HTTP_204_NO_CONTENT
)
async def delete_schedule(
    workflow_id: WorkflowId, schedule_id: ScheduleId, services: ServicesDep, caller: CallerDep
) -> Response:
    """Delete the schedule: no tick of it starts afterwards."""
    await use.delete_schedule(services, workflow_id, schedule_id, caller)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
