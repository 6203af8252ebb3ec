"""Publishes committed execution events to Socket.IO rooms (through Redis across replicas)."""

from __future__ import annotations

import logging
from typing import Any

import socketio

from orchestrator.application.ports import ExecutionEvent

log = logging.getLogger(__name__)

NAMESPACE = "/workflows"


def room_of(execution_id: str) -> str:
    """The room whose members follow an execution."""
    return f"execution:{execution_id}"


def build_server(cors_origins: list[str], redis_url: str | None) -> socketio.AsyncServer:
    """The Socket.IO server; with `redis_url` an event reaches subscribers on every replica."""
    manager = socketio.AsyncRedisManager(redis_url) if redis_url else None
    origins: Any = "*" if "*" in cors_origins else cors_origins
    return socketio.AsyncServer(
        async_mode="asgi",
        cors_allowed_origins=origins,
        client_manager=manager,
        ping_interval=20,
        ping_timeout=20,
        max_http_buffer_size=64 * 1024,
    )


def build_emitter(redis_url: str) -> Any:
    """For a worker with no Socket.IO server of its own: publish straight to Redis."""
    return socketio.AsyncRedisManager(redis_url, write_only=True)


class SocketIOPublisher:
    """Emits each event to its execution's room, in order; a failure is logged, never raised.

    The events are already committed, so a client that missed one catches up through
    GET /workflows/executions/{id}/events.
    """

    def __init__(self, emitter: Any) -> None:
        self._emitter = emitter

    async def publish(self, events: list[ExecutionEvent]) -> None:
        """Emit the events in order."""
        for event in events:
            try:
                await self._emitter.emit(
                    event.name, event.payload, room=room_of(event.execution_id), namespace=NAMESPACE
                )
            except Exception as exc:
                log.warning("could not publish %s #%d: %s", event.name, event.seq, exc)
