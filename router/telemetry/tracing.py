"""OpenTelemetry traces, exported over OTLP/gRPC (the ``tracing`` extra).

Imported only when ``tracing.otlp_endpoint`` is set: with tracing off nothing of
OpenTelemetry is loaded and the request paths test one ``None``. A worker makes its own
tracer provider after the fork (the batch exporter runs a thread) and shuts it down, which
sends what is left, when it stops.

Spans: one SERVER span per ModelRouter RPC (continuing the caller's trace when its
metadata carries a W3C ``traceparent``), one INTERNAL span per Complete attempt with the
OpenTelemetry GenAI attributes, and one CLIENT span per upstream HTTP call, whose
``traceparent`` goes to the provider.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from router.config import TracingConfig
from router.telemetry.attributes import AttributeValue

# Server spans of these statuses are errors (OpenTelemetry's gRPC conventions): a bad
# request is the caller's problem, not the server's.
SERVER_ERRORS = frozenset(
    {"UNKNOWN", "DEADLINE_EXCEEDED", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS"}
)
PROPAGATED = ("traceparent", "tracestate")
# Seconds a stopping worker waits for its last spans to reach the collector.
SHUTDOWN_TIMEOUT_MS = 5000


class Tracing:
    """A worker's tracer: span factories for RPCs, attempts and upstream calls."""

    def __init__(self, settings: TracingConfig, *, schedule_delay_ms: int = 1000) -> None:
        # New traces are sampled in start_rpc, before any span exists: an RPC left out
        # costs one random number. The SDK's sampler then keeps every root it is given and
        # follows the parent (the caller's traceparent, or the RPC's span) for the rest.
        self._ratio = settings.sample_ratio
        self._provider = TracerProvider(
            resource=Resource.create({"service.name": settings.service_name}),
            sampler=ParentBased(ALWAYS_ON),
        )
        exporter = OTLPSpanExporter(endpoint=settings.otlp_endpoint)
        self._provider.add_span_processor(
            BatchSpanProcessor(exporter, schedule_delay_millis=schedule_delay_ms)
        )
        self._tracer = self._provider.get_tracer("modelrouter")
        self._propagator = TraceContextTextMapPropagator()

    def start_rpc(
        self, service: str, method: str, metadata: Sequence[tuple[str, Any]] | None
    ) -> tuple[Span | None, object]:
        """Start an RPC's server span and make it current; return it and the context token.

        A caller's traceparent is always continued (its sampled flag decides); a new trace
        is started for ``sample_ratio`` of the other RPCs, and the rest get no span at all.
        """
        carrier = {key: value for key, value in metadata or () if key in PROPAGATED}
        if carrier:
            parent = self._propagator.extract(carrier)
        elif self._ratio < 1.0 and random.random() >= self._ratio:
            return None, None
        else:
            parent = None
        span = self._tracer.start_span(
            f"{service}/{method}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": method},
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        return span, token

    @staticmethod
    def end_rpc(span: Span, token: object, code: str, error: str) -> None:
        """End an RPC's span with its status code and restore the previous context."""
        span.set_attribute("rpc.grpc.status_code", _GRPC_CODES.get(code, 2))
        if code in SERVER_ERRORS:
            span.set_status(Status(StatusCode.ERROR, f"{code}: {error}"[:256]))
        span.end()
        otel_context.detach(token)  # type: ignore[arg-type]

    def start_attempt(self, tier: str, max_tokens: int) -> AttemptTrace | None:
        """Start the span of one Complete attempt under the RPC's span (None if not traced)."""
        if not trace.get_current_span().is_recording():
            return None
        span = self._tracer.start_span(
            f"attempt {tier}", attributes={"gen_ai.request.max_tokens": max_tokens}
        )
        return AttemptTrace(self, span)

    def start_http(self, parent: Span, method: str, url: str) -> tuple[Span, dict[str, str]]:
        """Start the CLIENT span of an upstream HTTP call; return it and headers to send."""
        parsed = urlsplit(url)
        span = self._tracer.start_span(
            method,
            context=trace.set_span_in_context(parent),
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": method,
                "url.full": url,
                "server.address": parsed.hostname or "",
                "server.port": parsed.port or (443 if parsed.scheme == "https" else 80),
            },
        )
        headers: dict[str, str] = {}
        self._propagator.inject(headers, context=trace.set_span_in_context(span))
        return span, headers

    def shutdown(self) -> None:
        """Send the spans still queued and stop the exporter."""
        self._provider.force_flush(SHUTDOWN_TIMEOUT_MS)
        self._provider.shutdown()


class AttemptTrace:
    """An attempt's span, handed to the backend so that its HTTP call is a child of it."""

    __slots__ = ("_tracing", "span")

    def __init__(self, tracing: Tracing, span: Span) -> None:
        self._tracing = tracing
        self.span = span

    def start_http(self, method: str, url: str) -> tuple[Span, dict[str, str]]:
        """Start the upstream call's span; return it and the headers that continue it."""
        return self._tracing.start_http(self.span, method, url)

    @staticmethod
    def end_http(span: Span, error: str | None) -> None:
        """End the upstream call's span, failed when ``error`` is given."""
        end_with(span, {}, error)

    def end(self, attributes: Mapping[str, AttributeValue], error: str | None) -> None:
        """Set the attempt's outcome attributes and end its span."""
        end_with(self.span, attributes, error)


def ids(span: Span) -> tuple[str, str] | None:
    """Return a span's trace and span ids in hex, as W3C writes them (None if invalid)."""
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


def end_with(span: Span, attributes: Mapping[str, AttributeValue], error: str | None) -> None:
    """Set a span's attributes, mark it failed when ``error`` is given, and end it."""
    span.set_attributes(attributes)
    if error:
        span.set_status(Status(StatusCode.ERROR, error[:256]))
    span.end()


_GRPC_CODES = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}
