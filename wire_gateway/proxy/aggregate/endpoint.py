"""The aggregate as its session sees it: one Upstream, whatever the servers behind it.

`Aggregate` is an Upstream to the session in front of it (stdio, a legacy HTTP session, or the
modern pool), and the client of one member upstream per server (`members`). It terminates the
client's protocol: it answers `initialize`, `server/discover` and `ping` itself, and routes every
other request to a member by name (tools, prompts), URI (resources) or cursor (lists), which the
`directory` decides; progress, cancellations and the members' own requests cross by the `relay`.

Every client request is served by one task in the aggregate's nursery, so the routing reads as
straight-line code; every one ends in exactly one answer, or in none when the client cancelled it.
A `tools/call` that needs nothing adapted but its id and tool name takes the fast path instead
(`direct`), with no task. This module owns the lifetimes (the nursery, start-up, the bounded
shutdown) and the era of the answers the client gets. (Just over 400 lines: the dispatch of every
method is one table of branches, best read whole.)
"""
from __future__ import annotations

import logging
from typing import Any

import trio

from wire_gateway.config import Config
from wire_gateway.proxy.aggregate import greeting
from wire_gateway.proxy.aggregate.direct import BRIDGED_LISTS, DirectCalls
from wire_gateway.proxy.aggregate.directory import LIST_TIMEOUT, LISTS, Directory, RouteError
from wire_gateway.proxy.aggregate.members import NOTES, Member, UpstreamFactory
from wire_gateway.proxy.aggregate.messages import (
    error_msg,
    modern_envelope,
    result_msg,
)
from wire_gateway.proxy.aggregate.relay import Relay
from wire_gateway.proxy.aggregate.sessions import SessionPool
from wire_gateway.proxy.aggregate.states import AGGREGATE_TRANSITIONS, AggregateState
from wire_gateway.upstream.handshake import Handshake
from wire_gateway.upstream.pending import PendingTable
from wire_gateway.upstream.protocol import Sink
from wire_gateway.upstream.states import check_transition
from wire_gateway.wire import errors, jsonfast, namespacing as ns
from wire_gateway.wire.era import LEGACY, LEGACY_VERSIONS, MODERN, era_of_request, request_version
from wire_gateway.wire.frame import Frame, Kind, repeated_params, valid_id

log = logging.getLogger("wire_gateway.aggregate")

AGGREGATE_NAME = "*"            # what sessions and /status call the aggregate (no server can be named so)
SHUTDOWN_GRACE = 5.0           # how long requests in flight may still finish once the client has gone
RESOURCE_NOT_FOUND = -32002    # legacy; 2026-07-28 says -32602 (changelog)
# Modern results that must say how long they may be cached (2026-07-28 CacheableResult).
CACHEABLE = frozenset({"server/discover", "tools/list", "prompts/list", "resources/list",
                       "resources/templates/list", "resources/read"})


