"""The stand-in app for agent-service and tool-service; the package docstring has the table."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import httpx
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
STREAMING = "streaming"
STREAMING_FLAKY = "streaming-flaky"
BEHAVIOURS = frozenset(
    {ECHO, INSTANT, SCORER, SLOW, FLAKY, FAILING, ERROR500, BADREQUEST, STREAMING, STREAMING_FLAKY}
)
STREAMING_BEHAVIOURS = frozenset({STREAMING, STREAMING_FLAKY})

DEFAULT_DELAY_MS = 500
DEFAULT_FAIL_TIMES = 2
DEFAULT_MAX_CALLS = 100_000
DEFAULT_REPORTS = 5
DEFAULT_INTERVAL_MS = 50
DEFAULT_MODEL = "standin-model"
DEFAULT_INPUT_TOKENS = 10
DEFAULT_OUTPUT_PER_REPORT = 7
DELAY_ENV = "STANDIN_DEFAULT_DELAY_MS"
ORCHESTRATOR_URL_ENV = "ORCHESTRATOR_URL"
INTERNAL_TOKEN_ENV = "STANDIN_INTERNAL_TOKEN"
# A report the orchestrator does not take in this time is recorded as failed (status null).
REPORT_TIMEOUT_S = 2.0
# nginx's code for "the client closed the request": recorded for a call nobody waited for.
CLIENT_GONE = 499
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
    reports: tuple[dict[str, Any], ...] = ()
    disconnected_at: datetime | None = None

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
            "reports": list(self.reports),
            "disconnectedAt": (
                None if self.disconnected_at is None else _iso(self.disconnected_at, "microseconds")
            ),
        }


@dataclass(slots=True)
class _Exchange:
    """One call while it is answered: its client, what it reported, when the client left."""

    request: Request | None = None
    reports: list[dict[str, Any]] = field(default_factory=list)
    disconnected_at: datetime | None = None

    async def pause(self, seconds: float) -> bool:
        """Sleep `seconds`, watching the client: True, at once, when it has gone."""
        if self.request is None:
            await asyncio.sleep(seconds)
            return False
        # Waiting on the connection, not polling it: thousands of sleeping calls cost nothing.
        watcher = asyncio.ensure_future(self._closed(self.request))
        try:
            done, _ = await asyncio.wait({watcher}, timeout=seconds)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if watcher in done:
            self.disconnected_at = datetime.now(UTC)
            return True
        return False

    @staticmethod
    async def _closed(request: Request) -> None:
        """Return once the client has closed the connection (its body was read before)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass


class _State:
    def __init__(
        self,
        default_delay_ms: int,
        max_calls: int,
        orchestrator_url: str | None = None,
        internal_token: str | None = None,
    ) -> None:
        self.default_delay_ms = default_delay_ms
        self.max_calls = max_calls
        self.orchestrator_url = orchestrator_url
        self.internal_token = internal_token
        self.calls: deque[_Call] = deque(maxlen=max_calls)
        self.attempts: OrderedDict[_AttemptKey, int] = OrderedDict()
        self.in_flight: dict[int, dict[str, Any]] = {}
        self._numbers = itertools.count()

    @contextlib.contextmanager
    def answering(
        self, service: Service, ident: str | None, key: str | None, received_at: datetime
    ) -> Iterator[None]:
        """List the call as in flight (its body read) until it is answered."""
        number = next(self._numbers)
        self.in_flight[number] = {
            "service": service,
            "id": ident,
            "idempotencyKey": key,
            "receivedAt": _iso(received_at, "microseconds"),
        }
        try:
            yield
        finally:
            del self.in_flight[number]

    def record(
        self,
        service: Service,
        ident: str | None,
        key: str | None,
        body: Any,
        received_at: datetime,
        status: int,
        traceparent: str | None = None,
        exchange: _Exchange | None = None,
    ) -> None:
        reports = tuple(exchange.reports) if exchange is not None else ()
        gone_at = exchange.disconnected_at if exchange is not None else None
        self.calls.append(
            _Call(
                service,
                ident,
                key,
                body,
                received_at,
                datetime.now(UTC),
                status,
                traceparent,
                reports,
                gone_at,
            )
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
    orchestrator_url: str | None = None,
    internal_token: str | None = None,
) -> FastAPI:
    """Build one app serving agent routes under ``prefix_agent`` and tool routes at the root.

    Streaming agents report to ``orchestrator_url`` (default: ORCHESTRATOR_URL) with the bearer
    ``internal_token`` (default: STANDIN_INTERNAL_TOKEN); without a URL they report nothing.
    """
    prefix = _normalise_prefix(prefix_agent)
    state = _State(
        _resolve_default_delay(default_delay_ms),
        max_calls,
        (orchestrator_url or os.environ.get(ORCHESTRATOR_URL_ENV) or "").rstrip("/") or None,
        internal_token or os.environ.get(INTERNAL_TOKEN_ENV) or None,
    )
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
        exchange = _Exchange(request)
        with state.answering("agent", agent_id, key, received_at):
            response = await _answer_agent(state, agent_id, key, body, received_at, exchange)
        state.record(
            "agent",
            agent_id,
            key,
            body,
            received_at,
            response.status_code,
            request.headers.get("traceparent"),
            exchange,
        )
        return response

    @app.post("/tools/execute")
    async def execute_tool(request: Request) -> JSONResponse:
        received_at = datetime.now(UTC)
        key = request.headers.get(IDEMPOTENCY_HEADER)
        body = await _read_body(request)
        tool_id = body.get("toolId") if isinstance(body, dict) else None
        ident = tool_id if isinstance(tool_id, str) else None
        exchange = _Exchange(request)
        with state.answering("tool", ident, key, received_at):
            response = await _answer_tool(state, ident, key, body, received_at, exchange)
        state.record(
            "tool",
            ident,
            key,
            body,
            received_at,
            response.status_code,
            request.headers.get("traceparent"),
            exchange,
        )
        return response

    @app.get("/_calls")
    async def list_calls(
        key: str | None = None,
        service: str | None = None,
        ident: Annotated[str | None, Query(alias="id")] = None,
    ) -> dict[str, list[dict[str, Any]]]:
        wanted = {"idempotencyKey": key, "service": service, "id": ident}
        return {"calls": [c for c in map(_Call.as_json, state.calls) if _matches(c, wanted)]}

    @app.get("/_inflight")
    async def list_in_flight(
        key: str | None = None,
        service: str | None = None,
        ident: Annotated[str | None, Query(alias="id")] = None,
    ) -> dict[str, list[dict[str, Any]]]:
        wanted = {"idempotencyKey": key, "service": service, "id": ident}
        return {"calls": [c for c in state.in_flight.values() if _matches(c, wanted)]}

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
        response = await _answer_agent(
            self.state, INSTANT, idempotency_key, body, received_at, _Exchange()
        )
        self.state.record(
            "agent", INSTANT, idempotency_key, body, received_at, response.status_code
        )
        await response(scope, receive, send)


