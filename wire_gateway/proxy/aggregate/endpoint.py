"""The aggregate endpoint: all configured servers shown to one client as one server.

`Aggregate` is an Upstream to the session in front of it (stdio, a legacy HTTP
session, or the modern pool), and the client of one member upstream per server.
It terminates the client's protocol: it answers `initialize`, `server/discover`
and `ping` itself, talks to each member in the era that member speaks (probed
with `server/discover`, else the legacy handshake the gateway does itself), and
routes each request by name (tools, prompts), URI (resources) or cursor (lists).

Every client request is served by one task in the aggregate's nursery, so the
routing reads as straight-line code; every one ends in exactly one answer, or in
none when the client cancelled it. The naming, cursor and era rules live in
`wire.namespacing` (sans-IO); this file only moves messages and owns lifetimes.
"""
from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from typing import Any

import trio

from wire_gateway import __version__
from wire_gateway.config import Config, Limits, ServerSpec
from wire_gateway.proxy.aggregate.direct import Direct, DirectCalls
from wire_gateway.upstream.handshake import Handshake
from wire_gateway.upstream.pending import PendingTable
from wire_gateway.upstream.protocol import Sink, Upstream
from wire_gateway.wire import errors, jsonfast, namespacing as ns
from wire_gateway.wire.era import (
    LEGACY,
    LEGACY_VERSIONS,
    META_PROTOCOL_VERSION,
    META_SUBSCRIPTION_ID,
    MODERN,
    MODERN_VERSIONS,
    era_of_request,
)
from wire_gateway.wire.frame import Frame, Kind, decode, repeated_params, valid_id

log = logging.getLogger("wire_gateway.aggregate")

UpstreamFactory = Callable[[ServerSpec, Limits, Sink], Upstream]

AGGREGATE_NAME = "*"            # what sessions and /status call the aggregate (no server can be named so)
SERVER_INFO = {"name": "wire-gateway-aggregate", "version": __version__}
CLIENT_INFO = {"name": "wire-gateway", "version": __version__}
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_CLIENT_CAPS = "io.modelcontextprotocol/clientCapabilities"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
LIST_TIMEOUT = 10.0             # a member that does not list within this is skipped for that page
RETRY_MAX = 30.0                # longest pause between attempts to (re)connect a failed member
MAX_LEARN_PAGES = 20            # pages per member read when looking for an unlisted URI
SHUTDOWN_GRACE = 5.0           # how long requests in flight may still finish once the client has gone
ERA_MISMATCH = errors.ERA_MISMATCH

# Which list a method pages through, its items key, and how items are named.
LISTS = {
    "tools/list": ("tools", "name"),
    "prompts/list": ("prompts", "name"),
    "resources/list": ("resources", "uri"),
    "resources/templates/list": ("resourceTemplates", "uriTemplate"),
}
# Modern results that must say how long they may be cached (2026-07-28 CacheableResult).
CACHEABLE = frozenset({"server/discover", "tools/list", "prompts/list", "resources/list",
                       "resources/templates/list", "resources/read"})
LIST_CHANGED = {"notifications/tools/list_changed": "toolsListChanged",
                "notifications/prompts/list_changed": "promptsListChanged",
                "notifications/resources/list_changed": "resourcesListChanged"}


class RouteError(Exception):
    """A request the aggregate cannot route: answered with this JSON-RPC error."""

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


class _Call:
    __slots__ = ("done", "msg")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.msg: dict[str, Any] | None = None


