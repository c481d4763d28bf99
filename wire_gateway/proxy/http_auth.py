"""The HTTP face of auth: who a request is (through the gate), the answers that refuse it, and
the Protected Resource Metadata (RFC 9728) that tells a client where to get credentials.

Refusals are what the MCP authorization spec and RFC 6750 ask for: 401 with
`WWW-Authenticate: Bearer resource_metadata="..."` (plus `error="invalid_token"` when
credentials were sent and are not good), 403 with `error="insufficient_scope"` for a proven
caller outside its project, 429 and 503 with `Retry-After`. The body is a JSON-RPC error
whose message says what to do. A credential is never echoed back.
"""
from __future__ import annotations

import json
from typing import Any

from wire_gateway.auth.buckets import retry_after_header
from wire_gateway.auth.directory import Refusal, refusal_message
from wire_gateway.wire import errors

WELL_KNOWN = "/.well-known/oauth-protected-resource"
JSON = ("content-type", "application/json")


class ResourceMetadata:
    """The gateway as an OAuth protected resource: one resource per MCP endpoint (`/mcp` and each
    `/mcp/NAME`), its metadata at the path-inserted well-known URI and, for `/mcp`, at the root."""

    def __init__(self, base: str, authorization_servers: list[str], scopes: list[str] | None = None) -> None:
        self.base = base.rstrip("/")
        self.authorization_servers = authorization_servers
        self.scopes = scopes

    def url_for(self, mcp_path: str) -> str:
        return f"{self.base}{WELL_KNOWN}{mcp_path}"

    def document(self, path: str) -> bytes | None:
        """The metadata served at `path`, or None when `path` is not a metadata URI of ours."""
        rest = path[len(WELL_KNOWN):] if path.startswith(WELL_KNOWN) else None
        if rest is None:
            return None
        if rest in ("", "/"):
            rest = "/mcp"
        if not (rest == "/mcp" or (rest.startswith("/mcp/") and rest.count("/") == 2)):
            return None
        doc: dict[str, Any] = {"resource": self.base + rest, "bearer_methods_supported": ["header"],
                               "resource_name": "wire-gateway " + rest}
        if self.authorization_servers:
            doc["authorization_servers"] = self.authorization_servers
        if self.scopes:
            doc["scopes_supported"] = self.scopes
        return json.dumps(doc).encode()

    def challenge(self, refusal: Refusal, mcp_path: str) -> str:
        parts = [f'resource_metadata="{self.url_for(mcp_path)}"']
        if refusal.error:
            parts.append(f'error="{refusal.error}"')
            parts.append('error_description="' + refusal.reason.replace('"', "'").replace("\\", "/") + '"')
        if self.scopes and refusal.status in (401, 403):
            parts.append(f'scope="{" ".join(self.scopes)}"')
        return "Bearer " + ", ".join(parts)


def refusal_response(refusal: Refusal, meta: ResourceMetadata, mcp_path: str,
                     req_id: Any = None) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [JSON]
    if refusal.status in (401, 403):
        headers.append(("www-authenticate", meta.challenge(refusal, mcp_path)))
    if refusal.retry_after is not None:
        headers.append(("retry-after", retry_after_header(refusal.retry_after)))
    code = errors.RATE_LIMITED if refusal.status == 429 else errors.UNAUTHORIZED
    data = {"status": refusal.status}
    if refusal.retry_after is not None:
        data["retryAfterSeconds"] = int(retry_after_header(refusal.retry_after))
    message = refusal_message(refusal, "retry after the Retry-After header's seconds")
    return refusal.status, headers, errors.error_frame(req_id, code, message, data)
