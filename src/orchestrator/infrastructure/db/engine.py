"""Database engine and migrations."""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

# Any constant works; all replicas must use the same one.
MIGRATION_LOCK_ID = 7_311_402_911


def create_engine(url: str, pool_size: int = 20) -> AsyncEngine:
    """An async engine: asyncpg on PostgreSQL, aiosqlite (WAL, one writer) on SQLite."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_async_engine(
        url,
        # A fixed pool: overflow connections are opened and closed under load, and opening
        # one costs more than waiting for a pooled one.
        pool_size=pool_size,
        max_overflow=0,
        # No pre-ping (a round trip per checkout): after a disconnect SQLAlchemy invalidates
        # the whole pool, and callers retry or answer 503.
        pool_recycle=1800,
        connect_args={
            "command_timeout": 30,
            "server_settings": {
                "application_name": "orchestrator",
                # A process frozen inside a transaction must not hold its row locks (and so
                # the executions behind them) for longer than this.
                "idle_in_transaction_session_timeout": "10000",
            },
        },
    )


def alembic_config(url: str) -> Config:
    """Alembic configured for the packaged migrations and this database."""
    config = Config()
    config.set_main_option(
        "script_location", str(importlib.resources.files("orchestrator.migrations"))
    )
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


async def migrate(engine: AsyncEngine, revision: str = "head") -> None:
    """Upgrade to `revision`; on PostgreSQL, replicas that start at once wait on a lock."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))

    def upgrade(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(
                text("SELECT pg_advisory_lock(:id)"), {"id": MIGRATION_LOCK_ID}
            )
            await connection.commit()
        try:
            await connection.run_sync(upgrade)
            await connection.commit()
        finally:
            if connection.dialect.name == "postgresql":
                await connection.execute(
                    text("SELECT pg_advisory_unlock(:id)"), {"id": MIGRATION_LOCK_ID}
                )
                await connection.commit()
    log.info("database migrated to %s", revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Downgrade to `revision` (used by the migration stairway test)."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))

    def run(connection: Connection) -> None:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    async with engine.connect() as connection:
        await connection.run_sync(run)
        await connection.commit()


async def ping(engine: AsyncEngine, timeout_s: float = 2.0) -> bool:
    """True when the database answers within the timeout."""
    try:
        async with asyncio.timeout(timeout_s), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:
        return False
    return True
