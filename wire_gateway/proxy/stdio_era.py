"""The stdio front with one server (`stdio --server NAME`): passthrough or the era bridge, chosen at
the client's first request (docs/bridge.md).

The server is started at once, as always, with a `SinkSwitch` in front of the session. The client's
first request says its era: a legacy one (or any request without the modern `_meta`) is passed
through from then on, the session talking to the server directly, as before the bridge; so is a
modern one when the server's `era` is `modern`. Otherwise a modern client needs to know what the
server speaks: with `era: legacy` it is taken as said, with `auto` the server is probed with
`server/discover` first, the client's frames held meanwhile (a dual-era client sends that very
request first, so it waits one round trip more). A modern server is then passed through; a legacy
one is handed to the bridge (era_bridge.py), which serves the rest of the session. A probe that
says nothing of the server (it is not running, or the gateway's error came back instead of its
answer) is not taken for the legacy era: the session is passed through, so the client gets that
failure as the server gave it.

A legacy client's `initialize` is bridged too when the server speaks only the modern era: at once
with `era: modern`; with `auto` only once the server has refused it (its answer is watched, an
`_InitWatch` in the switch until it comes) and then listed no legacy version in `server/discover`.
A server that accepts it costs nothing more than before: no probe, and the watch ends with that
answer.

Until the choice, this object is the session's upstream and the front's; after it, the session
talks to the chosen upstream directly, and the front's per-chunk calls (`flush`, `wait_writable`)
are the chosen upstream's own bound methods.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import trio

from wire_gateway.config import Config, ServerSpec
from wire_gateway.proxy.aggregate import Aggregate
from wire_gateway.proxy.era_bridge import SinkSwitch, legacy_bridge, make_bridge, modern_only
from wire_gateway.proxy.route import open_upstream
from wire_gateway.proxy.session import PassthroughSession
from wire_gateway.upstream.handshake import Handshake
from wire_gateway.upstream.pending import PendingTable
from wire_gateway.upstream.protocol import Sink, Upstream
from wire_gateway.wire import errors, jsonfast
from wire_gateway.wire.era import (
    LEGACY,
    MODERN,
    MODERN_VERSIONS,
    discover_probe,
    request_version,
)
from wire_gateway.wire.frame import Frame, Kind, decode

log = logging.getLogger("wire_gateway.stdio")

PROBE_ID = "wire-gateway-era-probe"
PROBE_TIMEOUT = 10.0
UNSUPPORTED_VERSION = -32022      # a server that answers so speaks the modern era (of another version)


class EraChoice:
    """The upstream of a stdio session with one server, until the client's first request chooses."""

    flush: Callable[[], None]
    flush_soon: Callable[[], None]
    wait_writable: Callable[[], Coroutine[Any, Any, None]]

    def __init__(self, spec: ServerSpec, config: Config, session: Sink, services: Any) -> None:
        """`session`: a PassthroughSession, whose `upstream` becomes the chosen one."""
        self.spec = spec
        self.name = spec.name
        self.config = config
        self.session = session
        self.switch = SinkSwitch(session)
        self.real = open_upstream(spec, config, self.switch, services)
        self.current: Upstream = self.real
        self.bridge: Aggregate | None = None
        self.chosen = False
        self.held: list[Frame] | None = None       # the client's frames while the choice is being made
        self._probe: dict[str, Any] | None = None
        self._probed = trio.Event()
        self._decided = trio.Event()               # the held frames went to the chosen upstream
        self._tap: Any = None
        self.nursery: trio.Nursery | None = None
        self._init: Frame | None = None            # a legacy client's initialize, until the server accepts it
        self._bind(self.real)

    def _bind(self, upstream: Upstream) -> None:
        self.current = upstream
        self.flush = upstream.flush
        self.flush_soon = upstream.flush_soon
        self.wait_writable = upstream.wait_writable

    # ---- Upstream: what the session and the front read ----------------------------------------------

    @property
    def era(self) -> str | None:
        return self.current.era

    @era.setter
    def era(self, era: str | None) -> None:
        self.current.era = era

    @property
    def tap(self) -> Any:
        return self._tap

    @tap.setter
    def tap(self, tap: Any) -> None:
        self._tap = tap
        self.real.tap = tap

    @property
    def state(self) -> str:
        return self.real.state

    @property
    def restarts(self) -> int:
        return self.real.restarts

    @property
    def last_exit(self) -> str | None:
        return self.real.last_exit

    @property
    def pending(self) -> PendingTable:
        return self.current.pending

    @property
    def handshake(self) -> Handshake:
        return self.real.handshake

    @property
    def frames_in(self) -> int:
        return self.current.frames_in

    @property
    def frames_out(self) -> int:
        return self.current.frames_out

    # ---- the client's frames -----------------------------------------------------------------------

    def request(self, frame: Frame) -> bytes | None:
        if self.chosen:
            return self.current.request(frame)
        if self.held is not None:
            self.held.append(frame)
            return None
        modern = frame.method == "server/discover" or request_version(frame.msg) is not None
        assert self.nursery is not None
        if not modern and frame.method == "initialize" and self.spec.era != LEGACY:
            if self.spec.era == MODERN:        # pinned modern-only: bridged from the handshake on
                self.held = [frame]
                self.nursery.start_soon(self._bridge_legacy_client)
                return None
            self._choose(self.real)            # auto: passed through, unless the server refuses it
            self._init = frame
            self.switch.point_at(_InitWatch(self, frame.id))
            refused = self.real.request(frame)
            if refused is not None:
                self.switch.point_at(self.session)
            return refused
        if not modern or self.spec.era == MODERN:
            self._choose(self.real)
            return self.real.request(frame)
        self.held = [frame]
        self.nursery.start_soon(self._choose_for_modern)
        return None

    def notify(self, frame: Frame) -> None:
        if self.held is not None:
            self.held.append(frame)
        else:
            self.current.notify(frame)

    def reply(self, frame: Frame) -> None:
        if self.held is not None:
            self.held.append(frame)
        else:
            self.current.reply(frame)

    def _choose(self, upstream: Upstream) -> None:
        self.chosen = True
        if isinstance(self.session, PassthroughSession):
            self.session.upstream = upstream
        self._bind(upstream)

    async def _choose_for_modern(self) -> None:
        """A modern client: probe the server (unless its era is pinned), then pass through or bridge."""
        try:
            await self._choose_and_replay()
        finally:
            self._decided.set()

    async def _choose_and_replay(self) -> None:
        legacy = self.spec.era == LEGACY or not await self._speaks_modern()
        if not legacy:
            self.switch.point_at(self.session)
            self._choose(self.real)
        else:
            assert self.nursery is not None
            self.bridge, member = make_bridge(self.config, self.spec.name, self.session, self.real, lazy=False)
            await self._start_bridge(member)
            log.info("server %s: the client speaks the modern era, the server the legacy one: served through "
                     "the era bridge", self.spec.name)
        self._replay()

    async def _start_bridge(self, member: Sink) -> None:
        assert self.nursery is not None and self.bridge is not None
        self.bridge.tap = self._tap
        self.switch.point_at(member)
        await self.nursery.start(self.bridge.run)
        self._choose(self.bridge)

    # ---- a legacy client of a modern-only server ----------------------------------------------------

    def init_answered(self, frame: Frame) -> None:
        """The server's answer to a legacy client's `initialize` (era `auto`). Accepted: passthrough
        for good. Refused by the server itself: it may speak only the modern era, which its
        `server/discover` tells; the client's frames are held meanwhile."""
        init, self._init = self._init, None
        error = frame.msg.get("error") if frame.kind is Kind.ERROR else None
        data = error.get("data") if isinstance(error, dict) else None
        if init is None or error is None or (isinstance(data, dict) and data.get("source") == errors.SOURCE):
            self.switch.point_at(self.session)
            self.session.server_frame(frame)
            return
        self.chosen = False
        self.held = [init]
        if isinstance(self.session, PassthroughSession):
            self.session.upstream = self
        assert self.nursery is not None
        self.nursery.start_soon(self._bridge_if_modern_only, frame)

    async def _bridge_if_modern_only(self, refusal: Frame) -> None:
        try:
            self._reset_probe()
            frame = decode(jsonfast.dumps(discover_probe(PROBE_ID)))
            assert isinstance(frame, Frame)
            if self.real.request(frame) is None:
                self.real.flush()
                with trio.move_on_after(PROBE_TIMEOUT):
                    await self._probed.wait()
            result = (self._probe or {}).get("result")
            if not (isinstance(result, dict) and modern_only(result.get("supportedVersions"))):
                log.info("server %s: refused a legacy client's initialize, and does not speak only the modern "
                         "era; its refusal passed through", self.spec.name)
                self.switch.point_at(self.session)
                self.session.server_frame(refusal)
                self.held = (self.held or [])[1:]      # the initialize is answered (refused)
                self._choose(self.real)
                self._replay()
                return
            await self._bridge_legacy_client()
        finally:
            self._decided.set()

    async def _bridge_legacy_client(self) -> None:
        """Serve the rest of the session through the bridge, the initialize held first among them."""
        try:
            real = self.real
            self.bridge = legacy_bridge(self.config, self.spec.name, self.session, lambda *_: real, adopted=True)
            await self._start_bridge(self.bridge.members[self.spec.name])
            log.info("server %s: the client speaks the legacy era, the server only the modern one: served "
                     "through the era bridge", self.spec.name)
            self._replay()
        finally:
            self._decided.set()

    def _replay(self) -> None:
        held, self.held = self.held or [], None
        for frame in held:
            if frame.kind is Kind.REQUEST:
                refused = self.current.request(frame)
                if refused is not None:
                    self.session.gateway_reply(frame.id, refused)
            elif frame.kind is Kind.NOTIFICATION:
                self.current.notify(frame)
            else:
                self.current.reply(frame)
        self.current.flush()
        self.session.flush()

    async def _speaks_modern(self) -> bool:
        self.switch.point_at(_ProbeSink(self))    # the probe's answer is the gateway's, not the client's
        frame = decode(jsonfast.dumps(discover_probe(PROBE_ID)))
        assert isinstance(frame, Frame)
        if self.real.request(frame) is not None:
            log.info("server %s: could not probe its era (it is not running); passed through", self.spec.name)
            return True
        self.real.flush()
        with trio.move_on_after(PROBE_TIMEOUT):
            await self._probed.wait()
        answer = self._probe or {}
        result = answer.get("result")
        error = answer.get("error")
        if isinstance(error, dict) and isinstance(error.get("data"), dict) \
                and error["data"].get("source") == errors.SOURCE:
            log.info("server %s: could not tell its era (%s); passed through", self.spec.name, error.get("message"))
            return True       # the gateway's error, not the server's answer: the client gets the same failure
        modern = (isinstance(result, dict) and MODERN_VERSIONS[0] in (result.get("supportedVersions") or ())) or \
            (isinstance(error, dict) and error.get("code") == UNSUPPORTED_VERSION)
        log.info("server %s: speaks the %s era", self.spec.name, MODERN if modern else LEGACY)
        return modern

    def _reset_probe(self) -> None:
        self._probe, self._probed = None, trio.Event()

    def probed(self, answer: dict[str, Any]) -> None:
        self._probe = answer
        self._probed.set()

    # ---- lifecycle -----------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            await nursery.start(self.real.run)
            task_status.started()

    async def shutdown(self) -> None:
        if self.held is not None:      # a client that wrote and closed stdin while we chose still gets answers
            with trio.move_on_after(PROBE_TIMEOUT + 1.0):
                await self._decided.wait()
        if self.bridge is not None:
            await self.bridge.shutdown()
        await self.real.shutdown()


