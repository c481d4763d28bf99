"""The tenancy records: projects, users and API keys, as plain data with their JSON form.

A project names the servers its keys may reach (`*` for every configured one) and, per
server, tool globs layered on that server's own filter (a project can narrow what a server
offers, never widen it). A key belongs to one user and one project; a user may hold many
keys in many projects. Times are Unix seconds (floats); None means "not set".
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Any

NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")         # projects (as server names)
USER_ID = re.compile(r"[A-Za-z0-9_.@+-]{1,128}\Z")


@dataclass(frozen=True)
class ToolRule:
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `rate` requests per second on average, bursts of up to `burst`."""
    rate: float
    burst: int


@dataclass(frozen=True)
class Project:
    name: str
    servers: tuple[str, ...]
    tools: dict[str, ToolRule] = field(default_factory=dict)
    rate_limit: RateLimit | None = None          # per key of this project; None: the config's default
    created: float = 0.0
    project_limit: RateLimit | None = None       # one budget shared by every key of the project
    guardrails: tuple[str, ...] = ()             # guardrail policies (config) added for its callers

    def may_use(self, server: str) -> bool:
        return "*" in self.servers or server in self.servers

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "servers": list(self.servers), "created": self.created,
                "tools": {s: {"allow": list(r.allow), "deny": list(r.deny)} for s, r in self.tools.items()},
                "rate_limit": asdict(self.rate_limit) if self.rate_limit else None,
                "project_limit": asdict(self.project_limit) if self.project_limit else None,
                "guardrails": list(self.guardrails)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Project:
        rl, pl = d.get("rate_limit"), d.get("project_limit")
        return cls(name=d["name"], servers=tuple(d["servers"]), created=d.get("created", 0.0),
                   tools={s: ToolRule(tuple(r.get("allow", ())), tuple(r.get("deny", ())))
                          for s, r in d.get("tools", {}).items()},
                   rate_limit=RateLimit(float(rl["rate"]), int(rl["burst"])) if rl else None,
                   project_limit=RateLimit(float(pl["rate"]), int(pl["burst"])) if pl else None,
                   guardrails=tuple(d.get("guardrails", ())))


@dataclass(frozen=True)
class User:
    id: str
    email: str | None = None
    enabled: bool = True
    created: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> User:
        return cls(id=d["id"], email=d.get("email"), enabled=bool(d.get("enabled", True)),
                   created=d.get("created", 0.0))


@dataclass(frozen=True)
class ApiKey:
    id: str
    project: str
    user: str
    digest: str                      # SHA-256 of the full key (keys.digest); the key itself is never kept
    label: str | None = None
    created: float = 0.0
    expires: float | None = None
    revoked: float | None = None
    last_used: float | None = None
    rotated_to: str | None = None    # the key that replaced this one (`keys rotate`)

    def refusal(self, now: float) -> str | None:
        """Why this key cannot be used at `now`, or None when it can."""
        if self.revoked is not None and self.revoked <= now:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        return None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ApiKey:
        return cls(id=d["id"], project=d["project"], user=d["user"], digest=d["digest"], label=d.get("label"),
                   created=d.get("created", 0.0), expires=d.get("expires"), revoked=d.get("revoked"),
                   last_used=d.get("last_used"), rotated_to=d.get("rotated_to"))

    def but(self, **changes: Any) -> ApiKey:
        return replace(self, **changes)
