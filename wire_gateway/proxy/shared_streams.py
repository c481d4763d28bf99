"""Resumable event streams that any gateway instance can replay: the events in Redis.

A legacy session's SSE events carry ids a client may resume with (`Last-Event-ID`): those of its
GET stream and of POST streams (a request answered by a stream). In memory (legacy_http), a
stream can be resumed only on the instance that wrote it. With `store.backend: "redis"` each
event is also appended to a Redis stream, one per SSE stream, so that a GET with `Last-Event-ID`
reaching another instance (the balancer has no stickiness, or the writer died) replays what came
after that id, and follows the rest.

Ids. A stream's id starts with its writer's instance id (`<instance>.g`, `<instance>.p7`; the
event id is `<stream>-<n>`), so ids minted by different instances never collide, a restarted
instance (a new instance id) never reuses one, and a reader knows whose stream it is. The Redis
stream is `events:` + sha256(session id) + `:` + the stream id; event n is its entry `1-n`
(fields: `d` the message, `i` the JSON-RPC id the stream answers, `f` on the final answer).

Why Redis streams: an entry id is the event's sequence number, so "everything after n" is a
range read; `XADD ... MAXLEN ~ N` bounds a stream in the same command (N =
`http.stream_buffer_frames`, the in-memory window; `~` trims whole nodes, so a stream keeps at
least N events); `XREAD BLOCK` lets a reader follow a stream another instance is still writing;
an explicit entry id refuses a second writer of the same event. A list (`RPUSH` + `LTRIM`)
would need the sequence number in each value and a scan to find n.

Cost. Recording is synchronous and makes no round trip: events queue, and one task writes
what gathered (for 2 ms, or less when a stream waits for it) in one round trip: one script
(`RedisStore.append_events`: the XADDs, one PEXPIRE per stream touched), since a pipeline of
XADDs costs this process several times the CPU (a reply to parse per entry). Under load a round
trip carries tens to hundreds of events (docs/scaling.md has the figures). One wait on the hot
path, once per POST stream: its first event is written before the stream's first byte goes
out, so a client never holds an id of a stream no other instance knows (`flushed`). The streams
expire with the session record's TTL after their last write.

Liveness. Each instance keeps `instance:<id>` (a TTL of a few heartbeats) while it runs and
deletes it when it stops. A reader following a stream whose final answer has not come checks
the writer's key; once it is gone (twice, a heartbeat apart: Redis may have restarted) the
request's client gets a JSON-RPC error event saying the instance that held the request died,
written into the stream too, so a second resume gets the same answer. Never a silent wait.

Redis away: events are not written (counted, and logged throttled); the instance's own streams
resume on it as without Redis; a resume that needs Redis gets 503.
"""
from __future__ import annotations

import logging
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import trio

from wire_gateway.proxy.http_answer import JSON, SSE_HEADERS
from wire_gateway.proxy.session_registry import digest
from wire_gateway.store.redis import RedisStore, StoreUnreachable
from wire_gateway.telemetry.throttle import ThrottledLog
from wire_gateway.transport.http_server import Responder
from wire_gateway.wire import errors, jsonfast
from wire_gateway.wire.sse import encode_comment, encode_event

if TYPE_CHECKING:
    from wire_gateway.proxy.legacy_http import LegacySession

log = logging.getLogger("wire_gateway.http.streams")

EVENTS = "events:"
INSTANCE = "instance:"
HEARTBEAT = 1.0            # seconds between writes of this instance's key
ALIVE_TTL = 3.0            # its TTL: three missed heartbeats and it is gone
MAX_BATCH = 512            # entries per pipelined write
MAX_QUEUED = 50_000        # entries waiting for Redis before new ones are not recorded there
FOLLOW_BLOCK = 0.4         # seconds per XREAD BLOCK (under the store's socket timeout)
GATHER = 0.002             # seconds the writer lets events gather before a round trip, unless one is awaited


class Event:
    __slots__ = ("seq", "raw", "final", "req_id")

    def __init__(self, seq: int, raw: bytes, final: bool, req_id: bytes | None) -> None:
        self.seq = seq
        self.raw = raw
        self.final = final
        self.req_id = req_id


def _event(entry_id: bytes, fields: dict[bytes, bytes]) -> Event | None:
    major, _, minor = entry_id.partition(b"-")
    if major != b"1" or not minor.isdigit() or b"d" not in fields:
        return None
    return Event(int(minor), fields[b"d"], b"f" in fields, fields.get(b"i"))


