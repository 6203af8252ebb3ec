"""The process bus: LISTEN/NOTIFY between processes on a real PostgreSQL, and the local bus."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from orchestrator.domain.execution import WorkflowExecution
from orchestrator.domain.workflow import Definition
from orchestrator.infrastructure import bus as bus_module
from orchestrator.infrastructure.bus import (
    MAX_MESSAGE_BYTES,
    BusSignals,
    LocalBus,
    MessageTooLarge,
    PostgresBus,
    build_bus,
)
from orchestrator.settings import async_database_url
from tests.databases import plain
from tests.processes import free_port

pytestmark = pytest.mark.timeout(60)

DEADLINE_S = 15.0


class Heard:
    """What a bus delivered to one subscriber, in order."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    async def wait_for(self, count: int) -> list[dict[str, Any]]:
        """Wait until `count` messages arrived (generous deadline)."""
        deadline = time.monotonic() + DEADLINE_S
        while len(self.messages) < count:
            assert time.monotonic() < deadline, f"heard only {self.messages}"
            await asyncio.sleep(0.01)
        return self.messages


@contextlib.asynccontextmanager
async def started(pg_url: str, **options: Any) -> AsyncIterator[PostgresBus]:
    """A started PostgresBus on the test's database, stopped at the end."""
    bus = PostgresBus(plain(pg_url), **options)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.stop()


async def test_two_buses_on_one_database_hear_every_message_their_own_included(
    pg_url: str,
) -> None:
    async with started(pg_url) as a, started(pg_url) as b:
        heard_a, heard_b, other_topic = Heard(), Heard(), Heard()
        a.subscribe("news", heard_a)
        b.subscribe("news", heard_b)
        b.subscribe("other", other_topic)

        await a.publish("news", {"n": 1, "text": "héllo"})
        await b.publish("news", {"n": 2})

        expected = [{"n": 1, "text": "héllo"}, {"n": 2}]
        assert await heard_a.wait_for(2) == expected
        assert await heard_b.wait_for(2) == expected
        assert other_topic.messages == []