class _InitWatch:
    """The server's sink while a legacy client's `initialize` waits for its answer (era `auto`):
    the answer goes to the choice, which passes it on or takes the refusal for a modern-only server;
    so does the answer to the discover probe that may follow. Anything else is the client's."""

    def __init__(self, choice: EraChoice, init_id: Any) -> None:
        self.choice = choice
        self.init_id = init_id
        session = choice.session
        self.flush = session.flush
        self.wait_writable = session.wait_writable

    def server_frame(self, frame: Frame) -> None:
        if frame.kind in (Kind.RESPONSE, Kind.ERROR) and frame.id == self.init_id and self.choice._init is not None:
            self.choice.init_answered(frame)
        elif frame.kind in (Kind.RESPONSE, Kind.ERROR) and frame.id == PROBE_ID:
            self.choice.probed(frame.msg)
        else:
            self.choice.session.server_frame(frame)

    def gateway_reply(self, req_id: Any, data: bytes) -> None:
        if req_id == PROBE_ID:
            self.choice.probed(jsonfast.loads(data))
            return
        if req_id == self.init_id and self.choice._init is not None:   # the gateway's own error: passed on
            self.choice._init = None
            self.choice.switch.point_at(self.choice.session)
        self.choice.session.gateway_reply(req_id, data)


class _ProbeSink:
    """The server's sink while it is probed: the probe's answer is the gateway's, anything else the client's."""

    def __init__(self, choice: EraChoice) -> None:
        self.choice = choice
        session = choice.session
        self.flush = session.flush
        self.wait_writable = session.wait_writable

    def server_frame(self, frame: Frame) -> None:
        if frame.id == PROBE_ID and frame.kind in (Kind.RESPONSE, Kind.ERROR):
            self.choice.probed(frame.msg)
        else:
            self.choice.session.server_frame(frame)

    def gateway_reply(self, req_id: Any, data: bytes) -> None:
        if req_id == PROBE_ID:
            self.choice.probed(jsonfast.loads(data))
        else:
            self.choice.session.gateway_reply(req_id, data)
