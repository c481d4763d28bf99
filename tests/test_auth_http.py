"""Auth over HTTP, end to end: `wire-gateway serve` with API keys, real clients.

The official Python SDK calls tools with a key in both eras; raw requests check each refusal
(401 with the metadata pointer, 403 outside the project, a session bound to its key, a
revoked key refused while the gateway runs), the project's view of tools on the per-server
route and in the aggregate, and that the key never shows up in the gateway's log.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from gateway import fixture
from http_gateway import ROOT, HttpGateway
from mcp.client.streamable_http import streamable_http_client
from test_aggregate_http import body_of
from test_http_front import ACCEPT, modern
from test_sdk_e2e import REPO_ROOT, SDK_SERVER, check_scenario, era_params, run_scenario
from test_ts_sdk import check_results, run_client

from wire_gateway.auth.backends import SqliteBackend
from wire_gateway.auth.model import ToolRule
from wire_gateway.auth.tenancy import Tenancy

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


class World:
    """A gateway with auth on, two projects and their keys."""

    def __init__(self, tmp_path: Path, **auth: Any) -> None:
        servers = {"echo": fixture("echo"), "other": fixture("echo", "--name", "other"),
                   "sdk": {"command": sys.executable, "args": [str(SDK_SERVER)], "cwd": str(REPO_ROOT)}}
        self.tenancy = Tenancy(SqliteBackend(str(tmp_path / "auth.sqlite3")), servers)
        self.tenancy.create_project("team", ["echo", "sdk"], {"echo": ToolRule(deny=("add",))})
        self.tenancy.create_project("others", ["other"])
        self.tenancy.create_project("full", ["echo"])
        self.tenancy.create_user("alice")
        self.tenancy.create_user("bob")
        self.key = self.tenancy.create_key("team", "alice")[1]
        self.key2 = self.tenancy.create_key("team", "alice")[1]
        self.other_key = self.tenancy.create_key("others", "bob")[1]
        self.full_key = self.tenancy.create_key("full", "bob")[1]
        self.gateway = HttpGateway(tmp_path, servers, auth={"mode": "keys", **auth})

    def post(self, path: str, body: Any, key: str | None = None, headers: dict[str, str] | None = None,
             header: str = "authorization") -> httpx.Response:
        h = {**ACCEPT, **(headers or {})}
        if key is not None:
            h[header] = f"Bearer {key}" if header == "authorization" else key
        return httpx.post(self.gateway.base + path, json=body, headers=h, timeout=20)

    def session(self, path: str, key: str) -> str:
        r = self.post(path, INIT, key)
        assert r.status_code == 200, r.text
        sid = r.headers["mcp-session-id"]
        self.post(path, {"jsonrpc": "2.0", "method": "notifications/initialized"}, key,
                  {"mcp-session-id": sid})
        return sid


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.gateway.stop()


def tool_names(response: httpx.Response) -> list[str]:
    return sorted(t["name"] for t in body_of(response)["result"]["tools"])


def all_tool_names(world: World, path: str, key: str, sid: str) -> list[str]:
    """Every page of the aggregate's tools/list (it pages by member)."""
    names: list[str] = []
    cursor = None
    for i in range(10):
        params = {"cursor": cursor} if cursor else {}
        result = body_of(world.post(path, {"jsonrpc": "2.0", "id": 100 + i, "method": "tools/list", "params": params},
                                    key, {"mcp-session-id": sid}))["result"]
        names += [t["name"] for t in result["tools"]]
        cursor = result.get("nextCursor")
        if not cursor:
            return sorted(names)
    raise AssertionError("tools/list did not end")


def test_refusals_and_metadata(world: World) -> None:
    base = world.gateway.base
    r = world.post("/mcp/echo", INIT)
    assert r.status_code == 401
    challenge = r.headers["www-authenticate"]
    assert challenge == f'Bearer resource_metadata="{base}/.well-known/oauth-protected-resource/mcp/echo"'
    assert r.json()["error"]["message"].startswith("Unauthorized: no credentials")
    meta = httpx.get(f"{base}/.well-known/oauth-protected-resource/mcp/echo").json()
    assert meta["resource"] == f"{base}/mcp/echo" and meta["bearer_methods_supported"] == ["header"]
    assert httpx.get(f"{base}/.well-known/oauth-protected-resource").json()["resource"] == f"{base}/mcp"
    assert httpx.get(f"{base}/.well-known/oauth-protected-resource/elsewhere").status_code == 404
    bad = world.post("/mcp/echo", INIT, world.key[:-2] + "zz")
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["www-authenticate"]
    assert world.key[:-2] not in bad.text
    # A proven caller outside its project: 403, also for a server that does not exist (no probing).
    out = world.post("/mcp/other", INIT, world.key)
    assert out.status_code == 403 and 'error="insufficient_scope"' in out.headers["www-authenticate"]
    assert "does not include server 'other'" in out.json()["error"]["message"]
    assert world.post("/mcp/nope", INIT, world.key).status_code == 403
    # The X-API-Key and apikey headers work as Authorization does.
    assert world.post("/mcp/echo", INIT, world.key, header="x-api-key").status_code == 200
    assert world.post("/mcp/echo", INIT, world.key, header="apikey").status_code == 200
    # Every request is checked, not only initialize: a session id alone is not a credential.
    sid = world.session("/mcp/echo", world.key)
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}
    assert world.post("/mcp/echo", call, None, {"mcp-session-id": sid}).status_code == 401
    stolen = world.post("/mcp/echo", call, world.key2, {"mcp-session-id": sid})
    assert stolen.status_code == 403 and "bound to the key" in stolen.json()["error"]["message"]
    ok = world.post("/mcp/echo", call, world.key, {"mcp-session-id": sid})
    assert body_of(ok)["result"]["content"][0]["text"] == "x"
    # Revoked while the gateway runs: refused within a poll, on the open session too.
    world.tenancy.revoke_key(world.key[3:15])
    time.sleep(1.0)
    gone = world.post("/mcp/echo", call, world.key, {"mcp-session-id": sid})
    assert gone.status_code == 401 and "revoked" in gone.json()["error"]["message"]
    world.gateway.stop()
    log = world.gateway.log()
    assert "auth refused" in log and world.key[:15] in log
    for secret in (world.key, world.key2, world.other_key):
        assert secret not in log


