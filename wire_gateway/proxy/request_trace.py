"""The policy runner's observer: a span per intercepted request, and the request tag its log lines
carry (docs/observability.md).

Made by a `PolicyRunner` only when tracing or JSON logs are on; otherwise the runner holds None and
each site costs one attribute test. It watches the runner from three places, so the runner's own
bookkeeping (one answer per request) stays as it is:
- around `PolicyRunner.request` (`request`): the request's span starts, with its parent from
  `params._meta` or the HTTP headers (`telemetry.context.SCOPE`), and the request's tag is current
  while the runner handles it, so its log lines carry the request id and span;
- as the runner's sink (`Answers`): the answer that reaches the session, whoever made it, ends the
  span (JSON-RPC error code, the policy's note, cache hit or miss);
- as the inner upstream's sink (`UpstreamAnswers`) and the runner's way to it (`forward`): the
  upstream round trip is a child span (kind CLIENT), whose W3C trace context the forwarded request
  carries in `params._meta.traceparent`/`tracestate` (and, to an HTTP upstream, in the headers:
  `telemetry.context.OUTBOUND`). Only traced requests are rewritten.

With JSON logs but no tracing, only the tag is kept (no span, nothing rewritten).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from wire_gateway.auth.context import CALLER
from wire_gateway.telemetry import context
from wire_gateway.telemetry.context import REQUEST, Attrs, Tag
from wire_gateway.upstream.protocol import Sink
from wire_gateway.wire import jsonfast
from wire_gateway.wire.era import request_version
from wire_gateway.wire.frame import Frame, Kind

if TYPE_CHECKING:
    from wire_gateway.proxy.policy_runner import PolicyRunner
    from wire_gateway.telemetry.tracing import LightSpan, Tracing

_ANSWER = (Kind.RESPONSE, Kind.ERROR)
_STATICS_MAX = 1024
_AUTH = Attrs({"wire_gateway.slot": "auth"})
log = logging.getLogger("wire_gateway.requests")


class Traced:
    """One request being watched: its tag, and its span when traced."""

    __slots__ = ("tag", "span", "name", "forwarded", "note", "obs")

    def __init__(self, obs: Observer, tag: Tag, span: LightSpan | None, name: str) -> None:
        self.obs = obs
        self.tag = tag
        self.span = span
        self.name = name
        self.forwarded = False
        self.note: str | None = None

    def step(self, slot: str) -> Any:
        """A span for one slow slot of the chain (`policy.chain.SLOW`); a context manager."""
        if self.span is None or self.obs.tracing is None:
            return _NO_SPAN
        return self.obs.tracing.child(self.span, f"wire-gateway policy {slot}", attributes={"wire_gateway.slot": slot})


class _NoSpan:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


class Observer:
    """One runner's requests in flight, watched by id (the ids the inner upstream sees)."""

    def __init__(self, runner: PolicyRunner, tracing: Tracing | None, transport: str) -> None:
        self.runner = runner
        self.tracing = tracing
        self.server = runner.name
        self.transport = transport
        self.open: dict[Any, Traced] = {}       # awaiting the answer the session gets
        self.upstream: dict[Any, LightSpan | None] = {}   # forwarded, awaiting the inner upstream's answer
        names = runner.chain.names
        self._cached = {"tools/list": "list_cache" in names, "tools/call": "result_cache" in names}
        self._kinds: tuple[Any, Any] = (None, None)
        self._statics: dict[tuple[Any, ...], Attrs] = {}
        self._upstream_statics: dict[str, Attrs] = {}
        if tracing is not None:
            from wire_gateway.telemetry.tracing import CLIENT, SERVER

            self._kinds = (SERVER, CLIENT)

    # ---- the request ---------------------------------------------------------------------------

    def request(self, frame: Frame, handle: Callable[[Frame], bytes | None], passthrough: bool = False) -> bytes | None:
        if frame.id in self.open:       # a duplicate of an id in flight: refused below, not watched
            return handle(frame)
        traced = self._begin(frame, passthrough)
        self.open[frame.id] = traced
        token = REQUEST.set(traced.tag) if context.JSON_LOGS else None
        try:
            out = handle(frame)
        except BaseException:
            self.open.pop(frame.id, None)
            self._end(traced, None, "exception")
            raise
        finally:
            if token is not None:
                REQUEST.reset(token)
        if out is not None:
            if self.open.get(frame.id) is traced:
                del self.open[frame.id]
            self._end(traced, jsonfast.loads(out), None)
        return out

    def trace_of(self, req_id: Any) -> Traced | None:
        """The chain's handle on the request's trace (`Call.trace`), when it has a span."""
        traced = self.open.get(req_id)
        return traced if traced is not None and traced.span is not None else None

    def _begin(self, frame: Frame, passthrough: bool) -> Traced:
        scope = context.SCOPE.get()
        session = scope.session if scope is not None else None
        rid = context.request_id(session, frame.id)
        tag = Tag(self.server, session, rid)
        params = frame.params if isinstance(frame.params, dict) else {}
        tool = params.get("name") if frame.method == "tools/call" else None
        name = f"{frame.method} {tool}" if isinstance(tool, str) else str(frame.method)
        tracing = self.tracing
        if tracing is None:
            return Traced(self, tag, None, name)
        attrs: dict[str, Any] = {"jsonrpc.request.id": str(frame.id), "wire_gateway.request_id": rid}
        if session is not None:
            attrs["mcp.session.id"] = session
        caller = CALLER.get()
        if caller is not None:
            attrs["wire_gateway.principal"] = caller.id
            attrs["wire_gateway.project"] = caller.project.name
        if passthrough:
            attrs["wire_gateway.passthrough"] = True
        parent, links = tracing.parent(params.get("_meta"), scope)
        start = scope.auth_start if scope is not None and scope.auth_start else None
        span = tracing.start(name, self._kinds[0], parent, self._static(frame, tool), attrs, links, start)
        if scope is not None and start:
            tracing.child(span, "wire-gateway auth", static=_AUTH, start_time=start).end(scope.auth_end or None)
        ctx = span.context
        tag.trace_id, tag.span_id = ctx.trace_id, ctx.span_id
        return Traced(self, tag, span, name)

    def _static(self, frame: Frame, tool: Any) -> Attrs:
        """The attributes every span of this method, tool and protocol version shares, made once
        (a bounded number of them: tool names come from clients)."""
        version = request_version(frame.msg)
        era = "modern"
        if version is None:
            era = "legacy"
            init = self.runner.inner.handshake.init_msg
            params = init.get("params") if init is not None else None
            if isinstance(params, dict) and isinstance(params.get("protocolVersion"), str):
                version = params["protocolVersion"]
        key = (frame.method, tool if isinstance(tool, str) else None, version, era)
        static = self._statics.get(key)
        if static is not None:
            return static
        values: dict[str, Any] = {"mcp.method.name": frame.method or "", "wire_gateway.server": self.server,
                                  "network.transport": self.transport}
        if isinstance(tool, str):
            values["gen_ai.tool.name"] = tool
            values["gen_ai.operation.name"] = "execute_tool"
        if version is not None:
            values["mcp.protocol.version"] = version
        values["wire_gateway.era"] = era
        static = Attrs(values)
        if len(self._statics) < _STATICS_MAX:
            self._statics[key] = static
        return static

    def decided(self, req_id: Any, note: str | None) -> None:
        """The chain's answer to a request carries the policy that made or changed it."""
        traced = self.open.get(req_id)
        if traced is not None and note:
            traced.note = note

    def cancelled(self, req_id: Any) -> None:
        span = self.upstream.pop(req_id, None)
        if span is not None:
            span.set_attribute("wire_gateway.cancelled", True)
            span.end()
        traced = self.open.pop(req_id, None)
        if traced is not None:
            self._end(traced, None, "cancelled")

    def close(self) -> None:
        """The runner stopped: whatever is still open ends (its answer will not come through here)."""
        for span in self.upstream.values():
            if span is not None:
                span.end()
        self.upstream.clear()
        for traced in self.open.values():
            self._end(traced, None, "unanswered")
        self.open.clear()

    def _end(self, traced: Traced, msg: Any, reason: str | None) -> None:
        if log.isEnabledFor(logging.DEBUG):      # one line per request, tagged with its ids
            token = REQUEST.set(traced.tag)
            try:
                error = msg.get("error") if isinstance(msg, dict) else None
                outcome = reason or (f"error {error.get('code')}" if isinstance(error, dict) else "answered")
                log.debug("%s: %s%s", traced.name, outcome, f" ({traced.note})" if traced.note else "")
            finally:
                REQUEST.reset(token)
        span = traced.span
        if span is None or self.tracing is None:
            return
        if traced.note:
            span.set_attribute("wire_gateway.policy", traced.note)
        if traced.note == "cache":
            span.set_attribute("wire_gateway.cache", "hit")
        elif traced.forwarded and self._cached.get(traced.name.partition(" ")[0]):
            span.set_attribute("wire_gateway.cache", "miss")
        if reason is not None:
            self.tracing.failed(span, reason, None)
        elif isinstance(msg, dict):
            error = msg.get("error")
            if isinstance(error, dict):
                code = str(error.get("code"))
                span.set_attribute("rpc.response.status_code", code)
                message = error.get("message")
                self.tracing.failed(span, code, message if isinstance(message, str) else None)
            else:
                result = msg.get("result")
                if isinstance(result, dict) and result.get("isError") is True:
                    self.tracing.failed(span, "tool_error", None)
        span.end()

    # ---- the upstream round trip ---------------------------------------------------------------

    def forward(self, frame: Frame) -> bytes | None:
        """The runner's way to the inner upstream for a watched request."""
        inner = self.runner.inner
        traced = self.open.get(frame.id)
        if traced is None:
            return inner.request(frame)
        traced.forwarded = True
        if traced.span is None or self.tracing is None:
            out = inner.request(frame)
            if out is None:
                self.upstream[frame.id] = None
            return out
        method = frame.method or ""
        static = self._upstream_statics.get(method)
        if static is None:
            static = Attrs({"mcp.method.name": method})     # the rest is on its parent
            if len(self._upstream_statics) < _STATICS_MAX:
                self._upstream_statics[method] = static
        span = self.tracing.child(traced.span, traced.name, self._kinds[1], static,
                                  {"jsonrpc.request.id": str(frame.id)})
        carrier = self.tracing.carrier(span)
        frame = with_meta(frame, carrier)
        token = context.OUTBOUND.set(carrier)
        try:
            out = inner.request(frame)
        finally:
            context.OUTBOUND.reset(token)
        if out is not None:
            self._end_upstream(span, jsonfast.loads(out))
        else:
            self.upstream[frame.id] = span
        return out

    def _end_upstream(self, span: LightSpan | None, msg: Any) -> None:
        if span is None:
            return
        error = msg.get("error") if isinstance(msg, dict) else None
        if isinstance(error, dict) and self.tracing is not None:
            code = str(error.get("code"))
            span.set_attribute("rpc.response.status_code", code)
            message = error.get("message")
            self.tracing.failed(span, code, message if isinstance(message, str) else None)
        span.end()

    def upstream_answered(self, req_id: Any, msg: Any) -> Tag | None:
        self._end_upstream(self.upstream.pop(req_id, None), msg)
        traced = self.open.get(req_id)
        return traced.tag if traced is not None else None

    def answered(self, req_id: Any, msg: Any, note: str | None) -> None:
        traced = self.open.pop(req_id, None)
        if traced is not None:
            if note:
                traced.note = note
            self._end(traced, msg, None)


