"""The gateway's own credentials for a remote server: OAuth 2.0 client credentials.

authlib's client fetches the token (RFC 6749 §4.4) with the RFC 8707 `resource` (the server's
URL unless configured), over HTTPS (plain http only to a loopback host), optionally with a
client certificate (RFC 8705 mutual TLS). The token is kept until `refresh_before` seconds
before it expires, then fetched anew; a token the server refuses (401) is dropped, revoked
(RFC 7009, when a revocation endpoint is configured) and fetched again once. Transient
failures (connection errors, 5xx, 429) are retried with backoff. Every token is added to the
process's secret registry the moment it arrives, so no log line, dump or error shows it.

It is an `httpx.Auth`: the HTTP client calls it for each request, so the header it sets is
the only Authorization an upstream ever sees from the gateway. The client's own credentials
stop at the gateway (the front reads them; nothing copies them into an upstream request).
"""
from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import trio
from authlib.integrations.httpx_client import AsyncOAuth2Client

from wire_gateway.config.auth import OAuthClient
from wire_gateway.telemetry.masking import SECRETS

log = logging.getLogger("wire_gateway.upstream.oauth")

RETRIES = 4
BACKOFF = (0.2, 0.5, 1.0, 2.0)


class TokenError(Exception):
    """No usable token: the message says why (endpoint unreachable, refused, wrong scopes)."""


class ClientCredentials(httpx.Auth):
    def __init__(self, settings: OAuthClient, server: str, default_resource: str | None) -> None:
        self.settings = settings
        self.server = server
        self.resource = settings.resource or default_resource
        self._token: dict[str, Any] | None = None
        self._expires_at = 0.0
        self._lock = trio.Lock()
        self.fetched = 0

    # ---- httpx.Auth ---------------------------------------------------------------------------

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["authorization"] = f"Bearer {await self.token()}"
        response = yield request
        if response.status_code == 401:
            refused = request.headers["authorization"][len("Bearer "):]
            await self.drop(refused)
            request.headers["authorization"] = f"Bearer {await self.token()}"
            yield request

    # ---- the token ------------------------------------------------------------------------------

    async def token(self) -> str:
        async with self._lock:      # one fetch at a time; the others then find it fresh
            if self._token is None or time.time() >= self._expires_at - self.settings.refresh_before:
                await self._fetch()
            assert self._token is not None
            return str(self._token["access_token"])

    async def drop(self, token: str) -> None:
        """The server refused `token`: forget it (if it is still the current one) and revoke it."""
        async with self._lock:
            if self._token is not None and self._token.get("access_token") == token:
                self._token = None
        await self._revoke(token)

    async def _fetch(self) -> None:
        s = self.settings
        old = self._token
        for attempt in range(RETRIES):
            try:
                async with self._client() as client:
                    extra = {"resource": self.resource} if self.resource else {}
                    token = await client.fetch_token(s.token_url, grant_type="client_credentials", **extra)
                break
            except Exception as exc:       # authlib raises OAuthError, httpx errors, or a 5xx as OAuthError
                transient = _transient(exc)
                if not transient or attempt == RETRIES - 1:
                    raise TokenError(f"server {self.server}: no token from {s.token_url}: {_describe(exc)}") from None
                log.warning("server %s: token endpoint failed (%s); retrying in %.1fs", self.server, _describe(exc),
                            BACKOFF[attempt])
                await trio.sleep(BACKOFF[attempt])
        access = token.get("access_token")
        if not isinstance(access, str) or not access:
            raise TokenError(f"server {self.server}: the token endpoint answered no access_token")
        SECRETS.add(access)
        if s.scope:
            granted = set(str(token.get("scope", s.scope)).split())
            missing = set(s.scope.split()) - granted
            if missing:
                raise TokenError(f"server {self.server}: the token lacks scope(s) {' '.join(sorted(missing))} "
                                 f"(asked for {s.scope!r}, granted {' '.join(sorted(granted))!r})")
        self._token = dict(token)
        self._expires_at = float(token.get("expires_at") or time.time() + float(token.get("expires_in", 3600)))
        self.fetched += 1
        log.info("server %s: fetched an access token (expires in %.0fs)", self.server, self._expires_at - time.time())
        if old is not None and old.get("access_token") != access:
            await self._revoke(str(old.get("access_token")))

    async def _revoke(self, token: str) -> None:
        if not self.settings.revocation_url:
            return
        try:
            async with self._client() as client:
                await client.revoke_token(self.settings.revocation_url, token=token, token_type_hint="access_token")
        except Exception as exc:         # revocation is best effort: the token expires anyway
            log.warning("server %s: revoking a dropped token failed: %s", self.server, _describe(exc))

    def _client(self) -> AsyncOAuth2Client:
        s = self.settings
        cert = (s.client_cert, s.client_key) if s.client_cert and s.client_key else None
        return AsyncOAuth2Client(client_id=s.client_id, client_secret=s.client_secret, scope=s.scope,
                                 token_endpoint_auth_method="client_secret_basic" if s.client_secret else "none",
                                 timeout=10.0, cert=cert)


def _transient(exc: Exception) -> bool:
    """Worth a retry: no connection or no answer in time (httpx's TransportError, whichever httpx
    authlib runs on), or the endpoint saying it is overloaded or failing (RFC 6749 §5.2 codes,
    or a 5xx/429 status that authlib reports in its message)."""
    if any(c.__name__ == "TransportError" for c in type(exc).__mro__):
        return True
    if getattr(exc, "error", None) in ("server_error", "temporarily_unavailable"):
        return True
    return any(f" {code}" in f" {exc}" for code in ("429", "500", "502", "503", "504"))


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


_SOURCES: dict[str, ClientCredentials] = {}


def credentials_for(settings: OAuthClient, server: str, url: str | None) -> ClientCredentials:
    """One token source per server and process: every session of a url server, and every restart
    of a command server, share its token until it is due for renewal."""
    source = _SOURCES.get(server)
    if source is None or source.settings != settings:
        source = _SOURCES[server] = ClientCredentials(settings, server, url)
    return source
