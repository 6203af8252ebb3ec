"""End-to-end fixtures: one stand-in process per session, a service process per module."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import redis

from tests.databases import create_database, drop_database, url_for
from tests.processes import Process, base_url, running, service_process, standin_process


@pytest.fixture(scope="session")
def standin() -> Iterator[str]:
    """Base URL of the stand-in agent-service and tool-service."""
    with running(standin_process()) as process:
        yield base_url(process)


@pytest.fixture(scope="module")
def service_db(template_database: str) -> Iterator[str]:
    """A migrated PostgreSQL database for this module's service."""
    name = asyncio.run(create_database(template_database))
    yield url_for(name)
    asyncio.run(drop_database(name))


@pytest.fixture(scope="module")
def service(service_db: str, standin: str) -> Iterator[Process]:
    """The service, running on this module's database and the stand-ins."""
    with running(service_process(service_db, standin)) as process:
        yield process


@pytest.fixture
async def api(service: Process) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the service."""
    async with httpx.AsyncClient(base_url=base_url(service), timeout=30) as client:
        yield client


@pytest.fixture
async def calls(standin: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the stand-ins (their call log is at /_calls)."""
    async with httpx.AsyncClient(base_url=standin, timeout=30) as client:
        yield client


DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="module")
def redis_url() -> str:
    """TEST_REDIS_URL, or the local default when something answers there."""
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        return url
    try:
        redis.Redis.from_url(DEFAULT_REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(
            f"no Redis: TEST_REDIS_URL is unset and {DEFAULT_REDIS_URL} answers not ({exc})"
        )
    return DEFAULT_REDIS_URL
