"""Traces and JSON logs, end to end (docs/observability.md): a real gateway with tracing on exports
over OTLP/HTTP to a test receiver that decodes what arrives with `opentelemetry-proto`; the official
SDK client sends the W3C trace context (HTTP header, or `params._meta` over stdio); the upstreams
(a stdio fixture logging the `_meta` it receives, the HTTP fixture logging the header) show the
context the gateway propagated; and the JSON log lines parse, carry the request's ids, and hold no
secret."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from gateway import MODERN_META, SERVERS, fixture, fixture_module
from http_gateway import HttpGateway
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from otlp_receiver import OtlpReceiver, ReceivedSpan
from test_http_front import ACCEPT
from test_http_upstream import HTTP_ECHO, PY, REPO_ROOT, Upstream, closed_port

from wire_gateway.auth.backends import SqliteBackend
from wire_gateway.auth.tenancy import Tenancy

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
META_TRACE = "0af7651916cd43dd8448eb211c80319c"
META_SPAN = "b7ad6b7169203331"
META_TRACEPARENT = f"00-{META_TRACE}-{META_SPAN}-01"
SERVER_KIND, CLIENT_KIND = 2, 3
ENV_SECRET = "vault-s.Zx81QpLmN0-tracing"
LEAKY = fixture_module("leaky")


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Any:
    got = OtlpReceiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", got.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_PROTOCOL", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    yield got
    got.stop()


def logging_echo(log: Path) -> dict[str, Any]:
    """The echo fixture logging what it receives (with `_meta.traceparent`), this checkout's."""
    return {**fixture("echo", "--log", str(log)), "env": {"PYTHONPATH": str(REPO_ROOT)}}


def spans_named(spans: list[ReceivedSpan], name: str, kind: int) -> list[ReceivedSpan]:
    return [s for s in spans if s.name == name and s.kind == kind]


def log_entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def traceparent_parts(value: str) -> tuple[str, str]:
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00" and flags == "01", value
    return trace_id, span_id


