"""A Socket.IO client of the /workflows namespace that records what it receives, for tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import socketio

NAMESPACE = "/workflows"
EXECUTION_EVENTS = ("execution:update", "node:update", "execution:error")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}


@dataclass(frozen=True)
class Received:
    """One event as the client got it, with its local receipt time (time.time())."""

    name: str
    data: Any
    at: float

    @property
    def seq(self) -> int:
        """The event's seq (execution events only)."""
        return int(self.data["seq"])


class LiveClient:
    """A real socketio.AsyncClient (websocket transport, no automatic reconnection)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.url = url
        self.headers = headers or {}
        self.sio = socketio.AsyncClient(reconnection=False)
        self.received: list[Received] = []
        self.sio.on("*", self._record, namespace=NAMESPACE)

    def _record(self, name: str, data: Any = None) -> None:
        # A plain function: the client calls it in the order the packets arrived.
        self.received.append(Received(name, data, time.time()))

    async def connect(self) -> None:
        """Connect to the namespace (raises socketio.exceptions.ConnectionError if refused)."""
        await self.sio.connect(
            self.url,
            headers=self.headers,
            namespaces=[NAMESPACE],
            transports=["websocket"],
            wait_timeout=10,
        )

    async def close(self) -> None:
        """Disconnect."""
        await self.sio.disconnect()

    async def call(self, message: str, data: Any = None, timeout: float = 15) -> Any:
        """Send a message and return its acknowledgement."""
        return await self.sio.call(message, data, namespace=NAMESPACE, timeout=timeout)

    async def subscribe(self, execution_id: str, message: str = "subscribe") -> dict[str, Any]:
        """Subscribe and check that it was accepted; returns the acknowledgement."""
        ack = await self.call(message, {"executionId": execution_id})
        assert isinstance(ack, dict), ack
        assert ack.get("ok") is True, ack
        return ack

    def named(self, *names: str, execution_id: str | None = None) -> list[Received]:
        """The events received with these names (all when none), of one execution if given."""
        return [
            r
            for r in self.received
            if (not names or r.name in names)
            and (
                execution_id is None
                or (isinstance(r.data, dict) and r.data.get("executionId") == execution_id)
            )
        ]

    def execution_events(self, execution_id: str) -> list[Received]:
        """The execution's events (snapshots included), in the order they arrived."""
        return self.named(*EXECUTION_EVENTS, execution_id=execution_id)

    async def wait_for(
        self, predicate: Callable[[Received], bool], timeout: float = 20.0
    ) -> Received:
        """The first event received that satisfies `predicate`, waiting for it if need be."""
        deadline = time.monotonic() + timeout
        while True:
            for received in self.received:
                if predicate(received):
                    return received
            if time.monotonic() > deadline:
                names = [
                    (r.name, r.data.get("seq") if isinstance(r.data, dict) else None)
                    for r in self.received
                ]
                raise AssertionError(f"no such event within {timeout} s; received {names}")
            await asyncio.sleep(0.01)

    async def wait_finished(self, execution_id: str, timeout: float = 20.0) -> Received:
        """The execution:update that reports the end of the execution."""
        return await self.wait_for(
            lambda r: (
                r.name == "execution:update"
                and r.data["executionId"] == execution_id
                and r.data["status"] in TERMINAL
            ),
            timeout,
        )


@asynccontextmanager
async def live(url: str, headers: dict[str, str] | None = None) -> AsyncIterator[LiveClient]:
    """A connected LiveClient, disconnected at the end."""
    client = LiveClient(url, headers)
    await client.connect()
    try:
        yield client
    finally:
        await client.close()


def seqs(events: list[Received]) -> list[int]:
    """The seqs of the events, in the order received."""
    return [e.seq for e in events]


async def stored_events(
    api: httpx.AsyncClient, execution_id: str, after_seq: int = 0
) -> list[dict[str, Any]]:
    """GET /workflows/executions/{id}/events?afterSeq=...: [{seq, event, data}] in order."""
    response = await api.get(
        f"/workflows/executions/{execution_id}/events", params={"afterSeq": after_seq}
    )
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events
