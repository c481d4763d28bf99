"""Modern-era (2026-07-28) requests over HTTP: stateless, so every POST stands
alone and all of them share one supervised process per server (or the server's `pool` of
copies, upstream.pool).

Ids are remapped so concurrent clients never see each other's answers: the
gateway gives each request its own integer id on the way up (counting from a
random 48-bit start per server, so nobody can guess another client's) and puts
the client's id back on the way down, replacing only the id's bytes with the
bytes the client wrote (`-0` stays `-0`; see wire.ids), the rest of the frame as
it arrived. A progress token is remapped the same way, since two
clients may both use "1". Closing the response stream cancels the request: the
server gets `notifications/cancelled`.

The first modern request probes the server with `server/discover` (unless the server's
`era` is pinned in the config). A server that only speaks the legacy era gets no modern
requests passed through: they go to the era bridge (`bridge`, era_bridge.py), which
takes the pool's upstream over as its shared legacy session and serves modern
clients through it (with a session of their own for calls the server could ask
something). The pool of the aggregate, which speaks both eras itself, has none.

An error answer goes out with the HTTP status an HTTP upstream gave it (`Frame.status`), else
with the one its code has in this era (-32601: 404; -32020, -32021, -32022: 400). `initialize`
is no method of this era: a request carrying the modern `_meta` that names it gets -32601 and
404 from the upstream, except a server process's, which the pool answers itself (the process is
shared, and an `initialize` could turn it to the legacy era for every client).
"""
from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable
from typing import Any

import trio

from wire_gateway.config import Config, ServerSpec
from wire_gateway.dump.tap import C2G, G2C, Tap
from wire_gateway.proxy.aggregate.members import Member
from wire_gateway.proxy.era_bridge import SinkSwitch, make_bridge
from wire_gateway.proxy.exchange import Backlog, Exchange
from wire_gateway.proxy.http_answer import JSON, answer
from wire_gateway.proxy.route import member_factory, open_upstream
from wire_gateway.transport.http_server import Responder
from wire_gateway.upstream.pool import PooledUpstream
from wire_gateway.upstream.protocol import Upstream
from wire_gateway.wire import errors, jsonfast, scan
from wire_gateway.wire.era import (
    LEGACY,
    LEGACY_VERSIONS,
    META_SUBSCRIPTION_ID,
    MODERN,
    MODERN_VERSIONS,
    discover_probe,
)
from wire_gateway.wire.frame import Frame, Kind, decode

log = logging.getLogger("wire_gateway.http.modern")

# JSON-RPC errors that carry an HTTP status of their own in the modern era.
_STATUS_FOR_CODE = {-32601: 404, -32020: 400, -32021: 400, -32022: 400}
PROBE_TIMEOUT = 10.0