async def _answer_agent(
    state: _State,
    agent_id: str,
    key: str | None,
    body: Any,
    received_at: datetime,
    exchange: _Exchange,
) -> JSONResponse:
    if not isinstance(body, dict) or not isinstance(body.get("input"), str):
        return _message(422, "the body must be an object with a string 'input'")
    text: str = body["input"]
    behaviour = _behaviour(agent_id)
    if behaviour == INSTANT:
        return _execution(agent_id, text, text, received_at)
    attempt_key: _AttemptKey = ("agent", agent_id, key)
    fields = _json_fields(text)
    refusal = await _common_effects(state, attempt_key, behaviour, fields, exchange)
    if refusal is not None:
        return refusal
    if behaviour in STREAMING_BEHAVIOURS:
        metadata = body.get("metadata")
        stream = _Stream(state, exchange, fields, metadata if isinstance(metadata, dict) else {})
        tokens = await stream.run()
        if tokens is None:
            return _gone()
        if behaviour == STREAMING_FLAKY:
            refusal = _flaky_refusal(state, attempt_key, fields)
            if refusal is not None:
                return refusal
        return _execution(agent_id, text, text, received_at, tokens=tokens)
    if behaviour == FAILING:
        return _execution(agent_id, text, "", received_at, error="agent failed on purpose")
    output = json.dumps(_score(text, text)) if behaviour == SCORER else text
    return _execution(agent_id, text, output, received_at)


async def _answer_tool(
    state: _State,
    tool_id: str | None,
    key: str | None,
    body: Any,
    received_at: datetime,
    exchange: _Exchange,
) -> JSONResponse:
    if tool_id is None:
        return _message(422, "the body must be an object with a string 'toolId'")
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        return _message(422, "'parameters' must be an object")
    behaviour = _behaviour(tool_id)
    if behaviour != INSTANT:
        refusal = await _common_effects(
            state, ("tool", tool_id, key), behaviour, parameters, exchange
        )
        if refusal is not None:
            return refusal
    if behaviour == FAILING:
        return _tool_result(received_at, success=False, data=None, error="tool failed on purpose")
    if behaviour == SCORER:
        canonical = json.dumps(parameters, sort_keys=True, separators=(",", ":"))
        return _tool_result(received_at, success=True, data=_score(canonical, parameters))
    return _tool_result(received_at, success=True, data=parameters)


async def _common_effects(
    state: _State,
    attempt_key: _AttemptKey,
    behaviour: str,
    fields: dict[str, Any],
    exchange: _Exchange,
) -> JSONResponse | None:
    """Apply what both services share: the sleep and the refusals; ``None`` lets the call on."""
    if behaviour == ERROR500:
        return _message(500, "internal error on purpose")
    if behaviour == BADREQUEST:
        return _message(400, "bad request on purpose")
    if behaviour == SLOW:
        delay_ms = _non_negative_int(fields, "delayMs", state.default_delay_ms)
        if await exchange.pause(delay_ms / 1000):
            return _gone()
    elif behaviour == FLAKY:
        return _flaky_refusal(state, attempt_key, fields)
    return None


