"""Traces: the OpenTelemetry SDK's TracerProvider, a batch processor and the OTLP exporter, and the
few span operations the policy runner needs (docs/observability.md, "Traces").

Imported only when tracing is on (`telemetry.tracing`, or `WIRE_GATEWAY_TRACING=1`): with it off
nothing of OpenTelemetry is loaded, and the sites on the proxy's path test one attribute
(`telemetry.context.TRACER is None`, read once per runner). Spans are recorded by `LightSpan`
(which says why) with an explicit parent and never made "current": attaching and detaching
OpenTelemetry's context per request costs more than the span, and the log lines get the ids from
`telemetry.context.REQUEST` instead. The provider's resource, sampler (`OTEL_TRACES_SAMPLER`) and
id generator are the SDK's, as are the processor and the exporter.

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
from collections.abc import Mapping, Sequence
from time import time_ns
from typing import Any, cast

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from wire_gateway.telemetry import context, masking
from wire_gateway.telemetry.context import NO_ATTRS, Attrs

UNSET = Status(StatusCode.UNSET)
_SAMPLED, _NOT_SAMPLED = TraceFlags(TraceFlags.SAMPLED), TraceFlags(0)
_DEFAULT_SAMPLER = ParentBased(ALWAYS_ON).get_description()
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
        from wire_gateway.telemetry.otlp_encode import FastOtlpSpanExporter

        return FastOtlpSpanExporter()
    raise TracingError(f"OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r} is not supported; use http/protobuf or grpc")




class LightSpan:
    """A span as the gateway records it: a few slots filled on the way, queued as it is when it ends
    (the batch processor reads only its `context`), and encoded by the export thread, directly
    (`otlp_encode`) or through the SDK's `ReadableSpan` for any other exporter (`AsReadable`). Why
    not the SDK's own `Span`: it validates every attribute, takes a lock per change and goes through
    the sampler and the processors twice; for two spans a request that cost more than the gateway's
    own work (docs/observability.md, "What it costs"). The gateway's attributes are of known types,
    set in one place, and its spans end once."""

    __slots__ = ("tracing", "name", "kind", "context", "parent", "static", "attributes", "links", "start_time",
                 "end_time", "status")

    def __init__(self, tracing: Tracing, name: str, kind: SpanKind, ctx: SpanContext, parent: SpanContext | None,
                 static: Attrs, attributes: dict[str, Any], links: list[Link], start_time: int | None) -> None:
        self.tracing = tracing
        self.name = name
        self.kind = kind
        self.context = ctx
        self.parent = parent
        self.static = static
        self.attributes = attributes
        self.links = links
        self.start_time = start_time or time_ns()
        self.end_time = 0
        self.status = UNSET

    def get_span_context(self) -> SpanContext:
        return self.context

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_status(self, status: Status) -> None:
        self.status = status

    def end(self, end_time: int | None = None) -> None:
        if self.context.trace_flags.sampled:
            self.end_time = end_time or time_ns()
            # The processor (the SDK's batch or simple one) reads `context` and hands the span to the
            # exporter, which is ours: FastOtlpSpanExporter, or AsReadable around any other.
            self.tracing.processor.on_end(cast(ReadableSpan, self))

    def readable(self) -> ReadableSpan:
        """The SDK's form of this span, for exporters other than ours."""
        tracing = self.tracing
        return ReadableSpan(self.name, self.context, self.parent, tracing.resource,
                            {**self.static.values, **self.attributes}, (), self.links, self.kind, None, self.status,
                            self.start_time, self.end_time, tracing.scope)

    def __enter__(self) -> LightSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.end()


