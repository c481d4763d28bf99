"""OTLP trace export bodies (`ExportTraceServiceRequest`, protobuf) written straight from the SDK's
spans, and the OTLP/HTTP exporter that sends them.

Why: the SDK's encoder builds a protobuf message object per span, attribute and value in Python,
then serialises them: ~60 us a span here, in the export thread but on the gateway's CPU and under
its GIL, more than the gateway's own work for a request. The wire format of these few messages is
simple (tags, varints, lengths), so writing the bytes directly costs a fraction of that.
tests/test_tracing_otlp.py checks that `opentelemetry-proto` decodes them to exactly what the SDK's
encoder gives, field for field. What this encoder does not write (span events, attribute values
other than str/bool/int/float and their sequences) makes it give the batch to the SDK's encoder.

`FastOtlpSpanExporter` is the SDK's OTLP/HTTP exporter (endpoint, headers, compression, retries,
every `OTEL_EXPORTER_OTLP_*` variable) with only the body written here; if the SDK's exporter ever
lacks the client it posts with, it exports as it always does.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import StatusCode

from wire_gateway.telemetry.tracing import UNSET, LightSpan

_KIND = {0: 1, 1: 2, 2: 3, 3: 4, 4: 5}     # SDK SpanKind value -> OTLP Span.SpanKind
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200
_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack


class Unencodable(Exception):
    """A span this encoder does not write (the SDK's encoder does)."""


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2); `tag` is the field number."""
    return _varint(tag << 3 | 2) + _varint(len(payload)) + payload


def _str(tag: int, text: str | None) -> bytes:
    return _ld(tag, text.encode("utf-8")) if text else b""


def _any_value(value: Any) -> bytes:
    if isinstance(value, str):
        return _ld(1, value.encode("utf-8"))
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _pack_double(value)
    if isinstance(value, list | tuple):
        return _ld(5, b"".join(_ld(1, _any_value(v)) for v in value))
    raise Unencodable(type(value).__name__)


def _attributes(tag: int, attrs: Any) -> bytes:
    if not attrs:
        return b""
    out = []
    for key, value in attrs.items():
        if type(value) is str and len(value) < 64:    # most repeat from span to span: server, method, tool
            cached = _KEY_VALUES.get((tag, key, value))
            if cached is None:
                if len(_KEY_VALUES) >= _KEY_VALUES_MAX:
                    _KEY_VALUES.clear()
                cached = _KEY_VALUES[(tag, key, value)] = _ld(tag, _str(1, key) + _ld(2, _any_value(value)))
            out.append(cached)
        else:
            out.append(_ld(tag, _str(1, key) + _ld(2, _any_value(value))))
    return b"".join(out)


def _own_attributes(attrs: dict[str, Any]) -> bytes:
    """A gateway span's own attributes (`Span.attributes`, field 9): ids and outcomes, whose values
    seldom repeat (so no memo of them), under keys that do. Lengths under 128 are one byte."""
    out = []
    for key, value in attrs.items():
        head = _KEYS.get(key)
        if head is None:
            if len(_KEYS) >= _KEY_VALUES_MAX:
                _KEYS.clear()
            head = _KEYS[key] = _str(1, key) + b"\x12"
        if type(value) is str:
            data = value.encode("utf-8")
            n = len(data)
            if n < 126 and len(head) + n < 124:
                out.append(_BYTE[len(head) + n + 3] + head + _BYTE[n + 2] + b"\x0a" + _BYTE[n] + data)
                continue
            any_value = b"\x0a" + _varint(n) + data
        else:
            any_value = _any_value(value)
        pair = head + _varint(len(any_value)) + any_value
        out.append(_varint(len(pair)) + pair)
    return b"\x4a".join([b"", *out])        # each pair under field 9


_BYTE = [bytes((n,)) for n in range(128)]
_KEYS: dict[str, bytes] = {}
# Encoded (field, key, short string value) attributes, as they repeat; bounded (cleared when full:
# ids make some values unique, and they must not make it grow without end).
_KEY_VALUES: dict[tuple[int, str, str], bytes] = {}
_KEY_VALUES_MAX = 4096


def _flags(key: bytes, parent: Any) -> bytes:
    """The span flags (fixed32) under `key`: whether the parent (or linked) context is remote."""
    return key + _pack_fixed32(_HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0))


def _trace_state(state: Any) -> str | None:
    return ",".join(f"{key}={value}" for key, value in state.items()) if state is not None else None


def _span(span: Any) -> bytes:
    """One `Span` message. A gateway span (`tracing.LightSpan`) is read from its slots, with its shared
    attributes encoded once; any other through the SDK's properties (each a call)."""
    if type(span) is LightSpan:
        light: LightSpan = span
        static = light.static
        if static.encoded is None:
            static.encoded = _attributes(9, static.values)
        ctx, parent, status = light.context, light.parent, light.status
        if light.links or ctx.trace_state or status is not UNSET:
            return _encode(ctx, parent, light.name, light.kind, light.start_time, light.end_time,
                           static.encoded + _own_attributes(light.attributes), light.links, status, 0, 0)
        # The usual span, in one join (protobuf fields may come in any order).
        name_kind = _NAME_KIND.get((light.name, light.kind)) or _name_kind(light.name, light.kind)
        body = b"".join((
            b"\x0a\x10", ctx.trace_id.to_bytes(16, "big"), b"\x12\x08", ctx.span_id.to_bytes(8, "big"),
            b"" if parent is None else b"\x22\x08" + parent.span_id.to_bytes(8, "big"),
            name_kind, _TIMES(0x39, light.start_time, 0x41, light.end_time), static.encoded,
            _own_attributes(light.attributes), b"\x7a\x00",
            _REMOTE_PARENT if parent is not None and parent.is_remote else _LOCAL_PARENT))
        return b"\x12" + _varint(len(body)) + body
    if span.events:
        raise Unencodable("events")
    assert span.context is not None
    return _encode(span.context, span.parent, span.name, span.kind, span.start_time, span.end_time,
                   _attributes(9, span.attributes), span.links, span.status, span.dropped_attributes,
                   span.dropped_links)