@pytest.mark.anyio
async def test_http_front_spans_parent_propagation_and_json_logs(receiver: OtlpReceiver, tmp_path: Path) -> None:
    echo_log = tmp_path / "echo-received.jsonl"
    trace_log = tmp_path / "http-echo-trace.log"
    web = Upstream([PY, str(HTTP_ECHO), "--port", "0", "--port-file", str(tmp_path / "web.port"),
                    "--trace-log", str(trace_log)], tmp_path / "web.port", tmp_path / "web.log")
    gateway = HttpGateway(tmp_path, {"echo": logging_echo(echo_log),
                                     "filtered": {**fixture("echo"), "tools": {"deny": ["add"]}},
                                     "web": {"url": web.url}},
                          telemetry={"tracing": True}, logging={"format": "json"})
    try:
        headers = {"traceparent": TRACEPARENT, "tracestate": "congo=t61rcWkgMzE"}
        async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
            async with Client(streamable_http_client(gateway.url("echo"), http_client=http), mode="legacy") as client:
                result = await client.call_tool("echo", {"text": "traced"})
                assert result.content[0].text == "traced"
                # `_meta` wins over the header; the header's context becomes a link.
                await client.call_tool("echo", {"text": "meta"}, meta={"traceparent": META_TRACEPARENT})
            async with Client(streamable_http_client(gateway.url("web"), http_client=http), mode="legacy") as client:
                assert (await client.call_tool("echo", {"text": "over http"})).content[0].text == "over http"
            async with Client(streamable_http_client(gateway.url("filtered"), http_client=http),
                              mode="2026-07-28") as client:
                await client.list_tools()
                with pytest.raises(MCPError, match="Unknown tool: add"):
                    await client.call_tool("add", {"a": 1, "b": 2})
            # A modern raw request refused by the filter: the JSON-RPC error code on the span.
            raw = await http.post(gateway.url("filtered"), headers={
                **ACCEPT, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "add"},
                json={"jsonrpc": "2.0", "id": 77, "method": "tools/call", "params": {
                    "name": "add", "arguments": {"a": 1, "b": 2},
                    "_meta": MODERN_META}})
            assert raw.json()["error"]["code"] == -32602, raw.text

        spans = receiver.wait_for(lambda s: len(spans_named(s, "tools/call echo", SERVER_KIND)) >= 3
                                  and len(spans_named(s, "tools/call add", SERVER_KIND)) >= 1)
    except BaseException:
        print(gateway.log())
        raise
    finally:
        assert gateway.stop() == 0
        web.stop()

    # The request span: child of the client's span, with the MCP semantic conventions' attributes.
    echoed = spans_named(spans, "tools/call echo", SERVER_KIND)
    served = [s for s in echoed if s.attributes["wire_gateway.server"] == "echo"]
    header_span = next(s for s in served if s.trace_id == CLIENT_TRACE)
    assert header_span.parent_span_id == CLIENT_SPAN
    attrs = header_span.attributes
    assert attrs["mcp.method.name"] == "tools/call" and attrs["gen_ai.tool.name"] == "echo"
    assert attrs["gen_ai.operation.name"] == "execute_tool" and attrs["network.transport"] == "pipe"
    assert attrs["wire_gateway.era"] == "legacy" and attrs["mcp.protocol.version"]
    assert attrs["mcp.session.id"] and attrs["wire_gateway.request_id"].startswith(attrs["mcp.session.id"] + "/")
    assert attrs["jsonrpc.request.id"] == attrs["wire_gateway.request_id"].rsplit("/", 1)[1]
    assert header_span.resource["service.name"] == "wire-gateway"
    assert header_span.status_code != 2
    # The upstream round trip, a CLIENT child; the stdio server got its context in `_meta`.
    upstream = next(s for s in spans_named(spans, "tools/call echo", CLIENT_KIND)
                    if s.parent_span_id == header_span.span_id)
    assert upstream.trace_id == CLIENT_TRACE and header_span.start <= upstream.start <= upstream.end <= header_span.end
    received = [e for e in log_entries(echo_log) if e.get("method") == "tools/call"]
    assert traceparent_parts(received[0]["traceparent"]) == (CLIENT_TRACE, upstream.span_id)

    meta_span = next(s for s in served if s.trace_id == META_TRACE)
    assert meta_span.parent_span_id == META_SPAN
    assert meta_span.links == [(CLIENT_TRACE, CLIENT_SPAN)]
    meta_upstream = next(s for s in spans if s.parent_span_id == meta_span.span_id and s.kind == CLIENT_KIND)
    assert traceparent_parts(received[1]["traceparent"]) == (META_TRACE, meta_upstream.span_id)

    # The HTTP upstream got the context as a header (and in `_meta`, the MCP convention).
    web_span = next(s for s in echoed if s.attributes["wire_gateway.server"] == "web")
    assert web_span.trace_id == CLIENT_TRACE and web_span.attributes["network.transport"] == "tcp"
    web_upstream = next(s for s in spans if s.parent_span_id == web_span.span_id and s.kind == CLIENT_KIND)
    posted = [line for line in trace_log.read_text().splitlines() if '"tools/call"' in line]
    header, _, body = posted[0].partition(" ")
    assert traceparent_parts(header) == (CLIENT_TRACE, web_upstream.span_id)
    assert json.loads(body)["params"]["_meta"]["traceparent"] == header
    # Untraced requests are not rewritten: the handshake reached the server without a context
    # (the tool requests, the SDK's own tools/list included, are traced).
    assert all(header == "-" for header, _, body in (line.partition(" ") for line in trace_log.read_text().splitlines())
               if '"method":"tools/' not in body)

    # A refusal by the filter: the policy decision and the JSON-RPC error code, never forwarded.
    refusals = spans_named(spans, "tools/call add", SERVER_KIND)
    assert all(s.attributes["wire_gateway.policy"] == "filter" and s.attributes["rpc.response.status_code"] == "-32602"
               and s.status_code == 2 and s.attributes["wire_gateway.era"] == "modern" for s in refusals), refusals
    assert not [s for s in spans if s.kind == CLIENT_KIND and any(s.parent_span_id == r.span_id for r in refusals)]

    # JSON logs: every line parses, and a line written during a traced request carries its ids.
    entries = [json.loads(line) for line in gateway.log().splitlines()]
    assert all({"time", "level", "logger", "message"} <= e.keys() for e in entries)
    assert any(e.get("server") == "echo" for e in entries)


