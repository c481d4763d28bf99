"""What the aggregate answers itself instead of routing: the handshakes and the modern era's refusals.

A legacy client's `initialize` and a modern client's `server/discover` are answered with what the
members offer together (merged capabilities, each member's instructions, the aggregate's own
`serverInfo`), or, for the era bridge's one-server aggregate (`single`), with the server's own
`initialize` answer in the modern shape (and, the other way round, the server's own
`server/discover` answer in the legacy shape). To a modern client the aggregate is a 2026-07-28 server,
which refuses a protocol version it does not speak and the methods that era removed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wire_gateway.proxy.aggregate.directory import RouteError
from wire_gateway.proxy.aggregate.messages import META_SERVER_INFO, SERVER_INFO
from wire_gateway.wire import errors, namespacing as ns
from wire_gateway.wire.era import LEGACY_VERSIONS, MODERN_VERSIONS, request_version
from wire_gateway.wire.frame import Frame

if TYPE_CHECKING:
    from wire_gateway.proxy.aggregate.endpoint import Aggregate

UNSUPPORTED_VERSION = -32022   # 2026-07-28 UnsupportedProtocolVersionError
# Methods 2026-07-28 removed, and what replaced each (changelog).
REMOVED_IN_MODERN = {
    "ping": "each request stands alone; there is no session to keep alive",
    "logging/setLevel": "a request asks for log messages with _meta['io.modelcontextprotocol/logLevel']",
    "resources/subscribe": "subscriptions/listen with notifications.resourceSubscriptions replaces it",
    "resources/unsubscribe": "closing the subscriptions/listen stream replaces it",
}


def modern_rules(frame: Frame) -> None:
    """What the aggregate, a modern server to a modern client, refuses (2026-07-28): a protocol
    version it does not speak (UnsupportedProtocolVersionError: -32022 with the versions it
    does), and the methods that era removed (-32601), `ping` among them (a legacy `ping`, without the
    modern `_meta`, is answered at once by Aggregate.request)."""
    version = request_version(frame.msg)
    if version is not None and version not in MODERN_VERSIONS:
        raise RouteError(UNSUPPORTED_VERSION, f"Unsupported protocol version {version!r}; the aggregate "
                         f"speaks {', '.join([*MODERN_VERSIONS, *LEGACY_VERSIONS])}",
                         {"supported": [*MODERN_VERSIONS, *LEGACY_VERSIONS], "requested": version})
    if frame.method == "initialize":
        raise RouteError(errors.METHOD_NOT_FOUND,
                         f"Method not found: initialize is not a method of MCP {MODERN_VERSIONS[0]}, whose "
                         "requests need no handshake (each carries its protocol version in params._meta); to "
                         f"open a legacy session ({LEGACY_VERSIONS[0]} or earlier), send initialize without "
                         "the modern _meta")
    if frame.method in REMOVED_IN_MODERN:
        raise RouteError(errors.METHOD_NOT_FOUND,
                         f"Method not found: {frame.method} is not a method of MCP {MODERN_VERSIONS[0]} "
                         f"({REMOVED_IN_MODERN[frame.method]})")


def initialize_result(agg: Aggregate) -> dict[str, Any]:
    """The answer to a legacy client's `initialize` (its version already chosen in the handshake)."""
    if agg.single:
        return _initialize_one(agg)
    return {"protocolVersion": agg.handshake.version, "capabilities": _capabilities(agg),
            "serverInfo": SERVER_INFO, **_instructions(agg)}


def discover_result(agg: Aggregate) -> dict[str, Any]:
    if agg.single:
        return _discover_one(agg)
    return {"supportedVersions": [*MODERN_VERSIONS, *LEGACY_VERSIONS], "capabilities": _capabilities(agg),
            "_meta": {META_SERVER_INFO: SERVER_INFO}, **_instructions(agg)}


def _discover_one(agg: Aggregate) -> dict[str, Any]:
    """The bridge's `server/discover`: the server's own `initialize` answer, in the modern shape."""
    member = agg.members[agg.name]
    if not member.ok:
        raise RouteError(errors.UPSTREAM_UNAVAILABLE, f"server '{member.name}' is unavailable: {member.problem}",
                         {"server": member.name})
    caps = member.capabilities      # resources.subscribe: carried to listen streams (subscriptions.py)
    result: dict[str, Any] = {"supportedVersions": [*MODERN_VERSIONS, *LEGACY_VERSIONS], "capabilities": caps,
                              "_meta": {META_SERVER_INFO: member.server_info or SERVER_INFO}}
    if isinstance(member.instructions, str):
        result["instructions"] = member.instructions
    return result


def _initialize_one(agg: Aggregate) -> dict[str, Any]:
    """The bridge's `initialize` for a legacy client of a modern server: the server's own
    `server/discover` answer (capabilities, `serverInfo`, instructions), in the legacy shape."""
    member = agg.members[agg.name]
    if not member.ok:
        raise RouteError(errors.UPSTREAM_UNAVAILABLE, f"server '{member.name}' is unavailable: {member.problem}",
                         {"server": member.name})
    result: dict[str, Any] = {"protocolVersion": agg.handshake.version, "capabilities": member.capabilities,
                              "serverInfo": member.server_info or SERVER_INFO}
    if isinstance(member.instructions, str):
        result["instructions"] = member.instructions
    return result


def _capabilities(agg: Aggregate) -> dict[str, Any]:
    return ns.merge_capabilities([m.capabilities for m in agg.ready()])


def _instructions(agg: Aggregate) -> dict[str, Any]:
    parts = [f"{m.name}: {m.instructions}" for m in agg.ready() if isinstance(m.instructions, str)]
    return {"instructions": "\n".join(parts)} if parts else {}
