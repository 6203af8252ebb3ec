"""Socket.IO gateway, namespace /workflows: subscribe to an execution's room, get its events.

Client messages, each with the payload `{executionId}` and each acknowledged (the value a
client's callback receives):

- `subscribe` (alias `join`): joins the room `execution:{executionId}`; answered with
  `subscribed` (`joined`) `{executionId}`, then the execution's current state as an
  `execution:update` whose `seq` is that of the last event committed, then the acknowledgement
  `{ok: true, executionId, seq}`. A `join` also sends, after the snapshot, one `node:update`
  per node that has started, in definition order, each with the snapshot's `seq` (a picture of
  the state, not new events), as the platform's service does. A connection already following
  the execution (the platform's frontend sends both `join` and `subscribe`) gets the answer and
  the acknowledgement only: one snapshot, one replay.
  With `{executionId, afterSeq: N}`, the stored events after N are sent instead of the snapshot
  (each once, in order; a snapshot still comes if they were compacted away), then the live ones:
  how a client that reconnects, to this replica or another, continues without a gap.
- `unsubscribe` (alias `leave`): leaves the room; answered with `unsubscribed` (`left`)
  `{executionId}` and `{ok: true, executionId}`.

A refused message is acknowledged with `{ok: false, error}` and, for clients that pass no
callback, answered with an `error` event `{event, executionId, error}` (`event` is the refused
message's name). It is not an `execution:error`: that one is an execution's own stored event,
numbered by `seq`; a refusal concerns the request only and changes nothing. Refused are: a
payload that is not `{executionId: <string of 1..200 characters>}` (messages over 64 KiB close
the connection, Engine.IO's limit), an unknown execution, a subscription beyond
MAX_SUBSCRIPTIONS_PER_CLIENT or beyond the user's USER_SUBSCRIPTIONS (over all their connections
and replicas; see presentation/fair_use.py), more than MAX_PENDING messages of one connection in
flight, and a subscription while the database is unreachable.

What a subscriber receives (see `SequencedManager`): after the snapshot of seq S, the events
S+1, S+2, ... in order, each once, up to the end of the execution. A room event that arrives
while the snapshot is being read is held back and sent after it; one that skips ahead of the
last one sent (lost on its way through Redis, or never published because its process stopped
right after the commit) is held back while the missing ones are read from the database and
sent first. A client that reconnects asks GET /workflows/executions/{id}/events?afterSeq=N
for what it missed while away.

The messages of one connection are handled one at a time, in the order they arrived (so a
`subscribe` followed by an `unsubscribe` leaves it unsubscribed); snapshot and catch-up reads
share a small pool (MAX_LOOKUPS), so one client cannot take the database from the others.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import socketio
from socketio.exceptions import ConnectionRefusedError

from orchestrator.application.access import ANYONE, Caller
from orchestrator.application.events import replay, snapshot
from orchestrator.application.executions import (
    MAX_EVENTS_PAGE,
    ExecutionServices,
    execution_events,
    get_execution,
)
from orchestrator.domain.errors import NotFound
from orchestrator.domain.execution import WorkflowExecution
from orchestrator.infrastructure.db.errors import is_outage
from orchestrator.infrastructure.limits import SubscriptionCounter
from orchestrator.infrastructure.metrics import Metrics
from orchestrator.infrastructure.realtime.publisher import (
    NAMESPACE,
    Delivery,
    SequencedManager,
    execution_of,
    room_of,
)
from orchestrator.presentation.auth import Authenticator, Forbidden, Unauthenticated

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 200
MAX_PENDING = 64  # messages of one connection waiting to be handled
MAX_LOOKUPS = 8  # database reads of the gateway at once, over all connections
MALFORMED = f"payload must be {{executionId: <string of 1 to {MAX_ID_LENGTH} characters, no NUL>}}"
BAD_AFTER_SEQ = "afterSeq must be a whole number >= 0"


@dataclass
class _Client:
    """A connection's own state: its messages are handled one at a time, in order."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: int = 0
    caller: Caller = ANYONE
    expires_at: float | None = None  # when its credentials stop holding (epoch seconds)
    counted: set[str] = field(default_factory=set)  # executions counted to the user's limit


