"""Webhooks in SQL: looked up by the digest of their token (a unique index)."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from orchestrator.application.webhooks import Webhook, WebhookRepository
from orchestrator.infrastructure.db.tables import webhooks


def _webhook(row: Any) -> Webhook:
    return Webhook(
        id=row.id,
        workflow_id=row.workflow_id,
        user_id=row.user_id,
        name=row.name,
        token_hash=row.token_hash,
        token_hint=row.token_hint,
        secret=row.secret,
        enabled=row.enabled,
        last_used_at=row.last_used_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class SqlWebhookRepository:
    """Webhooks on one connection, in the caller's transaction."""

    def __init__(self, connection: AsyncConnection) -> None:
        self._c = connection

    async def add(self, webhook: Webhook) -> None:
        await self._c.execute(
            insert(webhooks).values(
                id=webhook.id,
                workflow_id=webhook.workflow_id,
                user_id=webhook.user_id,
                name=webhook.name,
                token_hash=webhook.token_hash,
                token_hint=webhook.token_hint,
                secret=webhook.secret,
                enabled=webhook.enabled,
                last_used_at=webhook.last_used_at,
                created_at=webhook.created_at,
                updated_at=webhook.updated_at,
            )
        )

    async def get(self, webhook_id: str) -> Webhook | None:
        row = (await self._c.execute(select(webhooks).where(webhooks.c.id == webhook_id))).first()
        return None if row is None else _webhook(row)

    async def by_token(self, token_hash: str) -> Webhook | None:
        query = select(webhooks).where(webhooks.c.token_hash == token_hash)
        row = (await self._c.execute(query)).first()
        return None if row is None else _webhook(row)

    async def of_workflow(self, workflow_id: str, user_id: str | None) -> list[Webhook]:
        conditions = [webhooks.c.workflow_id == workflow_id]
        if user_id is not None:
            conditions.append(webhooks.c.user_id == user_id)
        query = select(webhooks).where(*conditions).order_by(webhooks.c.created_at, webhooks.c.id)
        return [_webhook(row) for row in (await self._c.execute(query)).all()]

    async def count(self, workflow_id: str) -> int:
        query = (
            select(func.count()).select_from(webhooks).where(webhooks.c.workflow_id == workflow_id)
        )
        return int((await self._c.execute(query)).scalar_one())

    async def save(self, webhook: Webhook) -> None:
        await self._c.execute(
            update(webhooks)
            .where(webhooks.c.id == webhook.id)
            .values(
                name=webhook.name,
                token_hash=webhook.token_hash,
                token_hint=webhook.token_hint,
                secret=webhook.secret,
                enabled=webhook.enabled,
                updated_at=webhook.updated_at,
            )
        )

    async def delete(self, webhook_id: str) -> None:
        await self._c.execute(delete(webhooks).where(webhooks.c.id == webhook_id))

    async def used(self, webhook_id: str, at: dt.datetime) -> None:
        # Deliveries at once each note their time; the latest one stays.
        await self._c.execute(
            update(webhooks)
            .where(
                webhooks.c.id == webhook_id,
                (webhooks.c.last_used_at.is_(None)) | (webhooks.c.last_used_at < at),
            )
            .values(last_used_at=at)
        )


class SqlWebhookStore:
    """Opens a transaction per use: committed when the block ends cleanly, else rolled back."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[WebhookRepository]:
        async with self._engine.begin() as connection:
            yield SqlWebhookRepository(connection)
