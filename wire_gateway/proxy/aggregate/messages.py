"""The messages the aggregate reads and writes as dicts, and who it says it is.

Unlike a session, which passes the client's bytes on, the aggregate terminates the protocol: it
answers some requests itself, makes errors of its own and talks to every member as their client.
These few helpers and names are shared by all of its modules, so they live once, here.
"""
from __future__ import annotations

from typing import Any

from wire_gateway import __version__
from wire_gateway.wire import errors, jsonfast
from wire_gateway.wire.era import LEGACY, META_PROTOCOL_VERSION, MODERN_VERSIONS

SERVER_INFO = {"name": "wire-gateway-aggregate", "version": __version__}
CLIENT_INFO = {"name": "wire-gateway", "version": __version__}
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_CLIENT_CAPS = "io.modelcontextprotocol/clientCapabilities"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"

# 2026-07-28 LoggingLevel, least severe first (RFC 5424's order)
LOG_LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")


def dict_at(msg: dict[str, Any], key: str) -> dict[str, Any]:
    """The object at `key` of a peer's message, or {} when it is anything else."""
    value = msg.get(key)
    return value if isinstance(value, dict) else {}


def error_msg(req_id: Any, code: int, message: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-RPC error as the gateway words it (`wire.errors`, masked), as a message."""
    return jsonfast.loads(errors.error_frame(req_id, code, message, data))


def result_msg(req_id: Any, result: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "result": result}


def modern_envelope(for_client_era: str | None, client_init: dict[str, Any],
                    log_level: str | None = None) -> dict[str, Any]:
    """The modern `_meta` keys a request to a modern member must carry. A legacy client's identity
    and capabilities (from its `initialize` params) are passed on: the server's input requests are
    put to it as requests of the gateway's own (asks_legacy.py). `log_level`: what the legacy client
    asked for with `logging/setLevel`, which the modern era asks for per request."""
    legacy = for_client_era == LEGACY
    info = client_init.get("clientInfo") if legacy else None
    caps = client_init.get("capabilities") if legacy else None
    envelope = {META_PROTOCOL_VERSION: MODERN_VERSIONS[0], META_CLIENT_INFO: info or CLIENT_INFO,
                META_CLIENT_CAPS: caps if isinstance(caps, dict) else {}}
    if log_level is not None:
        envelope[META_LOG_LEVEL] = log_level
    return envelope


def client_log_level(params: dict[str, Any]) -> str | None:
    """The log level a modern client's request asked for (`_meta` logLevel), if it is a known one."""
    meta = params.get("_meta")
    level = meta.get(META_LOG_LEVEL) if isinstance(meta, dict) else None
    return level if level in LOG_LEVELS else None
