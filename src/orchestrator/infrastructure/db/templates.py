"""Users' own templates in SQL: one row each, the definition and parameters as JSON."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.domain.templates import Parameter, Template
from orchestrator.infrastructure.db.mappers import definition_from_json, definition_to_json
from orchestrator.infrastructure.db.tables import templates


class SqlTemplateRepository:
    """Each call is its own short transaction: a template is written once and never changed."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, template: Template) -> None:
        """Store a new template."""
        async with self._engine.begin() as connection:
            await connection.execute(
                insert(templates).values(
                    id=template.id,
                    user_id=template.user_id,
                    name=template.name,
                    description=template.description,
                    category=template.category,
                    definition=definition_to_json(template.definition),
                    parameters=[_parameter_to_json(p) for p in template.parameters],
                    source_workflow_id=template.source_workflow_id,
                    created_at=template.created_at,
                )
            )

    async def get(self, template_id: str) -> Template | None:
        """The template, or None."""
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(select(templates).where(templates.c.id == template_id))
            ).first()
        return None if row is None else _from_row(row)

    async def list_page(
        self, owner: str | None, category: str | None, offset: int, limit: int
    ) -> tuple[list[Template], int]:
        """Newest first, `limit` (maybe 0) from `offset`, with the total count."""
        conditions = []
        if owner is not None:
            conditions.append(templates.c.user_id == owner)
        if category is not None:
            conditions.append(templates.c.category == category)
        async with self._engine.connect() as connection:
            total = (
                await connection.execute(
                    select(func.count()).select_from(templates).where(*conditions)
                )
            ).scalar_one()
            rows = []
            if limit > 0:
                rows = list(
                    await connection.execute(
                        select(templates)
                        .where(*conditions)
                        .order_by(templates.c.created_at.desc(), templates.c.id)
                        .offset(offset)
                        .limit(limit)
                    )
                )
        return [_from_row(row) for row in rows], int(total)

    async def delete(self, template_id: str) -> bool:
        """True when there was such a template."""
        async with self._engine.begin() as connection:
            result = await connection.execute(
                delete(templates).where(templates.c.id == template_id)
            )
        return bool(result.rowcount)


def _parameter_to_json(parameter: Parameter) -> dict[str, Any]:
    stored: dict[str, Any] = {
        "name": parameter.name,
        "type": parameter.type,
        "description": parameter.description,
    }
    if parameter.default is not None:
        stored["default"] = parameter.default
    return stored


def _from_row(row: Any) -> Template:
    return Template(
        id=row.id,
        name=row.name,
        description=row.description,
        category=row.category,
        parameters=tuple(
            Parameter(p["name"], p["type"], p.get("description", ""), p.get("default"))
            for p in row.parameters or []
        ),
        definition=definition_from_json(row.definition),
        user_id=row.user_id,
        source_workflow_id=row.source_workflow_id,
        created_at=row.created_at,
    )
