"""The era bridge: a modern (2026-07-28) client served by a server that speaks only the legacy era,
and a legacy client served by a server that speaks only the modern one, on the single-server routes
(`/mcp/{server}`, `stdio --server`). docs/bridge.md says what crosses.

Why it is a one-server aggregate and not a translator of its own: the aggregate (proxy/aggregate/)
already terminates both eras. It answers `server/discover`, holds the legacy handshake with a
server (and the supervisor replays it after a restart), gives each forwarded request an id and a
progress token of its own, strips the modern `_meta` for a legacy server and adds `resultType` and
the cache hints to what comes back, applies the modern era's rules (-32022, the removed methods),
routes cancellations and keeps `subscriptions/listen` streams for list changes. A second
translator would repeat all of that and drift from it. What differs for one server is small and is
the aggregate's `single` mode: no name prefixes, the server's own cursors, and `server/discover`
made of the server's own `initialize` answer (its capabilities, `serverInfo`, instructions). The
server's requests to the client during a call become input-required results there too
(aggregate/asks.py), so the aggregate gains them as well.

The bridge adopts the route's existing upstream rather than starting its own: the shared process
(or the remote server's connection) the route already runs for modern clients, which has nothing
else to do when the server is legacy. It becomes one legacy session, shared by every modern client
of the route, for every call the server cannot ask anything; over HTTP a call it could ask gets a
session of its own (aggregate/sessions.py). Legacy clients still get a session each, passed
through as before. The hand-over is a
`SinkSwitch`: the upstream is made with one in front of its real sink, whose methods are that
sink's own bound methods, rebound once to the bridge's member when the bridge takes over. Until
then (and for good, when eras match) a frame costs exactly what it cost before: the switch adds no
call, only a different attribute to read it from.

The other half, a legacy client of a modern-only server, is the same one-server aggregate with the
eras swapped (`legacy_bridge`): it answers `initialize` from the server's `server/discover`, keeps
the legacy session itself and sends each request stateless with the modern `_meta`. Such a session
has an upstream of its own (a process, or a connection to a remote server), as every legacy
session of the route always had, so nothing is adopted: the aggregate starts and stops it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Coroutine
from typing import Any

from wire_gateway.config import Config, Limits, ServerSpec
from wire_gateway.proxy.aggregate import Aggregate
from wire_gateway.proxy.aggregate.members import Member, UpstreamFactory
from wire_gateway.upstream.protocol import Sink, Upstream
from wire_gateway.wire.era import LEGACY, LEGACY_VERSIONS, MODERN, MODERN_VERSIONS
from wire_gateway.wire.frame import Frame

ERAS = ("auto", "legacy", "modern")     # a server's `era` (config): what the single-server routes assume


class SinkSwitch:
    """An upstream's sink that can be handed to another once: its methods are the target's own."""

    server_frame: Callable[[Frame], None]
    gateway_reply: Callable[[Any, bytes], None]
    flush: Callable[[], None]
    wait_writable: Callable[[], Coroutine[Any, Any, None]]

    def __init__(self, target: Sink) -> None:
        self.point_at(target)

    def point_at(self, target: Sink) -> None:
        self.server_frame = target.server_frame
        self.gateway_reply = target.gateway_reply
        self.flush = target.flush
        self.wait_writable = target.wait_writable


def make_bridge(config: Config, name: str, sink: Sink, upstream: Upstream, lazy: bool,
                session_factory: UpstreamFactory | None = None) -> tuple[Aggregate, Member]:
    """The bridge for modern clients of server `name`: a one-server aggregate whose member talks to
    `upstream` (already running, and another's to stop). The caller points the upstream's
    `SinkSwitch` at the member returned when it hands the upstream over. `session_factory`: the
    route serves many clients, so a call the server could ask something gets a legacy session of its
    own (aggregate/sessions.py)."""
    one = dataclasses.replace(config, servers={name: config.servers[name]})

    def adopt(spec: ServerSpec, limits: Limits, member: Sink) -> Upstream:
        return upstream

    agg = Aggregate(one, sink, adopt, client_era=MODERN, lazy=lazy, single=True, adopted=True, member_era=LEGACY,
                    session_factory=session_factory)
    return agg, agg.members[name]


def legacy_bridge(config: Config, name: str, sink: Sink, factory: UpstreamFactory, adopted: bool = False) -> Aggregate:
    """The bridge for one legacy client of server `name`, a modern-only server: a one-server
    aggregate whose member's upstream `factory` makes (the route's, with the server's policy chain);
    `adopted`: that upstream is already running and another's to stop (the stdio front's process,
    which the legacy client found to refuse `initialize`)."""
    one = dataclasses.replace(config, servers={name: config.servers[name]})
    return Aggregate(one, sink, factory, client_era=LEGACY, single=True, adopted=adopted, member_era=MODERN)


def modern_only(versions: Any) -> bool:
    """Whether a `server/discover` answer's `supportedVersions` says the server speaks the modern era
    and no legacy version: the servers a legacy client reaches through the bridge."""
    return isinstance(versions, list) and MODERN_VERSIONS[0] in versions \
        and not any(v in LEGACY_VERSIONS for v in versions)
