"""The upstream MCP session of a legacy client over Streamable HTTP: the `Mcp-Session-Id` and
negotiated `MCP-Protocol-Version` that later messages carry, the GET stream, and what to do
when the upstream ends the session.

* adopt: the client's `initialize` was answered; its session id is kept (a previous session
  is ended with a DELETE, as the client asked for a new one).
* the GET listener: once the client's `notifications/initialized` is accepted, the GET stream
  is opened (405: the server has none) and kept open, resumed with `Last-Event-ID` after a
  break (bounded retries, backoff, the server's `retry:`).
* resume: a request's POST stream that broke before its answer is read on with GETs carrying
  `Last-Event-ID`, when it carried event ids.
* lose and replay: a 404 for the session means the upstream ended it. The requests sent in it
  get -31002; if the client's `initialize` had succeeded, the gateway replays it (as it does for
  a restarted process) under its own id, then `notifications/initialized`, so later requests
  work; legacy requests wait for the replay (`usable`). A handshake restored from a record (a
  client session another gateway instance opened, adopted here) is replayed the same way when
  the upstream starts (`replay_restored`).

The states and their transitions are `states.SessionState`.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from wire_gateway.dump.tap import S2G
from wire_gateway.telemetry.metrics import METRICS
from wire_gateway.transport.http_client import HttpClientError, HttpStatus, SSEStream
from wire_gateway.upstream.states import SESSION_TRANSITIONS, SessionState, check_transition
from wire_gateway.wire.frame import Frame, Kind, decode
from wire_gateway.wire.headers import header_value_ok

if TYPE_CHECKING:
    from wire_gateway.upstream.http_upstream import HttpUpstream

log = logging.getLogger("wire_gateway.upstream.http")

GET_RETRIES = 5                # consecutive failed attempts to (re)open the GET stream before giving up
RESUME_ATTEMPTS = 3            # GETs with Last-Event-ID to finish a POST stream that broke
MAX_BACKOFF = 5.0
STABLE_STREAM = 1.0            # a GET stream open this long counts as a success, events or not
DELETE_TIMEOUT = 5.0
# Pretty-printed JSON from a server, made one line (the client side is line-framed): CR/LF are
# JSON whitespace and cannot occur raw inside strings. Every HTTP upstream module uses it.
NEWLINES = bytes.maketrans(b"\r\n", b"  ")


def retry_delay(retry_ms: int | None, attempt: int) -> float:
    """How long to wait before reopening a stream: the server's `retry:`, else backoff."""
    if retry_ms is not None:
        return min(retry_ms / 1000, 60.0)
    return min(MAX_BACKOFF, 0.1 * 2 ** attempt)


