"""OAuth 2.1 access tokens (JWTs), checked the way a resource server must (RFC 9068, RFC 8707,
the MCP authorization spec): signature by a key of the issuer's JWKS, an algorithm from the
configured list (never `none`, never a symmetric one), `iss` exactly the issuer, `aud` naming
this gateway, `exp` and `nbf` within the leeway. JOSE is joserfc's (authlib's), not ours.

Sans-IO: `verify` answers a Principal, a Refusal, or NeedKeys (a `kid` the key set lacks); the
gate fetches the JWKS and calls again. A verified token is remembered until it expires (a
bounded map keyed by the token's digest), so a client that sends the same token on every
request pays the signature check once: the RSA check costs about 100 us, the lookup one.

Which project a token acts for (docs/auth.md): a `project:NAME` scope, else the configured
claim (`project_claim`), else `default_project`; with none, 403 insufficient_scope. The
project must exist in the tenancy store. The principal is `jwt:<sub>`, so a refreshed token
of the same subject keeps its session.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, cast

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from wire_gateway.auth.directory import Principal, Refusal, Snapshot
from wire_gateway.config.auth import JwtSettings

REMEMBERED = 10_000


@dataclass(frozen=True, slots=True)
class NeedKeys:
    kid: str | None


class TokenVerifier:
    def __init__(self, settings: JwtSettings, audiences: set[str]) -> None:
        self.settings = settings
        self.audiences = set(audiences) | set(settings.audience)
        self.keys: KeySet | None = KeySet.import_key_set(cast(Any, settings.keys)) if settings.keys else None
        self._seen: OrderedDict[bytes, tuple[float, dict[str, Any]]] = OrderedDict()

    def install(self, jwks: dict[str, Any]) -> None:
        self.keys = KeySet.import_key_set(cast(Any, jwks))   # checked: an object with a 'keys' list
        self._seen.clear()           # a key may have been withdrawn

    def verify(self, token: str, now: float, snapshot: Snapshot) -> Principal | Refusal | NeedKeys:
        digest = hashlib.sha256(token.encode("utf-8", "replace")).digest()
        seen = self._seen.get(digest)
        if seen is not None and seen[0] > now:
            return self._principal(seen[1], snapshot)
        claims = self._check(token, now)
        if not isinstance(claims, dict):
            return claims
        exp = float(claims["exp"])
        self._seen[digest] = (exp, claims)
        if len(self._seen) > REMEMBERED:
            self._seen.popitem(last=False)
        return self._principal(claims, snapshot)

    def _check(self, token: str, now: float) -> dict[str, Any] | Refusal | NeedKeys:
        if self.keys is None:
            return NeedKeys(None)
        s = self.settings
        try:
            header = jws.extract_compact(token.encode("ascii")).protected
        except (JoseError, ValueError, KeyError, TypeError, UnicodeError):
            return Refusal(401, "the token is not a JWT")
        if header.get("alg") not in s.algorithms:
            return Refusal(401, f"the token's algorithm {header.get('alg')!r} is not accepted "
                                f"(accepted: {', '.join(s.algorithms)})")
        kid = header.get("kid")
        if kid is not None and all(k.kid != kid for k in self.keys.keys):
            return NeedKeys(kid)
        try:
            decoded = jwt.decode(token, self.keys, algorithms=list(s.algorithms))
            registry = jwt.JWTClaimsRegistry(
                now=int(now), leeway=int(s.leeway), iss={"essential": True, "value": s.issuer},
                exp={"essential": True}, sub={"essential": True})
            registry.validate(decoded.claims)
        except JoseError as exc:
            return Refusal(401, f"the token is not valid: {exc.description or exc.error}")
        except (ValueError, TypeError) as exc:
            return Refusal(401, f"the token is not valid: {type(exc).__name__}")
        claims = decoded.claims
        aud = claims.get("aud")
        auds = {aud} if isinstance(aud, str) else set(aud) if isinstance(aud, list) else set()
        if not auds & self.audiences:
            return Refusal(401, "the token is not for this gateway (its aud is not this resource; ask the "
                                "authorization server for a token with resource=<the gateway's URL>)")
        claims["_aud"] = sorted(auds)
        return claims

    def _principal(self, claims: dict[str, Any], snapshot: Snapshot) -> Principal | Refusal:
        s = self.settings
        scopes = str(claims.get("scope", "")).split()
        missing = [x for x in s.required_scopes if x not in scopes]
        who = f"jwt:{claims['sub']}"
        if missing:
            return Refusal(403, f"the token lacks scope(s) {' '.join(missing)}", "insufficient_scope", who=who)
        name = next((x[len("project:"):] for x in scopes if x.startswith("project:")), None)
        if name is None and s.project_claim and isinstance(claims.get(s.project_claim), str):
            name = claims[s.project_claim]
        name = name or s.default_project
        if name is None:
            return Refusal(403, "the token names no project (a project:NAME scope)", "insufficient_scope", who=who)
        project = snapshot.projects.get(name)
        if project is None:
            return Refusal(403, f"the token's project {name!r} does not exist", "insufficient_scope", who=who)
        return Principal(who, str(claims["sub"]), project, "jwt", tuple(claims["_aud"]))