def _flaky_refusal(
    state: _State, attempt_key: _AttemptKey, fields: dict[str, Any]
) -> JSONResponse | None:
    """503 for the first ``failTimes`` calls of a key (or of the field ``flakyKey``)."""
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
    agent_id: str,
    text: str,
    output: str,
    received_at: datetime,
    error: str | None = None,
    tokens: dict[str, Any] | None = None,
) -> JSONResponse:
    return JSONResponse(
        {
            "id": str(uuid.uuid4()),
            "agentId": agent_id,
            "input": text,
            "output": output,
            "tokens": tokens if tokens is not None else len(text.split()) + len(output.split()),
            "status": "FAILED" if error is not None else "COMPLETED",
            "error": error,
            "startedAt": _iso(received_at, "milliseconds"),
            "completedAt": _iso(datetime.now(UTC), "milliseconds"),
        }
    )


def _gone() -> JSONResponse:
    """The answer to a call whose client has gone: nobody reads it, the call log shows it."""
    return _message(CLIENT_GONE, "the client closed the connection")


class _Stream:
    """What a streaming agent does during its call: every ``intervalMs``, one report of its
    token counts so far and (when ``thinking``) one step of its reasoning, posted to the
    orchestrator's internal routes."""

    def __init__(
        self,
        state: _State,
        exchange: _Exchange,
        fields: dict[str, Any],
        metadata: dict[str, Any],
    ) -> None:
        self.exchange = exchange
        self.count = _non_negative_int(fields, "reports", DEFAULT_REPORTS)
        self.interval_s = _non_negative_int(fields, "intervalMs", DEFAULT_INTERVAL_MS) / 1000
        model = fields.get("model")
        self.model = model if isinstance(model, str) else DEFAULT_MODEL
        self.input_tokens = _non_negative_int(fields, "inputTokens", DEFAULT_INPUT_TOKENS)
        self.per_report = _non_negative_int(fields, "outputPerReport", DEFAULT_OUTPUT_PER_REPORT)
        thinking = fields.get("thinking")
        self.thinking = thinking if isinstance(thinking, bool) else True
        url = fields.get("progressUrl")
        self.url = url.rstrip("/") if isinstance(url, str) and url else state.orchestrator_url
        self.headers = (
            {"Authorization": f"Bearer {state.internal_token}"} if state.internal_token else {}
        )
        self.about = {"executionId": metadata.get("executionId"), "nodeId": metadata.get("nodeId")}
        for name, wire in (("attempt", "attempt"), ("loopIteration", "loop")):
            if name in metadata:
                self.about[wire] = metadata[name]

    async def run(self) -> dict[str, Any] | None:
        """Report until done; the tokens of the last report, or None when the client left."""
        output_tokens = 0
        async with httpx.AsyncClient(timeout=REPORT_TIMEOUT_S) as client:
            for number in range(1, self.count + 1):
                if await self.exchange.pause(self.interval_s):
                    return None
                output_tokens += self.per_report
                await self._post(client, "token-progress", self._tokens(output_tokens, number))
                if self.thinking:
                    await self._post(client, "thinking-step", self._step(number))
        return self._tokens(output_tokens, None)

    def _tokens(self, output_tokens: int, number: int | None) -> dict[str, Any]:
        counts = {
            "inputTokens": self.input_tokens,
            "outputTokens": output_tokens,
            "totalTokens": self.input_tokens + output_tokens,
            "model": self.model,
        }
        return counts if number is None else {**self.about, **counts, "iteration": number}

    def _step(self, number: int) -> dict[str, Any]:
        step: dict[str, Any] = {
            **self.about,
            "step": number,
            "thought": f"Step {number} of {self.count}: working through the input.",
        }
        if number == 1:
            step["plan"] = ["read the input", "think it through", "write the answer"]
        if number % 2 == 0:
            step["toolCalls"] = [{"name": "search", "arguments": {"query": f"step {number}"}}]
        return step

    async def _post(self, client: httpx.AsyncClient, route: str, report: dict[str, Any]) -> None:
        """Post one report (without a URL: none); the call log keeps it with its status."""
        if self.url is None:
            return
        entry: dict[str, Any] = {"route": route, "body": report, "status": None}
        try:
            response = await client.post(
                f"{self.url}/internal/{route}", json=report, headers=self.headers
            )
            entry["status"] = response.status_code
        except httpx.HTTPError as exc:
            entry["error"] = type(exc).__name__
        self.exchange.reports.append(entry)


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


def _matches(call: dict[str, Any], wanted: dict[str, str | None]) -> bool:
    """The call has every field asked for (None: any)."""
    return all(value is None or call[name] == value for name, value in wanted.items())


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
