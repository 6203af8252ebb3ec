"""HTTP clients of agent-service and tool-service."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, ClassVar
from urllib.parse import quote

import aiohttp
import httpx
import orjson
from httpx_aiohttp import AiohttpTransport

from orchestrator.application.ports import AgentAnswer, CallContext, InvocationError
from orchestrator.domain.validation import service_id_problem
from orchestrator.infrastructure import tracing
from orchestrator.infrastructure.metrics import Metrics

_RETRYABLE_STATUSES = frozenset({408, 429})
_MAX_DETAIL_CHARS = 200


MAX_CACHED_URLS = 10_000
DEFAULT_MAX_REPLY_BYTES = 4 * 1024 * 1024
# Below the keep-alive of the services called (Node's http server and uvicorn close an idle
# connection after 5 s): a connection must be dropped here before the service closes it, or
# a call sent on it as it closes fails (measured: every call after the event loop was held up
# for 6 s, with 30 s here).
KEEPALIVE_EXPIRY_S = 4.0


def build_http_client(
    max_connections: int = 200,
    timeout_s: float = 30.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The one pooled client shared by every call to agent-service and tool-service.

    Its transport is aiohttp's: httpcore's pool scans every connection on each request,
    which cost ten times the CPU per call at 50 calls in flight (measured).
    """
    # Only two hosts are called, so every pooled connection is worth keeping alive.
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )
    return httpx.AsyncClient(
        transport=transport or AiohttpTransport(limits=limits),
        limits=limits,
        # A service that is down should fail fast and be retried, not hold a slot for long.
        timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
        headers={"Accept": "application/json"},
    )


def _detail(value: Any) -> str:
    """A one-line, bounded description of an error value a service sent."""
    if isinstance(value, dict):
        value = value.get("message") or value.get("error") or value
    if isinstance(value, list):
        text = "; ".join(item if isinstance(item, str) else json.dumps(item) for item in value)
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL_CHARS else text[: _MAX_DETAIL_CHARS - 1] + "…"


def _body_detail(response: httpx.Response, content: bytes) -> str:
    """What an error reply says, from its `message`/`error` field or its plain text."""
    try:
        body = orjson.loads(content)
    except ValueError:
        text = content.decode(response.encoding or "utf-8", errors="replace").strip()
        # An HTML error page (from a proxy, typically) says nothing a user can act on.
        return "" if text.startswith("<") else _detail(text)
    if isinstance(body, dict) and (body.get("message") or body.get("error")):
        return _detail(body)
    return ""


def _size(count: int) -> str:
    """A byte count as people read it: 4 MiB, 64 KiB, 1000 bytes."""
    for unit, scale in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if count % scale == 0:
            return f"{count // scale} {unit}"
    return f"{count} bytes"


def _reject_constant(name: str) -> Any:
    # NaN and Infinity are not JSON: such an answer stays text so it can be stored as JSON.
    raise ValueError(name)


def _parse_output(output: Any) -> Any:
    """An agent's answer: parsed when it is JSON text, else as it came."""
    if not isinstance(output, str):
        return output
    try:
        return json.loads(output, parse_constant=_reject_constant)
    except ValueError:
        return output


