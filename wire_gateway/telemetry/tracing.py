"""Traces: the OpenTelemetry SDK's TracerProvider, a batch processor and the OTLP exporter, and the
few span operations the policy runner needs (docs/observability.md, "Traces").

Imported only when tracing is on (`telemetry.tracing`, or `WIRE_GATEWAY_TRACING=1`): with it off
nothing of OpenTelemetry is loaded, and the sites on the proxy's path test one attribute
(`telemetry.context.TRACER is None`, read once per runner). Spans are started with an explicit
parent and never made "current": attaching and detaching OpenTelemetry's context per request costs
more than the span, and the log lines get the ids from `telemetry.context.REQUEST` instead.

Export is the SDK's `BatchSpanProcessor`: a span's end appends it to a queue, a thread of the SDK
exports batches (`OTEL_BSP_*` tune it), so the event loop never waits on the receiver.

The exporter follows the standard variables: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else
`OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `grpc`, which needs the
`otlp-grpc` extra), and the endpoint, headers, timeout, compression and certificate variables,
which the exporters read themselves. `OTEL_SERVICE_NAME` defaults to `wire-gateway`;
`OTEL_RESOURCE_ATTRIBUTES` and `OTEL_TRACES_SAMPLER` are the SDK's (parent-based, always on by
default: a client that sends a sampled-out `traceparent` gets no gateway spans either).
"""
from __future__ import annotations

import atexit
import os
import random
import re
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from wire_gateway.telemetry import context, masking

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
SERVER = SpanKind.SERVER
CLIENT = SpanKind.CLIENT
INTERNAL = SpanKind.INTERNAL


class TracingError(Exception):
    """The exporter the environment asks for cannot be made (said at start-up)."""


def make_exporter(environ: Mapping[str, str] = os.environ) -> SpanExporter:
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as Grpc
        except ImportError as exc:
            raise TracingError("OTLP over gRPC needs the exporter package: pip install "
                               "'wire-gateway[otlp-grpc]' (or use OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf)") from exc
        return Grpc()
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as Http

        return Http()
    raise TracingError(f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r} is not supported; use http/protobuf or grpc")


class Tracing:
    """The process's tracer and the operations the runner uses."""

    def __init__(self, provider: TracerProvider, passthrough: float) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("wire_gateway")
        self.passthrough = passthrough
        self._random = random.random

    def sample_passthrough(self) -> bool:
        """Whether this passthrough request gets a span (`telemetry.trace_passthrough`)."""
        return self.passthrough > 0.0 and self._random() < self.passthrough

    def parent(self, meta: Any, scope: context.Scope | None) -> tuple[Context | None, list[Link]]:
        """The span's parent: `params._meta`'s trace context, else the HTTP request's; when both are
        there and differ, the HTTP one becomes a link (the MCP semantic conventions' rule)."""
        from_meta = from_http = None
        if isinstance(meta, dict) and isinstance(meta.get("traceparent"), str):
            from_meta = _extract(meta.get("traceparent"), meta.get("tracestate"))
        if scope is not None and scope.traceparent:
            from_http = _extract(scope.traceparent, scope.tracestate)
        if from_meta is None:
            return from_http, []
        links: list[Link] = []
        if from_http is not None:
            remote = trace.get_current_span(from_http).get_span_context()
            if remote.is_valid and remote.trace_id != trace.get_current_span(from_meta).get_span_context().trace_id:
                links.append(Link(remote))
        return from_meta, links

    def start(self, name: str, kind: SpanKind, parent: Context | None, attributes: dict[str, Any],
              links: list[Link] | None = None, start_time: int | None = None) -> Span:
        return self.tracer.start_span(name, parent, kind, attributes, links, start_time)

    def child(self, span: Span, name: str, kind: SpanKind = INTERNAL, attributes: dict[str, Any] | None = None,
              start_time: int | None = None) -> Span:
        return self.tracer.start_span(name, trace.set_span_in_context(span), kind, attributes, None, start_time)

    @staticmethod
    def carrier(span: Span) -> dict[str, str]:
        """The span's W3C trace context, as the headers (or `_meta` keys) that carry it (written here
        rather than by the propagator, which costs several times more per request)."""
        ctx = span.get_span_context()
        carrier = {"traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"}
        if ctx.trace_state:
            carrier["tracestate"] = ctx.trace_state.to_header()
        return carrier

    @staticmethod
    def ids(span: Span) -> tuple[str, str]:
        ctx = span.get_span_context()
        return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")

    @staticmethod
    def failed(span: Span, error_type: str, message: str | None) -> None:
        """An error: its type (the JSON-RPC code, `tool_error`...) and the message, masked as the
        gateway's own output is (an upstream's error may quote a secret)."""
        span.set_attribute("error.type", error_type)
        span.set_status(Status(StatusCode.ERROR, masking.mask(message) if message else None))

    def shutdown(self) -> None:
        self.provider.shutdown()


def _extract(traceparent: Any, tracestate: Any) -> Context | None:
    """A W3C `traceparent` (version 00 as the spec's section 3.2 reads it, a later version by its
    first four fields), as the parent context; None if it does not parse or names no valid trace.
    Parsed here: the propagator's regex and carrier getters cost several times more."""
    match = _TRACEPARENT.fullmatch(traceparent) if isinstance(traceparent, str) else None
    if match is None or (match.group(1) == "00" and match.group(5)) or match.group(1) == "ff":
        return None
    trace_id, span_id = int(match.group(2), 16), int(match.group(3), 16)
    if not trace_id or not span_id:
        return None
    state = TraceState.from_header([tracestate]) if isinstance(tracestate, str) and tracestate else None
    parent = SpanContext(trace_id, span_id, True, TraceFlags(int(match.group(4), 16) & 1), state)
    return trace.set_span_in_context(NonRecordingSpan(parent))


def setup(passthrough: float = 0.0, exporter: SpanExporter | None = None) -> Tracing:
    """Turn tracing on for this process: the provider, its batch processor and exporter; the
    runners made from now on trace (`context.TRACER`). Spans still queued are exported at exit."""
    if "OTEL_SERVICE_NAME" not in os.environ:
        resource = Resource.create({SERVICE_NAME: "wire-gateway"})
    else:
        resource = Resource.create()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter if exporter is not None else make_exporter()))
    tracing = Tracing(provider, passthrough)
    context.TRACER = tracing
    context.TRACING = context.ACTIVE = True
    atexit.register(provider.shutdown)
    return tracing