class Gateway:
    """Answers `subscribe`/`unsubscribe` (and the aliases `join`/`leave`); no business logic."""

    def __init__(
        self,
        sio: socketio.AsyncServer,
        services: Callable[[], ExecutionServices],
        max_subscriptions: int,
        authenticator: Authenticator,
        metrics: Metrics | None = None,
    ) -> None:
        manager = sio.manager
        if not isinstance(manager, SequencedManager):
            raise TypeError("the gateway needs a server built by build_server")
        self._sio = sio
        self._manager = manager
        self._services = services
        self._max = max_subscriptions
        self._auth = authenticator
        self._metrics = metrics
        self._clients: dict[str, _Client] = {}
        self._lookups = asyncio.Semaphore(MAX_LOOKUPS)
        self._tasks: set[asyncio.Task[None]] = set()
        # The user's subscriptions over connections and replicas (USER_SUBSCRIPTIONS); set
        # once the app has started, None: no limit.
        self.subscriptions: SubscriptionCounter | None = None
        manager.on_gap = self._on_gap
        for message, answer in (("subscribe", "subscribed"), ("join", "joined")):
            action = partial(self._join, replay_nodes=message == "join")
            sio.on(message, self._handler(message, answer, action), namespace=NAMESPACE)
        for message, answer in (("unsubscribe", "unsubscribed"), ("leave", "left")):
            sio.on(message, self._handler(message, answer, self._leave), namespace=NAMESPACE)
        sio.on("connect", self._connect, namespace=NAMESPACE)
        sio.on("disconnect", self._disconnect, namespace=NAMESPACE)

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        try:
            identity = await self._auth.handshake(environ, auth)
        except (Unauthenticated, Forbidden) as exc:
            raise ConnectionRefusedError(exc.message) from exc
        self._clients[sid] = _Client(caller=identity.caller, expires_at=identity.expires_at)
        self._measure()
        return True

    def _measure(self) -> None:
        """The connections and subscriptions gauges, as they stand now."""
        if self._metrics is not None:
            self._metrics.socket_clients.set(len(self._clients))
            followed = sum(len(rooms) for rooms in self._manager.deliveries.values())
            self._metrics.socket_subscriptions.set(followed)

    async def _disconnect(self, sid: str, *reason: Any) -> None:
        client = self._clients.pop(sid, None)
        self._manager.deliveries.pop(sid, None)
        self._measure()
        if client is None or self.subscriptions is None:
            return
        async with client.lock:  # after a subscribe in progress, which may count one more
            for execution_id in list(client.counted):
                await self._uncount(client, sid, execution_id)

    def _handler(
        self, message: str, answer: str, action: Callable[[str, str, str, int | None], Any]
    ) -> Callable[..., Any]:
        async def handler(sid: str, *args: Any) -> dict[str, Any]:
            execution_id = _execution_id(args)
            if execution_id is None:
                return await self._refuse(sid, message, MALFORMED)
            after_seq = _after_seq(args)
            if after_seq is False:
                return await self._refuse(sid, message, BAD_AFTER_SEQ, execution_id)
            client = self._clients.get(sid)
            if client is None:
                return {"ok": False, "error": "not connected"}
            if client.pending >= MAX_PENDING:
                return await self._refuse(
                    sid, message, "too many messages in flight on this connection", execution_id
                )
            client.pending += 1
            try:
                async with client.lock:
                    if sid not in self._clients:
                        return {"ok": False, "error": "not connected"}
                    result: dict[str, Any] | str = await action(
                        sid, execution_id, answer, after_seq
                    )
            finally:
                client.pending -= 1
            if isinstance(result, str):
                return await self._refuse(sid, message, result, execution_id)
            return result

        return handler

    async def _join(
        self,
        sid: str,
        execution_id: str,
        answer: str,
        after_seq: int | None,
        *,
        replay_nodes: bool,
    ) -> dict[str, Any] | str:
        """Follow the execution: snapshot first, then its events from the snapshot's seq on;
        with `afterSeq`, its stored events after that one instead of the snapshot."""
        room = room_of(execution_id)
        followed = self._manager.followed(sid)
        if room in followed:
            await self._send(sid, answer, {"executionId": execution_id})
            return {"ok": True, "executionId": execution_id, "seq": followed[room].last_seq}
        if len(followed) >= self._max:
            return f"too many subscriptions: at most {self._max} per connection"
        client = self._clients[sid]
        if client.expires_at is not None and time.time() > client.expires_at:
            # What it follows already goes on; a new subscription needs a new token.
            return "the token has expired: connect again with a new one"
        refused = await self._count(client, sid, execution_id)
        if refused is not None:
            return refused
        # Hold the room's events back for this connection, join, then read the snapshot: an
        # event committed after the read is held and sent after the snapshot; one committed
        # before it is covered by it and dropped.
        delivery = self._manager.hold(sid, room)
        await self._sio.enter_room(sid, room, namespace=NAMESPACE)
        try:
            async with self._lookups:
                execution, names = await self._read(execution_id, client.caller)
        except Exception as exc:
            self._manager.forget(sid, room)
            await self._sio.leave_room(sid, room, namespace=NAMESPACE)
            await self._uncount(client, sid, execution_id)
            if isinstance(exc, NotFound):
                return f"Execution {execution_id} not found"
            if not is_outage(exc):
                log.exception("subscribe %s failed", execution_id)
            return "could not subscribe now; try again"
        await self._send(sid, answer, {"executionId": execution_id})
        if after_seq is not None:
            # A client that comes back (to this replica or another) gets what it missed, each
            # event once and in order, then the live ones.
            delivery.last_seq = min(after_seq, execution.last_seq)
            if delivery.last_seq < execution.last_seq:
                await self._send_missed(sid, room, delivery, execution.last_seq + 1)
        if after_seq is None or delivery.last_seq < execution.last_seq:
            # No afterSeq, or the events are gone (compacted): the state as it stands.
            now = dt.datetime.now(dt.UTC)
            await self._send(sid, "execution:update", snapshot(execution, now, names))
            if replay_nodes:
                for node in replay(execution, now, names):
                    await self._send(sid, "node:update", node)
        delivery.last_seq = max(delivery.last_seq, execution.last_seq)
        await self._release(sid, room, delivery)
        self._measure()
        return {"ok": True, "executionId": execution_id, "seq": execution.last_seq}

    async def _read(
        self, execution_id: str, caller: Caller
    ) -> tuple[WorkflowExecution, dict[str, str]]:
        """The execution (NotFound unless the caller may see it) and the display names of
        its workflow version's nodes."""
        services = self._services()
        execution = await get_execution(services, execution_id, caller)
        async with services.uow_factory() as uow:
            definition = await uow.workflows.definition(
                execution.workflow_id, execution.workflow_version
            )
        return execution, {} if definition is None else definition.display_names()

    async def _leave(
        self, sid: str, execution_id: str, answer: str, after_seq: int | None = None
    ) -> dict[str, Any] | str:
        room = room_of(execution_id)
        self._manager.forget(sid, room)
        await self._sio.leave_room(sid, room, namespace=NAMESPACE)
        client = self._clients.get(sid)
        if client is not None:
            await self._uncount(client, sid, execution_id)
        self._measure()
        await self._send(sid, answer, {"executionId": execution_id})
        return {"ok": True, "executionId": execution_id}

    async def _count(self, client: _Client, sid: str, execution_id: str) -> str | None:
        """Count the subscription to the user's limit; the refusal when they are at it."""
        counter, user_id = self.subscriptions, client.caller.user_id
        if counter is None or user_id is None:
            return None
        if not await counter.acquire(user_id, f"{sid}:{execution_id}"):
            return (
                f"too many subscriptions: at most {counter.limit} per user over all connections "
                "(USER_SUBSCRIPTIONS); unsubscribe from one, then try again"
            )
        client.counted.add(execution_id)
        return None

    async def _uncount(self, client: _Client, sid: str, execution_id: str) -> None:
        counter, user_id = self.subscriptions, client.caller.user_id
        if execution_id in client.counted and counter is not None and user_id is not None:
            client.counted.discard(execution_id)
            await counter.release(user_id, f"{sid}:{execution_id}")

    def _on_gap(self, sid: str, room: str, delivery: Delivery) -> None:
        """An event skipped ahead of the last one sent: send the missing ones first."""
        task = asyncio.create_task(self._fill(sid, room, delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fill(self, sid: str, room: str, delivery: Delivery) -> None:
        client = self._clients.get(sid)
        if client is None:
            return
        async with client.lock:
            current = self._manager.followed(sid).get(room) is delivery
            if current and delivery.held is not None and sid in self._clients:
                await self._release(sid, room, delivery)

    async def _release(self, sid: str, room: str, delivery: Delivery) -> None:
        """Send the held events in seq order, reading any missing ones from the database.

        Events arriving meanwhile are held too; the last check and the end of holding happen
        with no await in between, so none is left behind.
        """
        while True:
            held = delivery.take_next()
            if held is None:
                delivery.held = None
                return
            name, payload = held
            seq = int(payload["seq"])
            if seq <= delivery.last_seq:
                continue
            if seq > delivery.last_seq + 1:
                await self._send_missed(sid, room, delivery, seq)
            await self._send(sid, name, payload)
            delivery.last_seq = seq

    async def _send_missed(self, sid: str, room: str, delivery: Delivery, before: int) -> None:
        """Send the stored events after `delivery.last_seq` and before `before`."""
        execution_id = execution_of(room)
        try:
            while delivery.last_seq + 1 < before:
                wanted = min(before - delivery.last_seq - 1, MAX_EVENTS_PAGE)
                async with self._lookups:
                    # The subscription was allowed when it was made.
                    events = await execution_events(
                        self._services(), execution_id, delivery.last_seq, wanted, ANYONE
                    )
                events = [e for e in events if delivery.last_seq < e.seq < before]
                if not events:
                    break
                for event in events:
                    await self._send(sid, event.name, event.payload)
                    delivery.last_seq = event.seq
        except Exception as exc:
            # The client sees the gap and can ask the events route once the database is back.
            log.warning("could not fill the gap of %s before #%d: %s", execution_id, before, exc)

    async def _send(self, sid: str, event: str, data: dict[str, Any]) -> None:
        await self._sio.emit(event, data, to=sid, namespace=NAMESPACE, ignore_queue=True)

    async def _refuse(
        self, sid: str, message: str, error: str, execution_id: str | None = None
    ) -> dict[str, Any]:
        await self._send(
            sid, "error", {"event": message, "executionId": execution_id, "error": error}
        )
        return {"ok": False, "error": error}


def _after_seq(args: tuple[Any, ...]) -> int | bool | None:
    """The `afterSeq` of a message (None when it has none); False when it is malformed."""
    data = args[0] if len(args) == 1 else None
    if not isinstance(data, dict) or data.get("afterSeq") is None:
        return None
    value = data["afterSeq"]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return False
    return value


def _execution_id(args: tuple[Any, ...]) -> str | None:
    """The execution id of a message: `{executionId}` (or a bare string); None if malformed."""
    if len(args) != 1:
        return None
    data = args[0]
    if isinstance(data, dict):
        data = data.get("executionId")
    if isinstance(data, str) and 0 < len(data) <= MAX_ID_LENGTH and "\x00" not in data:
        return data
    return None
