"""Names, cursors and era adaptation for the aggregate endpoint (sans-IO).

The aggregate shows many servers as one. Tool and prompt names become
`<server><sep><name>`; list cursors become opaque tokens naming the server whose
page comes next; results and `_meta` are adapted to the client's era. Everything
here is plain functions over strings and dicts, so it can be tested exhaustively.

Why routing by prefix is unambiguous: a server name may neither contain the
separator nor end with a proper prefix of it (checked at config load). Then the
separator's first occurrence in `<server><sep><name>` is always the one after the
server, whatever the name contains.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

MAX_NAME = 128             # tool names SHOULD be 1..128 characters (2025-11-25 and 2026-07-28)
DEFAULT_SEPARATOR = "__"
HASH_CHARS = 10            # 40 bits of sha256: a shortened name collides only by accident of ~1e-12
_SEPARATOR_RE = re.compile(r"^[A-Za-z0-9_.-]{1,8}$")
_CURSOR_TAG = "wga1"
META_PREFIX = "io.modelcontextprotocol/"


def separator_problem(sep: Any) -> str | None:
    """Why `sep` cannot be the aggregate separator (None if it can)."""
    if not isinstance(sep, str) or not _SEPARATOR_RE.match(sep):
        return "must be 1 to 8 characters from letters, digits, '_', '.', '-' (characters tool names may use)"
    return None


def server_name_problem(name: str, sep: str) -> str | None:
    """Why `name` cannot be a server of an aggregate using `sep` (None if it can)."""
    if sep in name:
        return f"contains the aggregate separator {sep!r}, so its namespaced tool names would be ambiguous"
    for k in range(1, len(sep)):
        if name.endswith(sep[:k]):
            return (f"ends with {sep[:k]!r}, the start of the aggregate separator {sep!r}, so its namespaced "
                    "tool names would be ambiguous")
    return None


def join_name(server: str, name: str, sep: str, max_len: int = MAX_NAME) -> str:
    """The public name of `name` from `server`: `<server><sep><name>`, shortened with a hash
    of the full name when it would exceed `max_len` (the server prefix always survives)."""
    full = f"{server}{sep}{name}"
    if len(full) <= max_len:
        return full
    digest = hashlib.sha256(full.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]
    room = max(0, max_len - len(server) - len(sep) - HASH_CHARS - 1)
    return f"{server}{sep}{name[:room]}-{digest}"


def split_name(public: str, sep: str) -> tuple[str, str] | None:
    """(server, rest) of a public name, or None if it has no separator."""
    at = public.find(sep)
    if at <= 0:
        return None
    return public[:at], public[at + len(sep):]


def is_shortened(server: str, rest: str, sep: str, max_len: int = MAX_NAME) -> bool:
    """Whether a public name is at the length where `join_name` may have hashed it, so its
    `rest` cannot be taken as the server's own name without the table learned from a list."""
    return len(server) + len(sep) + len(rest) == max_len and re.search(rf"-[0-9a-f]{{{HASH_CHARS}}}$", rest) is not None


# ---- cursors ------------------------------------------------------------------------------