class AsReadable(SpanExporter):
    """Any SDK exporter, given the gateway's spans as the SDK's `ReadableSpan`s (made here, in the
    export thread)."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.exporter.export([s.readable() if isinstance(s, LightSpan) else s for s in spans])

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)


class Tracing:
    """The process's tracing: the provider's resource, sampler and processor, and the operations
    the runner uses."""

    def __init__(self, provider: TracerProvider, passthrough: float, processor: SpanProcessor) -> None:
        self.provider = provider
        self.resource = provider.resource
        self.sampler = provider.sampler
        self.processor = processor          # also the provider's, which shuts it down (flushing it)
        self.ids_from = provider.id_generator
        self.scope = InstrumentationScope("wire_gateway")
        self.passthrough = passthrough
        self._random = random.random
        # The SDK's default sampler (parent-based, always on) decided here, without its call: the
        # same decision and trace state, for a tenth of the cost.
        self.default_sampler = self.sampler.get_description() == _DEFAULT_SAMPLER

    def sample_passthrough(self) -> bool:
        """Whether this passthrough request gets a span (`telemetry.trace_passthrough`)."""
        return self.passthrough > 0.0 and self._random() < self.passthrough

    def parent(self, meta: Any, scope: context.Scope | None) -> tuple[SpanContext | None, list[Link]]:
        """The span's parent: `params._meta`'s trace context, else the HTTP request's; when both are
        there and differ, the HTTP one becomes a link (the MCP semantic conventions' rule)."""
        from_meta = from_http = None
        if isinstance(meta, dict) and isinstance(meta.get("traceparent"), str):
            from_meta = _extract(meta.get("traceparent"), meta.get("tracestate"))
        if scope is not None and scope.traceparent:
            from_http = _extract(scope.traceparent, scope.tracestate)
        if from_meta is None:
            return from_http, []
        if from_http is not None and from_http.trace_id != from_meta.trace_id:
            return from_meta, [Link(from_http)]
        return from_meta, []

    def start(self, name: str, kind: SpanKind, parent: SpanContext | None, static: Attrs,
              attributes: dict[str, Any], links: list[Link] | None = None, start_time: int | None = None) -> LightSpan:
        """A root or remote-parented span, sampled as the provider's sampler says (parent-based by
        default: a client's sampled-out context gets no span recorded, only propagated)."""
        if self.default_sampler:
            if parent is None:
                trace_id, flags, state = self.ids_from.generate_trace_id(), _SAMPLED, None
            else:
                trace_id, flags, state = parent.trace_id, parent.trace_flags, parent.trace_state
        else:
            trace_id = parent.trace_id if parent is not None else self.ids_from.generate_trace_id()
            parent_ctx = trace.set_span_in_context(NonRecordingSpan(parent)) if parent is not None else None
            decision = self.sampler.should_sample(parent_ctx, trace_id, name, kind,
                                                  {**static.values, **attributes}, links)
            flags = _SAMPLED if decision.decision == Decision.RECORD_AND_SAMPLE else _NOT_SAMPLED
            state = decision.trace_state
        ctx = SpanContext(trace_id, self.ids_from.generate_span_id(), False, flags, state)
        return LightSpan(self, name, kind, ctx, parent, static, attributes, links or [], start_time)

    def child(self, span: LightSpan, name: str, kind: SpanKind = INTERNAL, static: Attrs = NO_ATTRS,
              attributes: dict[str, Any] | None = None, start_time: int | None = None) -> LightSpan:
        """A span inside `span`: same trace, same sampling decision."""
        up = span.context
        ctx = SpanContext(up.trace_id, self.ids_from.generate_span_id(), False, up.trace_flags, up.trace_state)
        return LightSpan(self, name, kind, ctx, up, static, attributes if attributes is not None else {}, [],
                         start_time)

    @staticmethod
    def carrier(span: LightSpan) -> dict[str, str]:
        """The span's W3C trace context, as the headers (or `_meta` keys) that carry it (written here
        rather than by the propagator, which costs several times more per request)."""
        ctx = span.context
        carrier = {"traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"}
        if ctx.trace_state:
            carrier["tracestate"] = ctx.trace_state.to_header()
        return carrier

    @staticmethod
    def failed(span: LightSpan, error_type: str, message: str | None) -> None:
        """An error: its type (the JSON-RPC code, `tool_error`...) and the message, masked as the
        gateway's own output is (an upstream's error may quote a secret)."""
        span.attributes["error.type"] = error_type
        span.status = Status(StatusCode.ERROR, masking.mask(message) if message else None)

    def shutdown(self) -> None:
        self.provider.shutdown()


def _extract(traceparent: Any, tracestate: Any) -> SpanContext | None:
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
    return SpanContext(trace_id, span_id, True, TraceFlags(int(match.group(4), 16) & 1), state)


def setup(passthrough: float = 0.0, exporter: SpanExporter | None = None) -> Tracing:
    """Turn tracing on for this process: the provider, its batch processor and exporter; the
    runners made from now on trace (`context.TRACER`). Spans still queued are exported at exit."""
    if "OTEL_SERVICE_NAME" not in os.environ:
        resource = Resource.create({SERVICE_NAME: "wire-gateway"})
    else:
        resource = Resource.create()
    provider = TracerProvider(resource=resource)
    exporter = exporter if exporter is not None else make_exporter()
    if not getattr(exporter, "takes_light_spans", False):
        exporter = AsReadable(exporter)
    processor = BatchSpanProcessor(exporter)
    provider.add_span_processor(processor)
    tracing = Tracing(provider, passthrough, processor)
    context.TRACER = tracing
    context.TRACING = context.ACTIVE = True
    atexit.register(provider.shutdown)
    return tracing