class Aggregate:
    """The virtual server: an Upstream for one session, a client of every configured server."""

    def __init__(self, config: Config, sink: Sink, factory: UpstreamFactory, client_era: str | None = None,
                 lazy: bool = False, single: bool = False, adopted: bool = False,
                 member_era: str | None = None, session_factory: UpstreamFactory | None = None) -> None:
        """`lazy`: start the members only when the first request arrives (the HTTP front's shared
        aggregate: a gateway nobody asks for /mcp runs no extra processes).

        The era bridge (proxy/era_bridge.py) makes a one-server aggregate with `single`: the
        server's own names, cursors, identity and capabilities, every request forwarded as it is;
        `adopted`: the member's upstream is already running and is another's to stop (the route's
        shared process); `member_era`: the server's era is known, so the member does not probe it.

        `session_factory`: several clients share this aggregate (the HTTP routes), so a modern
        client's call that a legacy member could ask something gets a legacy session of its own,
        made with this factory, up to the server's `bridge_sessions` (sessions.py)."""
        self.config = config
        self.lazy = lazy
        self.sink = sink
        self.single = single
        self.adopted = adopted
        self.member_era = member_era
        self.name = next(iter(config.servers)) if single else AGGREGATE_NAME
        self._tap: Any = None
        self.settings = config.aggregate
        self.sep = self.settings.separator
        self.limits = config.limits
        self.state = AggregateState.STARTING
        self.era: str | None = client_era
        self.restarts = 0
        self.last_exit: str | None = None
        self.pending = PendingTable()
        self.handshake = Handshake()
        self.frames_in = 0
        self.frames_out = 0
        self.members = {name: Member(self, spec.resolved(), config.limits, factory)
                        for name, spec in config.servers.items()}
        self.order = list(self.members)
        self.sessions = {name: SessionPool(self, member, session_factory, member.spec.bridge_sessions)
                         for name, member in self.members.items()
                         if session_factory is not None and member.spec.bridge_sessions > 0}
        self.client_init: dict[str, Any] = {}          # the legacy client's initialize params
        self.log_level: str | None = None              # its logging/setLevel, sent per request to modern members
        self.tasks: dict[Any, trio.CancelScope] = {}                  # client request id -> its task
        self.greeted = False                                           # the client's handshake is answered
        self.directory = Directory(self)                               # names, URIs and list pages
        self.relay = Relay(self)                                       # progress, member requests, list changes
        self.direct = DirectCalls(self)                                # tools/calls served without a task
        self.nursery: trio.Nursery | None = None
        self.closing = trio.Event()
        self._activated = trio.Event()
        self._members_running = False
        self._stopped = trio.Event()

    @property
    def tap(self) -> Any:
        return self._tap

    @tap.setter
    def tap(self, tap: Any) -> None:
        """Frame dumps: the client-side hops are the session's; each member records its own
        server-side hops under its server's name."""
        self._tap = tap
        for member in self.members.values() if not self.adopted else ():   # an adopted upstream has its own
            member.upstream.tap = tap.for_server(member.name, member.upstream) if tap is not None else None

    # ---- Upstream: client -> aggregate ---------------------------------------------------------

    def request(self, frame: Frame) -> bytes | None:
        """Take a client request; answer `ping` at once, serve the rest in a task."""
        self.frames_in += 1
        if self.era is None:
            self.era = era_of_request(frame.method, frame.msg) or (
                MODERN if frame.method == "server/discover" else None)
        if frame.method == "ping" and request_version(frame.msg) is None:   # a modern ping: -32601 (greeting)
            return self._result_bytes(frame.id, {})
        refused = repeated_params(frame)      # routing (by tool name, URI) must read what the member would
        if refused is not None:
            return refused
        self._activated.set()
        if self.nursery is None or self.closing.is_set():
            return errors.error_frame(frame.id, errors.UPSTREAM_UNAVAILABLE,
                                      "the aggregate is not running (the gateway is starting or shutting down)")
        refused = self.pending.refusal(frame.id, "aggregate", self.limits.max_in_flight)
        if refused is not None:
            return refused
        if frame.method == "tools/call" or (self.single and frame.method in BRIDGED_LISTS):
            direct = self.direct.start(frame)
            if direct is not False:
                return direct        # type: ignore[return-value]
        self.pending.add(frame.id, frame.method or "", None)
        scope = trio.CancelScope()
        self.tasks[frame.id] = scope
        self.nursery.start_soon(self._serve, frame, scope)
        return None

    def notify(self, frame: Frame) -> None:
        self.frames_in += 1
        method = frame.method
        params = frame.params if isinstance(frame.params, dict) else {}
        if method == "notifications/cancelled":
            if self.direct.by_client and valid_id(params.get("requestId")) \
                    and self.direct.cancel(params.get("requestId")):
                return
            task = self.tasks.get(params.get("requestId"))
            if task is not None:
                self.pending.pop(params.get("requestId"))
                task.cancel()             # the member call's cancellation reaches the member
            return
        if method == "notifications/initialized":
            return                        # the gateway did its own handshake with each member
        if method == "notifications/roots/list_changed":
            for member in self.ready(LEGACY):
                member.send_notification(method, params or None)
            return
        log.debug("aggregate: client notification %s has no member to go to; dropped", method)

    def reply(self, frame: Frame) -> None:
        """The client's answer to a member's request (sampling, elicitation, roots)."""
        self.frames_in += 1
        self.relay.client_answered(frame)

    def flush(self) -> None:
        """Calls the general path makes are written as they are made; the fast path's wait for this."""
        self.direct.flush(soon=False)

    def flush_soon(self) -> None:
        """See flush."""
        self.direct.flush(soon=True)

    async def wait_writable(self) -> None:
        for member in self.members.values():
            await member.upstream.wait_writable()

    # ---- lifecycle ------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Run every member upstream and connect to each (in the background: a slow or broken
        member must not hold the others back)."""
        if self.handshake.restored:       # a session adopted from another instance (proxy/session_registry.py)
            self._restore_greeting()
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                if self.lazy:
                    task_status.started()
                    await self._activated.wait()
                if not self.closing.is_set():
                    for member in self.members.values() if not self.adopted else ():
                        await nursery.start(member.upstream.run)
                    self._members_running = True
                    for member in self.members.values():
                        nursery.start_soon(member.connect)
                    nursery.start_soon(self.direct.watch)
                if not self.lazy:
                    task_status.started()
                await self.closing.wait()
                # A client that wrote its requests and closed stdin still gets the answers (bounded).
                with trio.move_on_after(SHUTDOWN_GRACE):
                    while self.tasks or self.direct.by_client:  # noqa: ASYNC110 - once, at shutdown: not worth an event per task
                        await trio.sleep(0.02)
                for scope in list(self.tasks.values()):
                    scope.cancel()
                with trio.CancelScope(shield=True):
                    async with trio.open_nursery() as closer:
                        for member in self.members.values() if self._members_running and not self.adopted \
                                else ():
                            closer.start_soon(member.upstream.shutdown)
                        for pool in self.sessions.values():
                            closer.start_soon(pool.close_all)
                nursery.cancel_scope.cancel()
        finally:
            self._become(AggregateState.STOPPED)
            for req_id, entry in self.pending.take_all():
                self.sink.gateway_reply(req_id, errors.error_frame(
                    req_id, errors.UPSTREAM_UNAVAILABLE,
                    f"the gateway is shutting down; {entry.method or 'the request'} was not answered"))
            self.sink.flush()
            self._stopped.set()

    def _restore_greeting(self) -> None:
        """The aggregate answers the client's handshake itself, so replaying a recorded one is
        taking back what its answer left behind: the client's params, its era, greeted."""
        init = self.handshake.init_msg
        params = init.get("params") if init is not None else None
        self.client_init = params if isinstance(params, dict) else {}
        self.era = LEGACY
        self.greeted = True

    async def shutdown(self) -> None:
        self.closing.set()
        self._activated.set()
        await self._stopped.wait()

    def status(self) -> dict[str, Any]:
        return {"separator": self.sep, "clientEra": self.era,
                "members": {name: {**m.status(), **({"sessions": self.sessions[name].open}
                                                      if name in self.sessions else {})}
                            for name, m in self.members.items()}}

    def _become(self, state: AggregateState) -> None:
        self.state = check_transition(AGGREGATE_TRANSITIONS, self.name, self.state, state)

    def update_state(self) -> None:
        """A member's attempt to connect ended: the aggregate's state sums up its members'."""
        ok = sum(1 for m in self.members.values() if m.ok)
        self._become(AggregateState.RUNNING if ok == len(self.members)
                     else AggregateState.DEGRADED if ok else AggregateState.STARTING)

    def ready(self, era: str | None = None) -> list[Member]:
        """The connected members (of one era)."""
        return [m for m in self.members.values() if m.ok and (era is None or m.era == era)]

    async def _members_tried(self) -> None:
        """Wait (bounded) until every member has had its first chance to connect."""
        bound = max(m.spec.handshake_timeout for m in self.members.values()) + 1.0
        with trio.move_on_after(bound):
            for member in self.members.values():
                await member.tried.wait()

    # ---- serving one client request ----------------------------------------------------------------

    async def _serve(self, frame: Frame, scope: trio.CancelScope) -> None:
        req_id = frame.id
        answer: dict[str, Any] | None = None
        notes: list[str] = []
        NOTES.set(notes)                  # this task's own context (trio gives each task a copy)
        try:
            with scope:
                try:
                    answer = await self._dispatch(frame)
                except RouteError as exc:
                    answer = error_msg(req_id, exc.code, exc.message, exc.data)
                except Exception as exc:
                    log.exception("aggregate: %s failed inside the gateway", frame.method)
                    answer = error_msg(req_id, errors.INTERNAL_ERROR,
                                       f"the aggregate failed to route {frame.method}: {exc!r}")
        finally:
            self.tasks.pop(req_id, None)
            owed = self.pending.pop(req_id) is not None
            if owed:                      # not owed: the client cancelled it
                self.deliver(req_id, frame.method, answer if answer is not None else error_msg(
                    req_id, errors.UPSTREAM_UNAVAILABLE,
                    f"the gateway is shutting down; {frame.method} was not answered"),
                    notes[-1] if answer is not None and notes else None)

    async def _dispatch(self, frame: Frame) -> dict[str, Any] | None:
        method = frame.method or ""
        params = frame.params if isinstance(frame.params, dict) else {}
        # During start-up a request waits (bounded) for every member's first connection attempt,
        # so it sees every server that can come up; afterwards this returns at once.
        await self._members_tried()
        if self.era == MODERN:
            greeting.modern_rules(frame)
        if method == "initialize":
            self.client_init = params
            self.handshake.on_client_request(frame)
            self.greeted = True
            self.handshake.completed = True      # the gateway itself accepted it (the HTTP front checks)
            requested = params.get("protocolVersion")
            self.handshake.version = requested if requested in LEGACY_VERSIONS else LEGACY_VERSIONS[0]
            return result_msg(frame.id, greeting.initialize_result(self))
        if method == "server/discover":
            self.greeted = True
            return result_msg(frame.id, greeting.discover_result(self))
        if method == "subscriptions/listen":
            return await self.relay.listen(frame, params)
        if method == "logging/setLevel":
            return await self._set_level(frame, params)
        if self.single:                   # one server: its own names, URIs and cursors, nothing to route
            member = self.members[self.name]
            if not member.ok:
                raise RouteError(errors.UPSTREAM_UNAVAILABLE, f"server '{member.name}' is unavailable: "
                                 f"{member.problem}", {"server": member.name})
            if member.era == MODERN and method in ("resources/subscribe", "resources/unsubscribe"):
                return await self.relay.subscribe(frame, member, params)
            return await self.relay.forward(frame, member, params)
        if method in LISTS:
            return await self.directory.page(frame, method, params)
        if method in ("tools/call", "prompts/get"):
            key = "tools" if method == "tools/call" else "prompts"
            member, original = self.directory.by_name(key, params.get("name"))
            return await self.relay.forward(frame, member, {**params, "name": original})
        if method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
            member = await self.directory.by_uri(params.get("uri"))
            if member.era == MODERN and method != "resources/read":
                return await self.relay.subscribe(frame, member, params)
            return await self.relay.forward(frame, member, params)
        if method == "completion/complete":
            member, params = await self.directory.completion_target(params)
            return await self.relay.forward(frame, member, params)
        raise RouteError(errors.METHOD_NOT_FOUND,
                         f"Method not found: the aggregate endpoint does not route {method!r}; "
                         "use /mcp/{server} (or --server) to reach one server directly")

    async def _set_level(self, frame: Frame, params: dict[str, Any]) -> dict[str, Any]:
        """A legacy client's `logging/setLevel`: sent on to the legacy members that log; the modern ones
        get the level in every request's `_meta` from now on (2026-07-28 asks for logs per request)."""
        level = params.get("level")
        if not isinstance(level, str):
            raise RouteError(errors.INVALID_PARAMS, "Invalid params: logging/setLevel needs a string level")
        self.log_level = level
        for member in self.ready(LEGACY):
            if isinstance(member.capabilities.get("logging"), dict):
                answer = await member.call("logging/setLevel", ns.strip_modern_meta(params), LIST_TIMEOUT)
                if self.single and "error" in answer:
                    return answer
        return result_msg(frame.id, {})

    # ---- eras: what the members get, what the client gets ---------------------------------------------

    def params_for(self, member: Member, params: dict[str, Any]) -> dict[str, Any]:
        """The client's params in the member's era."""
        if member.era == MODERN:
            return ns.with_modern_meta(params, modern_envelope(self.era, self.client_init, self.log_level))
        return ns.strip_modern_meta(params)

    def deliver(self, req_id: Any, method: str | None, answer: dict[str, Any], note: str | None = None) -> None:
        """A member's answer (or the aggregate's own) reaches the client under its id, in its era.
        `note`: what a member's policy did to it (a guardrail block), kept for the dump."""
        if "result" in answer:
            result = answer["result"]
            if self.era == LEGACY:
                if isinstance(result, dict) and result.get("resultType") == "input_required":
                    answer = error_msg(req_id, errors.ERA_MISMATCH,
                                       "a modern member asked for client input (input_required), which a legacy "
                                       "client cannot provide through the aggregate; connect to that server "
                                       "directly or use a modern client", {"reason": "era"})
                else:
                    answer = {"jsonrpc": "2.0", "id": req_id, "result": ns.result_for_legacy(result)}
            else:
                answer = {"jsonrpc": "2.0", "id": req_id,
                          "result": ns.result_for_modern(result, cacheable=method in CACHEABLE)}
        else:
            error = answer.get("error")
            if self.single and self.era == MODERN and isinstance(error, dict) \
                    and error.get("code") == RESOURCE_NOT_FOUND:
                answer = {**answer, "error": {**error, "code": errors.INVALID_PARAMS}}   # 2026-07-28: -32602
            answer = {**answer, "id": req_id}
        # Written from the message the gateway holds: parsing its own bytes again would tell nothing new.
        kind = Kind.RESPONSE if "result" in answer else Kind.ERROR
        self.frames_out += 1
        self.sink.server_frame(Frame(jsonfast.dumps(answer), kind, answer, None, req_id, note))
        self.sink.flush()

    def _result_bytes(self, req_id: Any, result: dict[str, Any]) -> bytes:
        if self.era == MODERN:
            result = ns.result_for_modern(result)
        return jsonfast.dumps({"jsonrpc": "2.0", "id": req_id, "result": result})