class UpstreamSession:
    """The legacy session of one `HttpUpstream` with its server: one at a time (a client's new
    `initialize` replaces it)."""

    def __init__(self, up: HttpUpstream) -> None:
        self.up = up
        self.state = SessionState.NONE     # changed only by _set_state (states.py has the table)
        self.sid: str | None = None        # the Mcp-Session-Id later messages carry
        self.version: str | None = None    # the protocol version the client's initialize negotiated
        self.ready = trio.Event()          # set except while the handshake is replayed
        self.ready.set()
        self._listener: trio.CancelScope | None = None

    def _set_state(self, new: SessionState) -> None:
        """The one place the state changes: a transition the table does not list is a bug."""
        self.state = check_transition(SESSION_TRANSITIONS, self.up.name, self.state, new)

    def headers(self, sid: str | None) -> dict[str, str]:
        headers = {}
        if sid is not None:
            headers["mcp-session-id"] = sid
        if self.version is not None:
            headers["mcp-protocol-version"] = self.version
        return headers

    def note_version(self, frame: Frame) -> None:
        """An answer to the client's initialize: later messages carry the version it negotiated."""
        result = frame.msg.get("result")
        version = result.get("protocolVersion") if isinstance(result, dict) else None
        if isinstance(version, str) and header_value_ok(version) and version:
            self.version = version

    async def usable(self) -> bool:
        """Wait out a replay of the handshake; False if the session is lost (nothing to send in)."""
        await self.ready.wait()
        return self.state is not SessionState.LOST

    # ---- opening and ending --------------------------------------------------------------

    def adopt(self, sid: str | None) -> None:
        """The client's initialize opened an upstream session; a previous one is ended. (During a
        replay, the replay decides the state when it ends.)"""
        old = self.sid
        self.sid = sid
        if self.state is not SessionState.REOPENING:
            self._set_state(SessionState.OPEN if sid is not None else SessionState.NONE)
        if old is not None and old != sid:
            if self._listener is not None:
                self._listener.cancel()
            if self.up.nursery is not None:
                self.up.nursery.start_soon(self.delete, old)

    def end(self) -> str | None:
        """The gateway is stopping: stop listening; returns the session to DELETE, if any."""
        if self._listener is not None:
            self._listener.cancel()
        sid, self.sid = self.sid, None
        if self.state is SessionState.OPEN:
            self._set_state(SessionState.NONE)
        return sid

    async def delete(self, sid: str) -> None:
        """DELETE a legacy upstream session, bounded; a failure only costs the server an idle session."""
        up = self.up
        with trio.move_on_after(min(up.timeout, DELETE_TIMEOUT)) as scope:
            try:
                status = await up.client.delete(self.headers(sid))
                log.info("server %s: ended an upstream session (DELETE: HTTP %d)", up.name, status)
            except HttpClientError as exc:
                log.info("server %s: could not end an upstream session: %s", up.name, exc)
        if scope.cancelled_caught:
            log.info("server %s: DELETE of an upstream session timed out", up.name)

    def lose(self, sid: str | None, why: str) -> None:
        """The upstream ended our session (404): fail what was sent in it, reopen it if we can."""
        up = self.up
        if sid is None or sid != self.sid:
            return
        self.sid = None
        up.last_exit = f"the upstream ended the MCP session ({why})"
        reopen = up.handshake.needs_replay and not up.closing and up.nursery is not None
        log.warning("server %s: %s at %s%s", up.name, up.last_exit, up.url, "; opening a new session" if reopen else "")
        suffix = "; the gateway is opening a new session: retry the request" if reopen else ""
        up.runner.fail_session(sid, f"server '{up.name}' at {up.url} ended the MCP session ({why}) before "
                                    "answering {method}" + suffix)
        if self._listener is not None:
            self._listener.cancel()
        if self.state is SessionState.REOPENING:     # a replay is under way: it decides the state
            return
        if reopen:
            assert up.nursery is not None
            self._set_state(SessionState.REOPENING)
            self.ready = trio.Event()
            up.nursery.start_soon(self._reopen)
        else:
            self._set_state(SessionState.LOST)

    def replay_restored(self) -> None:
        """The handshake was restored from a record: open our upstream session by replaying it,
        as after a lost one; legacy requests wait for it."""
        assert self.up.nursery is not None
        self._set_state(SessionState.REOPENING)
        self.ready = trio.Event()
        self.up.nursery.start_soon(self._reopen, True)

    async def _reopen(self, restored: bool = False) -> None:
        """Replay the client's initialize (under our own id) and initialized: a new upstream session.
        `restored`: the first one this upstream opens (an adopted session), not a reconnection."""
        up = self.up
        replay_id = f"wire-gateway/replay/{up.restarts + 1}"
        init, initialized = up.handshake.replay(replay_id)
        ok = False
        try:
            with trio.move_on_after(up.spec.handshake_timeout) as deadline:
                answer: Frame | None = None
                sid: str | None = None
                async with up.client.post(init, {}) as resp:
                    sid = resp.session_id
                    if resp.body is not None:
                        answer = self._find_answer(resp.body, replay_id)
                    elif resp.events is not None:
                        async for event in resp.events:
                            answer = self._find_answer(event.data, replay_id)
                            if answer is not None:
                                break
                if answer is not None and answer.kind is Kind.RESPONSE:
                    self.sid = sid
                    self.note_version(answer)
                    if initialized is not None:
                        async with up.client.post(initialized, self.headers(sid)):
                            pass
                    ok = True
                else:
                    why = answer.raw[:300].decode("utf-8", "replace") if answer else "no answer"
                    log.error("server %s: the replayed initialize was refused: %s", up.name, up.client.redact(why))
            if deadline.cancelled_caught:
                log.error("server %s: the replayed initialize got no answer within %.1fs (handshake_timeout)",
                          up.name, up.spec.handshake_timeout)
        except HttpClientError as exc:
            log.error("server %s: could not open a new session at %s: %s", up.name, up.url, exc)
        except Exception:
            log.exception("server %s: unexpected error while opening a new session", up.name)
        finally:
            if ok:
                if not restored:
                    up.restarts += 1
                    if METRICS.on:
                        METRICS.reconnects.inc((up.name,))
                self._set_state(SessionState.OPEN if self.sid is not None else SessionState.NONE)
                log.info("server %s: opened a%s upstream session (replayed the client's initialize)", up.name,
                         "n" if restored else " new")
                self.start_listener()
            else:
                self._set_state(SessionState.LOST)
            self.ready.set()

    def _find_answer(self, raw: bytes, replay_id: str) -> Frame | None:
        """The answer to the replayed initialize, if `raw` is it; a notification on the way goes
        to the client."""
        up = self.up
        decoded = decode(raw.translate(NEWLINES))
        if isinstance(decoded, Frame) and decoded.kind in (Kind.RESPONSE, Kind.ERROR) and decoded.id == replay_id:
            return decoded
        if isinstance(decoded, Frame) and decoded.kind is Kind.NOTIFICATION:
            if up.tap is not None:
                up.tap.frame(S2G, decoded)
            up.frames_out += 1
            up.sink.server_frame(decoded)
        return None

    # ---- the GET stream --------------------------------------------------------------------

    def start_listener(self) -> None:
        up = self.up
        if self._listener is not None or up.nursery is None or up.closing or self.sid is None:
            return
        scope = trio.CancelScope()
        self._listener = scope
        up.nursery.start_soon(self._listen, scope, self.sid)

    async def _listen(self, scope: trio.CancelScope, sid: str) -> None:
        up = self.up
        last_id: str | None = None
        retry_ms: int | None = None
        failures = 0
        try:
            with scope:
                while sid == self.sid and not up.closing:
                    opened = trio.current_time()
                    events = 0
                    try:
                        async with up.client.get_stream(self.headers(sid), last_id) as stream:
                            if stream is None:
                                log.info("server %s: offers no GET stream (405); server messages arrive only "
                                         "with answers", up.name)
                                return
                            up.reachable()
                            try:
                                async for event in stream:
                                    events += 1
                                    failures = 0
                                    up.deliver(event.data)
                                    up.sink.flush()
                                    await up.sink.wait_writable()
                            finally:
                                last_id = stream.last_event_id or last_id
                                retry_ms = stream.retry if stream.retry is not None else retry_ms
                        why = "the server ended it"
                    except HttpStatus as exc:
                        if exc.status == 404:
                            self.lose(sid, "HTTP 404 on the GET stream")
                            return
                        if exc.status < 500 and exc.status not in (408, 409, 425, 429):
                            log.warning("server %s: refused the GET stream: %s", up.name, exc)
                            return
                        why = str(exc)
                    except HttpClientError as exc:
                        why = str(exc)
                    except Exception:
                        log.exception("server %s: unexpected error on the GET stream; closed it", up.name)
                        return
                    if events == 0 and trio.current_time() - opened < STABLE_STREAM:
                        failures += 1
                    if failures > GET_RETRIES:
                        log.warning("server %s: gave up on the GET stream after %d failed attempts (%s); "
                                    "server messages will arrive only with answers", up.name, failures - 1, why)
                        return
                    delay = retry_delay(retry_ms, failures)
                    log.info("server %s: GET stream ended (%s); reopening in %.2fs%s", up.name, why, delay,
                             f" after event {last_id!r}" if last_id else "")
                    await trio.sleep(delay)
        finally:
            if self._listener is scope:
                self._listener = None

    # ---- resuming a request's stream -----------------------------------------------------------

    async def resume(self, req_id: Any, sid: str, last_id: str, retry_ms: int | None,
                     read: Callable[[SSEStream], Awaitable[None]]) -> None:
        """A POST stream sent in session `sid` broke before the answer to `req_id`: GET with
        Last-Event-ID, a few times, each stream handed to `read` (which delivers its events)."""
        up = self.up
        for attempt in range(RESUME_ATTEMPTS):
            await trio.sleep(retry_delay(retry_ms, attempt))
            if sid != self.sid or req_id not in up.pending:
                return
            log.info("server %s: resuming the stream of request %r after event %r", up.name, req_id, last_id)
            try:
                async with up.client.get_stream(self.headers(sid), last_id) as stream:
                    if stream is None:
                        return
                    try:
                        await read(stream)
                    finally:
                        last_id = stream.last_event_id or last_id
                        retry_ms = stream.retry if stream.retry is not None else retry_ms
            except HttpStatus as exc:
                if exc.status == 404:
                    self.lose(sid, "HTTP 404 on resuming a stream")
                    return
                if exc.status < 500 and exc.status not in (408, 409, 429):
                    return
            except HttpClientError:
                pass
            if req_id not in up.pending:
                return
