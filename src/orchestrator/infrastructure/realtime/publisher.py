"""Publishes committed execution events to Socket.IO rooms (through Redis across replicas).

Delivery is sequenced per connection and execution: the client manager remembers, for each
subscription, the last `seq` it delivered, so a connection gets an execution's events in order,
each once. While a subscription is being set up or repaired (`Delivery.held` is a list), room
events for it are held back instead of sent; the gateway then sends what comes first (the
snapshot, or the events missed) and releases the held ones, dropping those already covered.
An event whose `seq` skips ahead of the last one delivered (a message lost on the way, or one
never published because a process stopped between its commit and its publish) is held too,
and `on_gap` is told, so that the gap is filled from the database before it is delivered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import socketio

from orchestrator.application.ports import ExecutionEvent
from orchestrator.infrastructure.metrics import Metrics

log = logging.getLogger(__name__)

NAMESPACE = "/workflows"
ROOM_PREFIX = "execution:"
DEFAULT_CHANNEL = "orchestrator"


def room_of(execution_id: str) -> str:
    """The room whose members follow an execution."""
    return f"{ROOM_PREFIX}{execution_id}"


def execution_of(room: str) -> str:
    """The execution a room follows."""
    return room.removeprefix(ROOM_PREFIX)


@dataclass
class Delivery:
    """What one connection was sent of one execution's events."""

    last_seq: int = -1
    held: list[tuple[str, dict[str, Any]]] | None = field(default_factory=list)

    def take_next(self) -> tuple[str, dict[str, Any]] | None:
        """The held event with the lowest seq, removed; None when nothing is held."""
        held = self.held
        if not held:
            return None
        lowest = min(range(len(held)), key=lambda i: int(held[i][1]["seq"]))
        return held.pop(lowest)


GapHandler = Callable[[str, str, Delivery], None]


class SequencedManager(socketio.AsyncManager):  # type: ignore[misc]
    """A client manager that delivers each execution's events in `seq` order, once each."""

    def __init__(self) -> None:
        super().__init__()
        self.deliveries: dict[str, dict[str, Delivery]] = {}
        self.on_gap: GapHandler | None = None

    def hold(self, sid: str, room: str) -> Delivery:
        """Start (or resume) holding back the room's events for this connection."""
        delivery = self.deliveries.setdefault(sid, {}).setdefault(room, Delivery())
        if delivery.held is None:
            delivery.held = []
        return delivery

    def forget(self, sid: str, room: str) -> None:
        """The connection no longer follows the room."""
        rooms = self.deliveries.get(sid)
        if rooms is not None:
            rooms.pop(room, None)
            if not rooms:
                del self.deliveries[sid]

    def followed(self, sid: str) -> dict[str, Delivery]:
        """The rooms this connection follows (or is subscribing to)."""
        return self.deliveries.get(sid, {})

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        """Emit; an execution's event skips the connections that hold it or already have it."""
        room = to or room
        seq = data.get("seq") if isinstance(data, dict) else None
        if (
            isinstance(seq, int)
            and callback is None
            and isinstance(room, str)
            and room.startswith(ROOM_PREFIX)
        ):
            skip = list(skip_sid) if isinstance(skip_sid, list) else [skip_sid]
            for sid, _ in self.get_participants(namespace, room):
                if not self._deliverable(sid, room, event, data, seq):
                    skip.append(sid)
            skip_sid = skip
        await super().emit(
            event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs
        )

    def _deliverable(self, sid: str, room: str, event: str, data: dict[str, Any], seq: int) -> bool:
        delivery = self.deliveries.get(sid, {}).get(room)
        if delivery is None:
            return True  # a member this manager does not sequence
        if delivery.held is not None:
            delivery.held.append((event, data))
            return False
        if seq <= delivery.last_seq:
            return False  # a duplicate, or late: what it reports was already delivered
        if seq > delivery.last_seq + 1 and self.on_gap is not None:
            delivery.held = [(event, data)]
            self.on_gap(sid, room, delivery)
            return False
        delivery.last_seq = seq
        return True

    async def disconnect(self, sid: str, namespace: str, **kwargs: Any) -> Any:
        """Forget the connection's deliveries too."""
        self.deliveries.pop(sid, None)
        return await super().disconnect(sid, namespace, **kwargs)


class SequencedRedisManager(socketio.AsyncRedisManager, SequencedManager):  # type: ignore[misc]
    """SequencedManager across replicas: events travel through Redis, sequencing is local."""

    def __init__(self, url: str, channel: str) -> None:
        # AsyncRedisManager's own __init__ goes on to SequencedManager's through the MRO.
        socketio.AsyncRedisManager.__init__(self, url, channel=channel)


def build_server(
    cors_origins: list[str], redis_url: str | None, channel: str = DEFAULT_CHANNEL
) -> socketio.AsyncServer:
    """The Socket.IO server; with `redis_url` an event reaches subscribers on every replica.

    CORS as on the REST side: with `*` any origin, without credentials; with a list, those
    origins only, with credentials.
    """
    manager = SequencedRedisManager(redis_url, channel) if redis_url else SequencedManager()
    anyone = "*" in cors_origins
    origins: Any = "*" if anyone else cors_origins
    return socketio.AsyncServer(
        async_mode="asgi",
        cors_allowed_origins=origins,
        cors_credentials=not anyone,
        client_manager=manager,
        ping_interval=20,
        ping_timeout=20,
        max_http_buffer_size=64 * 1024,
    )


def build_emitter(redis_url: str, channel: str = DEFAULT_CHANNEL) -> Any:
    """For a worker with no Socket.IO server of its own: publish straight to Redis."""
    return socketio.AsyncRedisManager(redis_url, channel=channel, write_only=True)


class SocketIOPublisher:
    """Emits each event to its execution's room, in order; a failure is logged, never raised.

    The events are already committed, so a client that missed one catches up through
    GET /workflows/executions/{id}/events (and a gateway that sees the gap fills it).
    """

    def __init__(self, emitter: Any, metrics: Metrics | None = None) -> None:
        self._emitter = emitter
        self._metrics = metrics

    async def publish(self, events: list[ExecutionEvent]) -> None:
        """Emit the events in order."""
        for event in events:
            try:
                await self._emitter.emit(
                    event.name, event.payload, room=room_of(event.execution_id), namespace=NAMESPACE
                )
            except Exception as exc:
                log.warning("could not publish %s #%d: %s", event.name, event.seq, exc)
                if self._metrics is not None:
                    self._metrics.events_dropped.inc()
            else:
                if self._metrics is not None:
                    self._metrics.emitted(event.name)
