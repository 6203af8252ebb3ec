"""A process bus: small messages that every process of the service hears, best effort.

On PostgreSQL it is LISTEN/NOTIFY on one channel: every process (the publisher included) gets
every message, with no broker beyond the database the service already needs. On SQLite there
is one process, so the bus is that process. Messages sent while a process is disconnected are
lost to it: callers use the bus to be fast, and something slower (the runner's heartbeat, a
poll) to be right.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import asyncpg
import orjson
from sqlalchemy.engine import make_url

from orchestrator.application.ports import RunnerSignals
from orchestrator.domain.execution import WorkflowExecution
from orchestrator.domain.workflow import Definition

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], None]
"""Called on the event loop with a message of the topic; it must not block."""

# A NOTIFY payload must stay under 8000 bytes; the envelope takes a little of it.
MAX_MESSAGE_BYTES = 7_000
CHANNEL = "orchestrator_bus"
MAX_BATCH = 500
CONNECT_TIMEOUT_S = 5.0
SEND_TIMEOUT_S = 5.0
# An idle listener checks its connection this often: a peer that vanished without closing
# the connection is noticed within this and SEND_TIMEOUT_S.
PING_INTERVAL_S = 15.0
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 5.0
STOP_FLUSH_S = 2.0

_NOTIFY = "SELECT pg_notify($1, x) FROM unnest($2::text[]) AS x"

CANCEL_TOPIC = "cancel"
WAKE_TOPIC = "wake"


class MessageTooLarge(ValueError):
    """A message that does not fit in one NOTIFY payload."""


class Bus(Protocol):
    """Publish a message on a topic to every process; subscribe handlers to topics."""

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Call `handler` with every message published on `topic` from now on."""
        ...

    async def publish(self, topic: str, message: dict[str, Any]) -> None:
        """Send `message` (JSON) to every process; raises MessageTooLarge, never fails else."""
        ...

    async def start(self) -> None:
        """Start hearing messages."""
        ...

    async def stop(self) -> None:
        """Stop hearing messages; close connections."""
        ...


def _encode(envelope: dict[str, Any]) -> bytes:
    payload = orjson.dumps(envelope)
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MessageTooLarge(
            f"a bus message on {envelope['t']!r} takes {len(payload)} bytes as JSON; "
            f"at most {MAX_MESSAGE_BYTES} fit"
        )
    return payload


class _Handlers:
    """The handlers of each topic; one that raises is logged and does not stop the others."""

    def __init__(self) -> None:
        self._by_topic: dict[str, list[Handler]] = {}

    def add(self, topic: str, handler: Handler) -> None:
        self._by_topic.setdefault(topic, []).append(handler)

    def deliver(self, payload: bytes | str) -> None:
        try:
            envelope = orjson.loads(payload)
        except orjson.JSONDecodeError:
            log.warning("bus: dropped a message that is not JSON")
            return
        if not (
            isinstance(envelope, dict)
            and isinstance(envelope.get("t"), str)
            and isinstance(envelope.get("m"), dict)
        ):
            log.warning("bus: dropped a message without a topic and an object")
            return
        for handler in self._by_topic.get(envelope["t"], ()):
            try:
                handler(envelope["m"])
            except Exception:
                log.exception("bus: a handler of %r failed", envelope["t"])


