"""The dump's hooks: `Tap`, which the sessions and upstreams call at each hop, and the names of
the four hops (directions) a frame is recorded at.

Apart from the writer (`dump.writer`) so that the code on the proxy's path imports only this: the
hooks and what they append to the dumper's queue (the tuple layout and each hop's record heads,
which the encoders read). A hook (`Tap.frame` / `Tap.put`) only reads the monotonic clock and
appends a tuple to a bounded list; it never encodes, masks or writes, and never waits. With dumps
off, a hook costs one `is not None` at its call site (there is no tap).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import orjson

from wire_gateway.wire import jsonfast
from wire_gateway.wire.frame import Frame, Kind

if TYPE_CHECKING:
    from wire_gateway.dump.writer import Dumper

C2G = "client->gateway"
G2S = "gateway->server"
S2G = "server->gateway"
G2C = "gateway->client"
DIRECTIONS = (C2G, G2S, S2G, G2C)
GATEWAY = "gateway"          # policy of a frame the gateway wrote itself (an error, a replay)

# A response at one hop is timed from its request at the same hop pair.
_ASKED_AT = {G2C: C2G, C2G: G2C, S2G: G2S, G2S: S2G}
KINDS = ("request", "notification", "response", "error", "invalid")   # the order of a hop's heads
_monotonic = time.monotonic


class _Hops(dict[str, list[Any]]):
    """A tap's hops by direction (`Tap.hop`), made on first use for a direction beyond the four."""

    __slots__ = ("tap",)
    tap: Tap

    def __missing__(self, direction: str) -> list[Any]:
        hop = self[direction] = self.tap.hop(direction)
        return hop


class _PyTapCore:
    """The hooks in Python (where the C encoder is not built, or WIRE_GATEWAY_DUMP_ENCODER=python);
    `_records.TapCore` is the same in C. A hook runs on the proxy's hot path: one clock read (the
    monotonic one; the writer derives the wall-clock time from it), one tuple appended to the
    dumper's queue, which the tap holds itself (the writer empties that list in place, it never
    replaces it). The tuple holds the direction's hop (`hop`): what the writer needs of the tap,
    without a lookup per record. When the queue is full the frame is only counted; the frame that
    makes the queue non-empty wakes the writer (`Dumper.wake_up`: it may be idle)."""

    __slots__ = ("queue", "hops", "dumper", "limit")
    queue: list[tuple[Any, ...]]
    hops: _Hops
    dumper: Dumper
    limit: int

    def frame(self, direction: str, frame: Frame, policy: str | None = None) -> None:
        queue = self.queue
        if len(queue) < self.limit:
            queue.append((_monotonic(), self.hops[direction], frame.raw, frame.kind, frame.method, frame.id,
                          policy or frame.note))
            if len(queue) == 1:
                self.dumper.wake_up()
        else:
            self.dumper.dropped += 1

    def put(self, direction: str, raw: bytes, kind: Kind | None = None, method: str | None = None,
            msg_id: Any = None, policy: str | None = None) -> None:
        """kind None: the writer decodes `raw` to find kind, method and id (gateway replies)."""
        queue = self.queue
        if len(queue) < self.limit:
            queue.append((_monotonic(), self.hops[direction], raw, kind, method, msg_id, policy))
            if len(queue) == 1:
                self.dumper.wake_up()
        else:
            self.dumper.dropped += 1


