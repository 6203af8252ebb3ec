"""The stand-in app for agent-service and tool-service; the package docstring has the table."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

Service = Literal["agent", "tool"]

ECHO = "echo"
INSTANT = "instant"
SCORER = "scorer"
SLOW = "slow"
FLAKY = "flaky"
FAILING = "failing"
ERROR500 = "error500"
BADREQUEST = "badrequest"
BEHAVIOURS = frozenset({ECHO, INSTANT, SCORER, SLOW, FLAKY, FAILING, ERROR500, BADREQUEST})

DEFAULT_DELAY_MS = 500
DEFAULT_FAIL_TIMES = 2
DEFAULT_MAX_CALLS = 100_000
DELAY_ENV = "STANDIN_DEFAULT_DELAY_MS"
IDEMPOTENCY_HEADER = "Idempotency-Key"

# Flaky counters are keyed by (service, id, Idempotency-Key); a missing key shares one counter.
_AttemptKey = tuple[str, str, str | None]


@dataclass(frozen=True, slots=True)
class _Call:
    service: Service
    ident: str | None
    idempotency_key: str | None
    body: Any
    received_at: datetime
    answered_at: datetime
    status: int
    traceparent: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "id": self.ident,
            "idempotencyKey": self.idempotency_key,
            "body": self.body,
            "receivedAt": _iso(self.received_at, "microseconds"),
            "answeredAt": _iso(self.answered_at, "microseconds"),
            "status": self.status,
            "traceparent": self.traceparent,
        }


class _State:
    def __init__(self, default_delay_ms: int, max_calls: int) -> None:
        self.default_delay_ms = default_delay_ms
        self.max_calls = max_calls
        self.calls: deque[_Call] = deque(maxlen=max_calls)
        self.attempts: OrderedDict[_AttemptKey, int] = OrderedDict()

    def record(
        self,
        service: Service,
        ident: str | None,
        key: str | None,
        body: Any,
        received_at: datetime,
        status: int,
        traceparent: str | None = None,
    ) -> None:
        self.calls.append(
            _Call(service, ident, key, body, received_at, datetime.now(UTC), status, traceparent)
        )

    def count_attempt(self, attempt_key: _AttemptKey) -> int:
        """Count one more call for this key and return its number, starting at 1."""
        # No await between read and write, so concurrent requests cannot lose a count.
        number = self.attempts.pop(attempt_key, 0) + 1
        self.attempts[attempt_key] = number
        if len(self.attempts) > self.max_calls:
            self.attempts.popitem(last=False)
        return number

    def clear(self) -> None:
        self.calls.clear()
        self.attempts.clear()


def create_standin_app(
    prefix_agent: str = "/api",
    *,
    default_delay_ms: int | None = None,
    max_calls: int = DEFAULT_MAX_CALLS,
) -> FastAPI:
    """Build one app serving agent routes under ``prefix_agent`` and tool routes at the root."""
    prefix = _normalise_prefix(prefix_agent)
    state = _State(_resolve_default_delay(default_delay_ms), max_calls)
    app = FastAPI(title="orchestrator stand-ins: agent-service and tool-service")

    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.add_api_route("/health", health, methods=["GET"])
    if prefix:
        app.add_api_route(f"{prefix}/health", health, methods=["GET"])

    app.add_middleware(_InstantAgent, path=f"{prefix}/agents/{INSTANT}/execute", state=state)

    @app.post(f"{prefix}/agents/{{agent_id}}/execute")
    async def execute_agent(agent_id: str, request: Request) -> JSONResponse:
        received_at = datetime.now(UTC)
        key = request.headers.get(IDEMPOTENCY_HEADER)
        body = await _read_body(request)
        response = await _answer_agent(state, agent_id, key, body, received_at)
        state.record(
            "agent",
            agent_id,
            key,
            body,
            received_at,
            response.status_code,
            request.headers.get("traceparent"),
        )
        return response

    @app.post("/tools/execute")
    async def execute_tool(request: Request) -> JSONResponse:
        received_at = datetime.now(UTC)
        key = request.headers.get(IDEMPOTENCY_HEADER)
        body = await _read_body(request)
        tool_id = body.get("toolId") if isinstance(body, dict) else None
        ident = tool_id if isinstance(tool_id, str) else None
        response = await _answer_tool(state, ident, key, body, received_at)
        state.record(
            "tool",
            ident,
            key,
            body,
            received_at,
            response.status_code,
            request.headers.get("traceparent"),
        )
        return response

    @app.get("/_calls")
    async def list_calls(
        key: str | None = None,
        service: str | None = None,
        ident: Annotated[str | None, Query(alias="id")] = None,
    ) -> dict[str, list[dict[str, Any]]]:
        return {
            "calls": [
                call.as_json()
                for call in state.calls
                if (key is None or call.idempotency_key == key)
                and (service is None or call.service == service)
                and (ident is None or call.ident == ident)
            ]
        }

    @app.delete("/_calls", status_code=204)
    async def clear_calls() -> Response:
        state.clear()
        return Response(status_code=204)

    return app


class _InstantAgent:
    """Answers the `instant` agent before routing, so that benchmarks measure their client."""

    def __init__(self, app: ASGIApp, path: str, state: _State) -> None:
        self.app = app
        self.path = path
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        received_at = datetime.now(UTC)
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        key = dict(scope["headers"]).get(IDEMPOTENCY_HEADER.lower().encode())
        idempotency_key = key.decode() if key else None
        try:
            body = json.loads(b"".join(chunks))
        except ValueError:
            body = None
        response = await _answer_agent(self.state, INSTANT, idempotency_key, body, received_at)
        self.state.record(
            "agent", INSTANT, idempotency_key, body, received_at, response.status_code
        )
        await response(scope, receive, send)


async def _answer_agent(
    state: _State, agent_id: str, key: str | None, body: Any, received_at: datetime
) -> JSONResponse:
    if not isinstance(body, dict) or not isinstance(body.get("input"), str):
        return _message(422, "the body must be an object with a string 'input'")
    text: str = body["input"]
    behaviour = _behaviour(agent_id)
    if behaviour != INSTANT:
        refusal = await _common_effects(
            state, ("agent", agent_id, key), behaviour, _json_fields(text)
        )
        if refusal is not None:
            return refusal
    if behaviour == FAILING:
        return _execution(agent_id, text, "", received_at, error="agent failed on purpose")
    output = json.dumps(_score(text, text)) if behaviour == SCORER else text
    return _execution(agent_id, text, output, received_at)


async def _answer_tool(
    state: _State, tool_id: str | None, key: str | None, body: Any, received_at: datetime
) -> JSONResponse:
    if tool_id is None:
        return _message(422, "the body must be an object with a string 'toolId'")
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        return _message(422, "'parameters' must be an object")
    behaviour = _behaviour(tool_id)
    if behaviour != INSTANT:
        refusal = await _common_effects(state, ("tool", tool_id, key), behaviour, parameters)
        if refusal is not None:
            return refusal
    if behaviour == FAILING:
        return _tool_result(received_at, success=False, data=None, error="tool failed on purpose")
    if behaviour == SCORER:
        canonical = json.dumps(parameters, sort_keys=True, separators=(",", ":"))
        return _tool_result(received_at, success=True, data=_score(canonical, parameters))
    return _tool_result(received_at, success=True, data=parameters)


async def _common_effects(
    state: _State, attempt_key: _AttemptKey, behaviour: str, fields: dict[str, Any]
) -> JSONResponse | None:
    """Apply what both services share: the sleep and the refusals; ``None`` lets the call on."""
    if behaviour == ERROR500:
        return _message(500, "internal error on purpose")
    if behaviour == BADREQUEST:
        return _message(400, "bad request on purpose")
    if behaviour == SLOW:
        await asyncio.sleep(_non_negative_int(fields, "delayMs", state.default_delay_ms) / 1000)
    elif behaviour == FLAKY:
        fail_times = _non_negative_int(fields, "failTimes", DEFAULT_FAIL_TIMES)
        # A `flakyKey` field shares one counter across calls with different keys (e.g. an
        # execution and its retry), so a failure can "recover" between them.
        shared = fields.get("flakyKey")
        if isinstance(shared, str):
            attempt_key = (attempt_key[0], attempt_key[1], f"flakyKey:{shared}")
        number = state.count_attempt(attempt_key)
        if number <= fail_times:
            return _message(503, f"flaky failure {number} of {fail_times}")
    return None


def _execution(
    agent_id: str, text: str, output: str, received_at: datetime, error: str | None = None
) -> JSONResponse:
    return JSONResponse(
        {
            "id": str(uuid.uuid4()),
            "agentId": agent_id,
            "input": text,
            "output": output,
            "tokens": len(text.split()) + len(output.split()),
            "status": "FAILED" if error is not None else "COMPLETED",
            "error": error,
            "startedAt": _iso(received_at, "milliseconds"),
            "completedAt": _iso(datetime.now(UTC), "milliseconds"),
        }
    )


def _tool_result(
    received_at: datetime, *, success: bool, data: Any, error: str | None = None
) -> JSONResponse:
    elapsed = datetime.now(UTC) - received_at
    return JSONResponse(
        {
            "success": success,
            "data": data,
            "error": error,
            "executionTime": round(elapsed.total_seconds() * 1000),
        }
    )


def _score(hashed: str, shown: Any) -> dict[str, Any]:
    digest = hashlib.sha256(hashed.encode()).digest()
    # Four decimals keep the score readable; the modulo keeps it below 1.
    score = int.from_bytes(digest[:8], "big") % 10_000 / 10_000
    return {"score": score, "ok": score > 0.5, "input": shown}


def _behaviour(ident: str) -> str:
    return ident if ident in BEHAVIOURS else ECHO


def _json_fields(text: str) -> dict[str, Any]:
    try:
        parsed = json.loads(text)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _non_negative_int(fields: dict[str, Any], name: str, default: int) -> int:
    value = fields.get(name)
    # bool is an int subclass; {"delayMs": true} is not a number of milliseconds.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return max(0, int(value))


async def _read_body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except ValueError:
        # Kept as text so the call log shows what a misbehaving client really sent.
        return raw.decode(errors="replace")


def _message(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


def _iso(moment: datetime, timespec: str) -> str:
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


def _normalise_prefix(prefix: str) -> str:
    stripped = prefix.strip().strip("/")
    return f"/{stripped}" if stripped else ""


def _resolve_default_delay(explicit: int | None) -> int:
    if explicit is not None:
        value = explicit
    else:
        raw = os.environ.get(DELAY_ENV)
        value = int(raw) if raw else DEFAULT_DELAY_MS
    if value < 0:
        raise ValueError(f"the default delay must not be negative, got {value}")
    return value
