"""The gate against a real SQLite store: keys proven, refused for the right reason, limits.

Pure parts (snapshot, buckets) are exercised directly; the gate runs in trio with its
refresh loop, and the CLI's operations (Tenancy) change the store underneath it, as
`wire-gateway keys revoke` does to a running gateway.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from wire_gateway.auth.backends import SqliteBackend
from wire_gateway.auth.buckets import Buckets, retry_after_header
from wire_gateway.auth.directory import NO_CREDENTIALS, UNKNOWN_KEY, Principal, Refusal
from wire_gateway.auth.gate import POLL, Gate, credential_of
from wire_gateway.auth.model import RateLimit
from wire_gateway.auth.tenancy import Tenancy
from wire_gateway.config import AuthSettings


def test_buckets_take_refill_and_say_when() -> None:
    b = Buckets(rate=2.0, burst=3)
    assert [b.take("k", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("k", 0.0) == pytest.approx(0.5)
    assert b.wait("k", 0.25) == pytest.approx(0.25)
    assert b.take("k", 0.5) == 0.0 and b.take("other", 0.5) == 0.0
    assert retry_after_header(0.01) == "1" and retry_after_header(1.2) == "2"


def test_credentials_from_headers() -> None:
    assert credential_of([("authorization", "Bearer  abc ")]) == "abc"
    assert credential_of([("authorization", "bearer abc")]) == "abc"
    assert credential_of([("authorization", "Basic abc")]) is None
    assert credential_of([("authorization", "Bearer ")]) is None
    assert credential_of([("x-api-key", "k1")]) == "k1" and credential_of([("apikey", "k2")]) == "k2"
    assert credential_of([]) is None


def world(tmp_path: Path) -> tuple[Tenancy, str, str]:
    t = Tenancy(SqliteBackend(str(tmp_path / "a.sqlite3")), ["echo", "other"])
    t.create_project("team", ["echo"])
    t.create_project("slow", ["echo"], rate_limit=RateLimit(1, 2))
    t.create_project("shared", ["echo"], project_limit=RateLimit(0.001, 3))
    t.create_user("alice")
    return t, t.create_key("team", "alice")[1], t.create_key("slow", "alice")[1]


@pytest.mark.anyio
async def test_a_project_budget_is_shared_by_its_keys(tmp_path: Path) -> None:
    t, _, _ = world(tmp_path)
    keys = [t.create_key("shared", "alice")[1] for _ in range(2)]
    gate = gate_for(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        got = [await gate.authenticate(keys[i % 2], "e") for i in range(4)]
        assert [isinstance(g, Principal) for g in got] == [True, True, True, False]
        assert isinstance(got[3], Refusal) and got[3].status == 429 and "project 'shared'" in got[3].reason
        nursery.cancel_scope.cancel()


def gate_for(tmp_path: Path, **settings: object) -> Gate:
    s = AuthSettings(**{"mode": "keys", "present": True, **settings})  # type: ignore[arg-type]
    return Gate(s, lambda: SqliteBackend(str(tmp_path / "a.sqlite3")))


@pytest.mark.anyio
async def test_keys_are_proven_and_refused_for_the_right_reason(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "wire_gateway.audit")
    t, key, slow_key = world(tmp_path)
    gate = gate_for(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        ok = await gate.authenticate(key, "127.0.0.1")
        assert isinstance(ok, Principal) and ok.project.name == "team" and ok.user == "alice"
        assert ok.context == "project:team" and ok.id == key[:15]
        assert await gate.authenticate(None, "a") is NO_CREDENTIALS
        assert await gate.authenticate(key[:-1] + "x", "a") is UNKNOWN_KEY
        assert await gate.authenticate("not-a-key", "a") is UNKNOWN_KEY
        # A key made after the gate loaded works at once (a reload for an unknown id).
        _, fresh = t.create_key("team", "alice")
        assert isinstance(await gate.authenticate(fresh, "a"), Principal)
        # Revoked underneath the running gate: refused within a poll.
        t.revoke_key(fresh[3:15])
        await trio.sleep(POLL * 3)
        revoked = await gate.authenticate(fresh, "a")
        assert isinstance(revoked, Refusal) and revoked.status == 401 and "revoked" in revoked.reason
        t.set_user_enabled("alice", False)
        await trio.sleep(POLL * 3)
        disabled = await gate.authenticate(key, "a")
        assert isinstance(disabled, Refusal) and "disabled" in disabled.reason
        t.set_user_enabled("alice", True)
        await trio.sleep(POLL * 3)
        # The project's own limit: burst 2, then 429 with a wait.
        assert isinstance(await gate.authenticate(slow_key, "b"), Principal)
        assert isinstance(await gate.authenticate(slow_key, "b"), Principal)
        limited = await gate.authenticate(slow_key, "b")
        assert isinstance(limited, Refusal) and limited.status == 429 and 0 < (limited.retry_after or 0) <= 1
        assert isinstance(await gate.authenticate(key, "b"), Principal)     # another key: unaffected
        nursery.cancel_scope.cancel()
    text = caplog.text
    assert "auth refused" in text and "revoked" in text and key not in text and fresh not in text
    assert key[:15] in text and "principal=" + fresh[:15] in text


@pytest.mark.anyio
async def test_failed_attempts_are_limited_per_address(tmp_path: Path) -> None:
    _, key, _ = world(tmp_path)
    gate = gate_for(tmp_path, failed_attempts=(0.5, 3))
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        bad = "wg_aaaaaaaaaaaa_" + "A" * 43
        assert [(await gate.authenticate(bad, "10.0.0.9")).status for _ in range(4)] == [401, 401, 401, 429]
        assert (await gate.authenticate(bad, "10.0.0.8")).status == 401      # another address: its own budget
        # A good key from the address being limited still works (the cheap check costs nothing).
        assert isinstance(await gate.authenticate(key, "10.0.0.9"), Principal)
        nursery.cancel_scope.cancel()


@pytest.mark.anyio
async def test_default_limit_and_an_unreadable_store(tmp_path: Path) -> None:
    _, key, _ = world(tmp_path)
    gate = gate_for(tmp_path, rate_limit=(0.001, 1))
    async with trio.open_nursery() as nursery:
        await nursery.start(gate.run)
        assert isinstance(await gate.authenticate(key, "c"), Principal)
        assert (await gate.authenticate(key, "c")).status == 429
        (tmp_path / "a.sqlite3").unlink()
        (tmp_path / "a.sqlite3").mkdir()      # the file is gone; the open connection still reads the old one
        gate._backend = None
        gate._open = lambda: SqliteBackend(str(tmp_path / "a.sqlite3"))
        unknown = await gate.authenticate("wg_bbbbbbbbbbbb_" + "B" * 43, "d")
        assert isinstance(unknown, Refusal) and unknown.status == 503 and gate.store_down
        nursery.cancel_scope.cancel()
