"""GET /health/ready on real processes: each dependency reported, the gating ones decide.

The database and Redis (when REDIS_URL is set) gate readiness; agent-service and tool-service
are reported, never gating. A report is kept 5 s, and concurrent requests share one refresh.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from tests.databases import plain
from tests.processes import base_url, free_port, running, service_process
from tests.proxy import proxied_url, proxy_for, running_proxy

pytestmark = pytest.mark.timeout(60)

ENVELOPE = {"statusCode", "error", "message", "path", "method", "timestamp"}


class HealthCounter:
    """A tiny HTTP server answering `GET .../health` after `delay_s`, counting each path."""

    def __init__(self, delay_s: float = 0.0, status: int = 200) -> None:
        self.hits: Counter[str] = Counter()
        counter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                counter.hits[self.path] += 1
                time.sleep(delay_s)
                body = b'{"status":"ok"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@contextmanager
def counting_server(delay_s: float = 0.0, status: int = 200) -> Iterator[HealthCounter]:
    """A started HealthCounter, shut down at the end."""
    counter = HealthCounter(delay_s, status)
    thread = threading.Thread(target=counter.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield counter
    finally:
        counter.server.shutdown()
        counter.server.server_close()
        thread.join(5)


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 15.0, what: str = "condition"
) -> None:
    """Poll `check` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        await asyncio.sleep(0.1)


def closed_port_url(path: str = "") -> str:
    """A URL nothing listens on."""
    return f"http://127.0.0.1:{free_port()}{path}"


async def test_everything_up_is_ready_with_each_check(
    pg_url: str, standin: str, redis_url: str
) -> None:
    with running(service_process(pg_url, standin, REDIS_URL=redis_url)) as service:
        async with httpx.AsyncClient(base_url=base_url(service), timeout=30) as client:
            response = await client.get("/health/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"status", "runner", "checks", "timestamp"}
    assert body["status"] == "ok"
    assert body["runner"] == "running"
    checks = body["checks"]
    assert set(checks) == {"database", "redis", "agentService", "toolService"}
    for name, check in checks.items():
        assert check["status"] == "up", (name, check)
        assert isinstance(check["latencyMs"], int | float)
        assert check["latencyMs"] >= 0
        assert "error" not in check
    assert checks["database"]["gating"] is True
    assert checks["redis"]["gating"] is True
    assert {k: checks["agentService"][k] for k in ("gating", "httpStatus")} == {
        "gating": False,
        "httpStatus": 200,
    }
    assert {k: checks["toolService"][k] for k in ("gating", "httpStatus")} == {
        "gating": False,
        "httpStatus": 200,
    }


async def test_agent_service_down_is_reported_but_not_gating(pg_url: str, standin: str) -> None:
    """No REDIS_URL: no redis check. An unreachable agent-service and a tool-service
    answering 503 show down; still 200."""
    process = service_process(
        pg_url, standin, AGENT_SERVICE_URL=closed_port_url("/api"), RUNNER_ENABLED="false"
    )
    with counting_server(status=503) as tool:
        process.env["TOOL_SERVICE_URL"] = f"{tool.url}/tools"
        with running(process) as service:
            async with httpx.AsyncClient(base_url=base_url(service), timeout=30) as client:
                response = await client.get("/health/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ok"
    assert body["runner"] == "off"
    checks = body["checks"]
    assert set(checks) == {"database", "agentService", "toolService"}
    assert checks["database"]["status"] == "up"
    agent = checks["agentService"]
    assert agent["status"] == "down"
    assert agent["gating"] is False
    assert agent["error"]
    assert "httpStatus" not in agent
    tool_check = checks["toolService"]
    assert tool_check["status"] == "down"
    assert tool_check["httpStatus"] == 503
    assert tool_check["error"] == "HTTP 503"
    assert tool.hits == {"/tools/health": 1}


async def test_unreachable_redis_is_503_with_the_envelope(pg_url: str, standin: str) -> None:
    redis_down = f"redis://127.0.0.1:{free_port()}/0"
    with running(service_process(pg_url, standin, REDIS_URL=redis_down)) as service:
        async with httpx.AsyncClient(base_url=base_url(service), timeout=30) as client:
            response = await client.get("/health/ready")
    assert response.status_code == 503, response.text
    body = response.json()
    assert set(body) >= ENVELOPE
    assert body["statusCode"] == 503
    assert body["error"] == "Service Unavailable"
    assert body["path"] == "/health/ready"
    assert "redis" in body["message"]
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"]["status"] == "down"
    assert body["checks"]["redis"]["gating"] is True
    assert body["checks"]["database"]["status"] == "up"
    assert body["checks"]["agentService"]["status"] == "up"


async def test_unreachable_database_is_503_until_it_returns(pg_url: str, standin: str) -> None:
    with running_proxy(*_host_port(pg_url)) as proxy:
        process = service_process(proxied_url(pg_url, proxy), standin, RUNNER_ENABLED="false")
        with running(process) as service:
            async with httpx.AsyncClient(base_url=base_url(service), timeout=30) as client:
                proxy.cut()
                began = time.monotonic()
                response = await client.get("/health/ready")
                assert time.monotonic() - began < 5, "the probe waited past its timeout"
                assert response.status_code == 503, response.text
                body = response.json()
                assert set(body) >= ENVELOPE
                assert body["message"] == "The database is unavailable"
                assert body["checks"]["database"]["status"] == "down"
                assert body["checks"]["database"]["error"]
                assert body["checks"]["toolService"]["status"] == "up"

                proxy.restore()

                async def ready_again() -> bool:
                    return (await client.get("/health/ready")).status_code == 200

                # The 503 is kept up to 5 s; then a fresh probe finds the database back.
                await eventually(ready_again, timeout=20, what="ready after restore")


async def test_reports_are_cached_and_concurrent_requests_share_one_refresh(
    pg_url: str, standin: str
) -> None:
    with counting_server(delay_s=0.3) as deps:
        process = service_process(pg_url, standin, RUNNER_ENABLED="false")
        process.env.update(AGENT_SERVICE_URL=f"{deps.url}/api", TOOL_SERVICE_URL=deps.url)
        with running(process) as service:
            async with httpx.AsyncClient(base_url=base_url(service), timeout=30) as client:
                # 20 requests at once on an empty cache: one refresh for them all.
                answers = await asyncio.gather(*(client.get("/health/ready") for _ in range(20)))
                assert {a.status_code for a in answers} == {200}
                assert len({a.json()["timestamp"] for a in answers}) == 1
                assert deps.hits == {"/api/health": 1, "/health": 1}

                # Within the window: the same report, no probe.
                again = await client.get("/health/ready")
                assert again.json()["timestamp"] == answers[0].json()["timestamp"]
                assert deps.hits == {"/api/health": 1, "/health": 1}

                async def refreshed() -> bool:
                    await client.get("/health/ready")
                    return deps.hits["/api/health"] > 1

                # After the window a request probes again, once.
                await eventually(refreshed, timeout=15, what="a refresh after the window")
                assert deps.hits == {"/api/health": 2, "/health": 2}


def _host_port(database_url: str) -> tuple[str, int]:
    proxy = proxy_for(plain(database_url))
    return proxy.target_host, proxy.target_port