@pytest.mark.anyio
async def test_stdio_front_takes_meta_and_propagates(receiver: OtlpReceiver, tmp_path: Path) -> None:
    echo_log = tmp_path / "echo-received.jsonl"
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({"servers": {"echo": logging_echo(echo_log)},
                                  "logging": {"format": "json"}}))
    log_file = tmp_path / "gateway.log"
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "wire_gateway", "stdio", "--config", str(config), "--server", "echo", "--log-file", str(log_file)],
        env={**os.environ, "WIRE_GATEWAY_TRACING": "1"}, cwd=str(REPO_ROOT))
    async with Client(stdio_client(params), mode="legacy") as client:
        result = await client.call_tool("add", {"a": 2, "b": 40}, meta={"traceparent": META_TRACEPARENT})
        assert result.content[0].text == "42"
    spans = receiver.wait_for(lambda s: bool(spans_named(s, "tools/call add", CLIENT_KIND)))
    server_span = spans_named(spans, "tools/call add", SERVER_KIND)[0]
    assert (server_span.trace_id, server_span.parent_span_id) == (META_TRACE, META_SPAN)
    assert server_span.attributes["wire_gateway.request_id"].split("/")[0] == server_span.attributes["mcp.session.id"]
    upstream = spans_named(spans, "tools/call add", CLIENT_KIND)[0]
    received = next(e for e in log_entries(echo_log) if e.get("method") == "tools/call")
    assert traceparent_parts(received["traceparent"]) == (META_TRACE, upstream.span_id)
    # The handshake and other passthrough frames: no span (trace_passthrough is 0), no rewrite.
    assert not [s for s in spans if s.attributes.get("mcp.method.name") == "initialize"]
    assert "traceparent" not in next(e for e in log_entries(echo_log) if e.get("method") == "initialize")
    for line in log_file.read_text().splitlines():
        json.loads(line)


