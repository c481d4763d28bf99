"""The snapshot a running gateway authenticates against: every project, user and key, in
memory, rebuilt whenever the store's revision moves. Sans-IO: the gate (gate.py) loads it.

A check is a dictionary lookup by key id, one SHA-256 and a constant-time comparison: about a
microsecond, with no I/O, so auth costs an untouched request almost nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wire_gateway.auth import keys
from wire_gateway.auth.model import ApiKey, Project, User


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is, once proven. `id` names it in logs and audit lines: a key's public
    prefix (`wg_...`) or a token's issuer and subject; never a secret."""
    id: str
    user: str
    project: Project
    kind: str = "key"                  # "key" | "jwt"
    audiences: tuple[str, ...] = ()    # a token's `aud`: which of the gateway's endpoints it is for

    def serves(self, base: str, resource: str) -> bool:
        """Whether this caller may use `resource`: a key, everywhere in its project; a token made for
        the gateway as a whole (or an extra configured audience), every route; one made for a
        single endpoint, only that one (RFC 8707)."""
        if self.kind != "jwt":
            return True
        return base in self.audiences or resource in self.audiences or not any(
            a == base or a.startswith(base + "/mcp") for a in self.audiences)

    @property
    def context(self) -> str:
        """The cache and pin context: per project, since what a caller may see follows its project."""
        return "project:" + self.project.name


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is not let in: `status` is the HTTP status, `reason` is for the caller and the
    audit log, `error` the RFC 6750 error code for WWW-Authenticate (None: no code, e.g. no
    credentials at all), `retry_after` in seconds for 429/503."""
    status: int
    reason: str
    error: str | None = "invalid_token"
    retry_after: float | None = None
    who: str | None = None             # the principal's public id, when the credential named a known one


_TITLES = {401: "Unauthorized", 403: "Forbidden", 429: "Too Many Requests", 503: "Service Unavailable"}


def refusal_message(refusal: Refusal, retry: str, where: str = "") -> str:
    """The message of a refusal's JSON-RPC error: the status' name, the reason, then what to do:
    `retry` says when to try again (429), `where` where the credential comes from (401)."""
    text = f"{_TITLES.get(refusal.status, 'Refused')}: {refusal.reason}"
    if refusal.status == 429:
        return f"{text}; {retry}"
    if refusal.status == 401 and where:
        return f"{text} ({where})"
    return text


NO_CREDENTIALS = Refusal(401, "no credentials: send Authorization: Bearer <key or token> (or X-API-Key)", None)
UNKNOWN_KEY = Refusal(401, "the API key is not valid")


class Snapshot:
    def __init__(self, records: dict[str, dict[str, dict[str, Any]]], revision: int) -> None:
        self.revision = revision
        self.projects = {n: Project.from_json(d) for n, d in records.get("project", {}).items()}
        self.users = {n: User.from_json(d) for n, d in records.get("user", {}).items()}
        self.keys = {n: ApiKey.from_json(d) for n, d in records.get("key", {}).items()}

    def knows(self, key_id: str) -> bool:
        return key_id in self.keys

    def check_key(self, text: str, now: float) -> Principal | Refusal:
        key_id = keys.key_id_of(text)
        record = self.keys.get(key_id) if key_id is not None else None
        if record is None or not keys.matches(text, record.digest):
            return UNKNOWN_KEY     # one answer for malformed, unknown and wrong: nothing to probe
        why = record.refusal(now)
        if why is not None:
            return Refusal(401, f"the API key {keys.shown(record.id)} is {why}", who=keys.shown(record.id))
        user = self.users.get(record.user)
        if user is None or not user.enabled:
            return Refusal(401, f"the API key's user {record.user!r} is disabled", who=keys.shown(record.id))
        project = self.projects.get(record.project)
        if project is None:
            return Refusal(401, f"the API key's project {record.project!r} no longer exists",
                           who=keys.shown(record.id))
        return Principal(keys.shown(record.id), record.user, project, "key")