class LocalBus:
    """The bus of a single process (SQLite): a message reaches this process's handlers."""

    def __init__(self) -> None:
        self._handlers = _Handlers()

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Call `handler` with every message published on `topic` from now on."""
        self._handlers.add(topic, handler)

    async def publish(self, topic: str, message: dict[str, Any]) -> None:
        """Deliver now, through JSON as on PostgreSQL: handlers get a copy, and a message
        that would not fit there does not pass here either."""
        self._handlers.deliver(_encode({"t": topic, "m": message}))

    async def start(self) -> None:
        """Nothing to connect."""

    async def stop(self) -> None:
        """Nothing to close."""


_Queued = tuple[str, "asyncio.Future[None]"]


class PostgresBus:
    """LISTEN/NOTIFY on one channel over one asyncpg connection of its own.

    Publishing is batched: while a NOTIFY round trip is in flight, new messages queue and go
    together in the next one. The connection is reopened with backoff when it drops.
    """

    def __init__(
        self, dsn: str, channel: str = CHANNEL, connect_timeout_s: float = CONNECT_TIMEOUT_S
    ) -> None:
        self._dsn = dsn
        self._channel = channel
        self._connect_timeout_s = connect_timeout_s
        self._handlers = _Handlers()
        self._numbers = itertools.count()
        self._queue: list[_Queued] = []
        self._ready = asyncio.Event()
        self._connected = asyncio.Event()
        # Set when the current connection is seen lost: by asyncpg, or by a NOTIFY that
        # failed on it (one event per connection).
        self._lost = asyncio.Event()
        self._connection: asyncpg.Connection | None = None
        # One operation at a time on the connection: a NOTIFY and the listener's ping.
        self._in_use = asyncio.Lock()
        self._listener: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._publish_failing = False
        self._pending: set[asyncio.Future[None]] = set()
        self._stopped = False

    def subscribe(self, topic: str, handler: Handler) -> None:
        """Call `handler` with every message published on `topic` from now on."""
        self._handlers.add(topic, handler)

    async def start(self) -> None:
        """Listen; wait for the first connection a moment, then go on connecting behind."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="bus-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), self._connect_timeout_s)

    async def stop(self) -> None:
        """Send what is queued (briefly), then stop listening and close the connection."""
        self._stopped = True
        if self._pending:
            await asyncio.wait(self._pending, timeout=STOP_FLUSH_S)
        await self._cancel(self._sender)
        connection = self._connection
        if connection is not None:
            # Closed politely, so the server does not log a lost client.
            with contextlib.suppress(Exception):
                async with self._in_use:
                    await connection.close(timeout=STOP_FLUSH_S)
        await self._cancel(self._listener)
        for future in self._pending:
            if not future.done():
                future.set_result(None)
        self._pending.clear()
        self._queue.clear()

    @staticmethod
    async def _cancel(task: asyncio.Task[None] | None) -> None:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def publish(self, topic: str, message: dict[str, Any]) -> None:
        """Queue the message and wait until its batch was sent (or could not be: logged)."""
        # Identical payloads in one transaction reach listeners once: each is numbered.
        payload = _encode({"t": topic, "m": message, "n": next(self._numbers)}).decode()
        if self._stopped:
            log.debug("bus: stopped; a message on %r is dropped", topic)
            return
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_loop(), name="bus-sender")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)
        self._queue.append((payload, future))
        self._ready.set()
        await future

    async def _send_loop(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                await self._send([payload for payload, _ in batch])
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def _send(self, payloads: list[str]) -> None:
        """One NOTIFY round trip for the batch; a failure is logged once per outage."""
        try:
            await asyncio.wait_for(self._connected.wait(), self._connect_timeout_s)
            connection = self._connection
            if connection is None:
                raise ConnectionError("not connected")
            try:
                async with self._in_use:
                    await connection.execute(
                        _NOTIFY, self._channel, payloads, timeout=SEND_TIMEOUT_S
                    )
            except Exception:
                # asyncpg does not always tell its termination listeners of a connection
                # that broke during a query: the listener is told here.
                if connection.is_closed() and connection is self._connection:
                    self._lost.set()
                raise
        except Exception as exc:  # best effort: whatever failed, the publishers go on
            level = logging.DEBUG if self._publish_failing else logging.WARNING
            log.log(level, "bus: %d message(s) not sent (%s)", len(payloads), _reason(exc))
            self._publish_failing = True
            return
        if self._publish_failing:
            log.info("bus: sending again")
            self._publish_failing = False

    async def _listen(self) -> None:
        """Keep one listening connection open, reconnecting with backoff."""
        delay = RECONNECT_FIRST_S
        outage = False
        while not self._stopped:
            try:
                connection = await asyncpg.connect(
                    self._dsn,
                    timeout=self._connect_timeout_s,
                    server_settings={"application_name": "orchestrator-bus"},
                )
            except Exception as exc:  # refused, unreachable, misconfigured: all are retried
                if not outage:
                    log.warning("bus: cannot listen (%s); reconnecting", _reason(exc))
                    outage = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            try:
                reason = await self._hold(connection)
            finally:
                self._connected.clear()
                self._connection = None
                connection.terminate()
            if self._stopped:
                return
            log.warning("bus: lost its connection (%s); reconnecting", reason)
            outage, delay = True, RECONNECT_FIRST_S

    async def _hold(self, connection: asyncpg.Connection) -> str:
        """Listen on `connection` until it is lost; why it was."""
        lost = self._lost = asyncio.Event()
        connection.add_termination_listener(lambda _: lost.set())
        try:
            await connection.add_listener(self._channel, self._notified)
        except Exception as exc:  # whatever it is, a new connection is the way out
            return _reason(exc)
        self._connection = connection
        self._connected.set()
        log.info("bus: listening on %s", self._channel)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), PING_INTERVAL_S)
            if lost.is_set() or connection.is_closed():
                return "closed"
            try:
                async with self._in_use:
                    await connection.fetchval("SELECT 1", timeout=SEND_TIMEOUT_S)
            except Exception as exc:  # whatever it is, a new connection is the way out
                return _reason(exc)

    def _notified(self, _connection: object, _pid: int, _channel: str, payload: str) -> None:
        self._handlers.deliver(payload)


