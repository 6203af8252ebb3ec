"""Migrations: the stairway on both databases, the schema against the ORM, and the start lock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.infrastructure.db.engine import alembic_config, create_engine, downgrade, migrate
from orchestrator.infrastructure.db.tables import Base, UtcDateTime
from orchestrator.settings import async_database_url
from tests.databases import create_database, drop_database, url_for

TABLES = {
    "workflows",
    "workflow_versions",
    "executions",
    "node_executions",
    "execution_events",
    "schedules",
    "webhooks",
    "templates",
}


@pytest.fixture(params=["postgresql", "sqlite"])
async def empty_engine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh, empty (never migrated) database."""
    if request.param == "postgresql":
        name = await create_database()
        engine = create_engine(async_database_url(url_for(name)))
        yield engine
        await engine.dispose()
        await drop_database(name)
    else:
        engine = create_engine(async_database_url(f"sqlite:///{tmp_path / 'empty.db'}"))
        yield engine
        await engine.dispose()


def revisions_oldest_first(engine: AsyncEngine) -> list[tuple[str, str]]:
    """(revision, the revision below it or "base") for every migration, oldest first."""
    script = ScriptDirectory.from_config(alembic_config(str(engine.url)))
    steps = []
    for revision in reversed(list(script.walk_revisions("base", "heads"))):
        below = revision.down_revision
        assert below is None or isinstance(below, str), "merge revisions are not expected"
        steps.append((revision.revision, below or "base"))
    return steps


async def tables(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as connection:
        names = await connection.run_sync(lambda c: inspect(c).get_table_names())
    return set(names) - {"alembic_version"}


async def current_revision(engine: AsyncEngine) -> str | None:
    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as connection:
        return await connection.run_sync(read)


async def test_the_stairway_upgrades_and_downgrades_every_revision(
    empty_engine: AsyncEngine,
) -> None:
    steps = revisions_oldest_first(empty_engine)
    assert steps, "no migrations found"
    for revision, below in steps:
        await migrate(empty_engine, revision)
        assert await current_revision(empty_engine) == revision
        await downgrade(empty_engine, below)
        assert await current_revision(empty_engine) == (None if below == "base" else below)
        await migrate(empty_engine, revision)
        assert await current_revision(empty_engine) == revision


async def test_head_then_base_then_head(empty_engine: AsyncEngine) -> None:
    head = revisions_oldest_first(empty_engine)[-1][0]

    await migrate(empty_engine)
    assert await tables(empty_engine) == TABLES
    assert await current_revision(empty_engine) == head

    await downgrade(empty_engine, "base")
    assert await tables(empty_engine) == set()
    assert await current_revision(empty_engine) is None

    await migrate(empty_engine)
    assert await tables(empty_engine) == TABLES
    assert await current_revision(empty_engine) == head


def _only_timestamp_type(diff: Any) -> bool:
    """A column type difference that is only UtcDateTime against DateTime(timezone=True)."""
    if not isinstance(diff, list) or len(diff) != 1:
        return False
    kind, *rest = diff[0]
    if kind != "modify_type":
        return False
    reflected, declared = rest[-2], rest[-1]
    return isinstance(declared, UtcDateTime) and "DATETIME" in type(reflected).__name__.upper()


async def test_the_migrated_schema_matches_the_tables_of_the_code(
    empty_engine: AsyncEngine,
) -> None:
    await migrate(empty_engine)

    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with empty_engine.connect() as connection:
        differences = await connection.run_sync(compare)

    assert [d for d in differences if not _only_timestamp_type(d)] == []


async def test_replicas_that_migrate_at_once_both_succeed() -> None:
    name = await create_database()
    engines = [create_engine(async_database_url(url_for(name))) for _ in range(2)]
    try:
        await asyncio.gather(*(migrate(e) for e in engines))
        assert await tables(engines[0]) == TABLES
        async with engines[0].connect() as connection:
            versions = await connection.execute(text("SELECT version_num FROM alembic_version"))
            assert [r[0] for r in versions] == [revisions_oldest_first(engines[0])[-1][0]]
    finally:
        for engine in engines:
            await engine.dispose()
        await drop_database(name)
