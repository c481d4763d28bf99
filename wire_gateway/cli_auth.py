"""`wire-gateway projects|users|keys ...`: manage the tenancy records in the store the config
names (the SQLite file beside it, or Redis shared by every gateway). Running gateways notice a
change within a quarter of a second (with Redis, at once): a revoked key stops working
without a restart. `--json` prints machine-readable output; a key is printed exactly once, by
the command that creates it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from wire_gateway.auth import keys as apikeys
from wire_gateway.auth.backends import BackendError, open_backend
from wire_gateway.auth.model import ApiKey, Project, RateLimit, ToolRule, User
from wire_gateway.auth.tenancy import Tenancy, TenancyError, parse_duration
from wire_gateway.config import Config, ConfigError


def add_auth_parsers(sub: Any, add_config: Any) -> None:
    def leaf(group: Any, name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(name, help=help_text, description=help_text)
        add_config(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    p = sub.add_parser("projects", help="projects: which servers and tools their keys may reach")
    g = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = leaf(g, "create", "create a project")
    q.add_argument("name")
    q.add_argument("--servers", required=True, help="comma-separated server names, or '*' for all")
    q.add_argument("--allow", action="append", default=[], metavar="SERVER:GLOB",
                   help="only these tools of SERVER (repeatable); layered on the server's own filter")
    q.add_argument("--deny", action="append", default=[], metavar="SERVER:GLOB", help="hide these tools of SERVER")
    q.add_argument("--rate", type=float, help="requests per second per key (with --burst)")
    q.add_argument("--burst", type=int, help="burst size per key (with --rate)")
    q.add_argument("--project-rate", type=float, help="requests per second, whole project (with --project-burst)")
    q.add_argument("--project-burst", type=int, help="burst size for the whole project (with --project-rate)")
    q.add_argument("--guardrails", default="", metavar="POLICY,...",
                   help="guardrail policies (named in the config) added for this project's callers on every server")
    q = leaf(g, "guardrails", "set the guardrail policies a project adds for its callers (none: clear them)")
    q.add_argument("name")
    q.add_argument("policies", nargs="*", metavar="POLICY")
    leaf(g, "list", "list projects")
    leaf(g, "show", "show one project and its keys").add_argument("name")
    leaf(g, "delete", "delete a project and revoke its keys").add_argument("name")

    p = sub.add_parser("users", help="users: who holds keys")
    g = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = leaf(g, "create", "create a user")
    q.add_argument("id")
    q.add_argument("--email")
    leaf(g, "list", "list users")
    leaf(g, "disable", "disable a user: all their keys stop working").add_argument("id")
    leaf(g, "enable", "enable a disabled user again").add_argument("id")

    p = sub.add_parser("keys", help="API keys: create (shown once), list, revoke, rotate")
    g = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = leaf(g, "create", "create a key for a user in a project; prints it once")
    q.add_argument("--project", required=True)
    q.add_argument("--user", required=True)
    q.add_argument("--expires", metavar="DURATION", help="e.g. 12h, 30d (default: never)")
    q.add_argument("--label")
    q = leaf(g, "list", "list keys (never the keys themselves)")
    q.add_argument("--project")
    q.add_argument("--user")
    leaf(g, "revoke", "revoke a key at once").add_argument("id")
    q = leaf(g, "rotate", "replace a key; the old one keeps working for --grace")
    q.add_argument("id")
    q.add_argument("--grace", metavar="DURATION", default="0s", help="e.g. 1h (default: none)")


def run_auth_command(args: argparse.Namespace, config: Config) -> int:
    from wire_gateway.config.loader import expand

    try:
        url = expand(config.store.url, dict(os.environ), "store.url") if config.store.backend == "redis" else ""
        file = config.auth.file if config.auth.present else _beside(config)
        backend = open_backend(file, config.store.backend, url, config.store.prefix)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return 1
    except BackendError as exc:
        print(f"wire-gateway {args.command}: {exc}", file=sys.stderr)
        return 1
    try:
        tenancy = Tenancy(backend, config.servers, guardrails=[n for n in config.guardrails if not n.startswith(":")])
        out = _COMMANDS[(args.command, args.action)](tenancy, args)
    except (TenancyError, BackendError) as exc:
        print(f"wire-gateway {args.command} {args.action}: {exc}", file=sys.stderr)
        return 1
    finally:
        backend.close()
    if not config.auth.enforced and args.action == "create" and not args.json:
        print("note: auth is not on in this config (auth.mode); these records take effect once it is",
              file=sys.stderr)
    print(json.dumps(out, indent=2) if args.json else _text(out))
    return 0


def _beside(config: Config) -> str | None:
    if not os.path.isfile(config.source):
        return None
    return os.path.join(os.path.dirname(os.path.abspath(config.source)), "auth.sqlite3")


def _rules(allow: list[str], deny: list[str]) -> dict[str, ToolRule]:
    found: dict[str, tuple[list[str], list[str]]] = {}
    for which, entries in ((0, allow), (1, deny)):
        for entry in entries:
            server, sep, glob = entry.partition(":")
            if not sep or not server or not glob:
                raise TenancyError(f"{entry!r}: write SERVER:GLOB, e.g. github:list_*")
            found.setdefault(server, ([], []))[which].append(glob)
    return {s: ToolRule(tuple(a), tuple(d)) for s, (a, d) in found.items()}


def _when(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _key_row(k: ApiKey) -> dict[str, Any]:
    state = k.refusal(time.time()) or "active"
    return {"id": apikeys.shown(k.id), "label": k.label, "project": k.project, "user": k.user,
            "created": _when(k.created), "last_used": _when(k.last_used), "expires": _when(k.expires),
            "state": state, **({"rotated_to": apikeys.shown(k.rotated_to)} if k.rotated_to else {})}


def _project_row(p: Project) -> dict[str, Any]:
    row = p.to_json()
    row["created"] = _when(p.created)
    return row


def _user_row(u: User) -> dict[str, Any]:
    return {**u.to_json(), "created": _when(u.created)}


def _projects_create(t: Tenancy, a: argparse.Namespace) -> Any:
    if (a.rate is None) != (a.burst is None) or (a.project_rate is None) != (a.project_burst is None):
        raise TenancyError("give --rate with --burst, and --project-rate with --project-burst")
    rl = RateLimit(a.rate, a.burst) if a.rate is not None and a.burst is not None else None
    pl = RateLimit(a.project_rate, a.project_burst) if a.project_rate is not None and a.project_burst is not None \
        else None
    servers = [s.strip() for s in a.servers.split(",") if s.strip()]
    policies = [n.strip() for n in a.guardrails.split(",") if n.strip()]
    return {"created": _project_row(t.create_project(a.name, servers, _rules(a.allow, a.deny), rl, pl, policies))}


def _projects_guardrails(t: Tenancy, a: argparse.Namespace) -> Any:
    return {"project": _project_row(t.set_guardrails(a.name, a.policies))}


def _projects_show(t: Tenancy, a: argparse.Namespace) -> Any:
    return {"project": _project_row(t.project(a.name)), "keys": [_key_row(k) for k in t.keys(project=a.name)]}


def _projects_delete(t: Tenancy, a: argparse.Namespace) -> Any:
    revoked = t.delete_project(a.name)
    return {"deleted": a.name, "revoked_keys": [apikeys.shown(k.id) for k in revoked]}


def _keys_create(t: Tenancy, a: argparse.Namespace) -> Any:
    expires = parse_duration(a.expires) if a.expires else None
    record, secret = t.create_key(a.project, a.user, expires, a.label)
    return {"key": secret, **_key_row(record), "note": "this is the only time the key is shown; store it now"}


def _keys_rotate(t: Tenancy, a: argparse.Namespace) -> Any:
    new, secret, old = t.rotate_key(a.id, parse_duration(a.grace))
    return {"key": secret, **_key_row(new), "replaces": apikeys.shown(old.id),
            "old_key_works_until": _when(old.expires),
            "note": "this is the only time the key is shown; store it now"}


_COMMANDS: dict[tuple[str, str], Any] = {
    ("projects", "create"): _projects_create,
    ("projects", "guardrails"): _projects_guardrails,
    ("projects", "list"): lambda t, a: {"projects": [_project_row(p) for p in t.projects()]},
    ("projects", "show"): _projects_show,
    ("projects", "delete"): _projects_delete,
    ("users", "create"): lambda t, a: {"created": _user_row(t.create_user(a.id, a.email))},
    ("users", "list"): lambda t, a: {"users": [_user_row(u) for u in t.users()]},
    ("users", "disable"): lambda t, a: {"disabled": _user_row(t.set_user_enabled(a.id, False))},
    ("users", "enable"): lambda t, a: {"enabled": _user_row(t.set_user_enabled(a.id, True))},
    ("keys", "create"): _keys_create,
    ("keys", "list"): lambda t, a: {"keys": [_key_row(k) for k in t.keys(a.project, a.user)]},
    ("keys", "revoke"): lambda t, a: {"revoked": _key_row(t.revoke_key(a.id))},
    ("keys", "rotate"): _keys_rotate,
}


def _text(out: dict[str, Any]) -> str:
    """Human output: lists as aligned tables, single records as `field: value` lines."""
    lines: list[str] = []
    for name, value in out.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            cols = list(dict.fromkeys(c for row in value for c in row if c not in ("tools",)))
            cells = [[_cell(row.get(c)) for c in cols] for row in value]
            widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
            lines.append("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)).rstrip())
            lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
        elif isinstance(value, list):
            lines.append(f"{name}: {', '.join(map(str, value)) or '(none)'}")
        elif isinstance(value, dict):
            lines += [f"{k}: {_cell(v)}" for k, v in value.items()]
        else:
            lines.append(f"{name}: {_cell(value)}")
    return "\n".join(lines) or "(none)"


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list | tuple):
        return ",".join(map(str, v))
    if isinstance(v, dict):
        return json.dumps(v, separators=(",", ":"))
    return str(v)