async def test_messages_published_together_share_round_trips_and_none_is_merged(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    notifies: list[str] = []
    connect = asyncpg.connect

    async def observed(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        connection = await connect(*args, **kwargs)
        connection.add_query_logger(
            lambda record: notifies.append(record.query) if "pg_notify" in record.query else None
        )
        return connection

    monkeypatch.setattr(asyncpg, "connect", observed)
    async with started(pg_url) as a, started(pg_url) as b:
        heard = Heard()
        b.subscribe("n", heard)
        # Identical messages in one NOTIFY transaction would reach listeners once.
        messages = [{"i": i} for i in range(200)] + [{"same": True}] * 3
        await asyncio.gather(*(a.publish("n", m) for m in messages))

        got = await heard.wait_for(len(messages))
        await asyncio.sleep(0.2)  # nothing more arrives (no duplicates)
        assert sorted(map(repr, heard.messages)) == sorted(map(repr, messages))
        assert got[:200] == messages[:200], "one publisher's messages arrive in order"
        assert 1 <= len(notifies) <= 5, f"{len(notifies)} round trips for {len(messages)}"


async def test_the_listener_reconnects_after_its_connection_is_terminated(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=bus_module.__name__)
    async with started(pg_url) as a, started(pg_url) as b:
        heard = Heard()
        a.subscribe("t", heard)
        admin = await asyncpg.connect(plain(pg_url))
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'orchestrator-bus'"
            )
        finally:
            await admin.close()
        assert killed == 2

        # Messages sent while a listener is away are lost: keep sending until one arrives.
        deadline = time.monotonic() + DEADLINE_S
        number = 0
        while not heard.messages:
            assert time.monotonic() < deadline, caplog.text
            number += 1
            await b.publish("t", {"n": number})
            await asyncio.sleep(0.05)

        lost = [r for r in caplog.records if "lost its connection" in r.getMessage()]
        assert len(lost) == 2, "each bus logs its outage once"
        assert heard.messages[0]["n"] >= 1


async def test_publishing_without_a_database_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    bus = PostgresBus(dsn, connect_timeout_s=0.3)
    await bus.start()
    try:
        await bus.publish("t", {"n": 1})
        await bus.publish("t", {"n": 2})
    finally:
        await bus.stop()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("cannot listen" in w for w in warnings) == 1, warnings
    assert sum("not sent" in w for w in warnings) == 1, "once per outage"


@pytest.mark.parametrize("kind", ["postgresql", "local"])
async def test_a_message_too_large_for_one_notify_is_refused(kind: str, pg_url: str) -> None:
    async with contextlib.AsyncExitStack() as stack:
        bus = LocalBus() if kind == "local" else await stack.enter_async_context(started(pg_url))
        heard = Heard()
        bus.subscribe("t", heard)

        with pytest.raises(MessageTooLarge, match="at most 7000"):
            await bus.publish("t", {"text": "x" * MAX_MESSAGE_BYTES})
        await bus.publish("t", {"text": "x" * (MAX_MESSAGE_BYTES - 100)})

        assert len((await heard.wait_for(1))[0]["text"]) == MAX_MESSAGE_BYTES - 100


@pytest.mark.parametrize("kind", ["postgresql", "local"])
async def test_a_failing_handler_does_not_stop_the_others(
    kind: str, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(message: dict[str, Any]) -> None:
        raise RuntimeError("handler bug")

    async with contextlib.AsyncExitStack() as stack:
        bus = LocalBus() if kind == "local" else await stack.enter_async_context(started(pg_url))
        heard = Heard()
        bus.subscribe("t", broken)
        bus.subscribe("t", heard)

        await bus.publish("t", {"n": 1})
        await bus.publish("t", {"n": 2})

        assert await heard.wait_for(2) == [{"n": 1}, {"n": 2}]
    assert caplog.text.count("a handler of 't' failed") == 2


async def test_the_local_bus_delivers_a_copy_to_this_process() -> None:
    bus = LocalBus()
    await bus.start()
    heard = Heard()
    bus.subscribe("t", heard)
    message: dict[str, Any] = {"list": [1]}

    await bus.publish("t", message)
    message["list"].append(2)
    await bus.publish("elsewhere", message)
    await bus.stop()

    assert heard.messages == [{"list": [1]}]


def test_the_bus_is_chosen_by_the_database() -> None:
    pg = build_bus(async_database_url("postgresql://u:p%40ss@db:5432/orch"))
    lite = build_bus(async_database_url("sqlite:///./x.db"))

    assert isinstance(pg, PostgresBus)
    assert pg._dsn == "postgresql://u:p%40ss@db:5432/orch"
    assert isinstance(lite, LocalBus)


class Recorded:
    """Runner signals that record what reached them."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def created(self, execution: WorkflowExecution, definition: Definition) -> None:
        self.seen.append(("created", execution.id))

    def cancelled(self, execution_id: str) -> None:
        self.seen.append(("cancelled", execution_id))

    def woken(self, execution_id: str) -> None:
        self.seen.append(("woken", execution_id))


async def eventually(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)


async def test_cancels_and_wake_ups_reach_the_other_process_once(pg_url: str) -> None:
    async with started(pg_url) as bus_a, started(pg_url) as bus_b:
        runner_a, runner_b = Recorded(), Recorded()
        signals_a, signals_b = BusSignals(runner_a, bus_a), BusSignals(runner_b, bus_b)
        signals_a.follow(runner_a)
        signals_b.follow(runner_b)

        signals_a.cancelled("e1")
        signals_b.woken("e2")
        await eventually(lambda: len(runner_a.seen) == 2 and len(runner_b.seen) == 2)
        await signals_a.settle()
        await signals_b.settle()
        await asyncio.sleep(0.3)  # no echo of a process's own signal comes back to it

        assert runner_a.seen == [("cancelled", "e1"), ("woken", "e2")]
        assert runner_b.seen == [("woken", "e2"), ("cancelled", "e1")]
