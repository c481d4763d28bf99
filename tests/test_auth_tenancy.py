"""Tenancy records (projects, users, API keys) in both backends, and the CLI that manages them.

The backends are real: a SQLite file, and a real redis-server. A key's text must never be
stored: every test that makes one searches the store's raw bytes for it.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from test_policy_redis import RedisProcess

from wire_gateway.auth import keys
from wire_gateway.auth.backends import Backend, RedisBackend, SqliteBackend
from wire_gateway.auth.model import RateLimit, ToolRule
from wire_gateway.auth.tenancy import Tenancy, TenancyError, parse_duration

ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def redis_proc() -> Iterator[RedisProcess]:
    server = RedisProcess()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b: Backend
    if request.param == "sqlite":
        b = SqliteBackend(str(tmp_path / "auth.sqlite3"))
    else:
        server = request.getfixturevalue("redis_proc")
        b = RedisBackend(server.url, f"t{os.urandom(4).hex()}:", "redis")
    try:
        yield b
    finally:
        b.close()


def raw_bytes(b: Backend) -> bytes:
    """Everything the store holds, as bytes, to search for a key's text."""
    if isinstance(b, SqliteBackend):
        b._db.execute("PRAGMA wal_checkpoint(FULL)")
        return b"".join(Path(b.where + s).read_bytes() for s in ("", "-wal") if Path(b.where + s).exists())
    assert isinstance(b, RedisBackend)
    r = b._r
    return b"".join(k + b"".join(f + v for f, v in r.hgetall(k).items()) if r.type(k) == b"hash" else k
                    for k in r.keys("*"))


def test_key_shape_digest_and_near_misses() -> None:
    key_id, key = keys.new_key()
    assert key.startswith("wg_" + key_id + "_") and len(key) == 3 + 12 + 1 + 43
    assert keys.key_id_of(key) == key_id
    assert keys.matches(key, keys.digest(key))
    assert not keys.matches(key[:-1] + ("A" if key[-1] != "A" else "B"), keys.digest(key))
    for near in (key[:-1], key + "x", key.upper(), "wg_" + key_id, " " + key, key.replace("wg_", "wk_"), ""):
        assert keys.key_id_of(near) is None, near
    assert len({keys.new_key()[0] for _ in range(200)}) == 200


def test_projects_users_and_keys(backend: Backend) -> None:
    clock = Clock()
    t = Tenancy(backend, ["echo", "github"], now=clock)
    rev = backend.revision()
    p = t.create_project("team", ["echo"], {"echo": ToolRule(deny=("danger*",))}, RateLimit(5, 10))
    assert backend.revision() > rev
    assert t.project("team") == p and p.may_use("echo") and not p.may_use("github")
    with pytest.raises(TenancyError, match="exists already"):
        t.create_project("team", ["echo"])
    with pytest.raises(TenancyError, match=r"unknown server\(s\) 'nope'.*echo, github"):
        t.create_project("other", ["nope"])
    with pytest.raises(TenancyError, match="unknown project 'ghost'; projects: team"):
        t.project("ghost")
    t.create_user("alice", "alice@example.org")
    with pytest.raises(TenancyError, match="unknown user 'bob'; users: alice"):
        t.create_key("team", "bob")
    record, key = t.create_key("team", "alice", expires_in=3600, label="ci")
    assert record.digest == keys.digest(key) and record.expires == clock.t + 3600
    assert key.encode() not in raw_bytes(backend)
    assert t.key(keys.shown(record.id)) == record == t.key(record.id)
    clock.t += 3601
    assert t.key(record.id).refusal(clock.t) == "expired"


def test_rotation_grace_revocation_and_deletion(backend: Backend) -> None:
    clock = Clock()
    t = Tenancy(backend, ["echo"], now=clock)
    t.create_project("team", ["*"])
    t.create_user("alice")
    old, old_key = t.create_key("team", "alice")
    new, new_key, old_after = t.rotate_key(old.id, grace=parse_duration("1h"))
    assert old_after.rotated_to == new.id and old_after.expires == clock.t + 3600
    assert t.key(old.id).refusal(clock.t) is None           # still inside its grace period
    clock.t += 3600
    assert t.key(old.id).refusal(clock.t) == "expired" and t.key(new.id).refusal(clock.t) is None
    with pytest.raises(TenancyError, match="is expired; create a new one"):
        t.rotate_key(old.id)
    assert t.revoke_key(new.id).refusal(clock.t) == "revoked"
    third, _ = t.create_key("team", "alice")
    assert [k.id for k in t.delete_project("team")] == [third.id]
    assert t.key(third.id).refusal(clock.t) == "revoked"
    raw = raw_bytes(backend)
    assert old_key.encode() not in raw and new_key.encode() not in raw
    t.set_user_enabled("alice", False)
    t.create_project("again", ["echo"])
    with pytest.raises(TenancyError, match="disabled"):
        t.create_key("again", "alice")


