"""The operations on projects, users and keys, with their rules: what the CLI runs.

Every refusal is a TenancyError whose message a person can act on (which name is unknown, and
what exists). A key's full text exists only in the value `create_key`/`rotate_key` return.
"""
from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import replace

from wire_gateway.auth import keys
from wire_gateway.auth.backends import Backend
from wire_gateway.auth.model import NAME, USER_ID, ApiKey, Project, RateLimit, ToolRule, User


class TenancyError(Exception):
    pass


_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])\Z")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """'90s', '15m', '1h', '30d', '2w' as seconds."""
    m = _SPAN.match(text.strip())
    if not m:
        raise TenancyError(f"{text!r} is not a duration; write a number and a unit, e.g. 90s, 15m, 1h, 30d, 2w")
    return float(m.group(1)) * _UNIT[m.group(2)]


class Tenancy:
    def __init__(self, backend: Backend, servers: Iterable[str], now: Callable[[], float] = time.time,
                 guardrails: Iterable[str] = ()) -> None:
        self.backend = backend
        self.guardrails = tuple(guardrails)   # the config's named guardrail policies, which projects may add
        self.servers = tuple(servers)      # the configured servers, which projects may name
        self._now = now

    # ---- projects ----------------------------------------------------------------------------

    def create_project(self, name: str, servers: Iterable[str], tools: dict[str, ToolRule] | None = None,
                       rate_limit: RateLimit | None = None, project_limit: RateLimit | None = None,
                       guardrails: Iterable[str] = ()) -> Project:
        if not NAME.match(name):
            raise TenancyError(f"project name {name!r}: use letters, digits, '_', '.', '-' (at most 64)")
        if self.backend.get("project", name) is not None:
            raise TenancyError(f"project {name!r} exists already")
        wanted = tuple(dict.fromkeys(servers))
        if not wanted:
            raise TenancyError("a project needs at least one server (--servers a,b or --servers '*')")
        unknown = [s for s in (*wanted, *(tools or {})) if s != "*" and s not in self.servers]
        if unknown:
            raise TenancyError(f"unknown server(s) {', '.join(map(repr, unknown))}; the config has: "
                               f"{', '.join(self.servers) or '(none)'}")
        for rl in (rate_limit, project_limit):
            if rl is not None and (rl.rate <= 0 or rl.burst < 1):
                raise TenancyError("a rate limit needs a rate above 0 and a burst of at least 1")
        policies = self._policies(guardrails)
        project = Project(name, wanted, dict(tools or {}), rate_limit, created=self._now(), project_limit=project_limit,
                          guardrails=policies)
        self.backend.put([("project", name, project.to_json())])
        return project

    def _policies(self, names: Iterable[str]) -> tuple[str, ...]:
        wanted = tuple(dict.fromkeys(names))
        unknown = [n for n in wanted if n not in self.guardrails]
        if unknown:
            raise TenancyError(f"unknown guardrail policy(ies) {', '.join(map(repr, unknown))}; the config defines: "
                               f"{', '.join(self.guardrails) or '(none; add them under the top-level guardrails)'}")
        return wanted

    def set_guardrails(self, name: str, guardrails: Iterable[str]) -> Project:
        """Replace the guardrail policies a project adds for its callers (running gateways pick
        the change up with the next snapshot, as for any record)."""
        project = replace(self.project(name), guardrails=self._policies(guardrails))
        self.backend.put([("project", name, project.to_json())])
        return project

    def projects(self) -> list[Project]:
        return sorted((Project.from_json(d) for d in self.backend.all("project").values()), key=lambda p: p.name)

    def project(self, name: str) -> Project:
        d = self.backend.get("project", name)
        if d is None:
            known = ", ".join(p.name for p in self.projects()) or "(none yet: `wire-gateway projects create`)"
            raise TenancyError(f"unknown project {name!r}; projects: {known}")
        return Project.from_json(d)

    def delete_project(self, name: str) -> list[ApiKey]:
        """Deletes the project and revokes its keys (returned), which would otherwise dangle."""
        self.project(name)
        now = self._now()
        revoked = [k.but(revoked=now) for k in self.keys(project=name) if k.refusal(now) is None]
        self.backend.put(("key", k.id, k.to_json()) for k in revoked)
        self.backend.delete("project", name)
        return revoked

    # ---- users -------------------------------------------------------------------------------

    def create_user(self, user_id: str, email: str | None = None) -> User:
        if not USER_ID.match(user_id):
            raise TenancyError(f"user id {user_id!r}: use letters, digits and _.@+- (at most 128)")
        if email is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+", email):
            raise TenancyError(f"{email!r} is not an email address")
        if self.backend.get("user", user_id) is not None:
            raise TenancyError(f"user {user_id!r} exists already")
        user = User(user_id, email, True, self._now())
        self.backend.put([("user", user_id, user.to_json())])
        return user

    def users(self) -> list[User]:
        return sorted((User.from_json(d) for d in self.backend.all("user").values()), key=lambda u: u.id)

    def user(self, user_id: str) -> User:
        d = self.backend.get("user", user_id)
        if d is None:
            known = ", ".join(u.id for u in self.users()) or "(none yet: `wire-gateway users create`)"
            raise TenancyError(f"unknown user {user_id!r}; users: {known}")
        return User.from_json(d)

    def set_user_enabled(self, user_id: str, enabled: bool) -> User:
        user = self.user(user_id)
        changed = User(user.id, user.email, enabled, user.created)
        self.backend.put([("user", user_id, changed.to_json())])
        return changed

    # ---- keys --------------------------------------------------------------------------------

    def create_key(self, project: str, user: str, expires_in: float | None = None,
                   label: str | None = None) -> tuple[ApiKey, str]:
        self.project(project)
        if not self.user(user).enabled:
            raise TenancyError(f"user {user!r} is disabled; enable it before giving it keys")
        record, secret = self._new_key(project, user, expires_in, label)
        self.backend.put([("key", record.id, record.to_json())])
        return record, secret

    def keys(self, project: str | None = None, user: str | None = None) -> list[ApiKey]:
        found = (ApiKey.from_json(d) for d in self.backend.all("key").values())
        return sorted((k for k in found if (project is None or k.project == project)
                       and (user is None or k.user == user)), key=lambda k: (k.created, k.id))

    def key(self, key_id: str) -> ApiKey:
        key_id = key_id.removeprefix(keys.PREFIX).split("_")[0]
        d = self.backend.get("key", key_id)
        if d is None:
            raise TenancyError(f"unknown key {keys.shown(key_id)!r} (`wire-gateway keys list` shows the ids)")
        return ApiKey.from_json(d)

    def revoke_key(self, key_id: str) -> ApiKey:
        record = self.key(key_id)
        if record.revoked is not None and record.revoked <= self._now():
            return record
        record = record.but(revoked=self._now())
        self.backend.put([("key", record.id, record.to_json())])
        return record

    def rotate_key(self, key_id: str, grace: float = 0.0) -> tuple[ApiKey, str, ApiKey]:
        """A new key for the same project, user and label; the old one keeps working for `grace`
        seconds (then is refused as expired). Returns (new record, new key, old record)."""
        old = self.key(key_id)
        why = old.refusal(self._now())
        if why:
            raise TenancyError(f"key {keys.shown(old.id)} is {why}; create a new one instead of rotating it")
        left = None if old.expires is None else max(old.expires - self._now(), 0.0)
        new, secret = self._new_key(old.project, old.user, left, old.label)
        until = self._now() + grace
        old = old.but(expires=until if old.expires is None else min(old.expires, until), rotated_to=new.id)
        self.backend.put([("key", new.id, new.to_json()), ("key", old.id, old.to_json())])
        return new, secret, old

    def _new_key(self, project: str, user: str, expires_in: float | None,
                 label: str | None) -> tuple[ApiKey, str]:
        key_id, secret = keys.new_key()
        now = self._now()
        return ApiKey(id=key_id, project=project, user=user, digest=keys.digest(secret), label=label,
                      created=now, expires=None if expires_in is None else now + expires_in), secret
