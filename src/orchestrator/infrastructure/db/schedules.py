"""Schedules in SQL, and the claim of due ones by the scheduler."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orchestrator.application.ports import Page
from orchestrator.domain.schedules import CatchUp, Schedule
from orchestrator.infrastructure.db.tables import schedules


def _from_row(row: Any) -> Schedule:
    return Schedule(
        id=row.id,
        workflow_id=row.workflow_id,
        user_id=row.user_id,
        cron=row.cron,
        timezone=row.timezone,
        input=row.input,
        enabled=row.enabled,
        catch_up=CatchUp(row.catch_up),
        next_run_at=row.next_run_at,
        last_run_at=row.last_run_at,
        last_execution_id=row.last_execution_id,
        last_error=row.last_error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _editable(schedule: Schedule) -> dict[str, Any]:
    """What a user changes, with the next tick that follows from it."""
    return {
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "input": schedule.input,
        "enabled": schedule.enabled,
        "catch_up": schedule.catch_up.value,
        "next_run_at": schedule.next_run_at,
        "updated_at": schedule.updated_at,
    }


class SqlScheduleRepository:
    """Schedules on one connection, in its transaction."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._c = connection

    async def add(self, schedule: Schedule) -> None:
        await self._c.execute(
            insert(schedules).values(
                id=schedule.id,
                workflow_id=schedule.workflow_id,
                user_id=schedule.user_id,
                last_run_at=schedule.last_run_at,
                last_execution_id=schedule.last_execution_id,
                last_error=schedule.last_error,
                created_at=schedule.created_at,
                **_editable(schedule),
            )
        )

    async def get(self, schedule_id: str, lock: bool = False) -> Schedule | None:
        query = select(schedules).where(schedules.c.id == schedule_id)
        if lock:  # PostgreSQL; SQLite has no row locks (and SQLAlchemy renders none)
            query = query.with_for_update()
        row = (await self._c.execute(query)).first()
        return None if row is None else _from_row(row)

    async def list_page(
        self, page: Page, workflow_id: str | None, owner: str | None
    ) -> tuple[list[Schedule], int]:
        conditions = []
        if workflow_id is not None:
            conditions.append(schedules.c.workflow_id == workflow_id)
        if owner is not None:
            conditions.append(schedules.c.user_id == owner)
        query = (
            select(schedules)
            .where(*conditions)
            .order_by(schedules.c.created_at, schedules.c.id)
            .limit(page.limit)
            .offset(page.offset)
        )
        rows = (await self._c.execute(query)).all()
        total = (
            await self._c.execute(select(func.count()).select_from(schedules).where(*conditions))
        ).scalar_one()
        return [_from_row(row) for row in rows], int(total)

    async def save(self, schedule: Schedule) -> None:
        await self._c.execute(
            update(schedules).where(schedules.c.id == schedule.id).values(**_editable(schedule))
        )

    async def delete(self, schedule_id: str) -> None:
        await self._c.execute(delete(schedules).where(schedules.c.id == schedule_id))

    async def commit(self) -> None:
        await self._c.commit()

    async def claim_due(self, now: dt.datetime, limit: int) -> list[Schedule]:
        """Up to `limit` enabled schedules due at `now`, earliest first, locked until the
        transaction ends; rows another process holds are skipped (PostgreSQL)."""
        query = (
            select(schedules)
            .where(schedules.c.enabled, schedules.c.next_run_at <= now)
            .order_by(schedules.c.next_run_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return [_from_row(row) for row in (await self._c.execute(query)).all()]

    async def advance(self, schedule: Schedule, claimed_due: dt.datetime) -> None:
        """Record what firing did and the next tick, unless a user changed its timing since
        it was claimed (on SQLite, where the claim holds no lock)."""
        await self._c.execute(
            update(schedules)
            .where(schedules.c.id == schedule.id, schedules.c.next_run_at == claimed_due)
            .values(
                next_run_at=schedule.next_run_at,
                last_run_at=schedule.last_run_at,
                last_execution_id=schedule.last_execution_id,
                last_error=schedule.last_error,
            )
        )

    async def earliest_due(self) -> dt.datetime | None:
        """The next tick of any enabled schedule."""
        query = select(func.min(schedules.c.next_run_at)).where(schedules.c.enabled)
        value: dt.datetime | None = (await self._c.execute(query)).scalar_one()
        return value


class SqlScheduleStore:
    """Opens a transaction over the schedules; rolled back unless committed."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[SqlScheduleRepository]:
        async with self._engine.connect() as connection:
            await connection.begin()
            try:
                yield SqlScheduleRepository(connection)
            finally:
                await connection.rollback()