class Member:
    """One configured server inside the aggregate: its upstream, its era, its calls in flight.

    It is also that upstream's Sink, so a member's messages never reach the client
    without passing the aggregate's routing."""

    def __init__(self, agg: Aggregate, spec: ServerSpec, limits: Limits, factory: UpstreamFactory) -> None:
        self.agg = agg
        self.name = spec.name
        self.spec = spec
        # The one call site that creates member upstreams: the policy chain plugs in here.
        self.upstream = factory(spec, limits, self)
        self.era: str | None = None
        self.ok = False
        self.tried = trio.Event()         # the first setup attempt has ended (either way)
        self.capabilities: dict[str, Any] = {}
        self.instructions: str | None = None
        self.problem = "not started yet (a lazy aggregate starts with its first request)"
        self.calls: dict[str, _Call] = {}
        self.direct: dict[str, Direct] = {}     # tools/calls forwarded without a task (aggregate_direct)
        self._ids = itertools.count(1)

    @property
    def timeout(self) -> float:
        """How long a call to this member may wait for its answer (`timeout: null`: no limit)."""
        return math.inf if self.spec.timeout is None else self.spec.timeout

    # ---- calls to the member --------------------------------------------------------------

    async def call(self, method: str, params: Any, timeout: float = math.inf) -> dict[str, Any]:
        """Send one request to the member and wait for its answer (a result or error message).

        Cancelled (the client gave up): the member gets `notifications/cancelled`."""
        our_id = f"agg-{next(self._ids)}"
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": our_id, "method": method}
        if params is not None:
            msg["params"] = params
        raw = jsonfast.dumps(msg)
        call = _Call()
        self.calls[our_id] = call
        try:
            refused = self.upstream.request(Frame(raw, Kind.REQUEST, msg, method, our_id))
            self.upstream.flush()
            if refused is not None:
                return jsonfast.loads(refused)
            with trio.move_on_after(timeout) as scope:
                await call.done.wait()
            if scope.cancelled_caught:
                self._cancel(our_id, f"no answer within {timeout:g}s")
                return _error_msg(our_id, errors.UPSTREAM_UNAVAILABLE,
                                  f"server '{self.name}' did not answer {method} within {timeout:g}s",
                                  {"server": self.name, "method": method})
            assert call.msg is not None
            return call.msg
        except trio.Cancelled:
            if not call.done.is_set():
                self._cancel(our_id, "the client cancelled the request")
            raise
        finally:
            self.calls.pop(our_id, None)

    def send_notification(self, method: str, params: Any) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.upstream.notify(Frame(jsonfast.dumps(msg), Kind.NOTIFICATION, msg, method))
        self.upstream.flush()

    def _cancel(self, our_id: str, reason: str) -> None:
        self.send_notification("notifications/cancelled", {"requestId": our_id, "reason": reason})

    # ---- Sink: what the member sends --------------------------------------------------------

    def server_frame(self, frame: Frame) -> None:
        if frame.kind is Kind.RESPONSE or frame.kind is Kind.ERROR:
            if self.direct:
                entry = self.direct.pop(frame.id, None)
                if entry is not None:
                    self.agg.direct.answered(entry, frame.msg, frame)
                    return
            call = self.calls.get(frame.id)
            if call is not None and not call.done.is_set():
                call.msg = frame.msg
                call.done.set()
            else:
                log.debug("aggregate: %s answered %r, which nobody waits for any more", self.name, frame.id)
            return
        if frame.kind is Kind.REQUEST:
            self.agg.on_member_request(self, frame)
        else:
            self.agg.on_member_notification(self, frame)

    def gateway_reply(self, req_id: Any, data: bytes) -> None:
        if self.direct:
            entry = self.direct.pop(req_id, None)
            if entry is not None:
                self.agg.direct.answered(entry, jsonfast.loads(data), None)
                return
        call = self.calls.get(req_id)
        if call is not None and not call.done.is_set():
            call.msg = jsonfast.loads(data)
            call.done.set()

    def flush(self) -> None:
        self.agg.sink.flush()

    async def wait_writable(self) -> None:
        await self.agg.sink.wait_writable()

    def status(self) -> dict[str, Any]:
        up = self.upstream
        proc = getattr(up, "process", None)
        return {"ok": self.ok, "era": self.era, "state": up.state, "problem": None if self.ok else self.problem,
                "url": getattr(up, "url", None),
                "pid": proc.pid if proc is not None and proc.returncode is None else None,
                "restarts": up.restarts, "lastExit": up.last_exit}


def _dict_at(msg: dict[str, Any], key: str) -> dict[str, Any]:
    """The object at `key` of a peer's message, or {} when it is anything else."""
    value = msg.get(key)
    return value if isinstance(value, dict) else {}