class SharedStreams:
    """This instance's writer of resumable events to Redis, and the reader of anyone's."""

    def __init__(self, store: RedisStore, maxlen: int, ttl: float) -> None:
        self.store = store
        self.instance = store.instance
        self.maxlen = maxlen
        self.ttl = ttl
        self._queue: list[tuple[str, str, dict[str, bytes]]] = []
        self._queued = 0          # entries queued since start
        self._written = 0         # of those, entries whose write is over (done or failed)
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._awaited = 0         # tasks in `flushed`: the writer does not let events gather then
        self._nursery: trio.Nursery | None = None
        self.events = 0           # entries written to Redis
        self.batches = 0          # round trips that wrote them
        self.lost = 0             # entries not written (Redis away, or too many waiting)
        self._lost_log = ThrottledLog(log, "shared streams: %d more events could not be written to Redis over "
                                      "the last %.2fs")

    def stream_id(self, local: str) -> str:
        return f"{self.instance}.{local}"

    @staticmethod
    def key(session_id: str, stream_id: str) -> str:
        return f"{EVENTS}{digest(session_id)}:{stream_id}"

    # ---- writing: this instance's streams ---------------------------------------------------------

    def recorder(self, session_id: str, stream_id: str, req_id: Any = None) -> Recorder:
        """What a stream's Replay calls with each event it records (legacy_http)."""
        return Recorder(self, self.key(session_id, stream_id),
                        jsonfast.dumps(req_id) if req_id is not None else None)

    def append(self, key: str, seq: int, fields: dict[str, bytes]) -> None:
        if len(self._queue) >= MAX_QUEUED:
            self._lose(1, "too many events waiting for Redis")
            return
        self._queue.append((key, f"1-{seq}", fields))
        self._queued += 1
        self._wake.set()

    async def flushed(self) -> None:
        """Return once every event recorded so far has been written (or could not be)."""
        target = self._queued
        if self._written >= target:
            return
        self._awaited += 1
        self._wake.set()
        try:
            while self._written < target:
                await self._progress.wait()
        finally:
            self._awaited -= 1

    def spawn(self, fn: Any, *args: Any) -> None:
        """Run a background task for a stream (recording a broken stream's events: exchange.py);
        not once the instance is stopping."""
        if self._nursery is not None:
            try:
                self._nursery.start_soon(fn, *args)
            except RuntimeError:        # the nursery is closing: the instance is stopping
                pass

    def _lose(self, n: int, why: str) -> None:
        self.lost += n
        if self._lost_log.event(trio.current_time()):
            log.warning("shared streams: %d events not written to Redis (%s); those streams resume only on "
                        "this instance", n, why)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Write queued events, and keep this instance's liveness key, until cancelled (which
        deletes the key: a reader following one of our streams learns at once that no more comes)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._heartbeat)
                task_status.started()
                await self._write()
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                try:
                    await self.store.delete_shared(INSTANCE + self.instance)
                except StoreUnreachable:
                    pass

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            if not self._awaited:       # a round trip costs this process far more than an event: batch
                with trio.move_on_after(GATHER):
                    while not self._awaited:
                        self._wake = trio.Event()
                        await self._wake.wait()
            self._wake = trio.Event()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                try:
                    await self.store.append_events(batch, self.maxlen, self.ttl)
                    self.events += len(batch)
                    self.batches += 1
                except StoreUnreachable:
                    self._lose(len(batch), "Redis unreachable")
                finally:
                    self._written += len(batch)
                    self._progress.set()
                    self._progress = trio.Event()

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self.store.keep_alive(INSTANCE + self.instance, ALIVE_TTL)
            except StoreUnreachable:
                pass
            await trio.sleep(HEARTBEAT)

    async def alive(self, instance: str) -> bool:
        """Is the instance that wrote a stream still running? Asked twice, a heartbeat apart,
        before saying no: a Redis that restarted has lost every key until the next heartbeat."""
        if instance == self.instance:
            return True
        for attempt in range(2):
            if attempt:
                await trio.sleep(HEARTBEAT * 1.5)
            if await self.store.get_shared(INSTANCE + instance) is not None:
                return True
        return False

    # ---- reading: a stream this instance does not have in memory ----------------------------------

    async def resume(self, session: LegacySession, stream_id: str, after: int, responder: Responder) -> None:
        """GET with Last-Event-ID of a stream not in this instance's memory: replay from Redis the
        events after `after`, then follow the stream (a POST stream: until its answer, or the error
        saying its instance died; a GET stream: this instance's own GET stream, live)."""
        key = self.key(session.id, stream_id)
        if stream_id.startswith(self.instance + "."):
            await self.flushed()         # ours, finished and forgotten here: its last events may be on the way
        try:
            events = [e for e in (_event(i, f) for i, f in await self.store.read_events(key)) if e is not None]
        except StoreUnreachable:
            await responder.send(503, [JSON, ("retry-after", "1"), *session.headers], errors.error_frame(
                None, errors.STORE_UNREACHABLE, f"cannot resume stream {stream_id!r} now: its events are kept in "
                "Redis, which is unreachable; try again"))
            return
        missed = [e for e in events if e.seq > after]
        owner, _, local = stream_id.partition(".")
        # A GET stream may have had no event at all (nothing recorded); a POST stream's first event
        # is in Redis before its client learns the stream's id.
        if (not events and local != "g") or (missed and missed[0].seq != after + 1) or \
                any(b.seq != a.seq + 1 for a, b in pairwise(missed)):
            await responder.send(404, [JSON, *session.headers], errors.error_frame(
                None, errors.INVALID_REQUEST,
                f"cannot resume Last-Event-ID {stream_id}-{after}: no such stream in this session, or the "
                "events after it fell out of the bounded replay window"))
            return
        log.info("session %s: resuming stream %s from Redis after event %d (%d events to replay)",
                 session.id[:8], stream_id, after, len(missed))
        if local == "g":
            await session.get_stream(responder, prelude=[(f"{stream_id}-{e.seq}", e.raw) for e in missed])
            return
        req_id = next((e.req_id for e in reversed(events) if e.req_id is not None), None)
        last = max(after, events[-1].seq)
        session.streams_open += 1
        try:
            await responder.start_stream(200, [*SSE_HEADERS, *session.headers])
            for e in missed:
                await responder.send_chunk(encode_event(e.raw, f"{stream_id}-{e.seq}"))
            if any(e.final for e in events):
                pass
            elif owner == self.instance:     # not in our memory and unfinished: dropped (legacy_http's limits)
                await self._give_up(key, stream_id, last, req_id, responder, errors.GATEWAY_OVERLOADED,
                                    "this stream was dropped before its answer (too many broken streams in the "
                                    "session, or too much waiting for a client that did not come back)")
            else:
                await self._follow(session, key, stream_id, owner, last, req_id, responder)
            await responder.end_stream()
        finally:
            session.streams_open -= 1
            session.last_active = trio.current_time()

    async def _follow(self, session: LegacySession, key: str, stream_id: str, owner: str, last: int,
                      req_id: bytes | None, responder: Responder) -> None:
        """The rest of a POST stream another instance is writing, as it writes it."""
        checked = wrote = trio.current_time()
        while True:
            try:
                got = await self.store.read_events(key, f"1-{last}", block=FOLLOW_BLOCK)
            except StoreUnreachable:
                await self._give_up(None, stream_id, last, req_id, responder, errors.STORE_UNREACHABLE,
                                    "the rest of this stream is in Redis, which is unreachable; the request's "
                                    "answer may still come: resume again with the last event id")
                return
            for e in (_event(i, f) for i, f in got):
                if e is None:
                    continue
                if e.seq != last + 1:
                    await self._give_up(None, stream_id, last, req_id, responder, errors.STORE_UNREACHABLE,
                                        "events of this stream were lost while Redis was unreachable")
                    return
                last = e.seq
                await responder.send_chunk(encode_event(e.raw, f"{stream_id}-{e.seq}"))
                wrote = trio.current_time()
                if e.final:
                    return
            if session.closed:
                return
            now = trio.current_time()
            if now - wrote >= session.settings.keepalive_interval:
                await responder.send_chunk(encode_comment())
                wrote = now
            if now - checked >= HEARTBEAT and not got:
                checked = now
                try:
                    if await self.alive(owner):
                        continue
                except StoreUnreachable:
                    continue
                await self._give_up(key, stream_id, last, req_id, responder, errors.INSTANCE_LOST,
                                    f"the gateway instance that held this request ({owner}) stopped before "
                                    "answering it; the request may or may not have taken effect")
                return

    async def _give_up(self, key: str | None, stream_id: str, last: int, req_id: bytes | None,
                       responder: Responder, code: int, message: str) -> None:
        """The stream's last event: an error for the request it answers. With `key`, it is written
        into the stream first, so every resume ends the same way; if its writer (or another reader)
        wrote that event first, what it wrote is sent instead, up to a final one."""
        raw = errors.error_frame(jsonfast.loads(req_id) if req_id is not None else None, code, message)
        fields = {"d": raw, "f": b"1", **({"i": req_id} if req_id is not None else {})}
        while key is not None:
            try:
                if await self.store.add_event(key, f"1-{last + 1}", fields, self.ttl):
                    log.info("stream %s: %s", stream_id, message)
                    await responder.send_chunk(encode_event(raw, f"{stream_id}-{last + 1}"))
                    return
                came = [e for e in (_event(i, f) for i, f in await self.store.read_events(key))
                        if e is not None and e.seq > last]
            except StoreUnreachable:
                break
            if not came:        # only entries this code did not write: do not write over them
                break
            for e in came:
                await responder.send_chunk(encode_event(e.raw, f"{stream_id}-{e.seq}"))
                last = e.seq
                if e.final:
                    return
        # Not in Redis: sent without an id, so that the client may resume from `last` later.
        log.info("stream %s: %s", stream_id, message)
        await responder.send_chunk(encode_event(raw))

    def status(self) -> dict[str, Any]:
        return {"instance": self.instance, "events": self.events, "batches": self.batches, "lost": self.lost,
                "queued": len(self._queue)}


class Recorder:
    """One stream's link to Redis: called by its Replay with each event, before the event is sent."""

    __slots__ = ("streams", "key", "req_id")

    def __init__(self, streams: SharedStreams, key: str, req_id: bytes | None) -> None:
        self.streams = streams
        self.key = key
        self.req_id = req_id

    def __call__(self, seq: int, raw: bytes, final: bool) -> None:
        fields = {"d": raw}
        if self.req_id is not None:
            fields["i"] = self.req_id
        if final:
            fields["f"] = b"1"
        self.streams.append(self.key, seq, fields)
