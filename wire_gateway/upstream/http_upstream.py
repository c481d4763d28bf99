"""A remote upstream over Streamable HTTP, with the public surface of SupervisedServer.

Sessions hand it client frames and get server frames back through the same Sink;
they cannot tell a remote server from a supervised process. Every client request
becomes its own POST in its own task (in the nursery `run()` owns); its answer,
and anything the server streams with it, goes to the sink decoded like any frame.

Eras, decided per request:

* legacy (no `params._meta` protocol version): `initialize` is POSTed without a
  session; the upstream's `Mcp-Session-Id` from that answer and the negotiated
  `MCP-Protocol-Version` go on every later POST, GET and DELETE. Once the client's
  `notifications/initialized` is accepted, the GET stream is opened (405: the server
  has none) and kept open, resumed with `Last-Event-ID` after a break (bounded
  retries, backoff, the server's `retry:`). A POST stream that breaks before the
  answer is resumed the same way when it carried event ids. A 404 for our session
  means the upstream ended it: the requests in flight in it get -31002, and if the
  client's `initialize` had succeeded the gateway replays it (as it does for a
  restarted process) so later requests work; `restarts` counts those.
* modern (`_meta` protocol version present): POSTed with the standard headers
  (`wire.headers.mcp_headers_for`, plus `Mcp-Param-*` for tools whose schema came
  by in a `tools/list` answer), no session. The client's `notifications/cancelled`
  for such a request closes that POST's stream, which IS the cancellation in this
  era; nothing is forwarded.

Client notifications and responses (to server->client requests) are POSTed one
at a time, in order, by one task; a request POST waits until the one-way messages
the client sent before it have been accepted, so `notifications/initialized` and
a cancellation cannot overtake what follows them, as they cannot on a pipe.

Every request gets exactly one answer: the server's, or a gateway error naming
the server and its URL (never a header: configured header values are masked in
anything quoted from the peer): -31002 for unreachable, TLS, timeout, 5xx, a
dropped stream, an ended session; -31003 for garbage. A 4xx whose body is a
JSON-RPC error (modern errors: 400 with -32020/-32022, 404 with -32601) is
delivered as that error (its id set to the request's if the server left it null).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import trio

from wire_gateway.config import Limits, ServerSpec
from wire_gateway.dump.tap import G2S, S2G, Tap
from wire_gateway.telemetry.throttle import ThrottledLog
from wire_gateway.transport.http_client import (
    BadBody,
    HttpClientError,
    HttpStatus,
    SSEStream,
    StreamableHttpClient,
    StreamBroken,
    Timeout,
    Unreachable,
)
from wire_gateway.upstream.handshake import Handshake
from wire_gateway.upstream.pending import PendingTable, as_asked
from wire_gateway.upstream.protocol import Sink
from wire_gateway.upstream.states import REMOTE_TRANSITIONS, RemoteState, check_transition
from wire_gateway.upstream.supervisor import note_request
from wire_gateway.wire import errors, jsonfast, scan
from wire_gateway.wire.era import LEGACY, MODERN, MODERN_VERSIONS, request_version
from wire_gateway.wire.frame import Batch, Frame, Invalid, Kind, decode
from wire_gateway.wire.headers import (
    METHOD_HEADER,
    PROTOCOL_VERSION_HEADER,
    HeaderError,
    header_value_ok,
    mcp_headers_for,
    param_headers_for,
)

log = logging.getLogger("wire_gateway.upstream.http")

MAX_ONEWAY_QUEUE = 1024        # client notifications/responses waiting to be POSTed: readers wait beyond
GET_RETRIES = 5                # consecutive failed attempts to (re)open the GET stream before giving up
RESUME_ATTEMPTS = 3            # GETs with Last-Event-ID to finish a POST stream that broke
MAX_BACKOFF = 5.0
STABLE_STREAM = 1.0            # a GET stream open this long counts as a success, events or not
DELETE_TIMEOUT = 5.0
_NEWLINES = bytes.maketrans(b"\r\n", b"  ")   # JSON whitespace; raw CR/LF cannot occur inside strings


@dataclass(slots=True, eq=False)
class _Inflight:
    frame: Frame
    era: str
    seq: int                                 # one-way messages queued before it
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    sid: str | None = None                   # the upstream session it was sent in (legacy)
    garbage: str | None = None               # why an event on its stream was unusable


class HttpUpstream:
    tap: Tap | None = None     # frame dumps: set after construction when --dump is on

    def __init__(self, spec: ServerSpec, limits: Limits, sink: Sink) -> None:
        if not spec.url:
            raise ValueError(f"server {spec.name!r} has no url")
        if spec.timeout is None:        # the config refuses `timeout: null` for a url server
            raise ValueError(f"server {spec.name!r}: a url server needs a timeout")
        self.timeout: float = spec.timeout
        self.spec = spec
        self.name = spec.name
        self.limits = limits
        self.sink = sink
        self.client = StreamableHttpClient(spec.url, spec.headers, self.timeout,
                                           max_body_bytes=limits.max_frame_bytes)
        self.url = self.client.shown_url
        self.state = RemoteState.STARTING         # changed only by _set_state (states.py has the table)
        self.era: str | None = None
        self.process = None                    # no process: a remote server
        self.restarts = 0                      # upstream sessions re-established after a 404
        self.last_exit: str | None = None      # the last failure, for status pages
        self.pending = PendingTable()
        self.handshake = Handshake()
        self.frames_in = 0
        self.frames_out = 0
        self._nursery: trio.Nursery | None = None
        self._inflight: dict[Any, _Inflight] = {}
        self._session_id: str | None = None
        self._legacy_version: str | None = None
        self._modern_version: str | None = None
        self._session_ready = trio.Event()
        self._session_ready.set()
        self._session_lost = False
        self._listener: trio.CancelScope | None = None
        self._oneway: deque[tuple[Frame, str]] = deque()
        self._oneway_wake = trio.Event()
        self._oneway_queued = 0
        self._oneway_done = 0
        self._oneway_progress = trio.Event()
        self._tools: dict[str, dict[str, Any]] = {}
        # messages that are not JSON-RPC: a few logged in full, then counted
        self._junk = ThrottledLog(log, "server %s at %s: dropped %d more messages that are not JSON-RPC over the "
                                  "last %.2fs (the first messages of a burst are logged in full, then only counted)",
                                  self.name, self.url)
        self._closing = False
        self._wake = trio.Event()
        self._stopped = trio.Event()

    # ---- called by the session (client -> server) -----------------------------------------

    def request(self, frame: Frame) -> bytes | None:
        """Take a client request. Returns an error frame to answer at once, or None."""
        if self._closing or self._nursery is None:
            stopped = self._closing or self.state == RemoteState.STOPPED
            reason = "the gateway is shutting down" if stopped else "not started"
            return errors.error_frame(frame.id, errors.UPSTREAM_UNAVAILABLE,
                                      f"server '{self.name}' at {self.url} is not available: {reason}",
                                      self._data(frame.method))
        refused = self.pending.refusal(frame.id, self.name, self.limits.max_in_flight)
        if refused is not None:
            return refused
        era = MODERN if request_version(frame.msg) is not None else LEGACY
        if era == MODERN:
            try:
                mcp_headers_for(frame.msg)
            except HeaderError as exc:
                return errors.error_frame(frame.id, errors.INVALID_PARAMS,
                                          f"Invalid params: cannot send this request to server '{self.name}' over "
                                          f"HTTP: {exc}", self._data(frame.method))
        note_request(self, frame)
        if self.tap is not None:
            self.tap.frame(G2S, frame)
        self.pending.add(frame.id, frame.method or "", None)
        inflight = _Inflight(frame, era, self._oneway_queued)
        self._inflight[frame.id] = inflight
        self._nursery.start_soon(self._run_request, inflight)
        return None

    def notify(self, frame: Frame) -> None:
        """Take a client notification. A cancellation stops our POST of that request; in the
        modern era that is all (closing the stream is the cancellation), else it is forwarded."""
        self.frames_in += 1
        if frame.method == "notifications/initialized":
            self.handshake.on_client_notification(frame)
        elif frame.method == "notifications/cancelled":
            params = frame.params
            req_id = params.get("requestId") if isinstance(params, dict) else None
            inflight = self._inflight.get(req_id)
            self.pending.pop(req_id)
            if inflight is not None:
                inflight.scope.cancel()
                if inflight.era == MODERN:
                    log.debug("server %s: request %r cancelled: closed its stream", self.name, req_id)
                    return
            elif self._era_of_oneway(frame) == MODERN:
                return
        self._queue_oneway(frame)

    def reply(self, frame: Frame) -> None:
        """Take the client's answer to a server->client request (sampling, elicitation, roots)."""
        self.frames_in += 1
        self._queue_oneway(frame)

    def flush(self) -> None:
        """Nothing to do: every message is its own POST, sent by its task."""

    flush_soon = flush

    async def wait_writable(self) -> None:
        while len(self._oneway) >= MAX_ONEWAY_QUEUE and not self._closing:
            await self._oneway_progress.wait()

    # ---- lifecycle -------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery the POSTs run in, until shutdown() is called."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._set_state(RemoteState.RUNNING)
                nursery.start_soon(self._send_oneways)
                task_status.started()
                log.info("server %s: remote MCP server at %s (Streamable HTTP)", self.name, self.url)
                await self._wake.wait()
                await self._drain()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self._closing = True
            self._wake_writers()
            self._set_state(RemoteState.STOPPED)
            self._fail_all("the gateway is shutting down; {method} to server '{name}' at {url} was not answered")
            self.sink.flush()
            await self.client.aclose()
            self._stopped.set()

    def _set_state(self, new: RemoteState) -> None:
        """The one place the state changes: a transition the table does not list is a bug."""
        self.state = check_transition(REMOTE_TRANSITIONS, self.name, self.state, new)

    async def shutdown(self) -> None:
        """Let requests in flight finish (up to shutdown.stdin_close_timeout), answer the rest with
        an error, end the legacy session upstream (DELETE), stop."""
        self._closing = True
        self._wake.set()
        self._wake_writers()
        await self._stopped.wait()

    def _wake_writers(self) -> None:
        self._oneway_progress.set()
        self._oneway_progress = trio.Event()

    async def _drain(self) -> None:
        with trio.move_on_after(self.spec.stdin_close_timeout):
            while self.pending or self._oneway_done < self._oneway_queued:  # noqa: ASYNC110 - once, at shutdown: not worth an event per answer
                await trio.sleep(0.02)
        self._fail_all("the gateway is shutting down; {method} to server '{name}' at {url} was not answered")
        self.sink.flush()
        self._junk.close(time.monotonic())
        for inflight in list(self._inflight.values()):
            inflight.scope.cancel()
        if self._listener is not None:
            self._listener.cancel()
        sid, self._session_id = self._session_id, None
        if sid is not None:
            await self._delete_session(sid)

    # ---- requests ----------------------------------------------------------------------------

    async def _run_request(self, inflight: _Inflight) -> None:
        req_id = inflight.frame.id
        try:
            with inflight.scope:
                await self._wait_oneways(inflight.seq)
                if inflight.era == LEGACY and inflight.frame.method != "initialize":
                    await self._session_ready.wait()
                    if self._session_lost:
                        self._answer(req_id, errors.UPSTREAM_UNAVAILABLE,
                                     f"server '{self.name}' at {self.url} is without an MCP session "
                                     f"({self.last_exit}); " + "{method} was not sent: reconnect (initialize) "
                                     "to start a new session")
                        return
                await self._exchange(inflight)
        except HttpClientError as exc:
            self._on_failure(inflight, exc)
        except Exception:   # a bug must cost one request, not the session
            log.exception("server %s: unexpected error while sending request %r", self.name, req_id)
            self._answer(req_id, errors.UPSTREAM_UNAVAILABLE,
                         f"server '{self.name}' at {self.url}: " + "{method} failed inside the gateway "
                         "(see its log)")
        finally:
            if self._inflight.get(req_id) is inflight:
                del self._inflight[req_id]
                if req_id in self.pending:     # the last guard of "exactly one answer"
                    self._answer(req_id, errors.UPSTREAM_UNAVAILABLE,
                                 f"server '{self.name}' at {self.url} did not answer " + "{method}")

    async def _exchange(self, inflight: _Inflight) -> None:
        frame = inflight.frame
        req_id = frame.id
        headers = self._request_headers(inflight)
        stream: SSEStream | None = None
        broke: HttpClientError | None = None
        async with self.client.post(frame.raw, headers) as resp:
            self._reachable()
            if frame.method == "initialize" and inflight.era == LEGACY:
                self._adopt_session(resp.session_id)
            if resp.body is not None:
                bad = self._deliver(resp.body)
                self.sink.flush()
                if bad is not None and req_id in self.pending:
                    raise BadBody(f"answered with a body that is not a JSON-RPC message ({bad})", self.url)
            elif resp.events is not None:
                stream = resp.events
                try:
                    await self._read_answer(stream, inflight)
                except (StreamBroken, Timeout) as exc:
                    broke = exc
            else:
                raise BadBody(f"accepted the request (HTTP {resp.status}) without answering it", self.url)
        if req_id not in self.pending:
            return
        if (stream is not None and inflight.era == LEGACY and inflight.sid is not None
                and stream.last_event_id is not None):
            await self._resume(inflight, stream.last_event_id, stream.retry)
            if req_id not in self.pending:
                return
        if broke is not None:
            raise broke
        if inflight.garbage is not None:
            raise BadBody(f"sent an event that is not a JSON-RPC message ({inflight.garbage}) and no answer",
                          self.url)
        raise StreamBroken("ended its event stream without answering", self.url)

    async def _read_answer(self, stream: SSEStream, inflight: _Inflight) -> None:
        """Deliver a stream's events until the request's answer has gone by (or the stream ends)."""
        req_id = inflight.frame.id
        async for event in stream:
            bad = self._deliver(event.data)
            if bad is not None:
                inflight.garbage = bad
            self.sink.flush()
            if req_id not in self.pending:
                return
            await self.sink.wait_writable()

    async def _resume(self, inflight: _Inflight, last_id: str, retry_ms: int | None) -> None:
        """A legacy POST stream broke before the answer: GET with Last-Event-ID, a few times."""
        req_id = inflight.frame.id
        for attempt in range(RESUME_ATTEMPTS):
            await trio.sleep(self._delay(retry_ms, attempt))
            if inflight.sid != self._session_id or req_id not in self.pending:
                return
            log.info("server %s: resuming the stream of request %r after event %r", self.name, req_id, last_id)
            try:
                async with self.client.get_stream(self._legacy_headers(inflight.sid), last_id) as stream:
                    if stream is None:
                        return
                    try:
                        await self._read_answer(stream, inflight)
                    finally:
                        last_id = stream.last_event_id or last_id
                        retry_ms = stream.retry if stream.retry is not None else retry_ms
            except HttpStatus as exc:
                if exc.status == 404:
                    self._lose_session(inflight.sid, "HTTP 404 on resuming a stream")
                    return
                if exc.status < 500 and exc.status not in (408, 409, 429):
                    return
            except HttpClientError:
                pass
            if req_id not in self.pending:
                return

    def _adopt_session(self, sid: str | None) -> None:
        """The client's initialize opened an upstream session; a previous one is ended."""
        old = self._session_id
        self._session_id = sid
        self._session_lost = False
        if old is not None and old != sid:
            if self._listener is not None:
                self._listener.cancel()
            if self._nursery is not None:
                self._nursery.start_soon(self._delete_session, old)

    async def _delete_session(self, sid: str) -> None:
        """DELETE a legacy upstream session, bounded; a failure only costs the server an idle session."""
        with trio.move_on_after(min(self.timeout, DELETE_TIMEOUT)) as scope:
            try:
                status = await self.client.delete(self._legacy_headers(sid))
                log.info("server %s: ended an upstream session (DELETE: HTTP %d)", self.name, status)
            except HttpClientError as exc:
                log.info("server %s: could not end an upstream session: %s", self.name, exc)
        if scope.cancelled_caught:
            log.info("server %s: DELETE of an upstream session timed out", self.name)

    def _request_headers(self, inflight: _Inflight) -> dict[str, str]:
        frame = inflight.frame
        if inflight.era == MODERN:
            headers = mcp_headers_for(frame.msg)
            self._modern_version = headers[PROTOCOL_VERSION_HEADER]
            if frame.method == "tools/call":
                headers.update(self._param_headers(frame))
            return headers
        if frame.method == "initialize":
            return {}
        inflight.sid = self._session_id
        return self._legacy_headers(inflight.sid)

    def _param_headers(self, frame: Frame) -> dict[str, str]:
        params = frame.params
        name = params.get("name") if isinstance(params, dict) else None
        tool = self._tools.get(name) if isinstance(name, str) else None
        if tool is None:
            return {}
        try:
            return param_headers_for(tool, params.get("arguments"))
        except HeaderError as exc:
            log.warning("server %s: no Mcp-Param-* headers for tool %r: %s", self.name, name, exc)
            return {}

    def _legacy_headers(self, sid: str | None) -> dict[str, str]:
        headers = {}
        if sid is not None:
            headers["mcp-session-id"] = sid
        if self._legacy_version is not None:
            headers["mcp-protocol-version"] = self._legacy_version
        return headers

    # ---- failures ----------------------------------------------------------------------------

    def _on_failure(self, inflight: _Inflight, exc: HttpClientError) -> None:
        req_id = inflight.frame.id
        if req_id not in self.pending:
            return
        if isinstance(exc, HttpStatus):
            if exc.status == 404 and inflight.era == LEGACY and inflight.sid is not None:
                self._lose_session(inflight.sid, "HTTP 404 for the session")
                if req_id not in self.pending:
                    return
            if 400 <= exc.status < 500 and self._deliver_error_body(exc.body, req_id):
                return
        if isinstance(exc, Unreachable) and self.state == RemoteState.RUNNING:
            self._set_state(RemoteState.UNREACHABLE)
        self.last_exit = str(exc)
        code = errors.UPSTREAM_BAD_FRAME if isinstance(exc, BadBody) else errors.UPSTREAM_UNAVAILABLE
        self._answer(req_id, code, f"server '{self.name}' at {self.url} {exc.phrase}; " + "{method} was not answered")

    def _deliver_error_body(self, body: bytes, req_id: Any) -> bool:
        """A 4xx carrying a JSON-RPC error: deliver it as the answer (with the request's id)."""
        decoded = decode(body.translate(_NEWLINES)) if body.strip() else None
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
        self._on_frame(decoded)
        self.sink.flush()
        return True

    def _lose_session(self, sid: str | None, why: str) -> None:
        """The upstream ended our session (404): fail what was sent in it, reopen it if we can."""
        if sid is None or sid != self._session_id:
            return
        self._session_id = None
        self.last_exit = f"the upstream ended the MCP session ({why})"
        reopen = self.handshake.needs_replay and not self._closing and self._nursery is not None
        log.warning("server %s: %s at %s%s", self.name, self.last_exit, self.url,
                    "; opening a new session" if reopen else "")
        suffix = "; the gateway is opening a new session: retry the request" if reopen else ""
        for req_id, inflight in list(self._inflight.items()):
            if inflight.era == LEGACY and inflight.sid == sid:
                self._answer(req_id, errors.UPSTREAM_UNAVAILABLE,
                             f"server '{self.name}' at {self.url} ended the MCP session ({why}) before answering "
                             "{method}" + suffix)
                inflight.scope.cancel()
        if self._listener is not None:
            self._listener.cancel()
        if reopen:
            assert self._nursery is not None
            self._session_ready = trio.Event()
            self._nursery.start_soon(self._reopen)
        else:
            self._session_lost = True

    async def _reopen(self) -> None:
        """Replay the client's initialize (under our own id) and initialized: a new upstream session."""
        replay_id = f"wire-gateway/replay/{self.restarts + 1}"
        init, initialized = self.handshake.replay(replay_id)
        ok = False
        try:
            with trio.move_on_after(self.spec.handshake_timeout) as deadline:
                answer: Frame | None = None
                sid: str | None = None
                async with self.client.post(init, {}) as resp:
                    sid = resp.session_id
                    if resp.body is not None:
                        answer = self._find_answer(resp.body, replay_id)
                    elif resp.events is not None:
                        async for event in resp.events:
                            answer = self._find_answer(event.data, replay_id)
                            if answer is not None:
                                break
                if answer is not None and answer.kind is Kind.RESPONSE:
                    self._session_id = sid
                    self._note_version(answer)
                    if initialized is not None:
                        async with self.client.post(initialized, self._legacy_headers(sid)):
                            pass
                    ok = True
                else:
                    why = answer.raw[:300].decode("utf-8", "replace") if answer else "no answer"
                    log.error("server %s: the replayed initialize was refused: %s", self.name, self.client.redact(why))
            if deadline.cancelled_caught:
                log.error("server %s: the replayed initialize got no answer within %.1fs (handshake_timeout)",
                          self.name, self.spec.handshake_timeout)
        except HttpClientError as exc:
            log.error("server %s: could not open a new session at %s: %s", self.name, self.url, exc)
        except Exception:
            log.exception("server %s: unexpected error while opening a new session", self.name)
        finally:
            if ok:
                self.restarts += 1
                self._session_lost = False
                log.info("server %s: opened a new upstream session (replayed the client's initialize)", self.name)
                self._start_listener()
            else:
                self._session_lost = True
            self._session_ready.set()

    def _find_answer(self, raw: bytes, replay_id: str) -> Frame | None:
        decoded = decode(raw.translate(_NEWLINES))
        if isinstance(decoded, Frame) and decoded.kind in (Kind.RESPONSE, Kind.ERROR) and decoded.id == replay_id:
            return decoded
        if isinstance(decoded, Frame) and decoded.kind is Kind.NOTIFICATION:
            if self.tap is not None:
                self.tap.frame(S2G, decoded)
            self.frames_out += 1
            self.sink.server_frame(decoded)
        return None

    def _answer(self, req_id: Any, code: int, template: str) -> None:
        """Answer a pending request with a gateway error (once: nothing if it is no longer pending)."""
        entry = self.pending.pop(req_id)
        if entry is not None:
            self._reply_error(req_id, entry.method, code, template)

    def _fail_all(self, template: str) -> None:
        for req_id, entry in self.pending.take_all():
            self._reply_error(req_id, entry.method, errors.UPSTREAM_UNAVAILABLE, template)

    def _reply_error(self, req_id: Any, method: str | None, code: int, template: str) -> None:
        message = (template.replace("{method}", method or "the request")
                   .replace("{name}", self.name).replace("{url}", self.url))
        log.warning("server %s: request %r: %s", self.name, req_id, message)
        self.sink.gateway_reply(req_id, errors.error_frame(req_id, code, message, self._data(method)))
        self.sink.flush()

    def _data(self, method: str | None) -> dict[str, Any]:
        data: dict[str, Any] = {"server": self.name, "url": self.url}
        if method:
            data["method"] = method
        return data

    def _reachable(self) -> None:
        if self.state == RemoteState.UNREACHABLE:
            self._set_state(RemoteState.RUNNING)
            log.info("server %s: %s is reachable again", self.name, self.url)

    # ---- server -> client ----------------------------------------------------------------------

    def _deliver(self, raw: bytes) -> str | None:
        """Decode one message (or batch) from the upstream and hand it to the sink.
        Returns why it was unusable (logged and dropped), if it was."""
        if b"\n" in raw or b"\r" in raw:
            raw = raw.translate(_NEWLINES)   # pretty-printed JSON; the client side is line-framed
        decoded = decode(raw)
        if isinstance(decoded, Frame):
            self._on_frame(decoded)
            return None
        if isinstance(decoded, Batch):
            bad = None
            for item in decoded.items:
                if isinstance(item, Frame):
                    self._on_frame(item)
                else:
                    bad = item.message
                    self._drop(item)
            return bad
        self._drop(decoded)
        return decoded.message

    def _on_frame(self, frame: Frame) -> None:
        if self.tap is not None:
            self.tap.frame(S2G, frame)
        kind = frame.kind
        if kind is Kind.RESPONSE or kind is Kind.ERROR:
            entry = self.pending.pop(frame.id)
            if entry is None:
                log.debug("server %s: answer to %r that nobody is waiting for; dropped", self.name, frame.id)
                return
            frame = as_asked(frame, entry)
            self.handshake.on_server_reply(frame)
            if kind is Kind.RESPONSE:
                if entry.method == "initialize":
                    self._note_version(frame)
                elif entry.method == "tools/list":
                    self._note_tools(frame)
        self.frames_out += 1
        self.sink.server_frame(frame)

    def _drop(self, bad: Invalid) -> None:
        if self._junk.event(time.monotonic()):
            preview = self.client.redact(bad.raw[:200].decode("utf-8", "replace"))
            log.warning("server %s: dropped a message from %s that is not JSON-RPC (%s): %s",
                        self.name, self.url, bad.message, preview)

    def _note_version(self, frame: Frame) -> None:
        result = frame.msg.get("result")
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        if isinstance(version, str) and header_value_ok(version) and version:
            self._legacy_version = version

    def _note_tools(self, frame: Frame) -> None:
        result = frame.msg.get("result")
        tools = result.get("tools") if isinstance(result, dict) else None
        if isinstance(tools, list):
            for tool in tools:
                if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                    self._tools[tool["name"]] = tool

    # ---- the GET stream (legacy) -----------------------------------------------------------------

    def _start_listener(self) -> None:
        if self._listener is not None or self._nursery is None or self._closing or self._session_id is None:
            return
        scope = trio.CancelScope()
        self._listener = scope
        self._nursery.start_soon(self._listen, scope, self._session_id)

    async def _listen(self, scope: trio.CancelScope, sid: str) -> None:
        last_id: str | None = None
        retry_ms: int | None = None
        failures = 0
        try:
            with scope:
                while sid == self._session_id and not self._closing:
                    opened = trio.current_time()
                    events = 0
                    try:
                        async with self.client.get_stream(self._legacy_headers(sid), last_id) as stream:
                            if stream is None:
                                log.info("server %s: offers no GET stream (405); server messages arrive only "
                                         "with answers", self.name)
                                return
                            self._reachable()
                            try:
                                async for event in stream:
                                    events += 1
                                    failures = 0
                                    self._deliver(event.data)
                                    self.sink.flush()
                                    await self.sink.wait_writable()
                            finally:
                                last_id = stream.last_event_id or last_id
                                retry_ms = stream.retry if stream.retry is not None else retry_ms
                        why = "the server ended it"
                    except HttpStatus as exc:
                        if exc.status == 404:
                            self._lose_session(sid, "HTTP 404 on the GET stream")
                            return
                        if exc.status < 500 and exc.status not in (408, 409, 425, 429):
                            log.warning("server %s: refused the GET stream: %s", self.name, exc)
                            return
                        why = str(exc)
                    except HttpClientError as exc:
                        why = str(exc)
                    except Exception:
                        log.exception("server %s: unexpected error on the GET stream; closed it", self.name)
                        return
                    if events == 0 and trio.current_time() - opened < STABLE_STREAM:
                        failures += 1
                    if failures > GET_RETRIES:
                        log.warning("server %s: gave up on the GET stream after %d failed attempts (%s); "
                                    "server messages will arrive only with answers", self.name, failures - 1, why)
                        return
                    delay = self._delay(retry_ms, failures)
                    log.info("server %s: GET stream ended (%s); reopening in %.2fs%s", self.name, why, delay,
                             f" after event {last_id!r}" if last_id else "")
                    await trio.sleep(delay)
        finally:
            if self._listener is scope:
                self._listener = None

    @staticmethod
    def _delay(retry_ms: int | None, attempt: int) -> float:
        if retry_ms is not None:
            return min(retry_ms / 1000, 60.0)
        return min(MAX_BACKOFF, 0.1 * 2 ** attempt)

    # ---- one-way messages (client notifications and responses) ---------------------------------

    def _era_of_oneway(self, frame: Frame) -> str:
        if request_version(frame.msg) is not None:
            return MODERN
        if self._session_id is None and self._legacy_version is None and self.era == MODERN:
            return MODERN
        return LEGACY

    def _queue_oneway(self, frame: Frame) -> None:
        if self._closing and self._nursery is None:
            log.info("server %s: dropped a %s sent after shutdown", self.name, frame.method or "response")
            return
        if self.tap is not None:
            self.tap.frame(G2S, frame)
        self._oneway.append((frame, self._era_of_oneway(frame)))
        self._oneway_queued += 1
        self._oneway_wake.set()

    async def _wait_oneways(self, seq: int) -> None:
        while self._oneway_done < seq:
            await self._oneway_progress.wait()

    async def _send_oneways(self) -> None:
        while True:
            while not self._oneway:
                await self._oneway_wake.wait()
                self._oneway_wake = trio.Event()
            frame, era = self._oneway.popleft()
            try:
                await self._post_oneway(frame, era)
            finally:
                self._oneway_done += 1
                self._wake_writers()

    async def _post_oneway(self, frame: Frame, era: str) -> None:
        what = frame.method or f"the answer to request {frame.id!r}"
        sid: str | None = None
        if era == MODERN:
            version = request_version(frame.msg) or self._modern_version or MODERN_VERSIONS[0]
            headers = {PROTOCOL_VERSION_HEADER: version}
            if frame.method and header_value_ok(frame.method):
                headers[METHOD_HEADER] = frame.method
        else:
            await self._session_ready.wait()
            sid = self._session_id
            headers = self._legacy_headers(sid)
        try:
            async with self.client.post(frame.raw, headers) as resp:
                self._reachable()
                if resp.body is not None:
                    self._deliver(resp.body)
                elif resp.events is not None:
                    async for event in resp.events:
                        self._deliver(event.data)
                self.sink.flush()
        except HttpStatus as exc:
            if exc.status == 404 and sid is not None:
                self._lose_session(sid, f"HTTP 404 for {what}")
            else:
                log.warning("server %s: %s was not accepted: %s", self.name, what, exc)
            return
        except HttpClientError as exc:
            log.warning("server %s: %s was not delivered: the server at %s %s", self.name, what, self.url, exc)
            return
        except Exception:
            log.exception("server %s: unexpected error while sending %s", self.name, what)
            return
        if frame.method == "notifications/initialized" and era == LEGACY:
            self._start_listener()
