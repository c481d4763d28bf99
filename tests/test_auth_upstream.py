"""The gateway's own credentials for its servers, and the client's staying out of them.

A local authorization server (authlib) grants client credentials with short-lived tokens. A
url server (the HTTP echo fixture, logging every Authorization header it receives) must see
only tokens from that server, renewed before they expire, for its own URL as audience (RFC
8707), and never the key the client sent the gateway. A command server gets its token in the
environment variable the config names. Neither the client secret nor a token is logged.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from gateway import SERVERS, fixture
from http_gateway import HttpGateway
from joserfc import jwt
from joserfc.jwk import KeySet
from matrix_scenario import UrlServer
from oauth_server import OAuthServer
from test_auth_http import INIT
from test_http_front import ACCEPT

from wire_gateway.auth.backends import SqliteBackend
from wire_gateway.auth.tenancy import Tenancy

SECRET = "gw-client-secret-5d1e"


def test_upstreams_get_the_gateways_tokens_never_the_clients(tmp_path: Path, monkeypatch) -> None:
    issuer = OAuthServer(lifetime=6)
    issuer.add_client("gateway", SECRET, "mcp:read mcp:write")
    auth_log = tmp_path / "upstream-auth.log"
    remote = UrlServer(tmp_path, "--auth-log", str(auth_log))
    env_out = tmp_path / "env.json"
    oauth = {"token_url": issuer.issuer + "/token", "client_id": "gateway", "client_secret": "${GW_SECRET}",
             "scope": "mcp:read", "refresh_before": 4, "revocation_url": issuer.issuer + "/revoke"}
    servers = {"remote": {"url": remote.url, "oauth": oauth},
               "local": {**fixture("envdump"), "args": [str(SERVERS / "envdump.py"), "--out", str(env_out)],
                         "oauth": {**oauth, "env": "API_TOKEN"}}}
    t = Tenancy(SqliteBackend(str(tmp_path / "auth.sqlite3")), servers)
    t.create_project("team", ["*"])
    t.create_user("alice")
    key = t.create_key("team", "alice")[1]
    monkeypatch.setenv("GW_SECRET", SECRET)
    gateway = HttpGateway(tmp_path, servers, auth={"mode": "keys"})
    headers = {**ACCEPT, "authorization": f"Bearer {key}"}
    try:
        r = httpx.post(gateway.url("remote"), json=INIT, headers=headers, timeout=20)
        assert r.status_code == 200, r.text
        sid = r.headers["mcp-session-id"]
        deadline = time.monotonic() + 4.0
        n = 0
        while time.monotonic() < deadline:
            n += 1
            call = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "echo",
                                                                                "arguments": {"text": str(n)}}}
            answer = httpx.post(gateway.url("remote"), json=call, headers={**headers, "mcp-session-id": sid},
                                timeout=20)
            assert answer.status_code == 200 and str(n) in answer.text
            time.sleep(0.25)
        local = httpx.post(gateway.url("local"), json=INIT, headers=headers, timeout=20)
        assert local.status_code == 200, local.text
    finally:
        gateway.stop()
        remote.stop()
        issuer.stop()
    seen = [line for line in auth_log.read_text().splitlines() if line]
    assert seen and all(line.startswith("Bearer ") for line in seen)
    assert not any(key in line for line in seen), "the client's key reached the upstream"
    tokens = list(dict.fromkeys(line[len("Bearer "):] for line in seen))
    assert len(tokens) >= 2, "the token was not renewed before it expired"
    keys = KeySet.import_key_set(issuer.public_jwks())
    claims = [jwt.decode(tok, keys).claims for tok in tokens]
    assert all(c["aud"] == remote.url and c["scope"] == "mcp:read" for c in claims)
    # Renewed ahead of expiry: the next token was in use before the previous one expired.
    assert claims[1]["iat"] < claims[0]["exp"]
    # and the token it replaced was revoked at the issuer (RFC 7009)
    assert tokens[0] in issuer.revoked
    env = json.loads(env_out.read_text())
    assert env["API_TOKEN"] in [x["access_token"] for x in issuer.issued]
    log = gateway.log()
    assert SECRET not in log and key not in log
    for tok in [*tokens, env["API_TOKEN"]]:
        assert tok not in log


def test_a_token_endpoint_in_clear_is_refused_at_load(tmp_path: Path) -> None:
    from wire_gateway.config import ConfigError, parse_config

    doc = {"servers": {"r": {"url": "https://example.com/mcp",
                             "oauth": {"token_url": "http://auth.example.com/token", "client_id": "x"}},
                       "c": {"command": "x", "oauth": {"token_url": "https://a.example/t", "client_id": "x"}}}}
    try:
        parse_config(doc)
    except ConfigError as exc:
        text = "\n".join(exc.problems)
    else:
        raise AssertionError("accepted a token endpoint over plain http")
    assert "oauth.token_url: http://auth.example.com/token must be https" in text
    assert 'name it with "env"' in text
    try:
        parse_config({"servers": {"e": {"command": "x"}}, "auth": {"mode": "jwt"}})
    except ConfigError as exc:
        assert exc.problems == ['$.auth.jwt: auth.mode "jwt" needs a "jwt" section (at least "issuer")']
    else:
        raise AssertionError("accepted auth.mode jwt without an issuer")
