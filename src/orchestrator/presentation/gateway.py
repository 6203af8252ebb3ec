"""Socket.IO gateway, namespace /workflows: subscribe to an execution's room, get its events."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

import socketio

from orchestrator.application.executions import ExecutionServices, get_execution
from orchestrator.application.views import execution_update
from orchestrator.domain.errors import NotFound
from orchestrator.infrastructure.db.errors import is_outage
from orchestrator.infrastructure.realtime.publisher import NAMESPACE, room_of

log = logging.getLogger(__name__)

MAX_ID_LENGTH = 200


class Gateway:
    """Answers `subscribe`/`unsubscribe` (and the aliases `join`/`leave`); no business logic."""

    def __init__(
        self,
        sio: socketio.AsyncServer,
        services: Callable[[], ExecutionServices],
        max_subscriptions: int,
    ) -> None:
        self._sio = sio
        self._services = services
        self._max = max_subscriptions
        for message, answer in (("subscribe", "subscribed"), ("join", "joined")):
            sio.on(message, self._joiner(answer), namespace=NAMESPACE)
        for message, answer in (("unsubscribe", "unsubscribed"), ("leave", "left")):
            sio.on(message, self._leaver(answer), namespace=NAMESPACE)
        sio.on("connect", self._connect, namespace=NAMESPACE)

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        return True

    def _joiner(self, answer: str) -> Callable[..., Any]:
        async def handler(sid: str, data: Any = None) -> dict[str, Any]:
            return await self._join(sid, data, answer)

        return handler

    def _leaver(self, answer: str) -> Callable[..., Any]:
        async def handler(sid: str, data: Any = None) -> dict[str, Any]:
            return await self._leave(sid, data, answer)

        return handler

    async def _join(self, sid: str, data: Any, answer: str) -> dict[str, Any]:
        execution_id = _execution_id(data)
        if execution_id is None:
            return await self._refuse(sid, "payload must be {executionId: string}")
        room = room_of(execution_id)
        rooms = [r for r in self._sio.rooms(sid, namespace=NAMESPACE) if r.startswith("execution:")]
        if room not in rooms and len(rooms) >= self._max:
            return await self._refuse(
                sid, f"too many subscriptions: at most {self._max} per connection", execution_id
            )
        try:
            # The room first, then the snapshot: an event committed in between arrives before
            # the snapshot, whose seq then covers it, so nothing is missed.
            await self._sio.enter_room(sid, room, namespace=NAMESPACE)
            execution = await get_execution(self._services(), execution_id, None)
        except NotFound:
            await self._sio.leave_room(sid, room, namespace=NAMESPACE)
            return await self._refuse(sid, f"Execution {execution_id} not found", execution_id)
        except Exception as exc:
            await self._sio.leave_room(sid, room, namespace=NAMESPACE)
            if not is_outage(exc):
                log.exception("subscribe %s failed", execution_id)
            return await self._refuse(sid, "could not subscribe now; try again", execution_id)
        await self._sio.emit(answer, {"executionId": execution_id}, to=sid, namespace=NAMESPACE)
        now = dt.datetime.now(dt.UTC)
        await self._sio.emit(
            "execution:update",
            execution_update(execution, execution.last_seq, now),
            to=sid,
            namespace=NAMESPACE,
        )
        return {"ok": True, "executionId": execution_id, "seq": execution.last_seq}

    async def _leave(self, sid: str, data: Any, answer: str) -> dict[str, Any]:
        execution_id = _execution_id(data)
        if execution_id is None:
            return await self._refuse(sid, "payload must be {executionId: string}")
        await self._sio.leave_room(sid, room_of(execution_id), namespace=NAMESPACE)
        await self._sio.emit(answer, {"executionId": execution_id}, to=sid, namespace=NAMESPACE)
        return {"ok": True, "executionId": execution_id}

    async def _refuse(
        self, sid: str, error: str, execution_id: str | None = None
    ) -> dict[str, Any]:
        await self._sio.emit(
            "error", {"executionId": execution_id, "error": error}, to=sid, namespace=NAMESPACE
        )
        return {"ok": False, "error": error}


def _execution_id(data: Any) -> str | None:
    """The execution id of a message: `{executionId}` (or `{execution_id}`, or a bare string)."""
    if isinstance(data, dict):
        data = data.get("executionId", data.get("execution_id"))
    if isinstance(data, str) and 0 < len(data) <= MAX_ID_LENGTH:
        return data
    return None