def mint_cursor(server: str, member_cursor: str | None, offset: int = 0) -> str:
    """An opaque cursor: which server's page is next, that server's own cursor, and how far
    into that page the client already is (when the aggregate cuts pages smaller)."""
    body = json.dumps([_CURSOR_TAG, server, member_cursor, offset], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


def read_cursor(token: Any) -> tuple[str, str | None, int] | None:
    """The (server, member cursor, offset) inside a cursor we minted; None for anything else."""
    if not isinstance(token, str) or len(token) > 8192:
        return None
    try:
        body = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        tag, server, member_cursor, offset = json.loads(body)
    except (ValueError, TypeError):
        return None
    if tag != _CURSOR_TAG or not isinstance(server, str) \
            or not (member_cursor is None or isinstance(member_cursor, str)) \
            or not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        return None
    return server, member_cursor, offset


def page_plan(order: list[str], server: str, items: list[Any], offset: int, member_next: str | None,
              member_cursor: str | None, page_size: int | None) -> tuple[list[Any], str | None]:
    """Cut one aggregate page from one member page and say what comes next.

    `items` is the member's page fetched with `member_cursor`; the client has already seen
    `offset` of them. Returns (items for this page, the next aggregate cursor or None)."""
    rest = items[offset:]
    if page_size is not None and len(rest) > page_size:
        return rest[:page_size], mint_cursor(server, member_cursor, offset + page_size)
    if member_next:
        return rest, mint_cursor(server, member_next)
    following = next_server(order, server)
    return rest, (mint_cursor(following, None) if following is not None else None)


def next_server(order: list[str], server: str) -> str | None:
    """The server after `server` in list order (None after the last)."""
    try:
        at = order.index(server)
    except ValueError:
        return None
    return order[at + 1] if at + 1 < len(order) else None


# ---- resources ----------------------------------------------------------------------------

def template_regex(template: str) -> re.Pattern[str]:
    """A regex matching the URIs an RFC 6570 template (levels 1-2, as MCP uses them) expands to."""
    out = []
    for literal, expr in re.findall(r"([^{]*)(\{[^}]*\}|$)", template):
        out.append(re.escape(literal))
        if expr:
            out.append(".*" if expr[1:2] in ("+", "#", "/", ";", ".", "?", "&") else "[^/?#]*")
    return re.compile("".join(out) + r"\Z", re.S)


# ---- era adaptation -----------------------------------------------------------------------

def strip_modern_meta(params: Any) -> Any:
    """Params for a legacy server: the modern `io.modelcontextprotocol/*` `_meta` keys removed."""
    if not isinstance(params, dict) or not isinstance(params.get("_meta"), dict):
        return params
    meta = {k: v for k, v in params["_meta"].items() if not k.startswith(META_PREFIX)}
    out = {k: v for k, v in params.items() if k != "_meta"}
    if meta:
        out["_meta"] = meta
    return out


def with_modern_meta(params: Any, envelope: dict[str, Any]) -> dict[str, Any]:
    """Params for a modern server: the client's own `_meta` with the envelope keys it lacks."""
    out: dict[str, Any] = dict(params) if isinstance(params, dict) else {}
    meta = dict(out.get("_meta") or {}) if isinstance(out.get("_meta"), dict) else {}
    for key, value in envelope.items():
        meta.setdefault(key, value)
    out["_meta"] = meta
    return out


def result_for_legacy(result: Any) -> Any:
    """A modern result as a legacy client expects it: no `resultType`, no cache hints, no modern
    `_meta` keys (a legacy client has no use for them and may not expect them)."""
    if not isinstance(result, dict):
        return result
    out = strip_modern_meta({k: v for k, v in result.items() if k not in ("resultType", "ttlMs", "cacheScope")})
    return out


def result_for_modern(result: Any, cacheable: bool = False) -> Any:
    """A result as a modern client expects it: `resultType` says it is complete and, for a
    cacheable result (lists, reads, discover), cache hints. The aggregate's own lists are
    never fresh (members come and go) and never shared: ttlMs 0, cacheScope private. A
    modern member's own hints on a forwarded read are kept."""
    if not isinstance(result, dict):
        return result
    out = result if "resultType" in result else {**result, "resultType": "complete"}
    if cacheable and out.get("resultType") == "complete" and (
            not isinstance(out.get("ttlMs"), int) or "cacheScope" not in out):
        out = {**out, "ttlMs": out["ttlMs"] if isinstance(out.get("ttlMs"), int) else 0,
               "cacheScope": out.get("cacheScope", "private")}
    return out


def merge_capabilities(caps: list[dict[str, Any]]) -> dict[str, Any]:
    """The capabilities of the virtual server: what any member offers. List changes are always
    announced, since members coming and going change the lists too."""
    merged: dict[str, Any] = {}
    for cap in caps:
        for key in ("tools", "prompts", "resources", "logging", "completions"):
            if isinstance(cap.get(key), dict):
                merged.setdefault(key, {})
        resources = cap.get("resources")
        if isinstance(resources, dict) and resources.get("subscribe"):
            merged["resources"]["subscribe"] = True
    for key in ("tools", "prompts", "resources"):
        if key in merged:
            merged[key]["listChanged"] = True
    return merged