def test_json_logs_hold_no_secret_and_tie_to_span_and_dump(receiver: OtlpReceiver, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A server env secret (printed by the server on stderr, which the gateway logs) and an API key
    (sent by the client): in no log line; a line written for a traced request names the request id,
    which is also the span's and points at the dump records of that request."""
    monkeypatch.setenv("MY_SECRET", ENV_SECRET)
    leaky = {"command": PY, "args": [str(SERVERS / "leaky.py")], "env": {"SECRET_TOKEN": "${MY_SECRET}"}}
    servers = {"leaky": leaky, "echo": {**fixture("echo"), "pinning": "warn"}}
    tenancy = Tenancy(SqliteBackend(str(tmp_path / "auth.sqlite3")), servers)
    tenancy.create_project("team", ["leaky", "echo"])
    tenancy.create_user("alice")
    key = tenancy.create_key("team", "alice")[1]
    dump = tmp_path / "dump.jsonl"
    gateway = HttpGateway(tmp_path, servers, auth={"mode": "keys"}, telemetry={"tracing": True},
                          logging={"format": "json", "level": "debug"}, dump={"path": str(dump)})
    try:
        auth = {**ACCEPT, "authorization": f"Bearer {key}"}
        with httpx.Client(timeout=20) as http:
            for server in ("leaky", "echo"):
                opened = http.post(gateway.url(server), headers=auth, json={
                    "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                        "protocolVersion": "2025-11-25", "capabilities": {},
                        "clientInfo": {"name": "t", "version": "1"}}})
                assert opened.status_code == 200, opened.text
                session = {**auth, "mcp-session-id": opened.headers["mcp-session-id"],
                           "mcp-protocol-version": "2025-11-25"}
                http.post(gateway.url(server), headers=session,
                          json={"jsonrpc": "2.0", "method": "notifications/initialized"})
                http.post(gateway.url(server), headers=session,
                          json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
                for req_id, tool in enumerate(("fail", "leak") if server == "leaky" else ("echo",), 3):
                    http.post(gateway.url(server), headers=session, json={
                        "jsonrpc": "2.0", "id": req_id, "method": "tools/call", "params": {
                            "name": tool, "arguments": {"text": "x"}}})
        spans = receiver.wait_for(lambda s: len([x for x in s if x.kind == SERVER_KIND]) >= 4)
    except BaseException:
        print(gateway.log())
        raise
    finally:
        assert gateway.stop() == 0
    # Every span now: a log line may name a request whose span was still in the batch above (the
    # gateway's shutdown flushed it).
    spans = receiver.wait_for(lambda s: True)
    text = gateway.log()
    entries = [json.loads(line) for line in text.splitlines()]
    key_secret = key.split("_", 2)[2]     # wg_<id>_<secret>; the secret (urlsafe base64) may hold "_" itself
    assert len(key_secret) >= 40
    secrets = (ENV_SECRET, key, key_secret, LEAKY.API_KEY, LEAKY.PASSWORD, LEAKY.BEARER)
    assert [s for s in secrets if s in text] == [], text
    assert [s for s in secrets if any(s in json.dumps(x.attributes) for x in spans)] == []
    # The principal and project are on the span (never the key).
    server_spans = [s for s in spans if s.kind == SERVER_KIND]
    assert all(s.attributes["wire_gateway.project"] == "team" and s.attributes["wire_gateway.principal"]
               for s in server_spans)
    assert any(s.name == "wire-gateway auth" and s.parent_span_id in {x.span_id for x in server_spans} for s in spans)
    # A log line written while a traced request was handled: its ids are the span's, and its request
    # id names the dump records of the request (session + id at the server-side hops).
    tagged = [e for e in entries if "request_id" in e]
    assert tagged, text
    for entry in tagged:
        span = next(s for s in server_spans if s.attributes["wire_gateway.request_id"] == entry["request_id"])
        assert (entry["trace_id"], entry["span_id"]) == (span.trace_id, span.span_id)
        session, _, req_id = entry["request_id"].rpartition("/")
        records = [json.loads(line) for line in dump.read_text().splitlines()]
        assert any(r.get("session") == session and str(r.get("id")) == req_id and r.get("dir") == "gateway->server"
                   for r in records), entry


def test_trace_context_parsing_follows_w3c() -> None:
    """`_meta` wins over the HTTP header (which becomes a link); what does not parse as a W3C
    traceparent is no parent at all."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from wire_gateway.telemetry.context import NO_ATTRS, Scope
    from wire_gateway.telemetry.tracing import AsReadable, Tracing

    tracing = Tracing(TracerProvider(), 0.0, SimpleSpanProcessor(AsReadable(InMemorySpanExporter())))

    def parent_of(meta: Any, header: str | None = None) -> tuple[str | None, list[str]]:
        span, links = tracing.parent(meta, Scope(traceparent=header, tracestate="congo=t61rcWkgMzE"))
        return (format(span.trace_id, "032x") if span else None), [format(x.context.trace_id, "032x") for x in links]

    assert parent_of({"traceparent": META_TRACEPARENT}, TRACEPARENT) == (META_TRACE, [CLIENT_TRACE])
    assert parent_of({"traceparent": META_TRACEPARENT}, META_TRACEPARENT) == (META_TRACE, [])
    assert parent_of({}, TRACEPARENT) == (CLIENT_TRACE, [])
    assert parent_of({"traceparent": 7}, TRACEPARENT) == (CLIENT_TRACE, [])
    for bad in (f"00-{'0' * 32}-{CLIENT_SPAN}-01", f"00-{CLIENT_TRACE}-{'0' * 16}-01", TRACEPARENT.upper(),
                f"ff-{CLIENT_TRACE}-{CLIENT_SPAN}-01", TRACEPARENT + "-extra", "junk", ""):
        assert parent_of({"traceparent": bad}) == (None, []), bad
    assert parent_of({"traceparent": f"01-{CLIENT_TRACE}-{CLIENT_SPAN}-01-later"}) == (CLIENT_TRACE, [])
    ctx, _ = tracing.parent({}, Scope(traceparent=TRACEPARENT, tracestate="congo=t61rcWkgMzE"))
    span = tracing.start("x", trace.SpanKind.SERVER, ctx, NO_ATTRS, {})
    carrier = tracing.carrier(span)
    assert carrier["traceparent"].startswith(f"00-{CLIENT_TRACE}-") and carrier["traceparent"].endswith("-01")
    assert carrier["tracestate"] == "congo=t61rcWkgMzE"


def test_the_fast_encoder_writes_what_the_sdk_encoder_does() -> None:
    """`telemetry.otlp_encode` against the SDK's encoder, both decoded by `opentelemetry-proto`: from
    the gateway's own spans as the export thread gets them (shared attributes encoded once, then
    reused), and from the SDK's `ReadableSpan`s that any other exporter gets."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.trace import SpanKind

    from wire_gateway.telemetry.context import NO_ATTRS, Attrs, Scope
    from wire_gateway.telemetry.otlp_encode import Unencodable, encode_request
    from wire_gateway.telemetry.tracing import LightSpan, Tracing

    class Keep(SpanExporter):
        takes_light_spans = True

        def __init__(self) -> None:
            self.spans: list[Any] = []

        def export(self, spans: Any) -> SpanExportResult:
            self.spans.extend(spans)
            return SpanExportResult.SUCCESS

    kept = Keep()
    tracing = Tracing(TracerProvider(resource=Resource.create({"service.name": "wire-gateway", "n": 3})), 0.0,
                      SimpleSpanProcessor(kept))
    parent, links = tracing.parent({"traceparent": META_TRACEPARENT, "tracestate": "a=1,b=2"},
                                   Scope(traceparent=TRACEPARENT))
    shared = Attrs({"s": "text ✓", "b": True, "list": ["a", "b"]})
    for n in range(2):
        root = tracing.start("tools/call écho", SpanKind.SERVER, parent, shared, {
            "f": False, "i": 42 + n, "neg": -7, "big": 2**62, "x": 1.5, "ints": [1, -2], "empty": ""}, links)
        child = tracing.child(root, "tools/call", SpanKind.CLIENT, Attrs({"mcp.method.name": "tools/call"}))
        tracing.failed(child, "-32602", "Unknown tool: add")
        child.end()
        tracing.child(root, "wire-gateway policy auth").end()
        root.end()
    lone = tracing.start("tools/list", SpanKind.SERVER, None, NO_ATTRS, {})
    lone.end()
    plain_parent, _ = tracing.parent({"traceparent": META_TRACEPARENT}, None)     # remote, no tracestate
    for n in range(2):
        usual = tracing.start("tools/call echo", SpanKind.SERVER, plain_parent, shared,
                              {"jsonrpc.request.id": str(n), "long": "x" * (200 * n), "n": n})
        tracing.child(usual, "tools/call echo", SpanKind.CLIENT, Attrs({"mcp.method.name": "tools/call"}),
                      {"jsonrpc.request.id": str(n)}).end()
        usual.end()
    spans = kept.spans
    assert len(spans) == 11 and all(type(s) is LightSpan for s in spans)
    readable = [s.readable() for s in spans]
    sdk = ExportTraceServiceRequest()
    sdk.ParseFromString(encode_spans(readable).SerializeToString())
    for body in (encode_request(spans), encode_request(spans), encode_request(readable)):
        ours = ExportTraceServiceRequest()
        ours.ParseFromString(body)
        assert ours == sdk, (ours, sdk)
    bad = tracing.start("x", SpanKind.SERVER, None, NO_ATTRS, {"d": {"nested": 1}})
    bad.end()
    with pytest.raises(Unencodable):
        encode_request(kept.spans[-1:])


