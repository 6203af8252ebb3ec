"""Throwaway databases for tests: a migrated template on PostgreSQL, copied per test or module."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import asyncpg

from orchestrator.infrastructure.db.engine import create_engine, migrate
from orchestrator.settings import async_database_url

ADMIN_URL = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def plain(url: str) -> str:
    """asyncpg's form of a URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://")


def url_for(database: str) -> str:
    """The URL of another database on the test server."""
    base, _, _ = plain(ADMIN_URL).rpartition("/")
    return f"{base}/{database}"


async def _admin(sql: str) -> None:
    connection = await asyncpg.connect(plain(ADMIN_URL))
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


async def create_database(template: str | None = None) -> str:
    """A new empty database (or a copy of `template`); returns its name."""
    name = f"orch_test_{uuid.uuid4().hex[:12]}"
    suffix = f" TEMPLATE {template}" if template else ""
    await _admin(f'CREATE DATABASE "{name}"{suffix}')
    return name


async def drop_database(name: str) -> None:
    """Drop a test database, disconnecting whoever is still on it."""
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def create_migrated_template() -> str:
    """A database at the latest migration, to copy from."""
    name = await create_database()
    engine = create_engine(async_database_url(url_for(name)))
    try:
        await migrate(engine)
    finally:
        await engine.dispose()
    return name


@contextmanager
def sync_database(template: str) -> Iterator[str]:
    """A copy of the template for the length of a with-block (for synchronous fixtures)."""
    name = asyncio.run(create_database(template))
    try:
        yield url_for(name)
    finally:
        asyncio.run(drop_database(name))
