"""The shared session registry: a legacy HTTP session that any gateway instance can serve.

A legacy session (`initialize`, then requests carrying `Mcp-Session-Id`) lives in the
instance that opened it. With `store.backend: "redis"`, its record is also kept in Redis, so
an instance behind a load balancer without stickiness can serve a request for a session it
does not hold: it adopts the session (http_front) by looking the record up, replaying the
recorded handshake to an upstream of its own the way an upstream replays it after a crash
(`Handshake.restore`), and registering it locally. docs/scaling.md says why adoption.

The record (`session:` + the SHA-256 of the session id, never the id itself: whoever reads
Redis must not be able to take a session over) holds the client's `initialize` request and
`notifications/initialized`, the negotiated protocol version, the client's capabilities, the
route, the principal and project that opened it, and when it was opened and last used. Its
TTL is the idle timeout plus one refresh period, so lazily refreshed it still outlives a
session's last use by the idle timeout.

The hot path makes no Redis round trip: a request on the instance that holds the session
only marks it used (`LegacySession.last_active`, as before). A background task refreshes,
once per period (a quarter of the idle timeout, at most 30 s), the records of the sessions
used since their last refresh (SET XX: a record someone deleted is not brought back, and
that instance's copy is dropped). DELETE deletes the record and announces it on the
store's pub/sub channel, so the other instances drop their copies at once; a missed
announcement is caught by the next refresh. Written synchronously, once per session: the
record when the session opens (before the `initialize` is forwarded, so another instance
can adopt the session as soon as its client has the answer) and again with the client's
`notifications/initialized` (before its 202).

When Redis is unreachable the instance serves the sessions it holds; a session it does not
hold gets 503 (it may exist: a client should retry, not open a new one), and a (throttled) log
line says the registry could not be asked.
A record that Redis lost while it was away (a restart without persistence) is written again
by the next refresh rather than taken as a deletion.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from wire_gateway.proxy.legacy_http import LegacySession
from wire_gateway.store.redis import RedisStore, StoreUnreachable
from wire_gateway.telemetry.throttle import ThrottledLog
from wire_gateway.wire import jsonfast
from wire_gateway.wire.frame import Frame

log = logging.getLogger("wire_gateway.http.registry")

KEY = "session:"
ENDED = "session-ended:"        # the pub/sub event of a DELETE: + the record's digest
MAX_PERIOD = 30.0


def digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class SessionRecord:
    """What another instance needs to serve a session: the handshake to replay and who owns it."""

    __slots__ = ("server", "principal", "project", "init", "initialized", "version", "created", "last_used")

    def __init__(self, server: str, principal: str | None, project: str | None, init: dict[str, Any],
                 initialized: bytes | None = None, version: str | None = None,
                 created: float | None = None, last_used: float | None = None) -> None:
        self.server = server
        self.principal = principal
        self.project = project
        self.init = init
        self.initialized = initialized
        self.version = version
        self.created = time.time() if created is None else created
        self.last_used = self.created if last_used is None else last_used

    def encode(self) -> bytes:
        params = self.init.get("params")
        return jsonfast.dumps({
            "server": self.server, "principal": self.principal, "project": self.project,
            "initialize": self.init,
            "initialized": self.initialized.decode() if self.initialized is not None else None,
            "protocolVersion": self.version,
            "capabilities": params.get("capabilities") if isinstance(params, dict) else None,
            "created": self.created, "lastUsed": self.last_used})

    @classmethod
    def decode(cls, raw: bytes) -> SessionRecord | None:
        try:
            doc = jsonfast.loads(raw)
            init = doc["initialize"]
            initialized = doc.get("initialized")
            if not isinstance(init, dict) or not isinstance(doc["server"], str):
                return None
            return cls(doc["server"], doc.get("principal"), doc.get("project"), init,
                       initialized.encode() if isinstance(initialized, str) else None,
                       doc.get("protocolVersion"), float(doc["created"]), float(doc["lastUsed"]))
        except (ValueError, TypeError, KeyError, AttributeError):
            return None


class _Held:
    __slots__ = ("session", "record", "refreshed", "outages", "stored")

    def __init__(self, session: LegacySession, record: SessionRecord, refreshed: float, outages: int,
                 stored: bool = True) -> None:
        self.session = session
        self.record = record
        self.refreshed = refreshed      # trio time of the last write (or read) of the record
        self.outages = outages          # the store's outage count then
        self.stored = stored            # False: that write did not reach Redis (the record may be missing)


class SessionRegistry:
    """The records of this instance's legacy sessions in Redis, and the lookups of others'."""

    def __init__(self, store: RedisStore, idle_timeout: float,
                 drop: Callable[[LegacySession, str], Awaitable[None]]) -> None:
        self.store = store
        self.period = min(idle_timeout / 4, MAX_PERIOD)
        self.ttl = idle_timeout + self.period
        self.drop = drop                # ends this instance's copy of a session (the front's)
        self.held: dict[str, _Held] = {}
        self._ended_send, self._ended = trio.open_memory_channel[str](math.inf)
        self._unreachable = ThrottledLog(log, "session registry: %d more requests for sessions this instance "
                                         "does not hold found Redis unreachable over the last %.2fs")
        self._unwritten = ThrottledLog(log, "session registry: %d more sessions could not be recorded over the "
                                       "last %.2fs (Redis unreachable)")
        store.subscribe(self._on_event)

    # ---- this instance's sessions ---------------------------------------------------------------

    async def opened(self, session: LegacySession, init: Frame, project: str | None) -> None:
        """A session opened here: its record, written before its initialize goes anywhere."""
        record = SessionRecord(session.server, session.principal, project, init.msg)
        await self._write(session, record, only_new=True)

    async def initialized(self, session: LegacySession, frame: Frame) -> None:
        """The client's notifications/initialized: part of what an adopter replays."""
        held = self.held.get(digest(session.id))
        handshake = session.upstream.handshake
        init = handshake.init_msg if handshake.init_msg is not None else held.record.init if held else None
        if held is None or init is None or (held.record.initialized == frame.raw and held.record.init is init):
            return
        held.record.init = init                   # a client may initialize again within its session
        held.record.initialized = frame.raw
        held.record.version = handshake.version
        await self._write(session, held.record, only_existing=True)

    def adopted(self, session: LegacySession, record: SessionRecord) -> None:
        """A session opened elsewhere, now also served here (its record was just read)."""
        self.held[digest(session.id)] = _Held(session, record, trio.current_time(), self.store.outages)

    def forget(self, session: LegacySession) -> None:
        """This instance's copy ended (idle, shutdown): the record stays for the others."""
        key = digest(session.id)
        held = self.held.get(key)
        if held is not None and held.session is session:
            del self.held[key]

    async def _write(self, session: LegacySession, record: SessionRecord, *, only_new: bool = False,
                     only_existing: bool = False) -> None:
        held = self.held[digest(session.id)] = _Held(session, record, trio.current_time(), self.store.outages)
        record.last_used = time.time()
        try:
            held.stored = await self.store.set_shared(KEY + digest(session.id), record.encode(), self.ttl,
                                                      only_new=only_new, only_existing=only_existing)
        except StoreUnreachable:
            held.stored = False
            if self._unwritten.event(trio.current_time()):
                log.warning("session %s (%s): the session registry is unreachable; the session is served by "
                            "this instance only until its record is written again (next refresh after a use)",
                            session.id[:8], session.server)

    # ---- other instances' sessions --------------------------------------------------------------

    async def lookup(self, session_id: str) -> SessionRecord | None:
        """The record of a session this instance does not hold: one round trip. StoreUnreachable
        when Redis is away (the session may well exist: the caller answers 503, not 404)."""
        try:
            raw = await self.store.get_shared(KEY + digest(session_id))
        except StoreUnreachable as exc:
            if self._unreachable.event(trio.current_time()):
                log.warning("session %r: not held by this instance, and the session registry is unreachable "
                            "(%s); answered 503", session_id[:8], exc)
            raise
        if raw is None:
            return None
        record = SessionRecord.decode(raw)
        if record is None:
            log.warning("session %r: its record in the session registry is unreadable; answered 404",
                        session_id[:8])
        return record

    async def end(self, session_id: str) -> bool:
        """DELETE: the record goes, and every instance is told to drop its copy. False if the
        registry could not be reached (the other instances drop theirs when their refresh
        finds the record gone, or it expires)."""
        key = digest(session_id)
        self.held.pop(key, None)
        try:
            await self.store.delete_shared(KEY + key)
        except StoreUnreachable:
            log.warning("session %s: ended here, but the session registry is unreachable: its record "
                        "expires by itself", session_id[:8])
            return False
        await self.store.publish(ENDED + key)
        return True

    def _on_event(self, event: str) -> None:
        if event.startswith(ENDED):
            self._ended_send.send_nowait(event[len(ENDED):])

    # ---- background ---------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Drop the copies of sessions ended elsewhere, and refresh the records of used ones."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drop_ended)
            task_status.started()
            while True:
                await trio.sleep(self.period)
                await self._refresh()

    async def _drop_ended(self) -> None:
        async for key in self._ended:
            held = self.held.pop(key, None)
            if held is not None:
                await self.drop(held.session, "ended by DELETE on another instance")

    async def _refresh(self) -> None:
        now = trio.current_time()
        due = [h for h in self.held.values()
               if h.session.last_active > h.refreshed or h.session.idle_for(now) == 0.0]
        for held in due:
            if self.held.get(digest(held.session.id)) is not held or held.session.closed:
                continue
            # Redis was away since the last write, or that write did not reach it: a missing record
            # may have been lost rather than deleted, and is written again.
            lost = self.store.outages != held.outages or not held.stored
            outages, started = self.store.outages, trio.current_time()
            held.record.last_used = time.time()
            key = KEY + digest(held.session.id)
            try:
                there = await self.store.set_shared(key, held.record.encode(), self.ttl, only_existing=True)
                if not there and lost:
                    there = await self.store.set_shared(key, held.record.encode(), self.ttl, only_new=True)
            except StoreUnreachable:
                continue            # serve it from here; due again next period
            held.refreshed, held.outages, held.stored = started, outages, there
            if not there:
                self.held.pop(digest(held.session.id), None)
                await self.drop(held.session, "its record is gone from the session registry (ended elsewhere)")
