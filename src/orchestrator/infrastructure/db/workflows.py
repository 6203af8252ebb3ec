"""Workflows in SQL; each definition version is its own immutable row."""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from typing import Any

from sqlalchemy import and_, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from orchestrator.application.ports import Page, VersionRecord
from orchestrator.domain.errors import ConcurrentChange
from orchestrator.domain.workflow import Definition, Workflow, WorkflowStatus
from orchestrator.infrastructure.db.mappers import (
    definition_from_json,
    definition_to_json,
    workflow_from_row,
)
from orchestrator.infrastructure.db.tables import workflow_versions, workflows

# Versions are immutable, so their parsed definitions can be kept (by every process alike).
_DEFINITIONS: OrderedDict[tuple[str, int], Definition] = OrderedDict()
DEFINITION_CACHE_SIZE = 1024


def _remember(workflow_id: str, version: int, stored: Any) -> Definition:
    key = (workflow_id, version)
    definition = _DEFINITIONS.get(key)
    if definition is None:
        definition = definition_from_json(stored)
        _DEFINITIONS[key] = definition
        if len(_DEFINITIONS) > DEFINITION_CACHE_SIZE:
            _DEFINITIONS.popitem(last=False)
    return definition


class SqlWorkflowRepository:
    """Workflows in SQL; each definition version is its own immutable row.

    `save` refuses (Conflict) to overwrite a workflow that changed since `get` read it.
    """

    def __init__(self, connection: AsyncConnection) -> None:
        self._c = connection
        # The (version, updated_at) that `get` read, checked again by `save`.
        self._read: dict[str, tuple[int, dt.datetime]] = {}

    async def add(self, workflow: Workflow) -> None:
        await self._c.execute(
            insert(workflows).values(
                id=workflow.id,
                name=workflow.name,
                description=workflow.description,
                status=workflow.status.value,
                version=workflow.version,
                user_id=workflow.user_id,
                created_at=workflow.created_at,
                updated_at=workflow.updated_at,
            )
        )
        await self._add_version(workflow)

    async def _add_version(self, workflow: Workflow) -> None:
        await self._c.execute(
            insert(workflow_versions).values(
                workflow_id=workflow.id,
                version=workflow.version,
                definition=definition_to_json(workflow.definition),
                created_at=workflow.updated_at,
            )
        )

    def _select(self) -> Any:
        return select(workflows, workflow_versions.c.definition).join(
            workflow_versions,
            and_(
                workflow_versions.c.workflow_id == workflows.c.id,
                workflow_versions.c.version == workflows.c.version,
            ),
        )

    async def get(self, workflow_id: str) -> Workflow | None:
        row = (
            await self._c.execute(select(workflows).where(workflows.c.id == workflow_id))
        ).first()
        if row is None:
            return None
        definition = await self.definition(row.id, row.version)
        if definition is None:
            return None
        self._read[workflow_id] = (row.version, row.updated_at)
        return workflow_from_row(row, definition)

    async def list_page(
        self, page: Page, user_id: str | None, status: WorkflowStatus | None
    ) -> tuple[list[Workflow], int]:
        conditions = []
        if user_id is not None:
            conditions.append(workflows.c.user_id == user_id)
        if status is not None:
            conditions.append(workflows.c.status == status.value)
        query = (
            self._select()
            .where(*conditions)
            .order_by(workflows.c.created_at.desc(), workflows.c.id)
            .limit(page.limit)
            .offset(page.offset)
        )
        rows = (await self._c.execute(query)).all()
        total = (
            await self._c.execute(select(func.count()).select_from(workflows).where(*conditions))
        ).scalar_one()
        return [workflow_from_row(r, _remember(r.id, r.version, r.definition)) for r in rows], int(
            total
        )

    async def save(self, workflow: Workflow, new_version: bool) -> None:
        statement = update(workflows).where(workflows.c.id == workflow.id)
        read = self._read.get(workflow.id)
        if read is not None:
            # Two requests that read the same row: the second to write would undo the first
            # (revive an archived workflow, or clash on the next version number).
            statement = statement.where(
                workflows.c.version == read[0], workflows.c.updated_at == read[1]
            )
        saved = await self._c.execute(
            statement.values(
                name=workflow.name,
                description=workflow.description,
                status=workflow.status.value,
                version=workflow.version,
                updated_at=workflow.updated_at,
            )
        )
        if saved.rowcount != 1:
            raise ConcurrentChange(
                f"Workflow {workflow.id} was changed by another request; reload it and retry"
            )
        self._read[workflow.id] = (workflow.version, workflow.updated_at)
        if new_version:
            await self._add_version(workflow)

    async def archive(self, workflow_id: str, now: dt.datetime) -> Workflow | None:
        # Not fenced like `save`: archiving wins over any edit, and the database serializes
        # it with them on the row (an edit that read the row before fails its own fence).
        row = (
            await self._c.execute(
                update(workflows)
                .where(
                    workflows.c.id == workflow_id,
                    workflows.c.status != WorkflowStatus.ARCHIVED.value,
                )
                .values(status=WorkflowStatus.ARCHIVED.value, updated_at=now)
                .returning(*workflows.c)
            )
        ).first()
        if row is None:
            return await self.get(workflow_id)
        definition = await self.definition(row.id, row.version)
        if definition is None:
            return None
        self._read[workflow_id] = (row.version, row.updated_at)
        return workflow_from_row(row, definition)

    async def versions(self, workflow_id: str) -> list[VersionRecord]:
        rows = await self._c.execute(
            select(workflow_versions)
            .where(workflow_versions.c.workflow_id == workflow_id)
            .order_by(workflow_versions.c.version)
        )
        return [
            VersionRecord(r.version, definition_from_json(r.definition), r.created_at) for r in rows
        ]

    async def definition(self, workflow_id: str, version: int) -> Definition | None:
        cached = _DEFINITIONS.get((workflow_id, version))
        if cached is not None:
            return cached
        row = (
            await self._c.execute(
                select(workflow_versions.c.definition).where(
                    workflow_versions.c.workflow_id == workflow_id,
                    workflow_versions.c.version == version,
                )
            )
        ).first()
        return None if row is None else _remember(workflow_id, version, row.definition)
