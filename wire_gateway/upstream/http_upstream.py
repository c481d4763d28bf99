"""A remote upstream over Streamable HTTP, with the public surface of SupervisedServer.

Sessions hand it client frames and get server frames back through the same Sink;
they cannot tell a remote server from a supervised process. Every client request
becomes its own POST in its own task (in the nursery `run()` owns); its answer,
and anything the server streams with it, goes to the sink decoded like any frame.

Eras, decided per request:

* legacy (no `params._meta` protocol version): `initialize` is POSTed without a
  session; the upstream's `Mcp-Session-Id` from that answer and the negotiated
  `MCP-Protocol-Version` go on every later POST, GET and DELETE. Once the client's
  `notifications/initialized` is accepted, the GET stream is opened and kept open.
  A 404 for our session means the upstream ended it: the requests in flight in it
  get -31002, and if the client's `initialize` had succeeded the gateway replays it
  (as it does for a restarted process) so later requests work; `restarts` counts those.
* modern (`_meta` protocol version present): POSTed with the standard headers, no
  session. The client's `notifications/cancelled` for such a request closes that
  POST's stream, which IS the cancellation in this era; nothing is forwarded.

`HttpUpstream` is the hub: it takes the session's frames, owns the client, the nursery
and the books (`answers.Answers`: every request gets exactly one answer, the server's
or a gateway error naming the server and its URL, never a header: configured header
values are masked in anything quoted from the peer), and decodes what the server sends
back. Its three parts each keep their own state and call back into it:

* `http_request.RequestRunner`: one POST per request, its answer as JSON or SSE, its failures;
* `http_session.UpstreamSession`: the legacy upstream session (adopt, lose, replay of the
  handshake, the GET listener, resuming a broken stream with `Last-Event-ID`);
* `http_oneway.OnewayQueue`: client notifications and responses, POSTed in order.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import trio

from wire_gateway.auth.upstream_oauth import credentials_for
from wire_gateway.config import Limits, ServerSpec
from wire_gateway.dump.tap import G2S, S2G, Tap
from wire_gateway.telemetry.metrics import METRICS
from wire_gateway.telemetry.throttle import ThrottledLog
from wire_gateway.transport.http_client import StreamableHttpClient
from wire_gateway.upstream.answers import Answers, note_request
from wire_gateway.upstream.handshake import Handshake
from wire_gateway.upstream.http_oneway import OnewayQueue
from wire_gateway.upstream.http_request import RequestRunner
from wire_gateway.upstream.http_session import NEWLINES, UpstreamSession
from wire_gateway.upstream.pending import as_asked
from wire_gateway.upstream.protocol import Sink
from wire_gateway.upstream.states import REMOTE_TRANSITIONS, RemoteState, check_transition
from wire_gateway.upstream.timeouts import UNTIMED_METHODS
from wire_gateway.wire import errors
from wire_gateway.wire.era import LEGACY, MODERN, request_version
from wire_gateway.wire.frame import Batch, Frame, Invalid, Kind, decode
from wire_gateway.wire.headers import HeaderError, mcp_headers_for

log = logging.getLogger("wire_gateway.upstream.http")


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
        auth = None if spec.oauth is None else credentials_for(spec.oauth, spec.name, spec.url)
        self.client = StreamableHttpClient(spec.url, spec.headers, self.timeout,
                                           max_body_bytes=limits.max_frame_bytes, auth=auth)
        self.url = self.client.shown_url
        self.state = RemoteState.STARTING         # changed only by _set_state (states.py has the table)
        self.era: str | None = None
        self.process = None                    # no process: a remote server
        self.restarts = 0                      # upstream sessions re-established after a 404
        self.last_exit: str | None = None      # the last failure, for status pages
        self.handshake = Handshake()
        # no request timer of its own: waiting for an answer is bounded by the client's timeout
        self.pending = Answers(self.name, sink, self.handshake, self._data, log, warn_each=True)
        self.frames_in = 0
        self.frames_out = 0
        self.nursery: trio.Nursery | None = None
        self.closing = False
        self.runner = RequestRunner(self)          # the POSTs of requests
        self.session = UpstreamSession(self)       # the legacy upstream MCP session (not a client's: proxy has those)
        self.oneway = OnewayQueue(self)            # notifications and responses, in order
        # messages that are not JSON-RPC: a few logged in full, then counted
        self._junk = ThrottledLog(log, "server %s at %s: dropped %d more messages that are not JSON-RPC over the "
                                  "last %.2fs (the first messages of a burst are logged in full, then only counted)",
                                  self.name, self.url)
        self._wake = trio.Event()
        self._stopped = trio.Event()

    # ---- called by the session (client -> server) -----------------------------------------

    def request(self, frame: Frame) -> bytes | None:
        """Take a client request. Returns an error frame to answer at once, or None."""
        if self.closing or self.nursery is None:
            stopped = self.closing or self.state == RemoteState.STOPPED
            reason = "the gateway is shutting down" if stopped else "not started"
            self.pending.refused(frame.method)
            return errors.error_frame(frame.id, errors.UPSTREAM_UNAVAILABLE,
                                      f"server '{self.name}' at {self.url} is not available: {reason}",
                                      self._data(frame.method))
        refused = self.pending.refusal(frame.id, self.name, self.limits.max_in_flight)
        if refused is not None:
            self.pending.refused(frame.method)
            return refused
        era = MODERN if request_version(frame.msg) is not None else LEGACY
        if era == MODERN:
            try:
                mcp_headers_for(frame.msg)
            except HeaderError as exc:
                self.pending.refused(frame.method)
                return errors.error_frame(frame.id, errors.INVALID_PARAMS,
                                          f"Invalid params: cannot send this request to server '{self.name}' over "
                                          f"HTTP: {exc}", self._data(frame.method))
        note_request(self, frame)
        if self.tap is not None:
            self.tap.frame(G2S, frame)
        self.pending.owe(frame, None)
        self.runner.start(frame, era, self.oneway.queued)
        return None

    def notify(self, frame: Frame) -> None:
        """Take a client notification. A cancellation stops our POST of that request; in the
        modern era that is all (closing the stream is the cancellation), else it is forwarded."""
        self.frames_in += 1
        if frame.method == "notifications/initialized":
            self.handshake.on_client_notification(frame)
        elif frame.method == "notifications/cancelled":
            req_id = self.pending.cancel(frame)
            inflight = self.runner.cancel(req_id)
            if inflight is not None:
                if inflight.era == MODERN:
                    log.debug("server %s: request %r cancelled: closed its stream", self.name, req_id)
                    return
            elif self.oneway.era_of(frame) == MODERN:
                return
        self.oneway.put(frame)

    def reply(self, frame: Frame) -> None:
        """Take the client's answer to a server->client request (sampling, elicitation, roots)."""
        self.frames_in += 1
        self.oneway.put(frame)

    def flush(self) -> None:
        """Nothing to do: every message is its own POST, sent by its task."""

    flush_soon = flush

    async def wait_writable(self) -> None:
        await self.oneway.wait_writable()

    # ---- lifecycle -------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery the POSTs run in, until shutdown() is called."""
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                self._set_state(RemoteState.RUNNING)
                nursery.start_soon(self.oneway.run)
                if self.handshake.restored:     # an adopted session: open ours by replaying the record's
                    self.session.replay_restored()
                task_status.started()
                log.info("server %s: remote MCP server at %s (Streamable HTTP)", self.name, self.url)
                await self._wake.wait()
                await self._drain()
                nursery.cancel_scope.cancel()
        finally:
            self.nursery = None
            self.closing = True
            self.oneway.close()
            self._set_state(RemoteState.STOPPED)
            self._fail_all()
            self.sink.flush()
            await self.client.aclose()
            self._stopped.set()

    def _set_state(self, new: RemoteState) -> None:
        """The one place the state changes: a transition the table does not list is a bug."""
        self.state = check_transition(REMOTE_TRANSITIONS, self.name, self.state, new)

    async def shutdown(self) -> None:
        """Let requests in flight finish (up to shutdown.stdin_close_timeout), answer the rest with
        an error, end the legacy session upstream (DELETE), stop."""
        self.closing = True
        self._wake.set()
        self.oneway.close()
        await self._stopped.wait()

    async def _drain(self) -> None:
        # Open subscriptions/listen streams are not waited for: they end only when cancelled, so
        # waiting would hold every shutdown (an aggregate session's end) for the whole timeout.
        with trio.move_on_after(self.spec.stdin_close_timeout):
            while self.pending.awaiting_answers(UNTIMED_METHODS) or self.oneway.unsent:  # noqa: ASYNC110 - once, at shutdown: not worth an event per answer
                await trio.sleep(0.02)
        self._fail_all()
        self.sink.flush()
        self._junk.close(time.monotonic())
        self.runner.cancel_all()
        sid = self.session.end()
        if sid is not None:
            await self.session.delete(sid)

    def _fail_all(self) -> None:
        self.pending.fail_all(errors.UPSTREAM_UNAVAILABLE, "the gateway is shutting down; {method} to server "
                              f"'{self.name}' at {self.url} was not answered")

    # ---- for the parts: answers, reachability ------------------------------------------------

    def answer(self, req_id: Any, code: int, template: str) -> None:
        """Answer a pending request with a gateway error ("{method}" in `template` names its
        method), once: nothing if it is no longer pending."""
        if self.pending.fail_one(req_id, code, template):
            self.sink.flush()

    def _data(self, method: str | None) -> dict[str, Any]:
        data: dict[str, Any] = {"server": self.name, "url": self.url}
        if method:
            data["method"] = method
        return data

    def reachable(self) -> None:
        if self.state == RemoteState.UNREACHABLE:
            self._set_state(RemoteState.RUNNING)
            if METRICS.on:
                METRICS.reconnects.inc((self.name,))
            log.info("server %s: %s is reachable again", self.name, self.url)

    def unreachable(self) -> None:
        if self.state == RemoteState.RUNNING:
            self._set_state(RemoteState.UNREACHABLE)

    # ---- server -> client ----------------------------------------------------------------------

    def deliver(self, raw: bytes) -> str | None:
        """Decode one message (or batch) from the upstream and hand it to the sink.
        Returns why it was unusable (logged and dropped), if it was."""
        if b"\n" in raw or b"\r" in raw:
            raw = raw.translate(NEWLINES)   # pretty-printed JSON; the client side is line-framed
        decoded = decode(raw)
        if isinstance(decoded, Frame):
            self.on_frame(decoded)
            return None
        if isinstance(decoded, Batch):
            bad = None
            for item in decoded.items:
                if isinstance(item, Frame):
                    self.on_frame(item)
                else:
                    bad = item.message
                    self._drop(item)
            return bad
        self._drop(decoded)
        return decoded.message

    def on_frame(self, frame: Frame) -> None:
        if self.tap is not None:
            self.tap.frame(S2G, frame)
        kind = frame.kind
        if kind is Kind.RESPONSE or kind is Kind.ERROR:
            entry = self.pending.settle(frame)
            if entry is None:
                log.debug("server %s: answer to %r that nobody is waiting for; dropped", self.name, frame.id)
                return
            frame = as_asked(frame, entry)
            if kind is Kind.RESPONSE:
                if entry.method == "initialize":
                    self.session.note_version(frame)
                elif entry.method == "tools/list":
                    self.runner.note_tools(frame)
        self.frames_out += 1
        self.sink.server_frame(frame)

    def _drop(self, bad: Invalid) -> None:
        if self._junk.event(time.monotonic()):
            preview = self.client.redact(bad.raw[:200].decode("utf-8", "replace"))
            log.warning("server %s: dropped a message from %s that is not JSON-RPC (%s): %s",
                        self.name, self.url, bad.message, preview)
