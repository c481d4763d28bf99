"""JSON-RPC error codes the gateway emits, and the builders for error frames.

Protocol errors use the JSON-RPC codes. Errors the gateway raises on its own
behalf (an upstream died, is restarting, sent garbage) use codes outside the
JSON-RPC reserved range (-32768..-32000), as the MCP spec asks of new
implementation-defined codes, and carry `data.source = "wire-gateway"` so they
can never be mistaken for an answer from the server.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wire_gateway.wire import jsonfast

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
MISSING_CLIENT_CAPABILITY = -32021   # 2026-07-28 MissingRequiredClientCapabilityError (HTTP 400)

# Gateway-local codes (documented in docs/errors.md).
UPSTREAM_EXITED = -31001        # the server process ended before answering
UPSTREAM_UNAVAILABLE = -31002   # the server cannot take requests now (crash loop, queue full, shutting down)
UPSTREAM_BAD_FRAME = -31003     # the server answered with a frame the gateway could not use
GATEWAY_OVERLOADED = -31004     # a gateway limit (in-flight requests, queue) was reached
ERA_MISMATCH = -31005           # aggregate: a message that cannot cross between the client's and a server's era
TOOL_QUARANTINED = -31006       # the tool's definition changed since it was pinned; an operator must approve it
UNAUTHORIZED = -31007           # no valid credentials (HTTP 401), or the caller's project does not include this (403)
RATE_LIMITED = -31008           # the caller (key, project or address) is over its rate limit (HTTP 429)
STORE_UNREACHABLE = -31009      # the request needs the shared store (Redis), which is unreachable (HTTP 503)
INSTANCE_LOST = -31010          # the gateway instance that held the request stopped before answering it

SOURCE = "wire-gateway"

# What every error answer's message and data go through before they leave: the process's secret
# masker (`telemetry.masking.configure` installs it; this layer must not know what a secret is).
# These texts quote servers (their stderr, an upstream's error page) and configs; none of them is
# forwarded data, which never comes here.
_text_filter: Callable[[str, dict[str, Any]], tuple[str, Any]] | None = None


def set_text_filter(fn: Callable[[str, dict[str, Any]], tuple[str, Any]] | None) -> None:
    """Install `fn` ((message, data) -> the same, masked) for every error frame built from now on."""
    global _text_filter
    _text_filter = fn


def error_frame(req_id: Any, code: int, message: str, data: dict[str, Any] | None = None) -> bytes:
    """One JSON-RPC error response as bytes (no trailing newline); message and data masked."""
    payload: dict[str, Any] = {"source": SOURCE}
    if data:
        payload.update(data)
    if _text_filter is not None:
        message, payload = _text_filter(message, payload)
    return jsonfast.dumps(
        {"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message, "data": payload}}
    )