def _error_msg(req_id: Any, code: int, message: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return jsonfast.loads(errors.error_frame(req_id, code, message, data))


class Aggregate:
    """The virtual server: an Upstream for one session, a client of every configured server."""

    def __init__(self, config: Config, sink: Sink, factory: UpstreamFactory, client_era: str | None = None,
                 lazy: bool = False) -> None:
        """`lazy`: start the members only when the first request arrives (the HTTP front's shared
        aggregate: a gateway nobody asks for /mcp runs no extra processes)."""
        self.config = config
        self.lazy = lazy
        self.sink = sink
        self.name = AGGREGATE_NAME
        self._tap: Any = None
        self.settings = config.aggregate
        self.sep = self.settings.separator
        self.limits = config.limits
        self.state = "starting"
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
        self.client_init: dict[str, Any] = {}          # the legacy client's initialize params
        self.tasks: dict[Any, trio.CancelScope] = {}                  # client request id -> its task
        self.direct = DirectCalls(self)                                # tools/calls served without a task
        self.greeted = False                                           # the client's handshake is answered
        self.names: dict[tuple[str, str], tuple[Member, str]] = {}   # (list key, public name) -> origin
        self.uris: dict[str, Member] = {}
        self.templates: list[tuple[Any, str, Member]] = []            # (regex, template, member)
        self.tokens: dict[str, tuple[Any, Any]] = {}                   # our progress token -> (client id, token)
        self.server_requests: dict[str, tuple[Member, Any]] = {}       # client-facing id -> (member, its id)
        self.listens: dict[Any, dict[str, Any]] = {}                   # client's listen id -> its filter
        self._tokens = itertools.count(1)
        self._asks = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self._activated = trio.Event()
        self._members_running = False
        self._closing = trio.Event()
        self._stopped = trio.Event()

    # ---- Upstream: client -> aggregate ---------------------------------------------------------


    @property
    def tap(self) -> Any:
        return self._tap

    @tap.setter
    def tap(self, tap: Any) -> None:
        """Frame dumps: the client-side hops are the session's; each member records its own
        server-side hops under its server's name."""
        self._tap = tap
        for member in self.members.values():
            member.upstream.tap = tap.for_server(member.name, member.upstream) if tap is not None else None
    def request(self, frame: Frame) -> bytes | None:
        """Take a client request; answer `ping` at once, serve the rest in a task."""
        self.frames_in += 1
        if self.era is None:
            self.era = era_of_request(frame.method, frame.msg) or (
                MODERN if frame.method == "server/discover" else None)
        if frame.method == "ping":
            return self._result_bytes(frame.id, {})
        refused = repeated_params(frame)      # routing (by tool name, URI) must read what the member would
        if refused is not None:
            return refused
        self._activated.set()
        if self._nursery is None or self._closing.is_set():
            return errors.error_frame(frame.id, errors.UPSTREAM_UNAVAILABLE,
                                      "the aggregate is not running (the gateway is starting or shutting down)")
        refused = self.pending.refusal(frame.id, "aggregate", self.limits.max_in_flight)
        if refused is not None:
            return refused
        if frame.method == "tools/call":
            direct = self.direct.start(frame)
            if direct is not False:
                return direct        # type: ignore[return-value]
        self.pending.add(frame.id, frame.method or "", None)
        scope = trio.CancelScope()
        self.tasks[frame.id] = scope
        self._nursery.start_soon(self._serve, frame, scope)
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
            for member in self._ready(LEGACY):
                member.send_notification(method, params or None)
            return
        log.debug("aggregate: client notification %s has no member to go to; dropped", method)

    def reply(self, frame: Frame) -> None:
        """The client's answer to a member's request (sampling, elicitation, roots)."""
        self.frames_in += 1
        asked = self.server_requests.pop(frame.id, None) if isinstance(frame.id, str) else None
        if asked is None:
            log.info("aggregate: the client answered %r, which no member asked; dropped", frame.id)
            return
        member, member_id = asked
        msg = {**frame.msg, "id": member_id}
        member.upstream.reply(Frame(jsonfast.dumps(msg), frame.kind, msg, None, member_id))
        member.upstream.flush()

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
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.lazy:
                    task_status.started()
                    await self._activated.wait()
                if not self._closing.is_set():
                    for member in self.members.values():
                        await nursery.start(member.upstream.run)
                    self._members_running = True
                    for member in self.members.values():
                        nursery.start_soon(self._connect, member)
                    nursery.start_soon(self.direct.watch)
                if not self.lazy:
                    task_status.started()
                await self._closing.wait()
                # A client that wrote its requests and closed stdin still gets the answers (bounded).
                with trio.move_on_after(SHUTDOWN_GRACE):
                    while self.tasks or self.direct.by_client:  # noqa: ASYNC110 - once, at shutdown: not worth an event per task
                        await trio.sleep(0.02)
                for scope in list(self.tasks.values()):
                    scope.cancel()
                with trio.CancelScope(shield=True):
                    async with trio.open_nursery() as closer:
                        for member in self.members.values() if self._members_running else ():
                            closer.start_soon(member.upstream.shutdown)
                nursery.cancel_scope.cancel()
        finally:
            self.state = "stopped"
            for req_id, entry in self.pending.take_all():
                self.sink.gateway_reply(req_id, errors.error_frame(
                    req_id, errors.UPSTREAM_UNAVAILABLE,
                    f"the gateway is shutting down; {entry.method or 'the request'} was not answered"))
            self.sink.flush()
            self._stopped.set()

    async def shutdown(self) -> None:
        self._closing.set()
        self._activated.set()
        await self._stopped.wait()

    def status(self) -> dict[str, Any]:
        return {"separator": self.sep, "clientEra": self.era,
                "members": {name: m.status() for name, m in self.members.items()}}

    # ---- members ---------------------------------------------------------------------------------

    async def _connect(self, member: Member) -> None:
        """Probe the member's era and do the handshake its era needs; retry with backoff while it fails."""
        delay = 1.0
        while not self._closing.is_set():
            try:
                member.ok = await self._setup(member)
            except Exception as exc:
                # Upstream faults arrive as error answers, never as exceptions: an exception here is
                # a bug in the gateway. It is reported as one (an ERROR with its traceback, which the
                # tests fail on) and not retried as if the server were down; the other members go on.
                log.error("aggregate: setting up member %s failed inside the gateway (a bug, not the server's "
                          "fault); the member stays unavailable", member.name, exc_info=exc)
                member.ok, member.problem = False, f"the gateway failed to set it up: {type(exc).__name__}"
                member.tried.set()
                self._update_state()
                return
            member.tried.set()
            self._update_state()
            if member.ok:
                log.info("aggregate: member %s connected (%s era)", member.name, member.era)
                self._announce_all_lists()
                return
            log.warning("aggregate: member %s is unavailable (%s); its tools are left out, retrying in %.0fs",
                        member.name, member.problem, delay)
            with trio.move_on_after(delay):
                await self._closing.wait()
            delay = min(delay * 2, RETRY_MAX)

    async def _setup(self, member: Member) -> bool:
        timeout = member.spec.handshake_timeout
        probe = await member.call("server/discover", {"_meta": self._modern_envelope(for_client_era=None)}, timeout)
        discovered = _dict_at(probe, "result")
        versions = discovered.get("supportedVersions")
        if isinstance(versions, list) and MODERN_VERSIONS[0] in versions:
            member.era = MODERN
            member.upstream.era = MODERN
            member.capabilities = _dict_at(discovered, "capabilities")
            member.instructions = discovered.get("instructions")
            self._start_listen(member)
            return True
        # Anything else (an error, a 4xx from an HTTP server that has no modern endpoint, no answer)
        # may be a legacy-only server: try the legacy handshake; it fails fast if the member is down.
        init = await member.call("initialize", {
            "protocolVersion": LEGACY_VERSIONS[0],
            "capabilities": {"sampling": {}, "elicitation": {}, "roots": {"listChanged": True}},
            "clientInfo": CLIENT_INFO}, timeout)
        result = init.get("result")
        if not isinstance(result, dict):
            err = _dict_at(init, "error")
            probe_err = _dict_at(probe, "error")
            member.problem = (f"server/discover failed ({probe_err.get('message', 'no usable answer')}) and so did "
                              f"initialize ({err.get('message', 'no result')})")
            return False
        member.era = LEGACY
        member.upstream.era = LEGACY
        member.capabilities = _dict_at(result, "capabilities")
        member.instructions = result.get("instructions")
        member.send_notification("notifications/initialized", None)
        return True

    def _start_listen(self, member: Member) -> None:
        """Modern members announce list changes only on a subscriptions/listen stream: keep one open."""
        caps = member.capabilities
        wanted = {flag: True for key, flag in (("tools", "toolsListChanged"), ("prompts", "promptsListChanged"),
                                               ("resources", "resourcesListChanged"))
                  if isinstance(caps.get(key), dict) and caps[key].get("listChanged")}
        if not wanted or self._nursery is None:
            return

        async def listen() -> None:
            while not self._closing.is_set():
                answer = await member.call("subscriptions/listen",
                                           {"notifications": wanted, "_meta": self._modern_envelope(None)})
                error = answer.get("error") if isinstance(answer.get("error"), dict) else None
                log.info("aggregate: member %s ended its subscriptions/listen stream: %s", member.name,
                         error.get("message") if error else "completed")
                if error is None or not isinstance(error.get("data"), dict) \
                        or error["data"].get("source") != errors.SOURCE:
                    return                 # the server's own answer: it will not take one
                with trio.move_on_after(1.0):   # the member restarted: listen again once it is back
                    await self._closing.wait()

        self._nursery.start_soon(listen)

    def _ready(self, era: str | None = None) -> list[Member]:
        return [m for m in self.members.values() if m.ok and (era is None or m.era == era)]

    def _update_state(self) -> None:
        ok = sum(1 for m in self.members.values() if m.ok)
        self.state = "running" if ok == len(self.members) else "degraded" if ok else "starting"

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
        try:
            with scope:
                try:
                    answer = await self._dispatch(frame)
                except RouteError as exc:
                    answer = _error_msg(req_id, exc.code, exc.message, exc.data)
                except Exception as exc:
                    log.exception("aggregate: %s failed inside the gateway", frame.method)
                    answer = _error_msg(req_id, errors.INTERNAL_ERROR,
                                        f"the aggregate failed to route {frame.method}: {exc!r}")
        finally:
            self.tasks.pop(req_id, None)
            owed = self.pending.pop(req_id) is not None
            if owed:                      # not owed: the client cancelled it
                self._deliver(req_id, frame.method, answer if answer is not None else _error_msg(
                    req_id, errors.UPSTREAM_UNAVAILABLE,
                    f"the gateway is shutting down; {frame.method} was not answered"))

    def _deliver(self, req_id: Any, method: str | None, answer: dict[str, Any]) -> None:
        if "result" in answer:
            result = answer["result"]
            if self.era == LEGACY:
                if isinstance(result, dict) and result.get("resultType") == "input_required":
                    answer = _error_msg(req_id, ERA_MISMATCH,
                                        "a modern member asked for client input (input_required), which a legacy "
                                        "client cannot provide through the aggregate; connect to that server "
                                        "directly or use a modern client", {"reason": "era"})
                else:
                    answer = {"jsonrpc": "2.0", "id": req_id, "result": ns.result_for_legacy(result)}
            else:
                answer = {"jsonrpc": "2.0", "id": req_id,
                          "result": ns.result_for_modern(result, cacheable=method in CACHEABLE)}
        else:
            answer = {**answer, "id": req_id}
        raw = jsonfast.dumps(answer)
        frame = decode(raw)
        self.frames_out += 1
        if isinstance(frame, Frame):
            self.sink.server_frame(frame)
        else:
            self.sink.gateway_reply(req_id, raw)
        self.sink.flush()

    def _result_bytes(self, req_id: Any, result: dict[str, Any]) -> bytes:
        if self.era == MODERN:
            result = ns.result_for_modern(result)
        return jsonfast.dumps({"jsonrpc": "2.0", "id": req_id, "result": result})

    async def _dispatch(self, frame: Frame) -> dict[str, Any] | None:
        method = frame.method or ""
        params = frame.params if isinstance(frame.params, dict) else {}
        # During start-up a request waits (bounded) for every member's first connection attempt,
        # so it sees every server that can come up; afterwards this returns at once.
        await self._members_tried()
        if method == "initialize":
            self.client_init = params
            self.handshake.on_client_request(frame)
            self.greeted = True
            self.handshake.completed = True      # the gateway itself accepted it (the HTTP front checks)
            requested = params.get("protocolVersion")
            return self._result(frame.id, {
                "protocolVersion": requested if requested in LEGACY_VERSIONS else LEGACY_VERSIONS[0],
                "capabilities": self._capabilities(), "serverInfo": SERVER_INFO,
                **self._instructions()})
        if method == "server/discover":
            self.greeted = True
            return self._result(frame.id, {
                "supportedVersions": [*MODERN_VERSIONS, *LEGACY_VERSIONS], "capabilities": self._capabilities(),
                "_meta": {META_SERVER_INFO: SERVER_INFO}, **self._instructions()})
        if method in LISTS:
            return await self._list(frame, method, params)
        if method in ("tools/call", "prompts/get"):
            key = "tools" if method == "tools/call" else "prompts"
            member, original = self._by_name(key, params.get("name"))
            return await self._forward(frame, member, {**params, "name": original})
        if method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
            member = await self._by_uri(params.get("uri"))
            return await self._forward(frame, member, params)
        if method == "completion/complete":
            return await self._complete(frame, params)
        if method == "logging/setLevel":
            for member in self._ready(LEGACY):
                if isinstance(member.capabilities.get("logging"), dict):
                    await member.call("logging/setLevel", ns.strip_modern_meta(params), LIST_TIMEOUT)
            return self._result(frame.id, {})
        if method == "subscriptions/listen":
            return await self._listen(frame, params)
        raise RouteError(errors.METHOD_NOT_FOUND,
                         f"Method not found: the aggregate endpoint does not route {method!r}; "
                         "use /mcp/{server} (or --server) to reach one server directly")

    def _result(self, req_id: Any, result: dict[str, Any]) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": req_id, "result": result}

    def _capabilities(self) -> dict[str, Any]:
        return ns.merge_capabilities([m.capabilities for m in self._ready()])

    def _instructions(self) -> dict[str, Any]:
        parts = [f"{m.name}: {m.instructions}" for m in self._ready() if isinstance(m.instructions, str)]
        return {"instructions": "\n".join(parts)} if parts else {}

    # ---- routing ---------------------------------------------------------------------------------------

    def route_tool(self, public: str) -> tuple[Member, str] | None:
        """Where a tools/call goes, as `_by_name` says; None where it would refuse."""
        try:
            return self._by_name("tools", public)
        except RouteError:
            return None

    def _by_name(self, key: str, public: Any) -> tuple[Member, str]:
        what = "tool" if key == "tools" else "prompt"
        if not isinstance(public, str):
            raise RouteError(errors.INVALID_PARAMS, f"Invalid params: {what} name must be a string")
        known = self.names.get((key, public))
        if known is not None:
            return known
        parts = ns.split_name(public, self.sep)
        member = self.members.get(parts[0]) if parts is not None else None
        if parts is None or member is None or ns.is_shortened(parts[0], parts[1], self.sep):
            raise RouteError(errors.INVALID_PARAMS,
                             f"unknown {what} {public!r}: aggregate names are <server>{self.sep}<{what}> with "
                             f"server one of {', '.join(self.order)}; list them with {key}/list",
                             {"name": public})
        if not member.ok:
            raise RouteError(errors.UPSTREAM_UNAVAILABLE, f"server '{member.name}' is unavailable: {member.problem}",
                             {"server": member.name, "source": errors.SOURCE})
        return member, parts[1]

    async def _by_uri(self, uri: Any) -> Member:
        if not isinstance(uri, str):
            raise RouteError(errors.INVALID_PARAMS, "Invalid params: uri must be a string")
        member = self._uri_owner(uri)
        if member is None:
            await self._learn_resources()
            member = self._uri_owner(uri)
        if member is None:
            raise RouteError(-32002, f"Resource not found: no server of the aggregate lists {uri!r} "
                             "or a template matching it", {"uri": uri})
        if not member.ok:
            raise RouteError(errors.UPSTREAM_UNAVAILABLE, f"server '{member.name}' is unavailable: {member.problem}",
                             {"server": member.name})
        return member

    def _uri_owner(self, uri: str) -> Member | None:
        member = self.uris.get(uri)
        if member is not None:
            return member
        for regex, _template, owner in self.templates:
            if regex.match(uri):
                return owner
        return None

    async def _learn_resources(self) -> None:
        """A URI nobody listed yet: read every member's resource lists (bounded) to find its owner."""
        for member in self._ready():
            if not isinstance(member.capabilities.get("resources"), dict):
                continue
            for method in ("resources/list", "resources/templates/list"):
                cursor = None
                for _ in range(MAX_LEARN_PAGES):
                    params: dict[str, Any] = {"cursor": cursor} if cursor else {}
                    answer = await member.call(method, self._params_for(member, params), LIST_TIMEOUT)
                    result = answer.get("result")
                    if not isinstance(result, dict):
                        break
                    items_key, _ = LISTS[method]
                    items = result.get(items_key)
                    self._learn(member, method, items if isinstance(items, list) else [])
                    cursor = result.get("nextCursor")
                    if not isinstance(cursor, str) or not cursor:
                        break

    async def _complete(self, frame: Frame, params: dict[str, Any]) -> dict[str, Any] | None:
        ref = params.get("ref")
        if not isinstance(ref, dict):
            raise RouteError(errors.INVALID_PARAMS, "Invalid params: completion/complete needs a ref object")
        if ref.get("type") == "ref/prompt":
            member, original = self._by_name("prompts", ref.get("name"))
            return await self._forward(frame, member, {**params, "ref": {**ref, "name": original}})
        if ref.get("type") == "ref/resource":
            uri = ref.get("uri")
            owner = next((m for _, t, m in self.templates if t == uri), None) if isinstance(uri, str) else None
            return await self._forward(frame, owner or await self._by_uri(uri), params)
        raise RouteError(errors.INVALID_PARAMS, f"Invalid params: unknown completion ref type {ref.get('type')!r}")

    async def _forward(self, frame: Frame, member: Member, params: dict[str, Any]) -> dict[str, Any]:
        """One request to one member, with its progress token and `_meta` adapted; the answer comes back
        with the client's id (set by _deliver)."""
        params = dict(params)
        meta = params.get("_meta")
        if isinstance(meta, dict) and "progressToken" in meta:
            ours = f"agg-p{next(self._tokens)}"
            self.tokens[ours] = (frame.id, meta["progressToken"])
            params["_meta"] = {**meta, "progressToken": ours}
        else:
            ours = None
        try:
            return await member.call(frame.method or "", self._params_for(member, params), member.timeout)
        finally:
            if ours is not None:
                self.tokens.pop(ours, None)

    def _params_for(self, member: Member, params: dict[str, Any]) -> dict[str, Any]:
        """The client's params in the member's era."""
        if member.era == MODERN:
            return ns.with_modern_meta(params, self._modern_envelope(self.era))
        return ns.strip_modern_meta(params)

    def _modern_envelope(self, for_client_era: str | None) -> dict[str, Any]:
        """The modern `_meta` keys a request to a modern member must carry. A legacy client's identity
        is passed on, but not its capabilities: it could not answer an input_required result."""
        info = self.client_init.get("clientInfo") if for_client_era == LEGACY else None
        return {META_PROTOCOL_VERSION: MODERN_VERSIONS[0], META_CLIENT_INFO: info or CLIENT_INFO,
                META_CLIENT_CAPS: {}}

    # ---- lists and cursors -------------------------------------------------------------------------------

    async def _list(self, frame: Frame, method: str, params: dict[str, Any]) -> dict[str, Any]:
        items_key, _ = LISTS[method]
        cursor = params.get("cursor")
        if cursor is None:
            server, member_cursor, offset = self.order[0], None, 0
        else:
            parsed = ns.read_cursor(cursor)
            if parsed is None or parsed[0] not in self.members:
                raise RouteError(errors.INVALID_PARAMS, "Invalid params: unknown or expired cursor; list again "
                                 "without a cursor", {"cursor": cursor if isinstance(cursor, str) else None})
            server, member_cursor, offset = parsed
        while True:
            member = self.members[server]
            page = await self._member_page(member, method, params, member_cursor)
            if page is not None:
                items, member_next = page
                shown, next_cursor = ns.page_plan(self.order, server, items, offset, member_next, member_cursor,
                                                  self.settings.page_size)
                result: dict[str, Any] = {items_key: shown}
                if next_cursor is not None:
                    result["nextCursor"] = next_cursor
                return self._result(frame.id, result)
            following = ns.next_server(self.order, server)    # skip a failing member: degrade, not fail
            if following is None:
                return self._result(frame.id, {items_key: []})
            server, member_cursor, offset = following, None, 0

    async def _member_page(self, member: Member, method: str, params: dict[str, Any],
                           cursor: str | None) -> tuple[list[Any], str | None] | None:
        """One page of one member's list, renamed; None if the member is down or failed to list."""
        items_key, _ = LISTS[method]
        cap = {"tools/list": "tools", "prompts/list": "prompts"}.get(method, "resources")
        if not member.ok:
            return None
        if not isinstance(member.capabilities.get(cap), dict):
            return [], None
        asked = {k: v for k, v in params.items() if k != "cursor"}
        if cursor is not None:
            asked["cursor"] = cursor
        answer = await member.call(method, self._params_for(member, asked), min(member.timeout, LIST_TIMEOUT))
        result = _dict_at(answer, "result")
        items = result.get(items_key)
        if not isinstance(items, list):
            err = _dict_at(answer, "error")
            log.warning("aggregate: member %s failed %s (%s); its entries are left out of this page",
                        member.name, method, err.get("message", "no list in the answer"))
            return None
        nxt = result.get("nextCursor")
        return self._learn(member, method, items), nxt if isinstance(nxt, str) and nxt else None

    def _learn(self, member: Member, method: str, items: list[Any]) -> list[Any]:
        """Remember where each listed name or URI lives; return the items as the client sees them."""
        items_key, field = LISTS[method]
        out = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get(field), str):
                continue
            if method in ("tools/list", "prompts/list"):
                public = ns.join_name(member.name, item[field], self.sep)
                self.names[(items_key, public)] = (member, item[field])
                item = {**item, field: public}
            elif method == "resources/list":
                owner = self.uris.setdefault(item[field], member)
                if owner is not member:
                    log.warning("aggregate: %s and %s both list resource %r; reads go to %s",
                                owner.name, member.name, item[field], owner.name)
            elif all(t != item[field] or m is not member for _, t, m in self.templates):
                self.templates.append((ns.template_regex(item[field]), item[field], member))
            out.append(item)
        return out

    # ---- subscriptions (modern clients) ---------------------------------------------------------------------

    async def _listen(self, frame: Frame, params: dict[str, Any]) -> dict[str, Any] | None:
        """A modern client's subscriptions/listen: acknowledged at once, open until it is cancelled."""
        wanted = _dict_at(params, "notifications")
        agreed = {flag: True for flag in LIST_CHANGED.values() if wanted.get(flag)}
        self.listens[frame.id] = agreed
        try:
            self._to_client({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                             "params": {"_meta": {META_SUBSCRIPTION_ID: frame.id}, "notifications": agreed}})
            await self._closing.wait()
            return self._result(frame.id, {"resultType": "complete"})
        finally:
            self.listens.pop(frame.id, None)

    def _announce_all_lists(self) -> None:
        """A member joined (or came back): every list may have changed."""
        if not self.greeted:
            return
        for method in LIST_CHANGED:
            self._list_changed(method)

    def _list_changed(self, method: str) -> None:
        if self.era == LEGACY:
            self._to_client({"jsonrpc": "2.0", "method": method})
            return
        flag = LIST_CHANGED[method]
        for listen_id, agreed in list(self.listens.items()):
            if agreed.get(flag):
                self._to_client({"jsonrpc": "2.0", "method": method,
                                 "params": {"_meta": {META_SUBSCRIPTION_ID: listen_id}}})

    def _to_client(self, msg: dict[str, Any]) -> None:
        frame = decode(jsonfast.dumps(msg))
        assert isinstance(frame, Frame)
        self.frames_out += 1
        self.sink.server_frame(frame)
        self.sink.flush()

    # ---- member -> client -----------------------------------------------------------------------------------

    def on_member_notification(self, member: Member, frame: Frame) -> None:
        method = frame.method or ""
        params = frame.params if isinstance(frame.params, dict) else {}
        if method in LIST_CHANGED:
            if method == "notifications/tools/list_changed":
                self._forget_names(member, "tools")
            elif method == "notifications/prompts/list_changed":
                self._forget_names(member, "prompts")
            self._list_changed(method)
            return
        if method == "notifications/subscriptions/acknowledged":
            return                         # the ack of the aggregate's own listen stream
        if method == "notifications/progress":
            token = params.get("progressToken")
            entry = self.tokens.get(token) if isinstance(token, str) else None
            if entry is None:
                log.debug("aggregate: progress from %s for an unknown token; dropped", member.name)
                return
            self._to_client({**frame.msg, "params": {**params, "progressToken": entry[1]}})
            return
        if method == "notifications/cancelled":
            cid = next((c for c, (m, mid) in self.server_requests.items() if m is member
                        and mid == params.get("requestId")), None)
            if cid is not None:
                self.server_requests.pop(cid, None)
                self._to_client({**frame.msg, "params": {**params, "requestId": cid}})
            return
        if method == "notifications/resources/updated" or method == "notifications/message":
            self.frames_out += 1
            self.sink.server_frame(frame)
            self.sink.flush()
            return
        log.debug("aggregate: %s from %s not forwarded", method, member.name)

    def _forget_names(self, member: Member, key: str) -> None:
        for name in [k for k, (m, _) in self.names.items() if k[0] == key and m is member]:
            del self.names[name]

    def on_member_request(self, member: Member, frame: Frame) -> None:
        """A member asks the client something (sampling, elicitation, roots): pass it on under an id
        of the aggregate's own, unless the client's era cannot take a server request."""
        if self.era != LEGACY:
            msg = _error_msg(frame.id, ERA_MISMATCH,
                             f"the client reached '{member.name}' through the wire-gateway aggregate in the modern "
                             f"era, which has no server-to-client requests; {frame.method} cannot be delivered",
                             {"reason": "era", "method": frame.method})
            member.upstream.reply(Frame(jsonfast.dumps(msg), Kind.ERROR, msg, None, frame.id))
            member.upstream.flush()
            log.warning("aggregate: %s sent %s, which cannot cross to a %s client; answered with an error",
                        member.name, frame.method, self.era or "not yet known")
            return
        cid = f"wire-gateway/{member.name}/{next(self._asks)}"
        if len(self.server_requests) >= self.limits.max_in_flight:
            del self.server_requests[next(iter(self.server_requests))]
        self.server_requests[cid] = (member, frame.id)
        self._to_client({**frame.msg, "id": cid})
