"""A legacy-era (2025-03-26 .. 2025-11-25) Streamable HTTP session.

Opened by `initialize`, named by a random `Mcp-Session-Id`, backed by its own
supervised server process (a server may keep per-client state), ended by DELETE
or by idling past the configured timeout.

Where server messages go: an answer goes to the POST that asked; a progress
notification to the POST whose progressToken it carries; anything else (logging,
sampling/elicitation/roots requests) to the most recent POST still streaming,
since over stdio the server cannot say which request it relates to, and else to
the GET stream, buffered (bounded) while none is open.

Resumption: every SSE event carries an id `<stream>-<n>`. A POST stream whose
client vanished is kept (bounded) with the events already written; a GET with
`Last-Event-ID` replays exactly the events after that id and then follows the
stream live until its answer. A disconnect is not a cancellation in this era.

With the Redis store (shared_streams.py) stream ids start with the instance's id, every event
is also written to Redis, a broken stream's events go on being recorded as they come (so that
another instance can replay them), and a `Last-Event-ID` of a stream this instance does not
have in memory is resumed from Redis.
"""
from __future__ import annotations

import logging
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from wire_gateway.config import Config, HttpSettings, ServerSpec
from wire_gateway.dump.tap import C2G, G2C, Tap
from wire_gateway.proxy.exchange import Backlog, Exchange, Replay, Resumable, parse_event_id
from wire_gateway.proxy.http_answer import JSON, SSE_HEADERS, first_answer
from wire_gateway.proxy.route import open_upstream
from wire_gateway.transport.http_server import ClientGone, Responder
from wire_gateway.upstream.protocol import Upstream
from wire_gateway.wire import errors
from wire_gateway.wire.frame import Batch, Frame, Invalid, Kind
from wire_gateway.wire.sse import encode_event

if TYPE_CHECKING:
    from wire_gateway.proxy.shared_streams import SharedStreams

log = logging.getLogger("wire_gateway.http.legacy")

MAX_RESUMABLE = 64            # broken POST streams kept per session for Last-Event-ID
MAX_DETACHED_BYTES = 1 << 20  # a broken stream nobody resumes may not hold more than this


def new_session_id() -> str:
    return secrets.token_urlsafe(24)   # 192 bits, visible ASCII only


def progress_token(frame: Frame) -> Any:
    params = frame.params
    if isinstance(params, dict):
        meta = params.get("_meta")
        if isinstance(meta, dict):
            return meta.get("progressToken")
    return None


