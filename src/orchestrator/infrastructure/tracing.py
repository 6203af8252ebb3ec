"""Traces (OpenTelemetry): off unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

A span per REST request (its W3C `traceparent` header, when sent, is its parent), per
committed execution step (a child of the `traceparent` stored with the execution, so a run
taken over by another replica stays in the request's trace) and per call to agent-service or
tool-service (whose `traceparent` header names it).

While traces are off nothing of OpenTelemetry is imported: callers check `enabled()` first,
and this module imports the SDK only in `configure`. The SDK and the OTLP exporter are the
optional extra `orchestrator[tracing]`; the standard `OTEL_*` variables configure the exporter.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, SpanContext, Tracer

ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16

_tracer: Tracer | None = None
_provider: TracerProvider | None = None


class TracingUnavailable(RuntimeError):
    """The endpoint is set but the tracing extra is not installed."""


def enabled() -> bool:
    """Whether spans are recorded (False: nothing of OpenTelemetry is loaded)."""
    return _tracer is not None


def valid_traceparent(value: str | None) -> str | None:
    """`value` when it is a W3C traceparent (version 00, ids not all zero), else None."""
    if value is None or len(value) != 55:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None or match.group(1) == _ZERO_TRACE or match.group(2) == _ZERO_SPAN:
        return None
    return value


def trace_id_of(traceparent: str) -> str:
    """The trace id of a valid traceparent."""
    return traceparent[3:35]


def configure_from_env() -> bool:
    """Export spans over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; False when not."""
    if not os.environ.get(ENDPOINT_VARIABLE):
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise TracingUnavailable(
            f"{ENDPOINT_VARIABLE} is set but OpenTelemetry is not installed: "
            "install orchestrator[tracing]"
        ) from None
    configure(OTLPSpanExporter(), batch=True)
    return True


def configure(exporter: SpanExporter, *, batch: bool = False) -> None:
    """Record spans and hand them to `exporter` (in batches, or each as it ends)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    global _tracer, _provider
    name = os.environ.get("OTEL_SERVICE_NAME") or "orchestrator"
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    _provider = provider
    _tracer = provider.get_tracer("orchestrator")


def shutdown() -> None:
    """Flush and stop: traces are off afterwards."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def _format(context: SpanContext) -> str:
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _parent(traceparent: str | None) -> Context | None:
    """The context of a remote parent; None (a new trace) for a missing or invalid one."""
    if valid_traceparent(traceparent) is None:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent or ""})


def current_traceparent() -> str | None:
    """The traceparent of the current span, None without one."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return _format(context) if context.is_valid else None


@contextmanager
def request_span(method: str, path: str, traceparent: str | None) -> Iterator[Span]:
    """A server span for one REST request, under the caller's `traceparent` when valid."""
    assert _tracer is not None
    from opentelemetry.trace import SpanKind

    with (
        _tracer.start_as_current_span(
            method,
            context=_parent(traceparent),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path},
        ) as span,
        structlog.contextvars.bound_contextvars(traceId=f"{span.get_span_context().trace_id:032x}"),
    ):
        yield span


def end_request(span: Span, method: str, route: str | None, status: int | None) -> None:
    """Name the request's span by its route and note the status it was answered with."""
    if route is not None:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
    if status is not None:
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            from opentelemetry.trace import StatusCode

            span.set_status(StatusCode.ERROR)


@contextmanager
def step_span(
    traceparent: str | None, happening: str, attributes: Mapping[str, Any]
) -> Iterator[None]:
    """A span for one execution step, a child of the execution's stored `traceparent`."""
    assert _tracer is not None
    with _tracer.start_as_current_span(
        f"step {happening}",
        context=_parent(traceparent),
        attributes={**attributes, "happening": happening},
    ):
        yield


@contextmanager
def call_span(service: str, node_id: str, execution_id: str) -> Iterator[str]:
    """A client span for one call to a service; yields the `traceparent` header to send."""
    assert _tracer is not None
    from opentelemetry.trace import SpanKind

    attributes: dict[str, Any] = {
        "service": service,
        "nodeId": node_id,
        "executionId": execution_id,
    }
    attempt = structlog.contextvars.get_contextvars().get("attempt")
    if isinstance(attempt, int):
        attributes["attempt"] = attempt
    with _tracer.start_as_current_span(
        f"POST {service}", kind=SpanKind.CLIENT, attributes=attributes
    ) as span:
        yield _format(span.get_span_context())
