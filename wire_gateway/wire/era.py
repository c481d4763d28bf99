"""Which era of MCP a message belongs to.

Legacy (2024-11-05 .. 2025-11-25) opens a session with `initialize`; modern
(2026-07-28 and later) carries the protocol version in every request's `_meta`.
"""
from __future__ import annotations

from typing import Any

LEGACY_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
MODERN_VERSIONS = ("2026-07-28",)
META_PROTOCOL_VERSION = "io.modelcontextprotocol/protocolVersion"
META_SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
META_CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"

LEGACY = "legacy"
MODERN = "modern"


def discover_probe(req_id: Any) -> dict[str, Any]:
    """The `server/discover` the gateway sends to learn a server's era: a modern server answers it,
    a legacy-only one refuses it (or answers with no `supportedVersions`)."""
    return {"jsonrpc": "2.0", "id": req_id, "method": "server/discover",
            "params": {"_meta": {META_PROTOCOL_VERSION: MODERN_VERSIONS[0],
                                 "io.modelcontextprotocol/clientInfo": {"name": "wire-gateway", "version": "0"},
                                 META_CLIENT_CAPABILITIES: {}}}}


def request_version(msg: dict[str, Any]) -> str | None:
    """The modern per-request protocol version, if the request carries one."""
    params = msg.get("params")
    if isinstance(params, dict):
        meta = params.get("_meta")
        if isinstance(meta, dict):
            version = meta.get(META_PROTOCOL_VERSION)
            if isinstance(version, str):
                return version
    return None


def era_of_request(method: str | None, msg: dict[str, Any]) -> str | None:
    """LEGACY for `initialize`, MODERN for a request with modern `_meta`, else None (unknown)."""
    if method == "initialize":
        return LEGACY
    if request_version(msg) is not None:
        return MODERN
    return None


def missing_meta(msg: dict[str, Any]) -> list[str]:
    """What a modern request lacks of the `_meta` fields 2026-07-28 requires on every request
    (basic/index: the protocol version, a string, and the client capabilities, an object; a
    request missing one is malformed: -32602, on HTTP 400). Empty when it has them."""
    params = msg.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict):
        return ["params._meta"]
    missing = []
    if not isinstance(meta.get(META_PROTOCOL_VERSION), str):
        missing.append(f"params._meta[{META_PROTOCOL_VERSION!r}]")
    if not isinstance(meta.get(META_CLIENT_CAPABILITIES), dict):
        missing.append(f"params._meta[{META_CLIENT_CAPABILITIES!r}]")
    return missing