def test_bad_names_and_durations(backend: Backend) -> None:
    t = Tenancy(backend, ["echo"])
    for bad in ("", "a b", "x" * 65, "a/b"):
        with pytest.raises(TenancyError, match="project name"):
            t.create_project(bad, ["echo"])
    with pytest.raises(TenancyError, match="at least one server"):
        t.create_project("p", [])
    with pytest.raises(TenancyError, match="not an email"):
        t.create_user("u", "nope")
    assert parse_duration("30d") == 30 * 86400 and parse_duration("90s") == 90
    with pytest.raises(TenancyError, match="not a duration"):
        parse_duration("soon")


def test_redis_changes_are_announced(redis_proc: RedisProcess) -> None:
    prefix = f"t{os.urandom(4).hex()}:"
    listener = redis.Redis.from_url(redis_proc.url).pubsub()
    listener.subscribe(prefix + "events")
    assert listener.get_message(timeout=2)["type"] == "subscribe"
    b = RedisBackend(redis_proc.url, prefix, "redis")
    Tenancy(b, ["echo"]).create_user("carol")
    msg = listener.get_message(timeout=2)
    assert msg is not None and json.loads(msg["data"])["event"] == "auth:changed"
    b.close()
    listener.close()


def cli(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "wire_gateway", *args, "--config", str(config)],
                          capture_output=True, text=True, env=env, timeout=60)


def test_cli_round_trip(tmp_path: Path) -> None:
    config = tmp_path / "gw.json"
    config.write_text(json.dumps({"servers": {"echo": {"command": sys.executable}},
                                  "auth": {"mode": "keys"}}))
    made = cli("projects", "create", "team", "--servers", "echo", "--deny", "echo:danger*", config=config)
    assert made.returncode == 0, made.stderr
    bad = cli("projects", "create", "x", "--servers", "nope", config=config)
    assert bad.returncode == 1 and "unknown server(s) 'nope'; the config has: echo" in bad.stderr
    assert cli("users", "create", "alice", "--email", "a@example.org", config=config).returncode == 0
    made = cli("keys", "create", "--project", "team", "--user", "alice", "--label", "ci", "--json", config=config)
    out: dict[str, Any] = json.loads(made.stdout)
    key = out["key"]
    assert keys.key_id_of(key) and out["id"] == key[:15] and out["state"] == "active"
    listed = cli("keys", "list", config=config)
    assert listed.returncode == 0 and out["id"] in listed.stdout and key not in listed.stdout
    rotated = json.loads(cli("keys", "rotate", out["id"], "--grace", "1h", "--json", config=config).stdout)
    assert rotated["replaces"] == out["id"] and rotated["key"] != key and rotated["old_key_works_until"]
    revoked = cli("keys", "revoke", rotated["id"], "--json", config=config)
    assert json.loads(revoked.stdout)["revoked"]["state"] == "revoked"
    unknown = cli("keys", "revoke", "wg_aaaaaaaaaaaa", config=config)
    assert unknown.returncode == 1 and "unknown key 'wg_aaaaaaaaaaaa'" in unknown.stderr
    db = tmp_path / "auth.sqlite3"
    assert db.exists() and oct(db.stat().st_mode & 0o777) == "0o600"
    rows = sqlite3.connect(db).execute("SELECT body FROM records").fetchall()
    assert rows and not any(key in r[0] or rotated["key"] in r[0] for r in rows)
    shown = json.loads(cli("projects", "show", "team", "--json", config=config).stdout)
    assert shown["project"]["tools"] == {"echo": {"allow": [], "deny": ["danger*"]}} and len(shown["keys"]) == 2


def test_the_log_masker_hides_a_keys_secret_and_keeps_its_name() -> None:
    from wire_gateway.telemetry.masking import mask

    key_id, key = keys.new_key()
    masked = mask(f"client sent {key} twice: {key}")
    assert key not in masked and masked.count(f"wg_{key_id}_***") == 2
    assert mask("wg_short_value") == "wg_short_value"      # not a key's shape: left alone
