"""Fair-use limiters: the start rate and the subscription counters, in memory (and in Redis when
one answers), and the 429 they turn into."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
import redis
from fastapi import FastAPI

from orchestrator.application.access import Caller
from orchestrator.infrastructure.limits import (
    MEMORY,
    MemorySubscriptions,
    RedisSubscriptions,
    StartRate,
    storage_uri,
    subscription_counter,
)
from orchestrator.presentation.api import errors
from orchestrator.presentation.fair_use import FairUse, TooManyRequests
from orchestrator.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/0"


def test_the_storage_is_redis_when_a_url_is_given() -> None:
    assert storage_uri(None) == MEMORY
    assert storage_uri("redis://r:6379/0") == "async+redis://r:6379/0"
    assert isinstance(subscription_counter(3, None), MemorySubscriptions)


async def test_the_start_rate_refuses_past_the_limit_with_a_wait() -> None:
    rate = StartRate(3)
    assert [await rate.hit("ann") for _ in range(3)] == [None, None, None]
    wait = await rate.hit("ann")
    assert wait is not None
    assert 1 <= wait <= 60
    assert await rate.hit("bob") is None  # another user has their own


async def test_subscriptions_in_memory_count_per_user() -> None:
    counter = MemorySubscriptions(2)
    assert await counter.acquire("ann", "s1:e1")
    assert await counter.acquire("ann", "s2:e1")  # another connection, same user
    assert await counter.acquire("ann", "s1:e1")  # counted already: not twice
    assert not await counter.acquire("ann", "s1:e2")
    assert await counter.acquire("bob", "s3:e1")
    await counter.release("ann", "s2:e1")
    await counter.release("ann", "s9:e9")  # never counted: nothing
    assert counter.count("ann") == 1
    assert await counter.acquire("ann", "s1:e2")
    assert counter.count("ann") == 2


async def test_fair_use_limits_only_authenticated_callers() -> None:
    settings = Settings(user_executions_per_minute=1, user_running_executions=0)
    fair = FairUse(settings, engine=None)  # type: ignore[arg-type]  # no running limit: unused
    await fair.check_start(Caller())
    await fair.check_start(Caller())
    await fair.check_start(Caller("ann"))  # AUTH_MODE=none: a userId is only a claim
    await fair.check_start(Caller("ann"))
    await fair.check_start(Caller("ann", scoped=True))
    with pytest.raises(TooManyRequests) as refused:
        await fair.check_start(Caller("ann", scoped=True))
    assert refused.value.status_code == 429
    assert refused.value.retry_after >= 1
    assert "USER_EXECUTIONS_PER_MINUTE" in refused.value.message
    await fair.close()


async def test_a_refusal_is_a_429_with_retry_after_and_the_envelope() -> None:
    app = FastAPI()
    errors.install(app)

    @app.post("/go")
    async def go() -> None:
        raise TooManyRequests("slow down", 0)

    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/go")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"  # never below 1
    body = response.json()
    assert (body["statusCode"], body["error"], body["message"]) == (
        429,
        "Too Many Requests",
        "slow down",
    )


@pytest.fixture
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    return REDIS_URL


async def test_redis_subscriptions_are_shared_and_a_dead_replicas_lapse(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    # A: a replica that stops refreshing (as one that crashed); B: one that keeps refreshing.
    a = RedisSubscriptions(2, redis_url, prefix, ttl_s=0.5, heartbeat_s=3600)
    b = RedisSubscriptions(2, redis_url, prefix, ttl_s=0.5, heartbeat_s=0.1)
    try:
        assert await a.acquire("ann", "s1:e1")
        assert await b.acquire("ann", "s2:e1")
        assert not await b.acquire("ann", "s2:e2")  # two already, over both replicas
        assert await b.acquire("bob", "s2:e1")
        # A's lapses; B's, refreshed, holds on.
        deadline = time.monotonic() + 10
        while not await b.acquire("ann", "s2:e2"):
            assert time.monotonic() < deadline, "a dead replica's subscription never lapsed"
            await asyncio.sleep(0.05)
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # three TTLs: B's own are refreshed
            assert not await a.acquire("ann", "s1:e3")
            await asyncio.sleep(0.1)
        await b.release("ann", "s2:e1")
        assert await a.acquire("ann", "s1:e3")
    finally:
        await a.close()
        await b.close()


async def test_the_start_rate_in_redis_is_shared(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex}"
    one, two = (StartRate(2, storage_uri(redis_url), prefix) for _ in range(2))
    assert await one.hit("ann") is None
    assert await two.hit("ann") is None
    wait = await one.hit("ann")
    assert wait is not None
    assert 1 <= wait <= 60