class Tap:
    """One hook site's context (session, server, transport, era) and its way into the queue:
    `frame(direction, frame, policy=None)` and `put(direction, raw, kind, method, msg_id, policy)`
    (from `_records.TapCore` where the C encoder is built, else `_PyTapCore`; `Dumper.tap` picks)."""

    # The slots are the concrete class's (_TAP_SLOTS beside its core's: two bases with slots of
    # their own cannot be combined). A type checker would read `__slots__ = ()` as "no attributes",
    # so it is shown the attributes and the hooks that the core brings instead.
    if not TYPE_CHECKING:
        __slots__ = ()
    else:
        dumper: Dumper
        queue: list[tuple[Any, ...]]
        limit: int
        hops: _Hops

        def frame(self, direction: str, frame: Frame, policy: str | None = None) -> None: ...
        def put(self, direction: str, raw: bytes, kind: Kind | None = None, method: str | None = None,
                msg_id: Any = None, policy: str | None = None) -> None: ...
    _TAP_SLOTS = ("session", "server", "transport", "upstream", "unanswered", "heads_era", "__weakref__")

    def __init__(self, dumper: Dumper, session: str, server: str, transport: str,
                 era: str | None = None, upstream: Any = None) -> None:
        self.dumper = dumper
        self.session = session
        self.server = server
        self.transport = transport
        self.upstream = upstream
        self.queue = dumper.queue
        self.limit = dumper.limit
        self.heads_era = era         # fixed, or (era None) read from `upstream.era` when written
        # Requests seen at each direction and not answered yet: id -> when (for latency_ms).
        self.unanswered: dict[str, dict[Any, float]] = {direction: {} for direction in DIRECTIONS}
        hops = _Hops()
        hops.tap = self
        for direction in DIRECTIONS:
            hops[direction] = self.hop(direction)
        self.hops = hops
        dumper.taps.add(self)
        if era is None:
            dumper.dynamic_taps.add(self)

    def for_server(self, server: str, upstream: Any) -> Tap:
        """The same session seen at one of its servers (the aggregate's members): that server's
        name, and its own era, read from its upstream."""
        return type(self)(self.dumper, self.session, server, self.transport, None, upstream)

    def gateway(self, direction: str, raw: bytes) -> None:
        """A frame the gateway wrote itself (an error answer, a replayed handshake)."""
        self.put(direction, raw, None, None, None, GATEWAY)

    def hop(self, direction: str) -> list:
        """What the writer needs for a frame at this tap and direction: the record's fixed middle
        (from "session" to "kind") for each kind in KINDS' order, then the open requests seen at
        this direction, then those whose answers pass here (the opposite direction's)."""
        asked = self.unanswered.setdefault(direction, {})
        partner = _ASKED_AT.get(direction)
        answered = self.unanswered.setdefault(partner, {}) if partner else {}
        return [*self._heads_for(direction), asked, answered]

    def sync_era(self) -> None:
        """A tap without a fixed era: the heads follow its upstream's era (once per chunk). The
        hops are changed in place: frames queued already are written with the era of their
        writing, as the docs say."""
        era = getattr(self.upstream, "era", None)
        if era != self.heads_era:
            self.heads_era = era
            for direction, hop in self.hops.items():
                hop[:len(KINDS)] = self._heads_for(direction)

    def _heads_for(self, direction: str) -> tuple[bytes, ...]:
        head = b',"session":%s,"server":%s,"transport":%s,"era":%s,"dir":%s,"kind":' % (
            to_json(self.session), to_json(self.server), to_json(self.transport), to_json(self.heads_era),
            to_json(direction))
        return tuple(head + to_json(kind) for kind in KINDS)


class _PyTap(_PyTapCore, Tap):
    __slots__ = Tap._TAP_SLOTS


_CTap: type[Tap] | None
try:   # the hooks in C: an optional part of the build, as the C encoder they come with
    from wire_gateway.dump._records import TapCore
except ImportError:
    _CTap = None
else:
    class _NativeTap(TapCore, Tap):
        __slots__ = Tap._TAP_SLOTS
    _CTap = _NativeTap


def tap_class(native: bool) -> type[Tap]:
    """The taps' class: hooks in C (`_records.TapCore`) where asked for and built, else in Python."""
    return _CTap if native and _CTap is not None else _PyTap


def to_json(value: Any) -> bytes:
    """A value's JSON text: orjson's, or the exact fallback for an integer beyond 64 bits."""
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):   # an id beyond 64 bits
        return jsonfast.dumps(value)
