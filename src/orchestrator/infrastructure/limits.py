"""Per-user fair-use counters, shared by the replicas through Redis (in memory without it).

- `StartRate`: executions started per minute, a moving window kept by the `limits` library
  (`async+redis://` when REDIS_URL is set, `async+memory://` otherwise).
- `count_active` (infrastructure/db/executions.py) counts what runs at once: the database is
  the truth, so nothing has to be released when a replica crashes.
- `SubscriptionCounter`: Socket.IO subscriptions of a user over all their connections and
  replicas. In Redis, one sorted set per user, a member per subscription scored by when it
  lapses; the replica that holds a subscription pushes that time forward every `heartbeat_s`,
  so those of a replica that crashed lapse after `ttl_s` and stop counting.

Redis being unreachable lets the call through (logged): fair use is not worth an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import defaultdict
from typing import Any, Protocol, cast

import redis.asyncio as aioredis
from limits import RateLimitItemPerMinute
from limits.aio.storage import Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

MEMORY = "async+memory://"
CLOSE_TIMEOUT_S = 5.0


def storage_uri(redis_url: str | None) -> str:
    """The `limits` storage: Redis when a URL is given, memory otherwise."""
    return f"async+{redis_url}" if redis_url else MEMORY


class StartRate:
    """At most `per_minute` starts of one user in any 60 seconds, over every replica."""

    def __init__(self, per_minute: int, uri: str = MEMORY, prefix: str = "orchestrator") -> None:
        options: dict[str, Any] = {"wrap_exceptions": True}
        if uri != MEMORY:
            options.update(implementation="redispy", key_prefix=f"{prefix}:limits")
        self._storage = cast(Storage, storage_from_string(uri, **options))
        self._limiter = MovingWindowRateLimiter(self._storage)
        self._item = RateLimitItemPerMinute(per_minute)
        self.per_minute = per_minute

    async def hit(self, user_id: str) -> int | None:
        """Count one start of the user: None when allowed, else seconds until one is (≥ 1)."""
        try:
            if await self._limiter.hit(self._item, "starts", user_id):
                return None
            stats = await self._limiter.get_window_stats(self._item, "starts", user_id)
        except StorageError as exc:
            log.warning("rate limit store unavailable, start allowed: %s", exc)
            return None
        return max(1, math.ceil(stats.reset_time - time.time()))


class SubscriptionCounter(Protocol):
    """Subscriptions of each user, over their connections (and replicas)."""

    limit: int

    async def acquire(self, user_id: str, holder: str) -> bool:
        """Count the subscription `holder` (unique on this replica) unless the user is at the
        limit; True when counted (or counted already)."""

    async def release(self, user_id: str, holder: str) -> None:
        """Stop counting it (nothing if it was not counted)."""

    async def close(self) -> None:
        """Stop any background work."""


class MemorySubscriptions:
    """One process: a set of holders per user."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, set[str]] = defaultdict(set)

    async def acquire(self, user_id: str, holder: str) -> bool:
        """See SubscriptionCounter."""
        held = self._held[user_id]
        if holder not in held and len(held) >= self.limit:
            return False
        held.add(holder)
        return True

    async def release(self, user_id: str, holder: str) -> None:
        """See SubscriptionCounter."""
        held = self._held.get(user_id)
        if held is not None:
            held.discard(holder)
            if not held:
                del self._held[user_id]

    def count(self, user_id: str) -> int:
        """The user's subscriptions now."""
        return len(self._held.get(user_id, ()))

    async def close(self) -> None:
        """Nothing runs in the background."""


# Scores are Redis's own clock (TIME), so the replicas' clocks need not agree.
_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1000000 "
_ACQUIRE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local ttl = tonumber(ARGV[3])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(ttl))
return 1
"""
)
_REFRESH = (
    _NOW
    + """
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i]) end
redis.call('EXPIRE', KEYS[1], math.ceil(ttl))
return 1
"""
)


class RedisSubscriptions:
    """Across replicas: see the module's docstring."""

    def __init__(
        self,
        limit: int,
        redis_url: str,
        prefix: str = "orchestrator",
        ttl_s: float = 60.0,
        heartbeat_s: float = 20.0,
    ) -> None:
        self.limit = limit
        self._redis = aioredis.Redis.from_url(redis_url)
        self._prefix = f"{prefix}:subscriptions"
        self._replica = uuid.uuid4().hex
        self._ttl = ttl_s
        self._heartbeat = heartbeat_s
        self._held: dict[str, set[str]] = defaultdict(set)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._refresh = self._redis.register_script(_REFRESH)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def _key(self, user_id: str) -> str:
        return f"{self._prefix}:{user_id}"

    def _member(self, holder: str) -> str:
        return f"{self._replica}:{holder}"

    async def acquire(self, user_id: str, holder: str) -> bool:
        """See SubscriptionCounter."""
        self._start()
        try:
            counted = await self._acquire(
                keys=[self._key(user_id)], args=[self._member(holder), self.limit, self._ttl]
            )
        except RedisError as exc:
            log.warning("subscription counter unavailable, subscription allowed: %s", exc)
            counted = 1
        if counted:
            self._held[user_id].add(holder)
        return bool(counted)

    async def release(self, user_id: str, holder: str) -> None:
        """See SubscriptionCounter."""
        held = self._held.get(user_id)
        if held is None or holder not in held:
            return
        held.discard(holder)
        if not held:
            del self._held[user_id]
        try:
            await self._redis.zrem(self._key(user_id), self._member(holder))
        except RedisError as exc:
            log.warning("could not release a subscription (it lapses by itself): %s", exc)

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        """Push the lapse time of this replica's subscriptions forward, until closed."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._heartbeat)
                return
            for user_id, held in list(self._held.items()):
                members = [self._member(holder) for holder in held]
                if not members:
                    continue
                try:
                    await self._refresh(keys=[self._key(user_id)], args=[self._ttl, *members])
                except RedisError as exc:
                    log.warning("could not refresh subscriptions: %s", exc)

    async def close(self) -> None:
        """Stop the heartbeat and close the connection (the subscriptions lapse by themselves,
        or were released on disconnect)."""
        self._stop.set()
        if self._task is not None:
            _, pending = await asyncio.wait({self._task}, timeout=CLOSE_TIMEOUT_S)
            for task in pending:
                task.cancel()
        await asyncio.wait_for(self._redis.aclose(), CLOSE_TIMEOUT_S)


def subscription_counter(
    limit: int, redis_url: str | None, prefix: str = "orchestrator"
) -> SubscriptionCounter:
    """Redis-backed when a URL is given, in memory otherwise."""
    if redis_url:
        return RedisSubscriptions(limit, redis_url, prefix)
    return MemorySubscriptions(limit)
