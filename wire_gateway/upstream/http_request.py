"""A client request to a remote server: one POST, in its own task, and its answer, as a JSON
body or an SSE stream, with whatever the server streams before it.

Legacy requests carry the upstream session (`http_session`) and wait while it is replayed;
modern ones carry the standard headers (`wire.headers.mcp_headers_for`, plus `Mcp-Param-*` for
tools whose schema came by in a `tools/list` answer) and no session. Cancelling a request
cancels its task, which closes its POST.

The task owes its request exactly one answer: the server's, or a gateway error naming the server
and its URL: -31002 for unreachable, TLS, timeout, 5xx, a dropped stream, an ended session;
-31003 for garbage. A 4xx whose body is a JSON-RPC error (modern errors: 400 with -32020/-32022,
404 with -32601) is delivered as that error (its id set to the request's if the server left it
null), and keeps its HTTP status (`Frame.status`), which the modern front answers with. When
the task ends with its request still owed, it answers it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from wire_gateway.telemetry import context as telemetry
from wire_gateway.transport.http_client import (
    SEVERAL_MESSAGES,
    BadBody,
    HttpClientError,
    HttpStatus,
    SSEStream,
    StreamBroken,
    Timeout,
    Unreachable,
)
from wire_gateway.upstream.http_session import NEWLINES
from wire_gateway.wire import errors, jsonfast, scan
from wire_gateway.wire.era import LEGACY, MODERN
from wire_gateway.wire.frame import Frame, Kind, decode
from wire_gateway.wire.headers import PROTOCOL_VERSION_HEADER, HeaderError, mcp_headers_for, param_headers_for

if TYPE_CHECKING:
    from wire_gateway.upstream.http_upstream import HttpUpstream

log = logging.getLogger("wire_gateway.upstream.http")


@dataclass(slots=True, eq=False)
class Inflight:
    """A request being POSTed: cancelling its scope stops its task."""

    frame: Frame
    era: str
    seq: int                                 # one-way messages queued before it
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    sid: str | None = None                   # the upstream session it was sent in (legacy)
    garbage: str | None = None               # why an event on its stream was unusable


class RequestRunner:
    """The requests of one `HttpUpstream` in flight, each POSTed by a task of its own."""

    def __init__(self, up: HttpUpstream) -> None:
        self.up = up
        self.inflight: dict[Any, Inflight] = {}
        self.modern_version: str | None = None     # of the last modern request (for one-way messages)
        self._tools: dict[str, dict[str, Any]] = {}

    def start(self, frame: Frame, era: str, seq: int) -> None:
        """POST a request (owed an answer already) in a task of the upstream's nursery."""
        assert self.up.nursery is not None
        inflight = Inflight(frame, era, seq)
        self.inflight[frame.id] = inflight
        self.up.nursery.start_soon(self._run, inflight)

    def cancel(self, req_id: Any) -> Inflight | None:
        """The client cancelled this request: stop its POST. Returns it, if it was in flight."""
        inflight = self.inflight.get(req_id)
        if inflight is not None:
            inflight.scope.cancel()
        return inflight

    def cancel_all(self) -> None:
        for inflight in list(self.inflight.values()):
            inflight.scope.cancel()

    def fail_session(self, sid: str, template: str) -> None:
        """The upstream ended session `sid`: each legacy request sent in it gets the error and its POST stops."""
        for req_id, inflight in list(self.inflight.items()):
            if inflight.era == LEGACY and inflight.sid == sid:
                self.up.answer(req_id, errors.UPSTREAM_UNAVAILABLE, template)
                inflight.scope.cancel()

    def note_tools(self, frame: Frame) -> None:
        """A `tools/list` answer: the schemas that say which arguments go in `Mcp-Param-*` headers."""
        result = frame.msg.get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
        if isinstance(tools, list):
            for tool in tools:
                if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                    self._tools[tool["name"]] = tool

    # ---- one request -------------------------------------------------------------------------

    async def _run(self, inflight: Inflight) -> None:
        up = self.up
        req_id = inflight.frame.id
        try:
            with inflight.scope:
                await up.oneway.wait_sent(inflight.seq)
                legacy = inflight.era == LEGACY and inflight.frame.method != "initialize"
                if legacy and not await up.session.usable():
                    up.answer(req_id, errors.UPSTREAM_UNAVAILABLE,
                              f"server '{up.name}' at {up.url} is without an MCP session "
                              f"({up.last_exit}); " + "{method} was not sent: reconnect (initialize) "
                              "to start a new session")
                    return
                await self._exchange(inflight)
        except HttpClientError as exc:
            self._on_failure(inflight, exc)
        except Exception:   # a bug must cost one request, not the session
            log.exception("server %s: unexpected error while sending request %r", up.name, req_id)
            up.answer(req_id, errors.UPSTREAM_UNAVAILABLE,
                      f"server '{up.name}' at {up.url}: " + "{method} failed inside the gateway (see its log)")
        finally:
            if self.inflight.get(req_id) is inflight:
                del self.inflight[req_id]
                if req_id in up.pending:     # the last guard of "exactly one answer"
                    up.answer(req_id, errors.UPSTREAM_UNAVAILABLE,
                              f"server '{up.name}' at {up.url} did not answer " + "{method}")

    async def _exchange(self, inflight: Inflight) -> None:
        up = self.up
        frame = inflight.frame
        req_id = frame.id
        headers = self._headers(inflight)
        stream: SSEStream | None = None
        broke: HttpClientError | None = None
        async with up.client.post(frame.raw, headers) as resp:
            up.reachable()
            if frame.method == "initialize" and inflight.era == LEGACY:
                up.session.adopt(resp.session_id)
            if resp.body is not None:
                bad = up.deliver(resp.body)
                up.sink.flush()
                if bad is not None and req_id in up.pending:
                    first = scan.first_value(resp.body)
                    if first is not None and first[1]:
                        raise BadBody(SEVERAL_MESSAGES, up.url)
                    raise BadBody(f"answered with a body that is not a JSON-RPC message ({bad})", up.url)
            elif resp.events is not None:
                stream = resp.events
                try:
                    await self._read_answer(stream, inflight)
                except (StreamBroken, Timeout) as exc:
                    broke = exc
            else:
                raise BadBody(f"accepted the request (HTTP {resp.status}) without answering it", up.url)
        if req_id not in up.pending:
            return
        if (stream is not None and inflight.era == LEGACY and inflight.sid is not None
                and stream.last_event_id is not None):
            await up.session.resume(req_id, inflight.sid, stream.last_event_id, stream.retry,
                                    lambda resumed: self._read_answer(resumed, inflight))
            if req_id not in up.pending:
                return
        if broke is not None:
            raise broke
        if inflight.garbage is not None:
            raise BadBody(f"sent an event that is not a JSON-RPC message ({inflight.garbage}) and no answer",
                          up.url)
        raise StreamBroken("ended its event stream without answering", up.url)

    async def _read_answer(self, stream: SSEStream, inflight: Inflight) -> None:
        """Deliver a stream's events until the request's answer has gone by (or the stream ends)."""
        up = self.up
        req_id = inflight.frame.id
        async for event in stream:
            bad = up.deliver(event.data)
            if bad is not None:
                inflight.garbage = bad
            up.sink.flush()
            if req_id not in up.pending:
                return
            await up.sink.wait_writable()

    def _headers(self, inflight: Inflight) -> dict[str, str]:
        headers = self._protocol_headers(inflight)
        if telemetry.TRACING:
            # A traced request's W3C trace context (the policy runner's upstream span), in the task's
            # context since it was started from the runner's forward (telemetry/context.py).
            trace = telemetry.OUTBOUND.get()
            if trace is not None:
                headers = {**headers, **trace}
        return headers

    def _protocol_headers(self, inflight: Inflight) -> dict[str, str]:
        frame = inflight.frame
        if inflight.era == MODERN:
            headers = mcp_headers_for(frame.msg)
            self.modern_version = headers[PROTOCOL_VERSION_HEADER]
            if frame.method == "tools/call":
                headers.update(self._param_headers(frame))
            return headers
        if frame.method == "initialize":
            return {}
        inflight.sid = self.up.session.sid
        return self.up.session.headers(inflight.sid)

    def _param_headers(self, frame: Frame) -> dict[str, str]:
        params = frame.params
        name = params.get("name") if isinstance(params, dict) else None
        tool = self._tools.get(name) if isinstance(name, str) else None
        if tool is None:
            return {}
        try:
            return param_headers_for(tool, params.get("arguments"))
        except HeaderError as exc:
            log.warning("server %s: no Mcp-Param-* headers for tool %r: %s", self.up.name, name, exc)
            return {}

    # ---- failures ----------------------------------------------------------------------------

    def _on_failure(self, inflight: Inflight, exc: HttpClientError) -> None:
        up = self.up
        req_id = inflight.frame.id
        if req_id not in up.pending:
            return
        if isinstance(exc, HttpStatus):
            if exc.status == 404 and inflight.era == LEGACY and inflight.sid is not None:
                up.session.lose(inflight.sid, "HTTP 404 for the session")
                if req_id not in up.pending:
                    return
            if 400 <= exc.status < 500 and self._deliver_error_body(exc.body, exc.status, req_id):
                return
        if isinstance(exc, Unreachable):
            up.unreachable()
        up.last_exit = str(exc)
        code = errors.UPSTREAM_BAD_FRAME if isinstance(exc, BadBody) else errors.UPSTREAM_UNAVAILABLE
        up.answer(req_id, code, f"server '{up.name}' at {up.url} {exc.phrase}; " + "{method} was not answered")

    def _deliver_error_body(self, body: bytes, status: int, req_id: Any) -> bool:
        """A 4xx carrying a JSON-RPC error: deliver it as the answer (with the request's id), and
        its status with it (the modern front relays it)."""
        decoded = decode(body.translate(NEWLINES)) if body.strip() else None
        if not isinstance(decoded, Frame) or decoded.kind is not Kind.ERROR:
            return False
        raw = decoded.raw
        if decoded.id != req_id or "id" not in decoded.msg:
            if "id" not in decoded.msg:
                return False
            raw = scan.replace_id(raw, jsonfast.dumps(req_id))
            fixed = decode(raw)
            if not isinstance(fixed, Frame):
                return False
            decoded = fixed
        decoded.status = status
        self.up.on_frame(decoded)
        self.up.sink.flush()
        return True
