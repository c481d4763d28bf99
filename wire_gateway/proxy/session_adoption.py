"""Serving a legacy session that another gateway instance opened: adoption.

A request carries an `Mcp-Session-Id` this instance does not hold. With the shared session
registry (session_registry.py, Redis store only) the front asks `Adoption.adopt`, which reads
the session's record (one round trip) and, if the record is for this route and, with auth on,
for this principal, starts an upstream of the route for it, restores the recorded handshake into
that upstream (which replays it at its start, by the code that replays it after a crash:
`Handshake.restore`), and registers the session with the front. The request is then served as
on the instance that opened it. docs/scaling.md says why adoption rather than forwarding.

Refusals are the front's usual answers: no record, or one for another route, is the caller's
404; Redis unreachable is 503 (-31009: the session may exist, the client should retry, not open
a new one); another principal's session gets the 403 of a foreign session, before anything
starts; `http.max_sessions` counts adopted sessions (503). A DELETE needs no upstream: the
record is deleted and the instances holding the session drop it. Concurrent requests for one
session wait for its one adoption.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Final

import trio

from wire_gateway.auth.directory import Principal
from wire_gateway.proxy.legacy_http import LegacySession
from wire_gateway.proxy.session_registry import SessionRecord, SessionRegistry
from wire_gateway.store.redis import StoreUnreachable
from wire_gateway.transport.http_server import Request, Responder
from wire_gateway.wire import errors

if TYPE_CHECKING:
    from wire_gateway.proxy.http_front import HttpFront

log = logging.getLogger("wire_gateway.http")


class Answered:
    """`adopt` answered the request itself (a refusal, or a DELETE)."""


ANSWERED: Final = Answered()


class Adoption:
    def __init__(self, front: HttpFront, registry: SessionRegistry) -> None:
        self.front = front
        self.registry = registry
        self._adopting: dict[str, trio.Event] = {}     # session id -> set when its adoption is over

    async def adopt(self, session_id: str, server: str, principal: Principal | None, mcp_path: str,
                    request: Request, responder: Responder) -> LegacySession | Answered | None:
        """The session, adopted; ANSWERED; or None: no such session here (the caller's 404)."""
        busy = self._adopting.get(session_id)
        if busy is not None:              # another request is adopting it: wait, then take what it made
            await busy.wait()
            return self.front.sessions.get(session_id)
        done = self._adopting[session_id] = trio.Event()
        try:
            return await self._adopt(session_id, server, principal, mcp_path, request, responder)
        finally:
            del self._adopting[session_id]
            done.set()

    async def _adopt(self, session_id: str, server: str, principal: Principal | None, mcp_path: str,
                     request: Request, responder: Responder) -> LegacySession | Answered | None:
        front = self.front
        try:
            record = await self.registry.lookup(session_id)
        except StoreUnreachable:
            await responder.send(503, [("content-type", "application/json"), ("retry-after", "1")],
                                 errors.error_frame(None, errors.STORE_UNREACHABLE, (
                                     "this gateway instance does not hold the session, and the session registry "
                                     "(Redis) is unreachable, so it cannot take the session over; retry (another "
                                     "instance may hold it), and do not start a new session for this")))
            return ANSWERED
        if record is None or record.server != server:
            return None
        if principal is not None and record.principal != principal.id:
            assert front.auth is not None
            await responder.send(*front.auth.not_your_session(principal, server, mcp_path, request))
            return ANSWERED
        held = front.sessions.get(session_id)     # opened here while we looked (an id is never reused)
        if held is not None:
            return held
        if request.method == "DELETE":    # nothing to start: the record goes, the holders drop theirs
            await self.registry.end(session_id)
            log.info("session %s (%s): ended by DELETE (held by another instance)", session_id[:8], server)
            await responder.send(200, [])
            return ANSWERED
        if await front.refused_as_full(None, responder):
            return ANSWERED
        return await self._start(session_id, server, principal, record)

    async def _start(self, session_id: str, server: str, principal: Principal | None,
                     record: SessionRecord) -> LegacySession:
        front = self.front
        session = front.new_session(server, principal, session_id)
        session.upstream.handshake.restore(record.init, record.initialized, record.version)
        params = record.init.get("params")
        session.client_info = params.get("clientInfo") if isinstance(params, dict) else None
        front.sessions[session.id] = session
        self.registry.adopted(session, record)
        await front.start_session(session)
        log.info("session %s (%s): adopted from the session registry (opened %.0fs ago elsewhere); "
                 "replaying its handshake", session.id[:8], server, time.time() - record.created)
        return session
