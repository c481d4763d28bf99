"""Fetching an issuer's signing keys (its JWKS): where they are, and not too often.

The JWKS URL is configured, or read from the issuer's metadata (RFC 8414, then OpenID Connect
discovery). Both must be HTTPS except on a loopback host: keys fetched in clear could be
swapped by anyone on the path. A refetch for an unknown `kid` happens at most once every
`jwks_refresh_min` seconds, so a stream of tokens with made-up key ids cannot make the
gateway hammer the issuer.
"""
from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import httpx

from wire_gateway.wire.authority import is_loopback_url

log = logging.getLogger("wire_gateway.auth")


class JwksError(Exception):
    pass


def check_url(url: str, what: str) -> None:
    if urlsplit(url).scheme != "https" and not is_loopback_url(url):
        raise JwksError(f"{what} {url} must be https (plain http only on a loopback host)")


def metadata_urls(issuer: str) -> list[str]:
    """RFC 8414 §3.1 (path inserted after the well-known prefix), then OpenID Connect's."""
    parts = urlsplit(issuer)
    root = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    return [f"{root}/.well-known/oauth-authorization-server{path}",
            f"{root}/.well-known/openid-configuration{path}",
            f"{issuer.rstrip('/')}/.well-known/openid-configuration"]


async def fetch_jwks(issuer: str, jwks_url: str | None, timeout: float = 5.0) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        if jwks_url is None:
            for url in metadata_urls(issuer):
                check_url(url, "the issuer's metadata")
                try:
                    r = await client.get(url)
                except httpx.HTTPError as exc:
                    raise JwksError(f"cannot reach the issuer's metadata at {url}: {exc}") from None
                if r.status_code == 200:
                    meta = r.json()
                    if meta.get("issuer") != issuer:
                        raise JwksError(f"the metadata at {url} names issuer {meta.get('issuer')!r}, not {issuer!r}")
                    jwks_url = meta.get("jwks_uri")
                    break
            if not jwks_url:
                raise JwksError(f"the issuer {issuer} publishes no jwks_uri in its metadata; set auth.jwt.jwks_url")
        check_url(jwks_url, "the JWKS URL")
        try:
            r = await client.get(jwks_url)
            r.raise_for_status()
            doc = r.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise JwksError(f"cannot fetch the JWKS from {jwks_url}: {exc}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise JwksError(f"{jwks_url} did not answer a JWKS (an object with a 'keys' list)")
        return doc