def test_a_rotated_key_works_for_its_grace_period_and_not_after(world: World) -> None:
    assert world.post("/mcp/echo", INIT, world.key).status_code == 200
    _, new_key, old = world.tenancy.rotate_key(world.key[3:15], grace=2.0)
    time.sleep(0.6)                                            # a poll of the store: both known
    assert world.post("/mcp/echo", INIT, world.key).status_code == 200
    assert world.post("/mcp/echo", INIT, new_key).status_code == 200
    assert old.expires is not None
    time.sleep(max(0.0, old.expires - time.time()) + 0.3)
    late = world.post("/mcp/echo", INIT, world.key)
    assert late.status_code == 401 and "expired" in late.json()["error"]["message"]
    assert world.post("/mcp/echo", INIT, new_key).status_code == 200


def test_the_project_decides_which_servers_and_tools(world: World) -> None:
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    sid = world.session("/mcp/echo", world.key)
    names = tool_names(world.post("/mcp/echo", listing, world.key, {"mcp-session-id": sid}))
    assert "echo" in names and "add" not in names
    hidden = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
              "params": {"name": "add", "arguments": {"a": 1, "b": 2}}}
    err = body_of(world.post("/mcp/echo", hidden, world.key, {"mcp-session-id": sid}))["error"]
    assert err["code"] == -32602 and err["message"] == "Unknown tool: add"
    # The aggregate: only the project's servers, and the project's view of each.
    agg = world.session("/mcp", world.key)
    names = all_tool_names(world, "/mcp", world.key, agg)
    assert "echo__echo" in names and "echo__add" not in names and not any(n.startswith("other__") for n in names)
    assert any(n.startswith("sdk__") for n in names)
    theirs = world.session("/mcp", world.other_key)
    names = all_tool_names(world, "/mcp", world.other_key, theirs)
    assert names and all(n.startswith("other__") for n in names) and "other__add" in names
    # Modern, stateless: the same views, per request.
    body, headers = modern(4, "tools/list")
    names = tool_names(world.post("/mcp", body, world.key, headers))
    assert "echo__echo" in names and "echo__add" not in names and not any(n.startswith("other__") for n in names)
    body, headers = modern(5, "tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}}, name="add")
    assert body_of(world.post("/mcp/echo", body, world.key, headers))["error"]["message"] == "Unknown tool: add"
    body, headers = modern(6, "tools/call", {"name": "other__add", "arguments": {"a": 1, "b": 2}}, name="other__add")
    answer = body_of(world.post("/mcp", body, world.key, headers))
    assert "error" in answer and "other__add" in answer["error"]["message"]
    body, headers = modern(7, "tools/call", {"name": "other__add", "arguments": {"a": 1, "b": 2}}, name="other__add")
    assert body_of(world.post("/mcp", body, world.other_key, headers))["result"]["content"][0]["text"] == "3"


@pytest.mark.anyio
@era_params
async def test_sdk_client_with_a_key(mode: str, tmp_path: Path) -> None:
    world = World(tmp_path)
    try:
        client = httpx2.AsyncClient(headers={"Authorization": f"Bearer {world.key}"}, timeout=30)
        async with client:
            results = await run_scenario(streamable_http_client(world.gateway.url("sdk"), http_client=client), mode)
        check_scenario(results, mode)
        denied = httpx2.AsyncClient(headers={"Authorization": f"Bearer {world.other_key}"}, timeout=30)
        async with denied:
            with pytest.raises(BaseExceptionGroup) as refused:
                await run_scenario(streamable_http_client(world.gateway.url("sdk"), http_client=denied), mode)
        assert "project 'others' does not include server 'sdk'" in repr(refused.value)
    finally:
        world.gateway.stop()
    assert world.key not in world.gateway.log()


def test_typescript_sdk_client_with_a_key(node: str, tmp_path: Path) -> None:
    world = World(tmp_path)
    try:
        results = run_client(node, "http", world.gateway.url("echo"), {"Authorization": f"Bearer {world.full_key}"})
        with pytest.raises(AssertionError) as refused:
            run_client(node, "http", world.gateway.url("echo"))
    finally:
        world.gateway.stop()
    check_results(results)
    assert "Unauthorized: no credentials" in str(refused.value)
    assert world.full_key not in world.gateway.log()


def test_serve_refuses_a_public_address_without_auth(tmp_path: Path) -> None:
    config = tmp_path / "open.json"
    config.write_text(json.dumps({"servers": {"echo": fixture("echo")}}))
    out = subprocess.run([sys.executable, "-m", "wire_gateway", "serve", "--config", str(config), "--host",
                          "192.0.2.10", "--port", "0"], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 1 and "refusing to listen on 192.0.2.10 without auth" in out.stderr
    assert '"auth": {"mode": "none"}' in out.stderr
