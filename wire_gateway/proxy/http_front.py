"""`wire-gateway serve`: the Streamable HTTP data plane.

Routes: `POST|GET|DELETE /mcp/{server}` (MCP, both eras), `POST|GET|DELETE /mcp` (the
aggregate of all servers, docs/aggregate.md), `GET /healthz` (alive),
`GET /readyz` (every server able to serve, and the gateway not leaving: 503 from SIGTERM on,
through `http.drain_grace`, so a load balancer stops sending before the drain). Each request is checked at the edge
(http_edge: Host, target and Origin against allow-lists for DNS-rebinding protection;
Accept and Content-Type; body size is the HTTP server's job) before its body is even
decoded.

Era dispatch for a POST: a `Mcp-Session-Id` header means a legacy session (404 if
unknown or expired); an `initialize` request without the modern `_meta` opens one; a
request carrying the modern `_meta` protocol version, or the modern
`MCP-Protocol-Version` header, is modern and stateless (400 with -32602 when its `_meta`
lacks the fields every modern request carries); a notification carrying the modern `_meta`
goes to the pool too (202); anything else is a legacy request without its session (400). An
`initialize` that carries the modern `_meta` is a modern request like any other: that era has
no such method, and the pool answers so.

With the Redis store, legacy sessions are recorded in the shared session registry
(session_registry.py): a session this instance does not hold is adopted from its record
(session_adoption.py), and their resumable events are kept in Redis (shared_streams.py).

Over ~400 lines: this is where a request's route, its session and its caller's pools meet
(dispatch, the sessions' lifecycle, the per-project aggregates); what can stand alone is
elsewhere (edge checks, auth answers, the registry, adoption).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import trio

from wire_gateway.auth.context import CALLER
from wire_gateway.auth.directory import Principal
from wire_gateway.config import Config, Limits, ServerSpec
from wire_gateway.dump.writer import Dumper
from wire_gateway.policy.services import Services
from wire_gateway.proxy.aggregate import AGGREGATE_NAME, Aggregate
from wire_gateway.proxy.era_bridge import legacy_bridge, modern_only
from wire_gateway.proxy.held_answer import HeldAnswer, decides
from wire_gateway.proxy.http_auth import WELL_KNOWN, HttpAuth
from wire_gateway.proxy.http_edge import EdgeCheck
from wire_gateway.proxy.legacy_http import LegacySession
from wire_gateway.proxy.modern_http import ModernPool
from wire_gateway.proxy.route import member_factory
from wire_gateway.proxy.session_adoption import Adoption, Answered
from wire_gateway.proxy.session_registry import SessionRegistry
from wire_gateway.proxy.shared_streams import SharedStreams
from wire_gateway.store.redis import RedisStore
from wire_gateway.telemetry import context as telemetry
from wire_gateway.telemetry.metrics import METRICS
from wire_gateway.transport.http_server import HttpLimits, Request, Responder, serve_http
from wire_gateway.upstream.pool import PooledUpstream
from wire_gateway.upstream.protocol import Sink, Upstream
from wire_gateway.wire import errors
from wire_gateway.wire.era import (
    LEGACY_VERSIONS,
    META_CLIENT_CAPABILITIES,
    META_PROTOCOL_VERSION,
    MODERN,
    MODERN_VERSIONS,
    missing_meta,
    request_version,
)
from wire_gateway.wire.frame import Batch, Frame, Invalid, Kind, decode
from wire_gateway.wire.headers import HeaderProblem, check_request_headers, header_mismatch_error

log = logging.getLogger("wire_gateway.http")

JSON = [("content-type", "application/json")]
KNOWN_VERSIONS = set(LEGACY_VERSIONS) | set(MODERN_VERSIONS)
AGGREGATE_SPEC = ServerSpec(name=AGGREGATE_NAME)   # the aggregate has members, not a command of its own


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def client_label(info: Any) -> dict[str, str] | None:
    """What a client says it is, cut short: it is client-controlled text shown to operators."""
    if not isinstance(info, dict):
        return None
    return {k: str(info.get(k))[:64] for k in ("name", "version") if info.get(k) is not None}


class HttpFront:
    dumper: Dumper | None = None    # frame dumps: set after construction when --dump is on

    def __init__(self, config: Config, services: Services | None = None) -> None:
        self.config = config
        self.services = services if services is not None else Services(config)
        self.settings = config.http
        self.pools = {name: ModernPool(name, spec.resolved(), config, config.http.keepalive_interval,
                                      self.services)
                      for name, spec in config.servers.items()}
        # The aggregate (POST /mcp): modern requests share one Aggregate, like a server's shared process.
        self.aggregate_pool = ModernPool(AGGREGATE_NAME, AGGREGATE_SPEC, config,
                                         config.http.keepalive_interval,
                                         upstream_factory=self._aggregate(MODERN, lazy=True))
        self.sessions: dict[str, LegacySession] = {}
        # Legacy sessions any instance can serve (docs/scaling.md): only with the Redis store.
        store = self.services.store
        self.registry = SessionRegistry(store, config.http.session_idle_timeout, self._dropped) \
            if isinstance(store, RedisStore) else None
        self.adoption = Adoption(self, self.registry) if self.registry is not None else None
        self.streams = SharedStreams(store, config.http.stream_buffer_frames, self.registry.ttl) \
            if isinstance(store, RedisStore) and self.registry is not None else None
        self.port: int | None = None
        self.leaving = False     # set on SIGTERM (cli.py): /readyz answers 503 while requests are still served
        self._nursery: trio.Nursery | None = None
        self.edge = EdgeCheck(config.http)
        # Auth (docs/auth.md): with it on, each project gets its own modern aggregate, made of the
        # servers it may use, when its first caller arrives.
        self.auth: HttpAuth | None = HttpAuth(config) if config.auth.enforced else None
        self.project_pools: dict[str, ModernPool] = {}
        self._project_servers: dict[str, tuple[str, ...]] = {}
        if METRICS.on:
            METRICS.sessions.watch(self, _sessions)

    # ---- lifecycle --------------------------------------------------------------------------

    async def run(self, shutdown: trio.Event, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until `shutdown` is set, then drain and stop every upstream."""
        s = self.settings
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for name, pool in self.pools.items():
                if self.dumper is not None:
                    pool.tap = pool.upstream.tap = self.dumper.tap(f"modern:{name}", name, "http", era="modern")
                await nursery.start(pool.upstream.run)
                if pool.bridge is not None:     # era_bridge.py: lazy, it starts with its first request
                    if self.dumper is not None:
                        pool.bridge.tap = pool.bridge.upstream.tap = pool.tap
                    await nursery.start(pool.bridge.upstream.run)
            if self.dumper is not None:
                agg = self.aggregate_pool
                agg.tap = agg.upstream.tap = self.dumper.tap(f"modern:{AGGREGATE_NAME}", AGGREGATE_NAME, "http",
                                                             era="modern")
            if self.auth is None:
                await nursery.start(self.aggregate_pool.upstream.run)
            else:   # the shared aggregate serves no one: each project has its own
                await self.auth.start(nursery, self.services.store)
            nursery.start_soon(self._expire_sessions)
            if self.registry is not None:
                await nursery.start(self.registry.run)
            if self.streams is not None:
                await nursery.start(self.streams.run)
            limits = HttpLimits(max_body_bytes=s.max_body_bytes)
            drained = trio.Event()

            async def serve(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                try:
                    await serve_http(self.handle, s.host, s.port, limits=limits, shutdown=shutdown,
                                     drain_timeout=s.drain_timeout, task_status=task_status)
                finally:
                    drained.set()

            self.port = await nursery.start(serve)
            if self.auth is not None:
                self.auth.listening(self.config.auth.resource or f"http://{url_host(s.host)}:{self.port}")
            log.info("serving MCP over HTTP on http://%s:%d/mcp/{%s}", url_host(s.host), self.port,
                     ",".join(self.config.servers))
            if s.admin_port is not None:
                from wire_gateway.admin.app import serve_admin

                admin_port = await nursery.start(partial(serve_admin, self.status, s.admin_host, s.admin_port,
                                                         shutdown, metrics=METRICS.on))
                log.info("serving the control plane on http://%s:%d/status", url_host(s.admin_host), admin_port)
            task_status.started(self.port)
            await shutdown.wait()
            # Streams that never end by themselves are ended cleanly now, so the drain waits
            # only for real requests; serve_http answers those (up to drain_timeout), and only
            # then are sessions and upstreams stopped.
            for session in self.sessions.values():
                session.end_streams()
            for pool in self._all_pools():
                pool.end_subscriptions()
            with trio.CancelScope(shield=True), trio.move_on_after(s.drain_timeout + 10):
                await drained.wait()
                async with trio.open_nursery() as closer:
                    for session in list(self.sessions.values()):
                        closer.start_soon(self._end_session, session)
                    for pool in self._all_pools():
                        closer.start_soon(pool.upstream.shutdown)
                if self.streams is not None:       # the last answers, in Redis before the instance is gone
                    await self.streams.flushed()
            nursery.cancel_scope.cancel()

    def _all_pools(self) -> list[ModernPool]:
        return [*self.pools.values(), *(p.bridge for p in self.pools.values() if p.bridge is not None),
                *([self.aggregate_pool] if self.auth is None else []), *self.project_pools.values()]

    def status(self) -> dict[str, Any]:
        """A JSON-able snapshot for the control plane: servers, their processes, sessions, counters."""
        now = trio.current_time()

        def upstream_status(up: Any) -> dict[str, Any]:
            proc = getattr(up, "process", None)
            alive = proc is not None and proc.returncode is None
            out = {"state": up.state, "era": up.era, "url": getattr(up, "url", None),
                   "pid": proc.pid if proc is not None and alive else None,
                   "uptime": round(now - proc.started, 3) if proc is not None and alive else None,
                   "restarts": up.restarts, "lastExit": up.last_exit,
                   "inFlight": len(up.pending), "framesIn": up.frames_in, "framesOut": up.frames_out}
            if isinstance(up, Aggregate):     # an aggregate session: its member processes are its own
                out["members"] = up.status()["members"]
            elif isinstance(up, PooledUpstream):
                out["copies"] = up.status()
            return out

        servers = {name: {"shared": upstream_status(pool.upstream), "modernEra": pool.era,
                          "bridge": pool.bridge.upstream.status() if pool.bridge is not None
                          and isinstance(pool.bridge.upstream, Aggregate) and pool.era == "legacy" else None,
                          "legacySessions": sum(1 for s in self.sessions.values() if s.server == name)}
                   for name, pool in self.pools.items()}
        agg = self.aggregate_pool.upstream
        assert isinstance(agg, Aggregate)
        return {
            "listen": {"host": self.settings.host, "port": self.port},
            "leaving": self.leaving,
            "servers": servers,
            "aggregate": {"route": "/mcp", "state": agg.state, **agg.status(),
                          "legacySessions": sum(1 for s in self.sessions.values() if s.server == AGGREGATE_NAME)},
            "sessions": [{"id": s.id[:8] + "...", "server": s.server, "clientInfo": client_label(s.client_info),
                          "idleSeconds": round(s.idle_for(now), 3), "inFlight": len(s.exchanges),
                          "streamsOpen": s.streams_open, "process": upstream_status(s.upstream)}
                         for s in self.sessions.values()],
            **({"sharedStreams": self.streams.status()} if self.streams is not None else {}),
        }

    async def _expire_sessions(self) -> None:
        timeout = self.settings.session_idle_timeout
        while True:
            await trio.sleep(max(0.05, min(timeout / 4, 30.0)))
            now = trio.current_time()
            for session in [x for x in self.sessions.values() if x.idle_for(now) > timeout]:
                log.info("session %s (%s): idle for %.0fs; expired", session.id[:8], session.server, timeout)
                await self._end_session(session)

    async def _end_session(self, session: LegacySession, everywhere: bool = False) -> None:
        """End this instance's copy of a session; `everywhere` (DELETE, a failed initialize):
        its record in the session registry too, so no instance serves it any more."""
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
        if self.registry is not None:
            if everywhere:
                await self.registry.end(session.id)
            else:
                self.registry.forget(session)
        await session.close()

    async def _dropped(self, session: LegacySession, why: str) -> None:
        """The registry says the session ended elsewhere."""
        if self.sessions.get(session.id) is session:
            log.info("session %s (%s): %s; closed here", session.id[:8], session.server, why)
            await self._end_session(session)

    # ---- requests ------------------------------------------------------------------------------

    async def handle(self, request: Request, responder: Responder) -> None:
        refusal = self.edge.refusal(request)
        if refusal is not None:
            status, message = refusal
            await responder.send(status, JSON, errors.error_frame(None, errors.INVALID_REQUEST, message))
            return
        path = request.path.rstrip("/") or "/"
        if self.auth is not None and path.startswith(WELL_KNOWN):
            doc = self.auth.metadata.document(path)
            await responder.send(200 if doc else 404, JSON, doc or errors.error_frame(
                None, errors.INVALID_REQUEST, f"no protected resource metadata at {request.path}"))
        elif path == "/healthz":
            await responder.send(200, JSON, b'{"status":"ok"}')
        elif path == "/readyz":
            await self._readyz(responder)
        elif path.startswith("/mcp/") and path.count("/") == 2:
            await self._mcp(path[5:], request, responder)
        elif path == "/mcp":
            await self._mcp(AGGREGATE_NAME, request, responder)
        else:
            configured = "" if self.auth is not None else f" (configured: {', '.join(self.config.servers)})"
            await responder.send(404, JSON, errors.error_frame(
                None, errors.INVALID_REQUEST,
                f"no such route: {request.path}; MCP endpoints are /mcp (all servers) and /mcp/{{server}}"
                + configured))

    async def _readyz(self, responder: Responder) -> None:
        states = {name: pool.upstream.state for name, pool in self.pools.items()}
        ready = not self.leaving and all(state == "running" for state in states.values())
        body = json.dumps({"ready": ready, "leaving": self.leaving, "servers": states}).encode()
        await responder.send(200 if ready else 503, JSON, body)

    async def _mcp(self, server: str, request: Request, responder: Responder) -> None:
        principal = None
        mcp_path = ""                  # the endpoint's path, for auth's answers (built only with auth on)
        auth_start = auth_end = 0      # for the auth span (tracing on)
        if self.auth is not None:
            mcp_path = "/mcp" if server == AGGREGATE_NAME else f"/mcp/{server}"
            if telemetry.TRACING:
                auth_start = time.time_ns()
            got = await self.auth.check(None if server == AGGREGATE_NAME else server, mcp_path, request)
            if telemetry.TRACING:
                auth_end = time.time_ns()
            if not isinstance(got, Principal):
                await responder.send(*got)
                return
            principal = got
            CALLER.set(principal)      # for the policy chain, below in this task (auth/context.py)
        pool = self.pools.get(server) if server != AGGREGATE_NAME else \
            self.aggregate_pool if principal is None else await self._project_pool(principal)
        if pool is None:
            names = self.config.servers if principal is None else \
                [n for n in self.config.servers if principal.project.may_use(n)]
            await responder.send(404, JSON, errors.error_frame(
                None, errors.INVALID_REQUEST, f"no server named {server!r}; configured: {', '.join(names)}"))
            return
        session_id = request.header("mcp-session-id")
        session = self.sessions.get(session_id) if session_id else None
        if session_id and session is None and self.adoption is not None:
            adopted = await self.adoption.adopt(session_id, server, principal, mcp_path, request, responder)
            if isinstance(adopted, Answered):      # refused, or a DELETE
                return
            session = adopted
        if session_id and (session is None or session.server != server):
            await responder.send(404, JSON, errors.error_frame(
                None, errors.INVALID_REQUEST,
                "session not found (it expired, was deleted, or never existed); start a new one with initialize"))
            return
        if telemetry.ACTIVE:   # for the spans and log lines of what this request causes (telemetry/context.py)
            parent = state = None
            if telemetry.TRACING:
                parent, state = request.header("traceparent"), request.header("tracestate")
            telemetry.SCOPE.set(telemetry.Scope(session.id[:12] if session is not None else None, server, parent,
                                                state, auth_start, auth_end))
        if session is not None and principal is not None and session.principal != principal.id:
            assert self.auth is not None
            await responder.send(*self.auth.not_your_session(principal, server, mcp_path, request))
            return
        method = request.method
        refusal = (self.edge.post_refusal(request) if method == "POST"
                   else self.edge.get_refusal(request) if method == "GET" else None)
        if refusal is not None:
            status, message = refusal
            await responder.send(status, JSON, errors.error_frame(None, errors.INVALID_REQUEST, message))
            return
        if method == "POST":
            await self._post(server, pool, session, request, responder)
        elif method == "GET":
            if session is None:
                await responder.send(400 if not session_id else 404, JSON, errors.error_frame(
                    None, errors.INVALID_REQUEST, "GET opens a legacy session's stream: it needs Mcp-Session-Id"))
                return
            last_event_id = request.header("last-event-id")
            if last_event_id:
                await session.resume(last_event_id, responder)
            else:
                await session.get_stream(responder)
        elif method == "DELETE":
            if session is None:
                await responder.send(400, JSON, errors.error_frame(
                    None, errors.INVALID_REQUEST, "DELETE ends a legacy session: it needs Mcp-Session-Id"))
                return
            await self._end_session(session, everywhere=True)
            await responder.send(200, [])
        else:
            await responder.send(405, [("allow", "GET, POST, DELETE"), *JSON], errors.error_frame(
                None, errors.INVALID_REQUEST, f"method {request.method} is not allowed on an MCP endpoint"))

    async def _post(self, server: str, pool: ModernPool, session: LegacySession | None,
                    request: Request, responder: Responder) -> None:
        if METRICS.on:     # the request's arrival, for the gateway's time on it (telemetry/metrics.py)
            METRICS.arrive()
        decoded = decode(request.body)
        if isinstance(decoded, Invalid):
            await responder.send(400, JSON, decoded.error_frame())
            return
        if session is not None:
            version = request.header("mcp-protocol-version")
            if version is not None and version not in KNOWN_VERSIONS:
                await responder.send(400, JSON, errors.error_frame(
                    None, errors.INVALID_REQUEST, f"unsupported MCP-Protocol-Version {version!r}; "
                    f"supported: {', '.join(sorted(KNOWN_VERSIONS))}"))
                return
            if self.registry is not None:       # notifications/initialized, once a session: the record keeps it
                for item in decoded.items if isinstance(decoded, Batch) else (decoded,):
                    if isinstance(item, Frame) and item.kind is Kind.NOTIFICATION \
                            and item.method == "notifications/initialized":
                        await self.registry.initialized(session, item)
            await session.post(decoded, responder)
            return
        if isinstance(decoded, Batch):
            await responder.send(400, JSON, errors.error_frame(
                None, errors.INVALID_REQUEST, "a batch needs a legacy session (Mcp-Session-Id)"))
            return
        version = request_version(decoded.msg) if decoded.kind is Kind.REQUEST else None
        if decoded.kind is Kind.REQUEST and decoded.method == "initialize" and version is None:
            await self._open_session(server, decoded, responder, CALLER.get() if self.auth is not None else None)
            return
        if decoded.kind is Kind.REQUEST and (version is not None
                                             or request.header("mcp-protocol-version") in MODERN_VERSIONS):
            missing = missing_meta(decoded.msg)
            if missing:
                await responder.send(400, JSON, _missing_meta_error(decoded.id, missing))
                return
            headers: dict[str, str] = {}
            problem = None
            for name, value in request.headers:
                if name in headers and (name.startswith("mcp-")):
                    problem = HeaderProblem(f"Header mismatch: {name} appears more than once", name)
                headers[name] = value
            problem = problem or check_request_headers(headers, decoded.msg, pool.tools)
            if problem is not None:
                await responder.send(400, JSON, header_mismatch_error(decoded.id, problem))
                return
            if telemetry.ACTIVE:
                scope = telemetry.SCOPE.get()
                if scope is not None:
                    scope.session = f"modern:{server}"    # the modern pool's label in dump records
            await pool.post(decoded, responder)
            return
        if decoded.kind is Kind.NOTIFICATION and request_version(decoded.msg) in MODERN_VERSIONS:
            await pool.post(decoded, responder)     # a modern client's notification: 202 (modern_http.py)
            return
        await responder.send(400, JSON, errors.error_frame(
            decoded.id, errors.INVALID_REQUEST,
            "Bad Request: missing Mcp-Session-Id (legacy era: start with initialize; "
            f"modern era: put the protocol version in params._meta[{'io.modelcontextprotocol/protocolVersion'!r}])"))

    def _aggregate(self, client_era: str | None, lazy: bool = False,
                   principal: Principal | None = None) -> Callable[..., Upstream]:
        """An upstream factory for sessions of the aggregate; each member gets its server's policy
        chain. With auth, the aggregate is made of the servers the caller's project may use."""
        config = self.config if principal is None else self._project_config(principal)
        members = member_factory(config, self.services)

        # The modern aggregate is shared by every modern client: their asking calls get sessions of their own.
        sessions = members if client_era == MODERN else None

        def factory(spec: ServerSpec, limits: Limits, sink: Sink) -> Upstream:
            return Aggregate(config, sink, members, client_era=client_era, lazy=lazy, session_factory=sessions)
        return factory

    def _project_config(self, principal: Principal) -> Config:
        project = principal.project
        return dataclasses.replace(self.config, servers={n: s for n, s in self.config.servers.items()
                                                         if project.may_use(n)})

    async def _project_pool(self, principal: Principal) -> ModernPool:
        """The modern aggregate of the caller's project, started on its first use. Rebuilt when the
        project's servers change (the old one is stopped)."""
        name = principal.project.name
        servers = tuple(n for n in self.config.servers if principal.project.may_use(n))
        pool = self.project_pools.get(name)
        if pool is not None and self._project_servers.get(name) == servers:
            return pool
        assert self._nursery is not None
        if pool is not None:
            self._nursery.start_soon(pool.upstream.shutdown)
        pool = ModernPool(AGGREGATE_NAME, AGGREGATE_SPEC, self.config, self.config.http.keepalive_interval,
                          upstream_factory=self._aggregate(MODERN, lazy=True, principal=principal))
        self._project_servers[name] = servers      # what it was built from, to notice a change
        self.project_pools[name] = pool
        if self.dumper is not None:
            pool.tap = pool.upstream.tap = self.dumper.tap(f"modern:{AGGREGATE_NAME}:{name}", AGGREGATE_NAME,
                                                           "http", era="modern")
        await self._nursery.start(pool.upstream.run)
        return pool

    async def _open_session(self, server: str, init: Frame, responder: Responder,
                            principal: Principal | None = None) -> None:
        if await self.refused_as_full(init.id, responder):
            return
        pool = self.pools.get(server)
        trial: HeldAnswer | None = None
        if pool is not None and self.config.servers[server].era == "auto" and pool.refuses_legacy is None \
                and decides(init):
            await pool.probe_versions()       # once per route: may the server speak only the modern era?
            if modern_only(pool.versions):    # then the first legacy initialize tells (held_answer.py)
                trial = HeldAnswer(responder)
        session = await self._start_legacy(server, init, principal, trial or responder)
        if trial is None or pool is None:
            return
        pool.refuses_legacy = trial.refused_by_server()
        if not pool.refuses_legacy:
            await trial.release()
            return
        log.info("server %s: refused a legacy client's initialize and lists no legacy version in server/discover: "
                 "legacy clients are served through the era bridge", server)
        if session.id in self.sessions:
            await self._end_session(session, everywhere=True)
        await self._start_legacy(server, init, principal, responder)

    async def _start_legacy(self, server: str, init: Frame, principal: Principal | None,
                            responder: Responder | HeldAnswer) -> LegacySession:
        session = self.new_session(server, principal)
        self.sessions[session.id] = session
        if self.registry is not None:
            await self.registry.opened(session, init, principal.project.name if principal is not None else None)
        if telemetry.ACTIVE:
            scope = telemetry.SCOPE.get()
            if scope is not None:
                scope.session = session.id[:12]          # the label its dump records carry
        await self.start_session(session)
        log.info("session %s (%s): opened", session.id[:8], server)
        await session.post(init, responder)      # type: ignore[arg-type]   # HeldAnswer: a Responder's surface
        if session.upstream.handshake.init_msg is not None and not session.upstream.handshake.completed:
            log.info("session %s (%s): initialize failed; closed", session.id[:8], server)
            await self._end_session(session, everywhere=True)
        return session

    def legacy_bridged(self, server: str) -> bool:
        """Whether a legacy client of `server` goes through the era bridge: the server is pinned
        modern (`era: modern`), or it refused a legacy client's `initialize` and its `server/discover`
        lists no legacy version (held_answer.py)."""
        era = self.config.servers[server].era
        pool = self.pools.get(server)
        return era == MODERN or (era == "auto" and pool is not None and bool(pool.refuses_legacy)
                                 and modern_only(pool.versions))

    async def refused_as_full(self, req_id: Any, responder: Responder) -> bool:
        """With `http.max_sessions` legacy sessions held (opened here or adopted), a new one is
        refused with 503; True when it was."""
        if len(self.sessions) < self.settings.max_sessions:
            return False
        await responder.send(503, JSON, errors.error_frame(
            req_id, errors.GATEWAY_OVERLOADED,
            f"too many sessions ({self.settings.max_sessions}, http.max_sessions); try again later"))
        return True

    async def start_session(self, session: LegacySession) -> None:
        """Start a registered session's upstream, its dump tap first (labelled by the id's first 12
        characters, never the whole `Mcp-Session-Id`: it is the session's only credential)."""
        assert self._nursery is not None
        if self.dumper is not None:
            session.tap = session.upstream.tap = self.dumper.tap(session.id[:12], session.server, "http",
                                                                 era="legacy")
        await self._nursery.start(session.upstream.run)

    def new_session(self, server: str, principal: Principal | None, session_id: str | None = None) -> LegacySession:
        """A legacy session of the route (not started); `session_id`: adopted (session_adoption)."""
        if server == AGGREGATE_NAME:
            session = LegacySession(server, AGGREGATE_SPEC, self.config, self.settings,
                                    upstream_factory=self._aggregate(None, principal=principal), session_id=session_id)
        elif self.legacy_bridged(server):     # a modern-only server: the era bridge (era_bridge.py)
            spec = self.config.servers[server].resolved()
            members = member_factory(self.config, self.services)

            def bridge(spec: ServerSpec, limits: Limits, sink: Sink) -> Upstream:
                return legacy_bridge(self.config, server, sink, members)
            session = LegacySession(server, spec, self.config, self.settings, upstream_factory=bridge,
                                    session_id=session_id)
            log.info("session %s (%s): the client speaks the legacy era, the server only the modern one: served "
                     "through the era bridge", session.id[:8], server)
        else:
            session = LegacySession(server, self.config.servers[server].resolved(), self.config,
                                    self.settings, self.services, session_id=session_id)
        session.principal = principal.id if principal is not None else None
        if self.streams is not None:
            session.share(self.streams)
        return session


def _missing_meta_error(req_id: Any, missing: list[str]) -> bytes:
    """The answer to a modern request without the `_meta` fields every 2026-07-28 request carries
    (basic/index, per-request protocol fields: -32602, HTTP 400), saying what to add."""
    return errors.error_frame(
        req_id, errors.INVALID_PARAMS,
        f"Invalid params: a {MODERN_VERSIONS[0]} request must carry params._meta with "
        f"{META_PROTOCOL_VERSION!r} (the protocol version, as in the MCP-Protocol-Version header) and "
        f"{META_CLIENT_CAPABILITIES!r} (an object; {{}} for none); missing: {', '.join(missing)}. "
        f"A legacy client ({LEGACY_VERSIONS[0]} and earlier) opens a session with initialize instead",
        {"missing": missing})


def _sessions(front: HttpFront) -> list[tuple[tuple[str, ...], float]]:
    return [(("http", "legacy"), len(front.sessions))]