class LegacySession:
    tap: Tap | None = None     # frame dumps: set after construction when --dump is on

    def __init__(self, server: str, spec: ServerSpec, config: Config, settings: HttpSettings,
                 services: Any = None, upstream_factory: Callable[..., Upstream] | None = None,
                 session_id: str | None = None) -> None:
        self.id = session_id if session_id is not None else new_session_id()   # given: adopted (session_registry)
        self.server = server
        self.principal: str | None = None    # with auth: the key or token that opened it, the only one it serves
        self.settings = settings
        self.upstream = (upstream_factory(spec, config.limits, self) if upstream_factory is not None
                         else open_upstream(spec, config, self, services))
        self.backlog = Backlog()
        self.exchanges: dict[Any, Exchange] = {}
        self.progress: dict[Any, Exchange] = {}
        self.get_buffer: deque[bytes] = deque()
        self.get_replay = Replay("g", settings.stream_buffer_frames)
        self.resumable: dict[str, Resumable] = {}
        self._stream_ids = 0
        self.get_event = trio.Event()
        self.get_generation = 0          # a newer GET stream ends the older one
        self.streams_open = 0
        self.last_active = trio.current_time()
        self.closed = False
        self.draining = False
        self.client_info: Any = None
        self.shared: SharedStreams | None = None

    def share(self, shared: SharedStreams) -> None:
        """Record this session's streams in Redis too (shared_streams), before anything streams."""
        self.shared = shared
        stream_id = shared.stream_id("g")
        self.get_replay = Replay(stream_id, self.settings.stream_buffer_frames, shared.recorder(self.id, stream_id))

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("mcp-session-id", self.id)]

    def idle_for(self, now: float) -> float:
        if self.streams_open or any(ex.attached for ex in self.exchanges.values()):
            return 0.0
        return now - self.last_active

    # ---- HTTP side ----------------------------------------------------------------

    async def post(self, decoded: Frame | Batch, responder: Responder) -> None:
        self.last_active = trio.current_time()
        if self.tap is not None:
            for item in decoded.items if isinstance(decoded, Batch) else (decoded,):
                if isinstance(item, Frame):
                    self.tap.frame(C2G, item)
        if isinstance(decoded, Batch):
            await self._post_batch(decoded, responder)
        elif decoded.kind is Kind.REQUEST:
            if decoded.method == "initialize" and isinstance(decoded.params, dict):
                self.client_info = decoded.params.get("clientInfo")
            await self._request(decoded, responder)
        else:
            self._one_way(decoded)
            self.upstream.flush_soon()
            await responder.send(202, self.headers)
        self.last_active = trio.current_time()

    def _one_way(self, frame: Frame) -> None:
        if frame.kind is Kind.NOTIFICATION:
            self.upstream.notify(frame)
        else:
            self.upstream.reply(frame)

    def _open(self, frame: Frame) -> Exchange:
        ex = Exchange(frame.id, self.backlog)
        if frame.id in self.exchanges:
            duplicate = errors.error_frame(frame.id, errors.INVALID_REQUEST,
                                           f"Invalid Request: id {frame.id!r} is already in flight in this session")
            if self.tap is not None:
                self.tap.gateway(G2C, duplicate)
            ex.push(duplicate, final=True)
            return ex
        self.exchanges[frame.id] = ex
        token = progress_token(frame)
        if token is not None:
            self.progress[token] = ex
        refused = self.upstream.request(frame)
        if refused is not None:
            if self.tap is not None:
                self.tap.gateway(G2C, refused)
            ex.push(refused, final=True)
        return ex

    def _close(self, frame: Frame, ex: Exchange) -> None:
        if self.exchanges.get(frame.id) is ex:
            del self.exchanges[frame.id]
        token = progress_token(frame)
        if token is not None and self.progress.get(token) is ex:
            del self.progress[token]
        if not ex.done:
            log.info("session %s: client left before the answer to %r; it will be dropped "
                     "(legacy HTTP: a disconnect is not a cancellation)", self.id[:8], frame.id)
        ex.discard()

    async def _request(self, frame: Frame, responder: Responder) -> None:
        ex = self._open(frame)
        if len(self.exchanges) > 1:   # see ModernPool._send: coalesce only when not alone
            self.upstream.flush_soon()
        else:
            self.upstream.flush()
        entry: Resumable | None = None
        try:
            first = await first_answer(ex, responder, [JSON, *self.headers])
            if first is None:
                return
            raw, final, status = first
            if final:
                await responder.send(status, [JSON, *self.headers], raw)
                return
            entry = self._resumable(frame, ex)
            first_id = entry.replay.record(raw)
            if self.shared is not None:      # no client holds an id of a stream the other instances do not know
                await self.shared.flushed()
            await responder.start_stream(200, [*SSE_HEADERS, *self.headers])
            await responder.send_chunk(encode_event(b"", entry.replay.event_id(0)))  # primes Last-Event-ID
            await responder.send_chunk(encode_event(raw, first_id))
            await self._follow(entry, responder)
        finally:
            if entry is None or entry.finished:
                self._forget(entry)
                self._close(frame, ex)
            else:
                ex.attached = False
                log.info("session %s: client lost the stream for request %r; kept for resumption as %s",
                         self.id[:8], frame.id, entry.replay.stream_id)
                self._keep_recording(entry)

    def _resumable(self, frame: Frame, ex: Exchange) -> Resumable:
        self._stream_ids += 1
        stream_id = f"p{self._stream_ids}"
        if self.shared is None:
            replay = Replay(stream_id, self.settings.stream_buffer_frames)
        else:
            stream_id = self.shared.stream_id(stream_id)
            replay = Replay(stream_id, self.settings.stream_buffer_frames,
                            self.shared.recorder(self.id, stream_id, frame.id))
        entry = Resumable(frame, ex, replay)
        self.resumable[entry.replay.stream_id] = entry
        while len(self.resumable) > MAX_RESUMABLE:
            oldest = next(iter(self.resumable.values()))
            if oldest.ex.attached:
                break
            self._drop_resumable(oldest, "too many broken streams")
        return entry

    async def _follow(self, entry: Resumable, responder: Responder) -> None:
        """Write the stream's events as they come, each recorded before it is written."""
        final = entry.finished
        while not final:
            raw, final, _ = await entry.ex.next()
            event_id = entry.replay.record(raw, final)
            entry.finished = final
            await responder.send_chunk(encode_event(raw, event_id))
        await responder.end_stream()

    def _keep_recording(self, entry: Resumable) -> None:
        """Shared streams: a stream whose client left goes on being recorded (here and in Redis) as
        its events come, so that a resume on any instance finds them."""
        if self.shared is not None and not self.closed:
            entry.keep_recording(self.shared.spawn)

    def _forget(self, entry: Resumable | None) -> None:
        if entry is not None and self.resumable.get(entry.replay.stream_id) is entry:
            del self.resumable[entry.replay.stream_id]
            entry.stop_recording()

    def _drop_resumable(self, entry: Resumable, why: str) -> None:
        log.info("session %s: dropped broken stream %s (%s)", self.id[:8], entry.replay.stream_id, why)
        self._abandon(entry, errors.GATEWAY_OVERLOADED, f"the stream answering this request was dropped ({why})")
        self._forget(entry)
        self._close(entry.frame, entry.ex)

    def _abandon(self, entry: Resumable, code: int, message: str) -> None:
        """Shared streams: a broken stream that will get no answer here ends, in Redis too, with an
        error for its request, so that a client following it on another instance is told."""
        if self.shared is not None and not entry.ex.attached:
            entry.abandon(errors.error_frame(entry.frame.id, code, message))

    async def resume(self, last_event_id: str, responder: Responder) -> None:
        """GET with Last-Event-ID: replay what was missed on that stream, then follow it."""
        parsed = parse_event_id(last_event_id)
        if parsed is not None and parsed[0] == self.get_replay.stream_id:
            await self.get_stream(responder, after=parsed[1])
            return
        entry = self.resumable.get(parsed[0]) if parsed is not None else None
        if parsed is not None and entry is None and self.shared is not None:
            await self.shared.resume(self, parsed[0], parsed[1], responder)
            return
        if parsed is None or entry is None or entry.ex.attached:
            await responder.send(404, [JSON, *self.headers], errors.error_frame(
                None, errors.INVALID_REQUEST,
                f"cannot resume Last-Event-ID {last_event_id!r}: no such broken stream in this session "
                "(it finished, was never broken, or fell out of the bounded replay window)"))
            return
        entry.ex.attached = True
        self.streams_open += 1
        try:
            await entry.recorded()
            await responder.start_stream(200, [*SSE_HEADERS, *self.headers])
            for event_id, raw in entry.replay.after(parsed[1]):
                await responder.send_chunk(encode_event(raw, event_id))
            if entry.finished:
                await responder.end_stream()
            else:
                await self._follow(entry, responder)
        finally:
            self.streams_open -= 1
            self.last_active = trio.current_time()
            if entry.finished:
                self._forget(entry)
                self._close(entry.frame, entry.ex)
            else:
                entry.ex.attached = False
                self._keep_recording(entry)

    async def _post_batch(self, batch: Batch, responder: Responder) -> None:
        opened: list[tuple[Frame, Exchange]] = []
        answers: list[bytes] = []
        for item in batch.items:
            if isinstance(item, Invalid):
                answers.append(item.error_frame())
                if self.tap is not None:
                    self.tap.gateway(G2C, answers[-1])
            elif item.kind is Kind.REQUEST:
                opened.append((item, self._open(item)))
            else:
                self._one_way(item)
        self.upstream.flush_soon()
        try:
            for _frame, ex in opened:
                while True:
                    raw, final, _ = await ex.next()
                    if final:
                        answers.append(raw)
                        break
                    self._route_unrelated(raw)   # a batch answers as one JSON array; extras go to GET
        finally:
            for frame, ex in opened:
                self._close(frame, ex)
        if answers:
            await responder.send(200, [("content-type", "application/json"), *self.headers],
                                 b"[" + b",".join(answers) + b"]")
        else:
            await responder.send(202, self.headers)

    async def get_stream(self, responder: Responder, after: int | None = None,
                         prelude: Sequence[tuple[str, bytes]] = ()) -> None:
        """The stream for messages not tied to a request; a newer GET replaces an older one.

        `after`: resume from that event (Last-Event-ID), replaying what was written since.
        `prelude`: events (id, data) to write first: another instance's GET stream, resumed here
        from Redis (shared_streams) before this one's."""
        self.get_generation += 1
        mine = self.get_generation
        self.get_event.set()             # wake an older stream so it sees it has been replaced
        self.get_event = trio.Event()
        self.streams_open += 1
        replay = self.get_replay
        try:
            await responder.start_stream(200, [*SSE_HEADERS, *self.headers])
            for event_id, raw in prelude:
                await responder.send_chunk(encode_event(raw, event_id))
            await responder.send_chunk(encode_event(b"", replay.event_id(replay.seq if after is None else after)))
            if after is not None:
                for event_id, raw in replay.after(after):
                    await responder.send_chunk(encode_event(raw, event_id))
            while mine == self.get_generation and not self.closed and not self.draining:
                while self.get_buffer and mine == self.get_generation:
                    raw = self.get_buffer.popleft()
                    await responder.send_chunk(encode_event(raw, replay.record(raw)))
                # (mypy keeps the outer loop's narrowing of get_generation across the awaits above)
                if mine != self.get_generation or self.closed or self.draining:  # type: ignore[redundant-expr]
                    break
                await self.get_event.wait()
                if self.get_event.is_set():
                    self.get_event = trio.Event()
            await responder.end_stream()
        except ClientGone:
            pass
        finally:
            self.streams_open -= 1
            self.last_active = trio.current_time()

    def end_streams(self) -> None:
        """The gateway is draining: end the GET stream cleanly (requests may still finish)."""
        self.draining = True
        self.get_event.set()

    async def close(self) -> None:
        """End the session: stop its streams, shut its server down the spec's way."""
        if self.closed:
            return
        self.closed = True
        self.get_event.set()
        for entry in self.resumable.values():
            self._abandon(entry, errors.INSTANCE_LOST, "the gateway instance that held this request ended its copy "
                          "of the session (idle, or the instance stopped) before the answer came")
            entry.stop_recording()
        await self.upstream.shutdown()

    # ---- Sink: server -> client -----------------------------------------------------

    def server_frame(self, frame: Frame) -> None:
        if self.tap is not None:
            self.tap.frame(G2C, frame)
        kind = frame.kind
        if kind is Kind.RESPONSE or kind is Kind.ERROR:
            ex = self.exchanges.get(frame.id)
            if ex is not None:
                ex.push(frame.raw, final=True)
                self._check_detached(ex)
            else:
                log.debug("session %s: answer to %r arrived after its client left; dropped", self.id[:8], frame.id)
            return
        if kind is Kind.NOTIFICATION and frame.method == "notifications/progress":
            params = frame.params
            ex = self.progress.get(params.get("progressToken")) if isinstance(params, dict) else None
            if ex is not None:
                ex.push(frame.raw)
                self._check_detached(ex)
                return
        self._route_unrelated(frame.raw)

    def _check_detached(self, ex: Exchange) -> None:
        """A broken stream nobody resumes must not hold the upstream back (backpressure)."""
        if not ex.attached and ex.queued > MAX_DETACHED_BYTES:
            for entry in list(self.resumable.values()):
                if entry.ex is ex:
                    self._drop_resumable(entry, f"over {MAX_DETACHED_BYTES} bytes waiting, nobody resumed it")

    def gateway_reply(self, req_id: Any, data: bytes) -> None:
        ex = self.exchanges.get(req_id)
        if ex is not None:
            if self.tap is not None:
                self.tap.gateway(G2C, data)
            ex.push(data, final=True)

    def flush(self) -> None:
        """Nothing to do: handlers write as they pull."""

    async def wait_writable(self) -> None:
        await self.backlog.wait_below()

    def _route_unrelated(self, raw: bytes) -> None:
        for ex in reversed(self.exchanges.values()):
            if not ex.done and ex.attached:
                ex.push(raw)
                return
        if len(self.get_buffer) >= self.settings.stream_buffer_frames:
            self.get_buffer.popleft()
            log.warning("session %s: GET stream buffer full (%d messages, http.stream_buffer_frames); "
                        "dropped the oldest", self.id[:8], self.settings.stream_buffer_frames)
        self.get_buffer.append(raw)
        self.get_event.set()