def with_meta(frame: Frame, carrier: dict[str, str]) -> Frame:
    """The request with the trace context in `params._meta` (its other keys kept), re-serialised.
    From its bytes, not `frame.msg`: a session may have changed the bytes only (the modern pool's
    id and progress token)."""
    msg = jsonfast.loads(frame.raw)
    params = msg.get("params")
    params = dict(params) if isinstance(params, dict) else {}
    meta = params.get("_meta")
    meta = dict(meta) if isinstance(meta, dict) else {}
    meta.pop("tracestate", None)
    meta.update(carrier)
    params["_meta"] = meta
    msg["params"] = params
    return Frame(jsonfast.dumps(msg), frame.kind, msg, frame.method, frame.id, frame.note)


class Answers:
    """The runner's sink, seen by the observer: each answer to a watched request ends its span."""

    __slots__ = ("sink", "obs", "flush", "wait_writable")

    def __init__(self, sink: Sink, obs: Observer) -> None:
        self.sink = sink
        self.obs = obs
        self.flush: Callable[[], None] = sink.flush
        self.wait_writable: Callable[[], Coroutine[Any, Any, None]] = sink.wait_writable

    def server_frame(self, frame: Frame) -> None:
        if frame.kind in _ANSWER and self.obs.open:
            self.obs.answered(frame.id, frame.msg, frame.note)
        self.sink.server_frame(frame)

    def gateway_reply(self, req_id: Any, data: bytes) -> None:
        if self.obs.open and req_id in self.obs.open:
            self.obs.answered(req_id, jsonfast.loads(data), None)
        self.sink.gateway_reply(req_id, data)


class UpstreamAnswers:
    """The inner upstream's sink, seen by the observer: an answer to a forwarded request ends the
    upstream span, and the request's tag is current while the chain handles that answer."""

    __slots__ = ("sink", "obs", "flush", "wait_writable")

    def __init__(self, sink: Any, obs: Observer) -> None:
        self.sink = sink
        self.obs = obs
        self.flush: Callable[[], None] = sink.flush
        self.wait_writable: Callable[[], Coroutine[Any, Any, None]] = sink.wait_writable

    def server_frame(self, frame: Frame) -> None:
        if frame.kind in _ANSWER and self.obs.upstream:
            tag = self.obs.upstream_answered(frame.id, frame.msg)
            if tag is not None and context.JSON_LOGS:
                token = REQUEST.set(tag)
                try:
                    self.sink.server_frame(frame)
                finally:
                    REQUEST.reset(token)
                return
        self.sink.server_frame(frame)

    def gateway_reply(self, req_id: Any, data: bytes) -> None:
        if self.obs.upstream and req_id in self.obs.upstream:
            self.obs.upstream_answered(req_id, jsonfast.loads(data))
        self.sink.gateway_reply(req_id, data)
