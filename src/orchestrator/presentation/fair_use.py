"""Fair use: per-user limits on starting executions (REST) and on subscriptions (Socket.IO).

Only an authenticated caller is limited (AUTH_MODE gateway or jwt): in AUTH_MODE=none a
`userId` is whatever the caller says, so a limit on it would hold back only honest callers.
A refused start answers 429 with `Retry-After` (whole seconds, at least 1). The running count
is checked before the rate is counted, so a start refused for that does not use the rate up.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.exceptions import HTTPException

from orchestrator.application.access import Caller
from orchestrator.infrastructure.db.executions import count_active
from orchestrator.infrastructure.limits import (
    StartRate,
    SubscriptionCounter,
    storage_uri,
    subscription_counter,
)
from orchestrator.settings import Settings

# Nothing says when a running execution ends: a hint for clients to poll by.
RUNNING_RETRY_AFTER_S = 5


class TooManyRequests(HTTPException):
    """A fair-use limit reached (429, with Retry-After)."""

    def __init__(self, message: str, retry_after: int) -> None:
        retry_after = max(1, int(retry_after))
        super().__init__(429, message, headers={"Retry-After": str(retry_after)})
        self.message = message
        self.retry_after = retry_after


class FairUse:
    """The per-user limits of one process (shared with the others through Redis, if set)."""

    def __init__(self, settings: Settings, engine: AsyncEngine) -> None:
        self._engine = engine
        self._running = settings.user_running_executions
        per_minute = settings.user_executions_per_minute
        uri = storage_uri(settings.redis_url)
        self._rate = StartRate(per_minute, uri, settings.redis_channel) if per_minute else None
        self.subscriptions: SubscriptionCounter | None = (
            subscription_counter(
                settings.user_subscriptions, settings.redis_url, settings.redis_channel
            )
            if settings.user_subscriptions
            else None
        )

    async def check_start(self, caller: Caller) -> None:
        """Raise TooManyRequests when the caller may not start another execution now."""
        user_id = caller.user_id
        if user_id is None or not caller.scoped:
            return
        if self._running:
            async with self._engine.connect() as connection:
                active = await count_active(connection, user_id)
            if active >= self._running:
                raise TooManyRequests(
                    f"Too many executions running at once: at most {self._running} per user "
                    f"(USER_RUNNING_EXECUTIONS); try again in {RUNNING_RETRY_AFTER_S} s or "
                    "once one has finished",
                    RUNNING_RETRY_AFTER_S,
                )
        if self._rate is not None:
            wait = await self._rate.hit(user_id)
            if wait is not None:
                raise TooManyRequests(
                    f"Too many executions started: at most {self._rate.per_minute} per minute "
                    f"per user (USER_EXECUTIONS_PER_MINUTE); try again in {wait} s",
                    wait,
                )

    async def close(self) -> None:
        """Stop the subscription counter's heartbeat."""
        if self.subscriptions is not None:
            await self.subscriptions.close()
