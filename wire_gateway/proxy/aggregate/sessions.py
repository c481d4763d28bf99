"""A legacy session per asking call: the pool of extra sessions a legacy member keeps for modern clients.

A legacy server's request to its client (`elicitation/create`, `sampling/createMessage`,
`roots/list`) carries nothing that says which of the client's requests it belongs to. On one
session shared by many modern clients, the bridge could only give it to the one call that could be
asked in flight, and refuse it (-31005) when there were several (asks.py). So a call that could be
asked something (a `tools/call`, `prompts/get` or `resources/read` whose client declared
`elicitation`, `sampling` or `roots`) runs on a legacy session of its own: a server request arriving
there belongs to that call, exactly. Calls that cannot be asked stay on the shared session (and the
fast path, direct.py).

A session is a `Member` of its own (not listed in the aggregate's `members`), with an upstream
made by the route's factory: a process of its own for a command server, a connection with its own
`Mcp-Session-Id` for a url server. It does the legacy handshake the shared session did (the same
`initialize`), is taken from the idle ones first, and goes back when its call ends, unless:

- the call did not end with the server's answer (cancelled, timed out, abandoned while it waited
  for the client's input): the server may still be working on it, or waiting for an answer that
  will never come, and would hold the next call up;
- the server asked `roots/list` on it: a server keeps the roots it was given as its session's
  state, and the next call on that session may be another client's;
- its upstream is not running (it crashed or was restarted: starting afresh costs the same).

Such a session is closed. Elicitation and sampling answers belong to their one request (the spec
says so), and a modern client has no per-session state to leave behind (`logging/setLevel` and
`resources/subscribe` are refused to it; it sets no roots), so a session is otherwise reusable.

Bounds: at most `bridge_sessions` (the server's config; 0 turns this off) are open at once, in use
or idle, and at most `IDLE_KEEP` wait idle (the others are closed when their call ends). A call
that finds the bound reached, or whose session fails to start, runs on the shared session under the
old rule (the one asking call in flight gets the question, several get -31005): it never waits for
a session, so no call gets slower than it was, and a burst beyond the bound degrades to what the
gateway did before. Opened only where one aggregate serves many clients (the HTTP routes): the
stdio front has one client, whose server process is that client's own (docs/bridge.md, "Sessions").
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from wire_gateway.proxy.aggregate.members import Member, UpstreamFactory

if TYPE_CHECKING:
    from wire_gateway.proxy.aggregate.endpoint import Aggregate

log = logging.getLogger("wire_gateway.aggregate")

IDLE_KEEP = 2            # idle sessions kept per member for the next asking call; the rest are closed


class SessionPool:
    """The extra legacy sessions of one member (`owner`), each a Member of its own."""

    def __init__(self, agg: Aggregate, owner: Member, factory: UpstreamFactory, bound: int) -> None:
        self.agg = agg
        self.owner = owner
        self.factory = factory
        self.bound = bound
        self.idle: list[Member] = []
        self.open = 0                      # sessions in use, idle or starting
        self.running: set[Member] = set()  # the sessions whose upstream runs (to shut down at the end)

    async def take(self) -> Member | None:
        """A session of its own for one call, or None: the call runs on the shared session."""
        while self.idle:
            session = self.idle.pop()
            if session.ok and session.upstream.state == "running":
                return session
            self._close(session)
        if self.open >= self.bound or self.agg.nursery is None or self.agg.closing.is_set():
            return None
        self.open += 1
        session = Member(self.agg, self.owner.spec, self.agg.limits, self.factory)
        session.problem = "starting"
        try:
            if self.agg.tap is not None:
                session.upstream.tap = self.agg.tap.for_server(self.owner.name, session.upstream)
            await self.agg.nursery.start(session.upstream.run)
            self.running.add(session)
            problem = await session.setup_session(self.owner)
        except BaseException:
            self._close(session)
            raise
        if problem is not None:
            log.warning("aggregate: could not open another legacy session with %s (%s); the call shares "
                        "the route's session", self.owner.name, problem)
            self._close(session)
            return None
        log.info("aggregate: opened legacy session %d of %d with %s for calls that may be asked something",
                 self.open, self.bound, self.owner.name)
        return session

    def give_back(self, session: Member, reusable: bool) -> None:
        """The call on `session` ended: keep the session for the next one, or close it (see the module)."""
        if reusable and session.ok and session.upstream.state == "running" and len(self.idle) < IDLE_KEEP \
                and not self.agg.closing.is_set():
            self.idle.append(session)
            return
        self._close(session)

    def _close(self, session: Member) -> None:
        self.open -= 1
        session.ok = False
        nursery = self.agg.nursery
        if nursery is not None and session in self.running:
            self.running.discard(session)
            nursery.start_soon(self._shutdown, session)

    @staticmethod
    async def _shutdown(session: Member) -> None:
        with trio.CancelScope(shield=True):
            await session.upstream.shutdown()

    async def close_all(self) -> None:
        """At the aggregate's shutdown: every session, idle or still held by a call (one waiting for
        its client's input, say), the usual way, together."""
        running, self.running, self.idle = self.running, set(), []
        async with trio.open_nursery() as nursery:
            for session in running:
                session.ok = False
                nursery.start_soon(self._shutdown, session)
