"""The config's auth settings: the `auth` section (who may call, docs/auth.md) and a server's
`oauth` section (the gateway's own credentials for it), with the checks the schema cannot make.
Apart from the loader so that it stays one idea: reading and checking the rest of the config."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wire_gateway.wire.authority import is_loopback_url


@dataclass(frozen=True)
class OAuthClient:
    """A server's `oauth` section: the gateway's own client credentials for it."""
    token_url: str
    client_id: str
    client_secret: str | None = None
    scope: str | None = None
    resource: str | None = None
    refresh_before: float = 300.0
    revocation_url: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    env: str | None = None


@dataclass(frozen=True)
class JwtSettings:
    issuer: str
    jwks_url: str | None = None
    keys: dict[str, Any] | None = None
    audience: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA")
    leeway: float = 60.0
    jwks_refresh_min: float = 10.0
    project_claim: str | None = None
    default_project: str | None = None
    required_scopes: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthSettings:
    """The `auth` section; `present` is False when the config has none (today's open behaviour)."""
    mode: str = "none"
    present: bool = False
    file: str | None = None                      # resolved against the config's folder
    resource: str | None = None
    audit: str = "failures"
    rate_limit: tuple[float, int] | None = None  # (rate per second, burst)
    failed_attempts: tuple[float, int] = (1.0, 20)
    jwt: JwtSettings | None = None

    @property
    def keys(self) -> bool:
        return self.mode in ("keys", "keys+jwt")

    @property
    def tokens(self) -> bool:
        return self.mode in ("jwt", "keys+jwt")

    @property
    def enforced(self) -> bool:
        return self.mode != "none"


def oauth_problems(servers: dict[str, Any]) -> list[str]:
    """An `oauth` section that cannot work: its token would travel in clear, or a command server
    has nowhere to receive it."""
    problems = []
    for name, s in servers.items():
        o = s.get("oauth")
        if o is None:
            continue
        for key in ("token_url", "revocation_url"):
            url = o.get(key)
            if url and "${" not in url and not url.startswith("https://") and not is_loopback_url(url):
                problems.append(f"$.servers.{name}.oauth.{key}: {url} must be https (plain http only on a "
                                "loopback host): client credentials and tokens must not travel in clear")
        if "command" in s and not o.get("env"):
            problems.append(f'$.servers.{name}.oauth: a command server gets its token in an environment '
                            'variable: name it with "env" (e.g. "env": "API_TOKEN")')
        if bool(o.get("client_cert")) != bool(o.get("client_key")):
            problems.append(f"$.servers.{name}.oauth: client_cert and client_key go together (mutual TLS)")
    return problems


def auth_problems(section: dict[str, Any] | None) -> list[str]:
    """What the schema cannot say about an `auth` section."""
    if section is not None and section["mode"] in ("jwt", "keys+jwt") and section.get("jwt") is None:
        return [f'$.auth.jwt: auth.mode "{section["mode"]}" needs a "jwt" section (at least "issuer")']
    return []


def parse_auth(section: dict[str, Any] | None, base_dir: Path | None) -> AuthSettings:
    """The `auth` section, checked by the schema and `auth_problems` first."""
    if section is None:
        return AuthSettings()
    file = section.get("file", "auth.sqlite3")
    if base_dir is not None and not os.path.isabs(file):
        file = str(base_dir / file)
    rl, fa = section.get("rate_limit"), section.get("failed_attempts", {"rate": 1.0, "burst": 20})
    j = section.get("jwt")
    jwt = None if j is None else JwtSettings(**{**j, **{k: tuple(j[k]) for k in ("audience", "algorithms",
                                                                              "required_scopes") if k in j}})
    return AuthSettings(mode=section["mode"], present=True, file=file, resource=section.get("resource"), jwt=jwt,
                        audit=section.get("audit", "failures"),
                        rate_limit=(float(rl["rate"]), int(rl["burst"])) if rl else None,
                        failed_attempts=(float(fa["rate"]), int(fa["burst"])))
