"""OAuth 2.1 resource-server mode, end to end: a local authorization server (authlib) issues
RFC 9068 tokens; the official SDK client finds it from the gateway's 401 and metadata, gets a
token for the gateway (RFC 8707 resource) and calls tools. Tokens that are expired, for
another audience or issuer, signed by an unknown key, unsigned (`alg: none`) or HMAC-signed
are refused; a rotation of the issuer's keys is picked up without a restart.
"""
from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from gateway import fixture
from http_gateway import HttpGateway
from joserfc.jwk import RSAKey
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken
from oauth_server import OAuthServer
from test_auth_http import INIT
from test_http_front import ACCEPT
from test_sdk_e2e import REPO_ROOT, SDK_SERVER, check_scenario, era_params, run_scenario

from wire_gateway.auth.backends import SqliteBackend
from wire_gateway.auth.tenancy import Tenancy


class Memory:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.issuer = OAuthServer()
        self.issuer.add_client("robot", "s3cret", "project:team project:nowhere")
        servers = {"echo": fixture("echo"),
                   "sdk": {"command": sys.executable, "args": [str(SDK_SERVER)], "cwd": str(REPO_ROOT)}}
        t = Tenancy(SqliteBackend(str(tmp_path / "auth.sqlite3")), servers)
        t.create_project("team", ["echo", "sdk"])
        self.gateway = HttpGateway(tmp_path, servers, auth={
            "mode": "keys+jwt", "jwt": {"issuer": self.issuer.issuer, "jwks_refresh_min": 0.2}})
        self.base = self.gateway.base

    def stop(self) -> None:
        self.gateway.stop()
        self.issuer.stop()

    def post(self, path: str, token: str | None) -> httpx.Response:
        headers = {**ACCEPT, **({"authorization": f"Bearer {token}"} if token else {})}
        return httpx.post(self.base + path, json=INIT, headers=headers, timeout=20)

    def good(self, path: str = "/mcp/echo", **claims: Any) -> str:
        return self.issuer.mint({"aud": self.base + path, "scope": "project:team", **claims})


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.stop()


@pytest.mark.anyio
@era_params
async def test_sdk_client_discovers_the_issuer_and_calls_tools(mode: str, tmp_path: Path) -> None:
    world = World(tmp_path)
    try:
        provider = ClientCredentialsOAuthProvider(world.gateway.url("sdk"), Memory(), "robot", "s3cret",
                                                  scope="project:team", issuer=world.issuer.issuer)
        async with httpx2.AsyncClient(auth=provider, timeout=30) as client:
            results = await run_scenario(streamable_http_client(world.gateway.url("sdk"), http_client=client), mode)
        check_scenario(results, mode)
        assert world.issuer.issued, "the SDK never asked the authorization server for a token"
        token = world.issuer.issued[-1]["access_token"]
    finally:
        world.stop()
    log = world.gateway.log()
    assert token not in log and token[-20:] not in log


def test_bad_tokens_are_refused_and_rotation_is_picked_up(world: World) -> None:
    meta = httpx.get(world.base + "/.well-known/oauth-protected-resource/mcp/sdk").json()
    assert meta["authorization_servers"] == [world.issuer.issuer] and meta["resource"] == world.base + "/mcp/sdk"
    assert world.post("/mcp/echo", world.good()).status_code == 200
    other = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)
    none_header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=")
    payload = base64.urlsafe_b64encode(json.dumps(
        {"iss": world.issuer.issuer, "sub": "x", "aud": world.base + "/mcp/echo", "exp": int(time.time()) + 60,
         "scope": "project:team"}).encode()).rstrip(b"=")
    bad = {
        "expired": world.good(exp=int(time.time()) - 3600),
        "not yet valid": world.good(nbf=int(time.time()) + 3600),
        "wrong audience": world.issuer.mint({"aud": "https://elsewhere.example/mcp", "scope": "project:team"}),
        "wrong issuer": world.good(iss="https://evil.example"),
        "unknown kid": world.issuer.mint({"aud": world.base + "/mcp/echo", "scope": "project:team"},
                                         header={"kid": "nope"}),
        "forged (same kid, other key)": world.issuer.mint({"aud": world.base + "/mcp/echo", "scope": "project:team"},
                                                          key=other),
        "alg none": (none_header + b"." + payload + b".").decode(),
        "garbage": "abc.def.ghi",
    }
    for why, token in bad.items():
        r = world.post("/mcp/echo", token)
        assert r.status_code == 401, (why, r.status_code, r.text)
        assert 'error="invalid_token"' in r.headers["www-authenticate"], why
        assert token not in r.text
    # A token for one endpoint does not serve another; one for the whole gateway serves all.
    assert world.post("/mcp/sdk", world.good("/mcp/echo")).status_code == 401
    assert world.post("/mcp/sdk", world.good("")).status_code == 200
    # A project the token names but the store lacks, or none at all: 403.
    assert world.post("/mcp/echo", world.good(scope="project:nowhere")).status_code == 403
    assert world.post("/mcp/echo", world.good(scope="other")).status_code == 403
    # The issuer rotates its keys: new tokens verify after one JWKS refetch, no restart.
    fetched = world.issuer.jwks_fetches
    world.issuer.rotate()
    time.sleep(0.3)
    assert world.post("/mcp/echo", world.good()).status_code == 200
    assert world.issuer.jwks_fetches == fetched + 1
    world.gateway.stop()
    log = world.gateway.log()
    assert "auth refused" in log and "jwt:client" in log
    for token in bad.values():
        assert token not in log