def _reason(exc: BaseException) -> str:
    """A short reason, without what the text may say of hosts and credentials."""
    return type(exc).__name__


def build_bus(database_url: str) -> Bus:
    """PostgresBus on PostgreSQL (asyncpg's plain DSN of the URL), LocalBus on SQLite."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return PostgresBus(dsn)
    return LocalBus()


class BusSignals:
    """Runner signals that reach every process: each acts here at once and is published, so
    the runner that holds the execution acts within a round trip, not at its next heartbeat.

    `created` stays here: a new execution is claimed by whoever polls first anyway.
    """

    def __init__(self, local: RunnerSignals, bus: Bus) -> None:
        self._local = local
        self._bus = bus
        self._origin = uuid.uuid4().hex
        # Kept referenced until done: the loop holds only weak references to tasks.
        self._sending: set[asyncio.Task[None]] = set()

    def created(self, execution: WorkflowExecution, definition: Definition) -> None:
        """This process's runner claims it now (or another's at its next poll)."""
        self._local.created(execution, definition)

    def cancelled(self, execution_id: str) -> None:
        """Abandon its in-flight work here now, and wherever it runs within a round trip."""
        self._local.cancelled(execution_id)
        self._publish(CANCEL_TOPIC, execution_id)

    def woken(self, execution_id: str) -> None:
        """Claim it here now, and tell the process that may hold it."""
        self._local.woken(execution_id)
        self._publish(WAKE_TOPIC, execution_id)

    def follow(self, target: RunnerSignals) -> None:
        """Let the cancels and wake-ups of other processes reach `target` (this process's
        runner); its own already did, and acting twice would cancel a driver started anew."""
        self._bus.subscribe(CANCEL_TOPIC, self._relay(target.cancelled))
        self._bus.subscribe(WAKE_TOPIC, self._relay(target.woken))

    def _relay(self, act: Callable[[str], None]) -> Handler:
        def handle(message: dict[str, Any]) -> None:
            execution_id = message.get("executionId")
            if message.get("origin") != self._origin and isinstance(execution_id, str):
                act(execution_id)

        return handle

    def _publish(self, topic: str, execution_id: str) -> None:
        message = {"executionId": execution_id, "origin": self._origin}
        task = asyncio.get_running_loop().create_task(self._bus.publish(topic, message))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def settle(self) -> None:
        """Wait for the messages still being sent (before the bus stops)."""
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
