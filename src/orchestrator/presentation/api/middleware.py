"""ASGI middleware: the request body limit, the security headers of every answer, REST
latency, a span per request (when traced)."""

from __future__ import annotations

import json
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.infrastructure import tracing
from orchestrator.infrastructure.logs import bound
from orchestrator.infrastructure.metrics import Metrics, status_class
from orchestrator.presentation.api.errors import BodyTooLarge, envelope

MAX_REQUEST_ID = 128


class RequestId:
    """Each request's id (its `X-Request-ID`, or a new one) on every log line it causes, and
    echoed in the answer, with `X-Content-Type-Options: nosniff`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope["headers"]).get(b"x-request-id", b"")
        usable = 0 < len(sent) <= MAX_REQUEST_ID and sent.isascii() and sent.decode().isprintable()
        request_id = sent.decode() if usable else uuid.uuid4().hex

        async def with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                    # A browser never guesses a JSON answer to be something it would run.
                    (b"x-content-type-options", b"nosniff"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        with bound(requestId=request_id):
            await self.app(scope, receive, with_id)


def _noting_status(send: Send, answered: list[int]) -> Send:
    """`send`, noting the answer's status in `answered`."""

    async def noting(message: Message) -> None:
        if message["type"] == "http.response.start":
            answered.append(message["status"])
        await send(message)

    return noting


class RequestSpan:
    """A span per HTTP request (installed only when traced), under the W3C `traceparent` it
    carries, named by its route template once routed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope["headers"]).get(b"traceparent")
        traceparent = sent.decode("latin-1") if sent is not None else None
        method = scope["method"]
        answered: list[int] = []
        noting_status = _noting_status(send, answered)
        with tracing.request_span(method, scope["path"], traceparent) as span:
            try:
                await self.app(scope, receive, noting_status)
            finally:
                route = getattr(scope.get("route"), "path_format", None)
                tracing.end_request(span, method, route, answered[0] if answered else None)


class RequestMetrics:
    """REST latency by route template (`/workflows/{workflow_id}`, never the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answered: list[int] = []
        noting_status = _noting_status(send, answered)
        try:
            await self.app(scope, receive, noting_status)
        finally:
            route = getattr(scope.get("route"), "path_format", None) or "unmatched"
            self.metrics.http_duration.labels(
                scope["method"], route, status_class(answered[0] if answered else 500)
            ).observe(time.perf_counter() - started)


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413, without reading them whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        body = json.dumps(
            envelope(
                scope["path"],
                scope["method"],
                413,
                f"Request body is larger than {self.limit} bytes",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # No `Connection: close`: closing with the body unread resets the socket
                    # and the client, still sending, never sees the 413. The server discards
                    # the rest of the body until its keep-alive timeout.
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
