"""Fixtures: real PostgreSQL databases (a migrated template copied per test), SQLite files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from orchestrator.infrastructure.db.engine import create_engine, migrate
from orchestrator.settings import async_database_url
from tests.databases import create_database, create_migrated_template, drop_database, url_for


@pytest.fixture(scope="session")
def template_database() -> Iterator[str]:
    """One migrated database per test session; tests get copies of it."""
    name = asyncio.run(create_migrated_template())
    yield name
    asyncio.run(drop_database(name))


@pytest.fixture
async def pg_url(template_database: str) -> AsyncIterator[str]:
    """A migrated PostgreSQL database of this test's own, dropped afterwards."""
    name = await create_database(template_database)
    yield url_for(name)
    await drop_database(name)


@pytest.fixture
async def sqlite_url(tmp_path: Path) -> str:
    """A migrated SQLite file of this test's own."""
    url = async_database_url(f"sqlite:///{tmp_path / 'test.db'}")
    engine = create_engine(url)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
    return url


@pytest.fixture(params=["postgresql", "sqlite"])
async def engine(
    request: pytest.FixtureRequest, template_database: str, tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh migrated database, once on PostgreSQL and once on SQLite."""
    if request.param == "postgresql":
        name = await create_database(template_database)
        engine = create_engine(async_database_url(url_for(name)))
        yield engine
        await engine.dispose()
        await drop_database(name)
    else:
        url = async_database_url(f"sqlite:///{tmp_path / 'test.db'}")
        engine = create_engine(url)
        await migrate(engine)
        yield engine
        await engine.dispose()
