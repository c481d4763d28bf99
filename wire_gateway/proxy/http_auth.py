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
from wire_gateway.auth.directory import Principal, Refusal, refusal_message
from wire_gateway.auth.gate import credential_of, gate_for
from wire_gateway.config import Config
from wire_gateway.transport.http_request import Request
from wire_gateway.wire import errors
from wire_gateway.wire.forwarded import TrustedProxies, parse_networks

WELL_KNOWN = "/.well-known/oauth-protected-resource"
Response = tuple[int, list[tuple[str, str]], bytes]
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


def refusal_response(refusal: Refusal, meta: ResourceMetadata, mcp_path: str, req_id: Any = None) -> Response:
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


class HttpAuth:
    """What the HTTP front does about auth: the gate and its tasks, the metadata, and the check of
    each request to an MCP endpoint (`mcp_path` is `/mcp` for the aggregate, else `/mcp/NAME`)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.gate = gate_for(config)
        self.proxies = TrustedProxies(parse_networks(config.http.trusted_proxies))
        self.resource: ResourceMetadata | None = None

    async def start(self, nursery: Any, store: Any) -> None:
        """The gate's refresh task; with Redis, the store's change events and shared budgets."""
        store.subscribe(self.gate.on_store_event)
        take_token = getattr(store, "take_token", None)
        if take_token is not None:
            self.gate.shared_bucket = take_token
        await nursery.start(self.gate.run)

    def listening(self, base: str) -> None:
        """Once the front knows its URL: the metadata, and the audiences tokens may name."""
        auth = self.config.auth
        jwt = auth.jwt if auth.tokens else None
        self.resource = ResourceMetadata(base, [jwt.issuer] if jwt else [], list(jwt.required_scopes) if jwt else None)
        if jwt is not None:
            self.gate.enable_tokens(self.resource.base, list(self.config.servers))

    async def check(self, server: str | None, mcp_path: str, request: Request) -> Principal | Response:
        """The caller, or the response that refuses it. `server` None: the aggregate (any project)."""
        credential = credential_of(request.headers)
        fast = self.gate.proven(credential) if credential is not None else None    # the usual case: no await
        if fast is not None and (server is None or fast.project.may_use(server)):
            return fast
        address = self.address(request)
        got = await self.gate.authenticate(credential, address)
        meta = self.metadata
        if isinstance(got, Principal) and got.kind == "jwt" and not got.serves(meta.base, meta.base + mcp_path):
            got = self.gate.refuse(Refusal(
                401, f"the token is for another resource ({', '.join(got.audiences)}); ask for one with "
                f"resource={meta.base + mcp_path}"), got, address, server)
        elif isinstance(got, Principal) and server is not None and not got.project.may_use(server):
            got = self.gate.forbid(got, server, None, f"project {got.project.name!r} does not include "
                                   f"server {server!r}", address)
        return got if isinstance(got, Principal) else refusal_response(got, meta, mcp_path)

    def not_your_session(self, principal: Principal, server: str, mcp_path: str, request: Request) -> Response:
        refusal = self.gate.forbid(principal, server, None, "this session was opened with another credential; "
                                   "a session is bound to the key or token that opened it",
                                   self.address(request))
        return refusal_response(refusal, self.metadata, mcp_path)

    def address(self, request: Request) -> str:
        """The caller's address for the audit log: behind a trusted proxy, the one it forwarded."""
        return self.proxies.client(request.client, request.header_all("x-forwarded-for"))

    @property
    def metadata(self) -> ResourceMetadata:
        assert self.resource is not None, "HttpAuth.listening() runs before any request is served"
        return self.resource