class ModernPool:
    tap: Tap | None = None     # frame dumps: set after construction when --dump is on
    _probe_ex: Exchange | None = None   # the server/discover probe's exchange: no client sees it

    bridge: ModernPool | None = None    # modern clients of a legacy server (era_bridge.py)
    # True for a bridge: the pool in front recorded the request, and the one-server aggregate behind
    # it encodes each request anew (it reads the client's bytes only to check them for repeated
    # keys), so they keep the client's id.
    fronted = False

    def __init__(self, server: str, spec: ServerSpec, config: Config, keepalive: float = 15.0,
                 services: Any = None, upstream_factory: Callable[..., Upstream] | None = None) -> None:
        self.server = server
        self.keepalive = keepalive
        # A modern `initialize` is answered here for a server process: sent on, it could switch the
        # process every modern client shares to the legacy era. An HTTP server answers its own (each
        # request stands alone there), and so does the aggregate.
        self.answers_initialize = upstream_factory is None and spec.url is None
        self.backlog = Backlog()
        # Unpredictable per server (a client must not guess another client's gateway id), and below
        # 2**53 for the next 2**52 requests, so a JavaScript server keeps every id exact.
        self._ids = itertools.count(secrets.randbits(48) + 1)
        self.by_gw: dict[int, Exchange] = {}
        self.tokens: dict[str, tuple[Exchange, Any]] = {}   # gateway token -> (exchange, client's token)
        self.tools: dict[str, dict] = {}                   # tool name -> definition, from tools/list answers
        self.listens: set[int] = set()                     # gateway ids of open subscriptions/listen
        self._probed: trio.Event | None = None
        self.era: str | None = None                        # "modern" / "legacy" once probed (or pinned)
        self.versions: Any = None                          # the probe's supportedVersions, if it gave any
        self.refuses_legacy: bool | None = None            # a legacy client's initialize was refused (http_front)
        self._switch: SinkSwitch | None = None
        self._bridge_member: Member | None = None      # whom the switch is handed to, until it is
        if upstream_factory is not None:
            self.upstream = upstream_factory(spec, config.limits, self)
        elif spec.pool_size > 1 and spec.url is None:
            # Copies of a server serve requests that stand alone: the modern era (upstream.pool).
            self.upstream = PooledUpstream(server, spec.pool_size,
                                           lambda sink: open_upstream(spec, config, sink, services), self)
            self.era = MODERN
        elif spec.era == MODERN:
            self.upstream = open_upstream(spec, config, self, services)
            self.era = MODERN
        else:      # it may be legacy: an upstream the bridge can take over, and the bridge
            self._switch = SinkSwitch(self)
            self.upstream = open_upstream(spec, config, self._switch, services)
            self.era = LEGACY if spec.era == LEGACY else None

            def bridge(spec: ServerSpec, limits: Any, sink: Any) -> Upstream:
                agg, self._bridge_member = make_bridge(config, server, sink, self.upstream, lazy=True,
                                                       session_factory=member_factory(config, services))
                return agg
            self.bridge = ModernPool(server, spec, config, keepalive, upstream_factory=bridge)
            self.bridge.era = MODERN          # the bridge speaks it: no probe
            self.bridge.fronted = True
            self.bridge.tools = self.tools

    # ---- HTTP side ------------------------------------------------------------------

    async def post(self, frame: Frame, responder: Responder) -> None:
        if self.tap is not None and not self.fronted:
            self.tap.frame(C2G, frame)
        if self.era == LEGACY and self.bridge is not None:     # known legacy (probed or pinned): bridged
            await self._bridged(frame, responder)
            return
        if frame.kind is not Kind.REQUEST:
            # 2026-07-28 defines no client notifications over HTTP; accept and forward them, but for
            # a `notifications/cancelled` (the TS SDK sends one when it closes a listen stream): in this
            # era closing the response stream cancels, and the id it names is the client's, which the
            # server never saw (_finish sends the server its own).
            if frame.kind is Kind.NOTIFICATION and frame.method != "notifications/cancelled":
                self.upstream.notify(frame)
                self.upstream.flush_soon()
            await responder.send(202, [])
            return
        if not await self._speaks_modern():
            if self.bridge is not None:
                await self._bridged(frame, responder)
                return
            refusal = errors.error_frame(
                frame.id, errors.INVALID_REQUEST,
                f"server '{self.server}' does not speak the modern era of MCP ({MODERN_VERSIONS[0]}); "
                "open a legacy session with initialize", {"server": self.server})
            if self.tap is not None:
                self.tap.gateway(G2C, refusal)
            await responder.send(400, [("content-type", "application/json")], refusal)
            return
        if frame.method == "initialize" and self.answers_initialize:
            refusal = errors.error_frame(
                frame.id, errors.METHOD_NOT_FOUND,
                f"Method not found: initialize is not a method of MCP {MODERN_VERSIONS[0]}, whose requests need "
                "no handshake (each carries its protocol version in params._meta); to open a legacy session "
                f"({LEGACY_VERSIONS[0]} or earlier), send initialize without the modern _meta",
                {"server": self.server})
            if self.tap is not None:
                self.tap.gateway(G2C, refusal)
            await responder.send(404, [JSON], refusal)
            return
        gw_id, ex = self._send(frame)
        try:
            now = ex.take_final()
            if now is not None:
                await responder.send(now[1], [JSON], now[0])
            else:
                await answer(ex, responder, [], self.keepalive)
        finally:
            self._finish(gw_id, ex)

    async def _bridged(self, frame: Frame, responder: Responder) -> None:
        """A modern client of a legacy server: the bridge serves it, with the pool's upstream as its
        legacy session from the first such request on (the probe, if any, is over by then)."""
        bridge, switch = self.bridge, self._switch
        assert bridge is not None and switch is not None
        if self._bridge_member is not None:
            switch.point_at(self._bridge_member)
            self._bridge_member = None
            log.info("server %s: modern clients are served through the era bridge (a shared legacy session)",
                     self.server)
        await bridge.post(frame, responder)

    def _send(self, frame: Frame) -> tuple[int, Exchange]:
        gw_id = next(self._ids)
        ex = Exchange(frame.id, self.backlog)
        self.by_gw[gw_id] = ex
        if frame.method == "subscriptions/listen":
            self.listens.add(gw_id)
        raw, msg = self._remap(frame, gw_id, ex)
        refused = self.upstream.request(Frame(raw, Kind.REQUEST, msg, frame.method, gw_id))
        if refused is not None:
            self.by_gw.pop(gw_id, None)
            refused = scan.replace_id(refused, jsonfast.dumps(frame.id))
            if self.tap is not None:
                self.tap.gateway(G2C, refused)
            ex.push(refused, final=True)
        # Alone: write now (latency). With company: one write for the whole batch (throughput).
        if len(self.by_gw) > 1:
            self.upstream.flush_soon()
        else:
            self.upstream.flush()
        return gw_id, ex

    def _remap(self, frame: Frame, gw_id: int, ex: Exchange) -> tuple[bytes, dict[str, Any]]:
        """The bytes to send, and the parsed message as far as an interceptor reads it (its
        progress token is ours; interceptors take the id from the frame, never from the message)."""
        params = frame.params
        meta = params.get("_meta") if isinstance(params, dict) else None
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if token is None or not isinstance(params, dict) or not isinstance(meta, dict):   # (a token: both are objects)
            return frame.raw if self.fronted else scan.replace_id(frame.raw, str(gw_id).encode()), frame.msg
        ours = f"wg-{gw_id}"
        msg = {**frame.msg, "id": gw_id, "params": {**params, "_meta": {**meta, "progressToken": ours}}}
        try:
            raw = jsonfast.dumps(msg)
        except ValueError:   # a value JSON cannot re-encode (1e400): keep the client's token as is
            self.tokens[str(token)] = (ex, token)
            return scan.replace_id(frame.raw, str(gw_id).encode()), frame.msg
        self.tokens[ours] = (ex, token)
        return raw, msg

    def end_subscriptions(self) -> None:
        """The gateway is draining: end each listen stream the spec's graceful way, with a
        completion result, so clients know it was not a dropped connection."""
        for gw_id in list(self.listens):
            ex = self.by_gw.get(gw_id)
            if ex is not None:
                done = jsonfast.dumps({"jsonrpc": "2.0", "id": ex.client_id, "result": {"resultType": "complete"}})
                if self.tap is not None:
                    self.tap.gateway(G2C, done)
                ex.push(done, final=True)

    def _finish(self, gw_id: int, ex: Exchange) -> None:
        self.by_gw.pop(gw_id, None)
        self.listens.discard(gw_id)
        for key in [k for k, (e, _) in self.tokens.items() if e is ex] if self.tokens else ():
            del self.tokens[key]
        if not ex.done:
            # The client closed its response stream: in this era, that is the cancellation.
            note = jsonfast.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                   "params": {"requestId": gw_id, "reason": "client closed the HTTP stream"}})
            cancel = decode(note)
            assert isinstance(cancel, Frame)
            self.upstream.notify(cancel)
            self.upstream.flush_soon()
            log.info("server %s: client closed its stream; cancelled request %r upstream", self.server, ex.client_id)
        ex.discard()

    async def _speaks_modern(self) -> bool:
        """Whether modern requests pass through. A probe that says nothing about the server (the gateway
        could not reach it, or it answered garbage) is not taken for the legacy era: the request passes
        through, to get that failure as its answer, and the next one probes again."""
        if self.era is None:
            probed = self._probed
            if probed is None:
                probed = self._probed = trio.Event()
                era = "unknown"
                try:
                    era = await self._probe()
                finally:
                    if era == "unknown":
                        self._probed = None
                    else:
                        self.era = era
                    probed.set()
                if era == "unknown":
                    log.info("server %s: could not tell its era (the probe failed); passed through", self.server)
                else:
                    log.info("server %s: speaks the %s era", self.server, self.era)
            else:
                await probed.wait()
        return self.era != LEGACY if self.bridge is not None else self.era == MODERN

    async def probe_versions(self) -> None:
        """Probe the server's era (as the first modern request would) unless that is known already:
        a legacy client needs to know whether the server speaks the legacy era at all (`versions`)."""
        if self.era is None and self.bridge is not None:
            await self._speaks_modern()

    async def _probe(self) -> str:
        gw_id = next(self._ids)
        ex = Exchange("probe", self.backlog)
        self._probe_ex = ex
        self.by_gw[gw_id] = ex
        frame = decode(jsonfast.dumps(discover_probe(gw_id)))
        assert isinstance(frame, Frame)
        refused = self.upstream.request(frame)
        self.upstream.flush_soon()
        if refused is not None:
            self.by_gw.pop(gw_id, None)
            return "unknown"
        answer_ = None
        try:
            with trio.move_on_after(PROBE_TIMEOUT):
                final = False
                while not final:
                    raw, final, _ = await ex.next()
                answer_ = decode(raw)
        finally:
            self._finish(gw_id, ex)   # cancels the probe upstream if it timed out
        if isinstance(answer_, Frame) and answer_.kind is Kind.RESPONSE:
            result = answer_.msg.get("result")
            self.versions = result.get("supportedVersions") if isinstance(result, dict) else None
            if isinstance(result, dict) and MODERN_VERSIONS[0] in (result.get("supportedVersions") or ()):
                return "modern"
        if isinstance(answer_, Frame) and answer_.kind is Kind.ERROR:
            error = answer_.msg["error"]
            if error.get("code") == -32022:
                return "modern"
            data = error.get("data")
            if isinstance(data, dict) and data.get("source") == errors.SOURCE:
                return "unknown"          # the gateway's error, not the server's answer
        return "legacy"

    # ---- Sink: server -> clients ---------------------------------------------------------

    def server_frame(self, frame: Frame) -> None:
        kind = frame.kind
        if kind is Kind.RESPONSE or kind is Kind.ERROR:
            ex = self.by_gw.get(frame.id)
            if ex is None:
                log.debug("server %s: answer to %r arrived after its client left; dropped", self.server, frame.id)
                return
            status = 200
            if kind is Kind.RESPONSE:
                self._learn_tools(frame.msg.get("result"))
            if kind is Kind.ERROR:   # an HTTP upstream's own status for it, else the one its code implies
                status = frame.status or _STATUS_FOR_CODE.get(frame.msg["error"].get("code"), 200)
            raw = scan.replace_id(frame.raw, jsonfast.dumps(ex.client_id))
            if self.tap is not None and ex is not self._probe_ex:
                self.tap.put(G2C, raw, kind, None, ex.client_id, frame.note)
            ex.push(raw, final=True, status=status)
            return
        if kind is Kind.NOTIFICATION:
            params = frame.params
            meta = params.get("_meta") if isinstance(params, dict) else None
            if isinstance(meta, dict) and META_SUBSCRIPTION_ID in meta:
                self._to_subscription(frame, params, meta)
                return
            if frame.method == "notifications/progress" and isinstance(params, dict):
                entry = self.tokens.get(str(params.get("progressToken")))
                if entry is not None:
                    ex, client_token = entry
                    raw = jsonfast.dumps({**frame.msg, "params": {**params, "progressToken": client_token}})
                    if self.tap is not None:
                        self.tap.put(G2C, raw, kind, frame.method, None, frame.note)
                    ex.push(raw)
                    return
            live = [ex for ex in self.by_gw.values() if not ex.done]
            if len(live) == 1:
                if self.tap is not None:
                    self.tap.frame(G2C, frame)
                live[0].push(frame.raw)
                return
            log.debug("server %s: %s has no request to go with; dropped", self.server, frame.method)
            return
        log.warning("server %s: sent a %s request, which the modern era does not allow on stdio; dropped",
                    self.server, frame.method)

    def _learn_tools(self, result: Any) -> None:
        """Remember tool definitions from tools/list answers: their x-mcp-header annotations say
        which Mcp-Param-* headers a tools/call must carry (checked at the HTTP edge)."""
        if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
            return
        for tool in result["tools"]:
            if isinstance(tool, dict) and isinstance(tool.get("name"), str) and len(self.tools) < 10000:
                self.tools[tool["name"]] = tool

    def _to_subscription(self, frame: Frame, params: dict, meta: dict) -> None:
        """A subscriptions/listen stream's notification: its id is our remapped request id."""
        ex = self.by_gw.get(meta[META_SUBSCRIPTION_ID])
        if ex is None:
            log.debug("server %s: %s for a subscription that has ended; dropped", self.server, frame.method)
            return
        restored = {**params, "_meta": {**meta, META_SUBSCRIPTION_ID: ex.client_id}}
        raw = jsonfast.dumps({**frame.msg, "params": restored})
        if self.tap is not None:
            self.tap.put(G2C, raw, frame.kind, frame.method, None, frame.note)
        ex.push(raw)

    def gateway_reply(self, req_id: Any, data: bytes) -> None:
        ex = self.by_gw.get(req_id)
        if ex is not None:
            data = scan.replace_id(data, jsonfast.dumps(ex.client_id))
            if self.tap is not None and ex is not self._probe_ex:
                self.tap.gateway(G2C, data)
            ex.push(data, final=True)

    def flush(self) -> None:
        """Nothing to do: handlers write as they pull."""

    async def wait_writable(self) -> None:
        await self.backlog.wait_below()
