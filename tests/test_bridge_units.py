"""The era bridge's pieces that need no peer: its `requestState` (wire/request_state.py), what verifies
and what does not; a server's `era` key in the config."""
from __future__ import annotations

import pytest

from wire_gateway.wire import request_state as rs

SECRET = rs.new_secret()
PARAMS = {"name": "ask", "arguments": {"message": "who?"}}
DIGEST = rs.params_digest("tools/call", PARAMS)


def state(**kw: object) -> str:
    args: dict = {"secret": SECRET, "key": "7", "expires": 1000.0, "method": "tools/call", "digest": DIGEST,
                  "principal": "wg_abc"}
    args.update(kw)
    return rs.mint(args["secret"], args["key"], args["expires"], args["method"], args["digest"], args["principal"])


def test_a_genuine_state_names_its_key():
    assert rs.verify(SECRET, state(), 999.0, "tools/call", DIGEST, "wg_abc") == rs.Verified("7")


def test_the_digest_ignores_what_a_retry_adds():
    retry = {**PARAMS, "_meta": {"progressToken": 1}, "inputResponses": {"a": {}}, "requestState": "x"}
    assert rs.params_digest("tools/call", retry) == DIGEST
    assert rs.params_digest("tools/call", {**PARAMS, "arguments": {"message": "what?"}}) != DIGEST
    assert rs.params_digest("prompts/get", PARAMS) != DIGEST


@pytest.mark.parametrize(("given", "now", "method", "digest", "principal", "says"), [
    (state(secret=rs.new_secret()), 999.0, "tools/call", DIGEST, "wg_abc", "verification"),
    (state(), 1001.0, "tools/call", DIGEST, "wg_abc", "expired"),
    (state(), 999.0, "prompts/get", DIGEST, "wg_abc", "another request"),
    (state(), 999.0, "tools/call", "0" * 32, "wg_abc", "another request"),
    (state(), 999.0, "tools/call", DIGEST, "wg_other", "another caller"),
    (state(principal=None), 999.0, "tools/call", DIGEST, "wg_abc", "another caller"),
    ("no-dot", 999.0, "tools/call", DIGEST, "wg_abc", "not one the gateway issued"),
    ("a.b.c", 999.0, "tools/call", DIGEST, "wg_abc", "not one the gateway issued"),
    (12, 999.0, "tools/call", DIGEST, "wg_abc", "not one the gateway issued"),
    ("x" * 5000, 999.0, "tools/call", DIGEST, "wg_abc", "not one the gateway issued"),
], ids=["other-secret", "expired", "other-method", "other-params", "other-caller", "anonymous-state",
        "no-dot", "two-dots", "not-a-string", "too-long"])
def test_what_is_refused(given, now, method, digest, principal, says):
    refused = rs.verify(SECRET, given, now, method, digest, principal)
    assert isinstance(refused, str) and says in refused


def test_every_altered_character_is_noticed():
    good = state()
    for at in range(len(good)):
        if good[at] == ".":
            continue
        altered = good[:at] + ("A" if good[at] != "A" else "B") + good[at + 1:]
        assert not isinstance(rs.verify(SECRET, altered, 999.0, "tools/call", DIGEST, "wg_abc"), rs.Verified), at


def test_a_servers_era_is_auto_unless_pinned_and_nothing_else():
    from wire_gateway.config import ConfigError, parse_config

    config = parse_config({"servers": {"a": {"command": "x"}, "b": {"command": "x", "era": "legacy"},
                                       "c": {"url": "http://127.0.0.1:1/mcp", "era": "modern"}}})
    assert [config.servers[n].resolved().era for n in "abc"] == ["auto", "legacy", "modern"]
    with pytest.raises(ConfigError) as info:
        parse_config({"servers": {"a": {"command": "x", "era": "2026-07-28"}}})
    assert "era" in str(info.value)