def _encode(ctx: Any, parent: Any, name: str, kind: Any, start: int | None, end: int | None, attributes: bytes,
            links: Any, status: Any, dropped_attributes: int, dropped_links: int) -> bytes:
    """The parts that repeat from span to span (name and kind, short attribute values, an unset
    status, the flags) come from memos; the rest is a few byte joins."""
    out = [b"\x0a\x10", ctx.trace_id.to_bytes(16, "big"), b"\x12\x08", ctx.span_id.to_bytes(8, "big")]
    if ctx.trace_state:
        out.append(_str(3, _trace_state(ctx.trace_state)))
    if parent is not None:
        out.append(b"\x22\x08")
        out.append(parent.span_id.to_bytes(8, "big"))
    out.append(_NAME_KIND.get((name, kind)) or _name_kind(name, kind))
    out.append(_TIMES(0x39, start or 0, 0x41, end or 0))
    out.append(attributes)
    if dropped_attributes:
        out.append(b"\x50" + _varint(dropped_attributes))
    if dropped_links:
        out.append(b"\x70" + _varint(dropped_links))
    for link in links:
        if link.dropped_attributes:
            raise Unencodable("a link's dropped attributes")
        out.append(_ld(13, _ld(1, link.context.trace_id.to_bytes(16, "big"))
                       + _ld(2, link.context.span_id.to_bytes(8, "big"))
                       + _attributes(4, link.attributes) + _flags(b"\x35", link.context)))   # Link.flags: 6
    if status.status_code is StatusCode.UNSET and not status.description:
        out.append(b"\x7a\x00")                # an empty Status (field 15)
    else:
        code = status.status_code.value
        out.append(_ld(15, _str(2, status.description) + (b"\x18" + _varint(code) if code else b"")))
    out.append(_REMOTE_PARENT if parent is not None and parent.is_remote else _LOCAL_PARENT)   # Span.flags: 16
    body = b"".join(out)
    return b"\x12" + _varint(len(body)) + body         # ScopeSpans.spans (field 2)


def _name_kind(name: str, kind: Any) -> bytes:
    """The span's name (field 5) and kind (6), remembered (a bounded number)."""
    if len(_NAME_KIND) >= _KEY_VALUES_MAX:
        _NAME_KIND.clear()
    encoded = _NAME_KIND[(name, kind)] = _str(5, name) + b"\x30" + _varint(_KIND[kind.value])
    return encoded


_TIMES = struct.Struct("<BQBQ").pack       # start (field 7) and end (8), fixed64 each
_NAME_KIND: dict[tuple[str, Any], bytes] = {}
_LOCAL_PARENT = b"\x85\x01" + _pack_fixed32(_HAS_IS_REMOTE)
_REMOTE_PARENT = b"\x85\x01" + _pack_fixed32(_HAS_IS_REMOTE | _IS_REMOTE)


def _scope(scope: Any) -> bytes:
    if scope is None:
        return b""
    return _ld(1, _str(1, scope.name) + _str(2, scope.version) + _attributes(3, scope.attributes))


def encode_request(spans: Sequence[Any]) -> bytes:
    """The `ExportTraceServiceRequest` for `spans` (the SDK's `ReadableSpan`s, or the gateway's own
    `LightSpan`s), grouped by resource, then by scope, as the SDK groups them. Raises Unencodable
    for a span it does not write."""
    # Grouped by the resource's identity (hashing one serialises its attributes), then by the scope's
    # (the gateway's spans share one; equal scopes that are distinct objects are merged below).
    groups: dict[int, tuple[Any, dict[int, tuple[Any, list[bytes]]]]] = {}
    for span in spans:
        scope: Any
        if type(span) is LightSpan:
            resource, scope = span.tracing.resource, span.tracing.scope
        else:
            resource, scope = span.resource, span.instrumentation_scope or None
        scopes = groups.setdefault(id(resource), (resource, {}))[1]
        scopes.setdefault(id(scope), (scope, []))[1].append(_span(span))
    out = []
    for resource, by_id in groups.values():
        body = [_ld(1, _attributes(1, resource.attributes))]
        scopes_merged: dict[Any, list[bytes]] = {}
        for scope, encoded in by_id.values():
            scopes_merged.setdefault(scope, []).extend(encoded)
        for scope, encoded in scopes_merged.items():
            body.append(_ld(2, _scope(scope) + b"".join(encoded)
                            + _str(3, scope.schema_url if scope is not None else None)))
        body.append(_str(3, resource.schema_url))
        out.append(_ld(1, b"".join(body)))
    return b"".join(out)


class FastOtlpSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter, posting bodies written by `encode_request`. It takes the
    gateway's `LightSpan`s as they are (`takes_light_spans`: `tracing.setup` puts no `AsReadable`
    before it)."""

    takes_light_spans = True

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        client = getattr(self, "_client", None)
        if self._shutdown or client is None or not hasattr(client, "export"):
            return super().export(_readable(spans))
        try:
            body = encode_request(spans)
        except Unencodable:
            return super().export(_readable(spans))
        result = client.export(body)
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE


def _readable(spans: Sequence[Any]) -> list[ReadableSpan]:
    return [s.readable() if type(s) is LightSpan else s for s in spans]