class _ServiceClient:
    """Posts to one service and turns every way the call can fail into an InvocationError."""

    service: ClassVar[str]

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        *,
        max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES,
        metrics: Metrics | None = None,
    ) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._urls: dict[str, httpx.URL] = {}
        self._max_reply_bytes = max_reply_bytes
        self._metrics = metrics

    def _url(self, path: str) -> httpx.URL:
        # Parsed once per path: parsing a URL string is a good part of what a call costs.
        url = self._urls.get(path)
        if url is None:
            url = httpx.URL(self._base_url + path)
            if len(self._urls) < MAX_CACHED_URLS:
                self._urls[path] = url
        return url

    async def _post(
        self, path: str, body: dict[str, Any], ctx: CallContext, subject: str
    ) -> dict[str, Any]:
        """POST `body` and return the JSON object of a 2xx reply (timed, when measured; in a
        span, with its `traceparent` sent, when traced)."""
        if tracing.enabled():
            with tracing.call_span(self.service, ctx.node_id, ctx.execution_id) as traceparent:
                return await self._timed(path, body, ctx, subject, traceparent)
        return await self._timed(path, body, ctx, subject, None)

    async def _timed(
        self,
        path: str,
        body: dict[str, Any],
        ctx: CallContext,
        subject: str,
        traceparent: str | None,
    ) -> dict[str, Any]:
        if self._metrics is None:
            return await self._exchange(path, body, ctx, subject, None, traceparent)
        answered: list[int] = []
        started = time.perf_counter()
        try:
            return await self._exchange(path, body, ctx, subject, answered, traceparent)
        finally:
            status = answered[0] if answered else None
            self._metrics.call(self.service, status, time.perf_counter() - started)

    async def _exchange(
        self,
        path: str,
        body: dict[str, Any],
        ctx: CallContext,
        subject: str,
        answered: list[int] | None,
        traceparent: str | None = None,
    ) -> dict[str, Any]:
        key = ctx.idempotency_key
        if not (key.isascii() and key.isprintable()):
            raise InvocationError(
                f"cannot call {self.service} for {subject}: the Idempotency-Key {key!r} "
                "is not printable ASCII",
                retryable=False,
            )
        timeout = self._http.timeout if ctx.timeout_s is None else httpx.Timeout(ctx.timeout_s)
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        if traceparent is not None:
            headers["traceparent"] = traceparent
        request = self._http.build_request(
            "POST",
            self._url(path),
            content=orjson.dumps(body),
            headers=headers,
            timeout=timeout,
        )
        try:
            # httpx bounds each read; the deadline bounds the whole attempt, slow trickles included.
            async with asyncio.timeout(ctx.timeout_s):
                response = await self._http.send(request, stream=True)
                if answered is not None:
                    answered.append(response.status_code)
                try:
                    content = await self._read(response)
                finally:
                    await response.aclose()
        except (httpx.TimeoutException, TimeoutError) as exc:
            cause = exc.__cause__
            if isinstance(cause, aiohttp.ClientError) and not isinstance(cause, TimeoutError):
                # httpx-aiohttp reports every aiohttp connection error as a ConnectTimeout,
                # a closed connection included: that is no timeout.
                raise InvocationError(
                    f"could not reach {self.service} for {subject} ({type(cause).__name__})",
                    retryable=True,
                ) from None
            raise InvocationError(self._timeout_message(ctx, subject), retryable=True) from None
        except httpx.TransportError as exc:
            # The class name is enough to act on; the error text may name internal hosts.
            raise InvocationError(
                f"could not reach {self.service} for {subject} ({type(exc).__name__})",
                retryable=True,
            ) from None
        except httpx.RequestError as exc:
            raise InvocationError(
                f"{self.service} sent an invalid reply for {subject} ({type(exc).__name__})",
                retryable=False,
            ) from None

        status = response.status_code
        if not response.is_success:
            detail = "" if content is None else _body_detail(response, content)
            suffix = f": {detail}" if detail else ""
            raise InvocationError(
                f"{self.service} returned {status} for {subject}{suffix}",
                retryable=status in _RETRYABLE_STATUSES or status >= 500,
                status_code=status,
            )
        if content is None:
            raise InvocationError(
                f"{self.service} sent a reply larger than the {_size(self._max_reply_bytes)} "
                f"limit for {subject}",
                retryable=False,
                status_code=status,
            )
        try:
            reply = orjson.loads(content)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise InvocationError(
                f"{self.service} sent an invalid reply for {subject} (not a JSON object)",
                retryable=False,
                status_code=status,
            )
        return reply

    async def _read(self, response: httpx.Response) -> bytes | None:
        """The decoded body, or None once it grows past the cap (the rest is never read)."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self._max_reply_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _check_id(self, key: str, value: str, subject: str) -> None:
        """Refuse an id that validation refuses too (a definition stored before that rule)."""
        reason = service_id_problem(value)
        if reason is not None:
            raise InvocationError(
                f"cannot call {self.service} for {subject}: {key} {reason}", retryable=False
            )

    def _timeout_message(self, ctx: CallContext, subject: str) -> str:
        seconds = ctx.timeout_s if ctx.timeout_s is not None else self._http.timeout.read
        if seconds is None:
            return f"{self.service} timed out for {subject}"
        return f"{self.service} timed out after {round(seconds * 1000)} ms for {subject}"


class AgentClient(_ServiceClient):
    """agent-service: `POST /agents/{agentId}/execute`."""

    service = "agent-service"

    async def execute_agent(self, agent_id: str, node_input: Any, ctx: CallContext) -> AgentAnswer:
        """Run the agent on `node_input` and return its answer, parsed when it is JSON text,
        with the tokens it reported."""
        subject = f"agent {agent_id!r}"
        self._check_id("agentId", agent_id, subject)
        text = (
            node_input
            if isinstance(node_input, str)
            else json.dumps(node_input, separators=(",", ":"), ensure_ascii=False)
        )
        reply = await self._post(
            f"/agents/{quote(agent_id, safe='')}/execute",
            {
                "input": text,
                "metadata": {
                    "executionId": ctx.execution_id,
                    "workflowId": ctx.workflow_id,
                    "nodeId": ctx.node_id,
                    "userId": ctx.user_id,
                    # Progress reports may send these back to name the node execution.
                    "attempt": ctx.attempt,
                    **({"loopIteration": list(ctx.iteration)} if ctx.iteration else {}),
                },
            },
            ctx,
            subject,
        )
        error = reply.get("error")
        if error:
            raise InvocationError(f"{subject} failed: {_detail(error)}", retryable=False)
        if reply.get("status") == "FAILED":
            raise InvocationError(f"{subject} failed (status FAILED)", retryable=False)
        tokens = reply.get("tokens")
        return AgentAnswer(_parse_output(reply.get("output")), usage_of(tokens), model_of(reply))


MAX_MODEL_CHARS = 100


def model_of(reply: dict[str, Any]) -> str | None:
    """The model an agent's reply names: `tokens.model`, or `model` beside it."""
    tokens = reply.get("tokens")
    for value in (tokens.get("model") if isinstance(tokens, dict) else None, reply.get("model")):
        if isinstance(value, str) and 0 < len(value) <= MAX_MODEL_CHARS:
            return value
    return None