def test_a_sampled_out_parent_is_propagated_not_recorded() -> None:
    """Parent-based sampling (the SDK's default): a client that sampled its trace out gets no gateway
    span exported, and the server still gets the context, with the sampled flag off."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from wire_gateway.telemetry.context import NO_ATTRS
    from wire_gateway.telemetry.tracing import AsReadable, Tracing

    memory = InMemorySpanExporter()
    tracing = Tracing(TracerProvider(), 0.0, SimpleSpanProcessor(AsReadable(memory)))
    parent, _ = tracing.parent({"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"}, None)
    span = tracing.start("tools/call echo", SpanKind.SERVER, parent, NO_ATTRS, {})
    upstream = tracing.child(span, "tools/call echo", SpanKind.CLIENT)
    assert tracing.carrier(upstream)["traceparent"].endswith("-00")
    assert tracing.carrier(upstream)["traceparent"].startswith(f"00-{CLIENT_TRACE}-")
    upstream.end()
    span.end()
    assert memory.get_finished_spans() == ()


def test_a_configured_sampler_decides_and_the_default_one_is_decided_inline() -> None:
    """`OTEL_TRACES_SAMPLER` (any sampler but the SDK's default) is asked for every span; the default
    (parent-based, always on) is decided without the call, to the same effect."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased
    from opentelemetry.trace import SpanKind

    from wire_gateway.telemetry.context import NO_ATTRS
    from wire_gateway.telemetry.tracing import AsReadable, Tracing

    def traced(sampler: Any, traceparent: str | None) -> tuple[bool, str, int]:
        """Whether decided inline, the propagated flags, how many spans were recorded."""
        memory = InMemorySpanExporter()
        tracing = Tracing(TracerProvider(sampler=sampler), 0.0, SimpleSpanProcessor(AsReadable(memory)))
        parent, _ = tracing.parent({"traceparent": traceparent} if traceparent else {}, None)
        span = tracing.start("tools/call echo", SpanKind.SERVER, parent, NO_ATTRS, {})
        flags = tracing.carrier(span)["traceparent"][-2:]
        span.end()
        return tracing.default_sampler, flags, len(memory.get_finished_spans())

    sampled_out = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"
    assert traced(ParentBased(ALWAYS_ON), None) == (True, "01", 1)
    assert traced(ParentBased(ALWAYS_ON), TRACEPARENT) == (True, "01", 1)
    assert traced(ParentBased(ALWAYS_ON), sampled_out) == (True, "00", 0)
    assert traced(ALWAYS_OFF, None) == (False, "00", 0)
    assert traced(ParentBased(ALWAYS_OFF), None) == (False, "00", 0)
    assert traced(ParentBased(ALWAYS_OFF), TRACEPARENT) == (False, "01", 1)
    assert traced(ALWAYS_ON, sampled_out) == (False, "01", 1)     # not parent-based: records regardless


def test_a_library_warning_is_a_json_line_too(tmp_path: Path) -> None:
    """The OTLP exporter, failing to reach its receiver, logs its retries through the gateway's own
    handler: JSON lines on stderr like every other, masked, none written bare by Python's fallback."""
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({"servers": {"echo": fixture("echo")}, "logging": {"format": "json"},
                                  "telemetry": {"tracing": True}}))
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
           "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"}
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 1, "b": 2}}}
    frames = [{"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"}, call]
    command = [sys.executable, "-m", "wire_gateway", "stdio", "--config", str(config), "--server", "echo"]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=str(REPO_ROOT))
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"".join(json.dumps(f).encode() + b"\n" for f in frames))
        proc.stdin.flush()
        answers = [json.loads(proc.stdout.readline()) for _ in range(2)]
        assert answers[1]["id"] == 2 and "result" in answers[1], answers
        time.sleep(2.0)            # the batch (50 ms) fails to export, and is retried, meanwhile
        _, err = proc.communicate(timeout=30)     # closes stdin: the session ends, the gateway exits
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.decode().splitlines()
    entries = [json.loads(line) for line in lines]        # every line, the library's included
    exporter = [e for e in entries if e["logger"].startswith("opentelemetry")]
    assert exporter and all(e["level"] in ("WARNING", "ERROR") for e in exporter), lines