def usage_of(tokens: Any) -> dict[str, int] | None:
    """The tokens an agent reported: a number (the total) or an object with input and output
    counts (`inputTokens`/`outputTokens`/`totalTokens`, or `prompt_tokens`/`completion_tokens`
    /`total_tokens`); None when it reported none that can be read."""
    if isinstance(tokens, bool):
        return None
    if isinstance(tokens, int) and tokens >= 0:
        return {"totalTokens": tokens}
    if not isinstance(tokens, dict):
        return None
    usage: dict[str, int] = {}
    for name, aliases in _TOKEN_FIELDS.items():
        for alias in aliases:
            value = tokens.get(alias)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                usage[name] = value
                break
    if "totalTokens" not in usage and {"inputTokens", "outputTokens"} <= usage.keys():
        usage["totalTokens"] = usage["inputTokens"] + usage["outputTokens"]
    return usage or None


_TOKEN_FIELDS = {
    "inputTokens": ("inputTokens", "input_tokens", "promptTokens", "prompt_tokens", "input"),
    "outputTokens": (
        "outputTokens",
        "output_tokens",
        "completionTokens",
        "completion_tokens",
        "output",
    ),
    "totalTokens": ("totalTokens", "total_tokens", "total"),
}


class ToolClient(_ServiceClient):
    """tool-service: `POST /tools/execute`."""

    service = "tool-service"

    async def execute_tool(self, tool_id: str, parameters: dict[str, Any], ctx: CallContext) -> Any:
        """Run the tool with `parameters` and return its `data`."""
        subject = f"tool {tool_id!r}"
        self._check_id("toolId", tool_id, subject)
        body: dict[str, Any] = {"toolId": tool_id, "parameters": parameters}
        if ctx.timeout_s is not None:
            body["timeout"] = round(ctx.timeout_s * 1000)
        if ctx.user_id is not None:
            body["userId"] = ctx.user_id
        reply = await self._post("/tools/execute", body, ctx, subject)
        # tool-service answers 200 for a failed run too; only an explicit success counts.
        if reply.get("success") is not True:
            error = reply.get("error")
            reason = f": {_detail(error)}" if error else " (no success reported)"
            raise InvocationError(f"{subject} failed{reason}", retryable=False)
        return reply.get("data")
