"""The policy chain end to end: real gateway processes, real fixture servers, the official
SDK client. Whether a request reached the server is read from the server's own log."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway import LEGACY_INIT, MODERN_META, PY, ROOT, fixture, gateway, text_of, write_config
from http_gateway import HttpGateway
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from test_sdk_e2e import SDK_SERVER, check_scenario, direct_target, run_logged

HIDE_ADMIN = {"tools": {"deny": ["admin_*"]}}


def start(client: Any) -> dict:
    """The legacy handshake, with room for a slow start on a loaded machine (CI runs in parallel)."""
    answer = client.request("initialize", LEGACY_INIT, timeout=30)
    client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    return answer


def received(log: Path, method: str | None = None, tool: str | None = None) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [e for e in entries if (method is None or e.get("method") == method)
            and (tool is None or e.get("tool") == tool)]


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def notified(client: Any, method: str, timeout: float = 10.0) -> bool:
    """True once `client` has received notification `method` (read from its stdout if need be)."""
    deadline = time.monotonic() + timeout
    while not any(isinstance(f, dict) and f.get("method") == method for f in client.other):
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            client.other.append(client.recv(left))
        except Exception:
            return False
    return True


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "wire_gateway", *args, "--config", str(config)], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


# ---- filtering through the official SDK client -------------------------------------------------------

@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_sdk_client_never_sees_or_reaches_filtered_tools(mode: str, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    config = write_config(tmp_path, {"p": {**fixture("policy", "--log", str(log), "--page-size", "2"), **HIDE_ADMIN}})
    params = StdioServerParameters(command=PY, args=["-m", "wire_gateway", "stdio", "--config", str(config)],
                                   cwd=str(ROOT))
    with (tmp_path / "gateway.err").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode=mode, read_timeout_seconds=15) as client:
            names: list[str] = []
            cursor = None
            while True:       # every page: the hidden tools are on the last one
                page = await client.list_tools(cursor=cursor, cache_mode="bypass") if mode != "legacy" \
                    else await client.list_tools(cursor=cursor)
                names += [t.name for t in page.tools]
                cursor = page.next_cursor
                if not cursor:
                    break
            assert names == ["echo", "pid", "add", "counter", "bump"]
            with pytest.raises(Exception, match="Unknown tool: admin_delete"):
                await client.call_tool("admin_delete", {})
            result = await client.call_tool("echo", {"text": "visible"})
            assert result.content[0].text == "visible"
    assert received(log, "tools/call", "echo") and not received(log, "tools/call", "admin_delete")


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_sdk_scenario_is_unchanged_through_a_guarded_server(mode: str, tmp_path: Path) -> None:
    """With pinning, argument validation and the list cache on, the full SDK scenario (progress,
    cancellation, sampling, elicitation) gives exactly what a direct connection gives."""
    direct = await run_logged(direct_target(), mode, tmp_path / "direct.err")
    config = write_config(tmp_path, {"sdk": {"command": PY, "args": [str(SDK_SERVER)], "cwd": str(ROOT),
                                             "pinning": "enforce", "cache": {"tools_list_ttl": 30}}})
    target = (PY, ["-m", "wire_gateway", "stdio", "--config", str(config)])
    proxied = await run_logged(target, mode, tmp_path / "gateway.err")
    check_scenario(proxied, mode)
    for key, expected in direct.items():
        assert proxied[key] == expected, f"scenario step {key!r} differs through the policy chain"


# ---- caching over stdio --------------------------------------------------------------------------------

def test_second_tools_list_is_served_from_cache_and_list_changed_invalidates(tmp_path: Path) -> None:
    log = tmp_path / "echo.log"
    config = write_config(tmp_path, {"echo": {**fixture("echo", "--log", str(log)), "cache": {"tools_list_ttl": 300}}})
    g = gateway(config, "echo", tmp_path)
    try:
        start(g)
        first = g.request("tools/list", req_id="a")
        second = g.request("tools/list", req_id="b")
        assert second["id"] == "b" and second["result"] == first["result"]
        assert len(received(log, "tools/list")) == 1
        assert text_of(g.call("touch_tools")) == "notified 1"
        assert notified(g, "notifications/tools/list_changed"), g.other      # still forwarded to the client
        third = g.request("tools/list", req_id="c")
        assert third["result"] == first["result"] and len(received(log, "tools/list")) == 2
        g.request("tools/list", req_id="d")
        assert len(received(log, "tools/list")) == 2
        ping = g.request("ping", req_id="p")        # untouched traffic still flows
        assert ping == {"jsonrpc": "2.0", "id": "p", "result": {}}
    finally:
        assert g.close() == 0, g.log_text()
    assert "policy chain pinning -> schema -> list_cache -> upstream" in g.log_text()


def test_result_cache_and_schema_over_stdio(tmp_path: Path) -> None:
    log = tmp_path / "policy.log"
    config = write_config(tmp_path, {"p": {**fixture("policy", "--log", str(log)),
                                           "cache": {"results": True, "results_ttl": 60}}})
    g = gateway(config, "p", tmp_path)
    try:
        start(g)
        g.request("tools/list")
        assert text_of(g.call("counter", {"key": "k"})) == "k #1"
        assert text_of(g.call("counter", {"key": "k"})) == "k #1"          # cached: never reached the server
        assert text_of(g.call("bump", {"key": "k"})) == "k #2"             # not annotated: not cached
        assert len(received(log, "tools/call", "counter")) == 1
        bad = g.call("add", {"a": 1, "b": "two"})
        assert bad["error"]["code"] == -32602 and "arguments.b" in bad["error"]["message"]
        assert not received(log, "tools/call", "add")
        assert text_of(g.call("add", {"a": 1, "b": 2})) == "3"
    finally:
        assert g.close() == 0, g.log_text()


# ---- pinning and `tools approve` -------------------------------------------------------------------------

def test_changed_tool_is_quarantined_until_approved(tmp_path: Path) -> None:
    log = tmp_path / "policy.log"
    pins = tmp_path / "pins.json"
    config = write_config(tmp_path, {"p": {**fixture("policy", "--log", str(log), "--change-after", "2"),
                                           "pinning": "enforce", "cache": {"tools_list_ttl": 0}}},
                          store={"pins_file": str(pins)})
    g = gateway(config, "p", tmp_path)
    try:
        start(g)
        for _ in range(2):
            names = [t["name"] for t in g.request("tools/list")["result"]["tools"]]
            assert "echo" in names
        names = [t["name"] for t in g.request("tools/list")["result"]["tools"]]     # the third: changed
        assert "echo" not in names and "add" in names
        refused = g.call("echo", {"text": "hi"})
        assert refused["error"]["code"] == -31006
        assert "wire-gateway tools approve p echo" in refused["error"]["message"]
        assert not received(log, "tools/call", "echo")
        assert "quarantined it" in g.log_text()

        listing = cli(config, "tools", "pins")
        assert listing.returncode == 0 and "QUARANTINED echo" in listing.stdout and "evil.example" in listing.stdout
        approved = cli(config, "tools", "approve", "p", "echo")
        assert approved.returncode == 0, approved.stderr
        assert "approved p/echo" in approved.stdout
        assert cli(config, "tools", "approve", "p", "echo").returncode == 1      # nothing left to approve

        names = [t["name"] for t in g.request("tools/list")["result"]["tools"]]
        assert "echo" in names
        assert text_of(g.call("echo", {"text": "hi"})) == "hi"
    finally:
        assert g.close() == 0, g.log_text()
    # The pins outlive the process: a new gateway still knows the approved definition.
    g = gateway(config, "p", tmp_path)
    try:
        start(g)
        assert "echo" not in [t["name"] for t in g.request("tools/list")["result"]["tools"]]   # old one again
    finally:
        g.close()


# ---- runner edge cases: cancellation, bad input, shutdown ---------------------------------------------------

def test_cancelled_and_shutdown_requests_get_exactly_one_answer(tmp_path: Path) -> None:
    cancel_and_shutdown_scenario(tmp_path)


def cancel_and_shutdown_scenario(tmp_path: Path, **top: Any) -> None:
    """Shared with the Redis tests, where the chain runs in tasks rather than inline."""
    log = tmp_path / "slow.log"
    config = write_config(tmp_path, {"s": {**fixture("slow", "--log", str(log)), "pinning": "warn"}}, **top)
    g = gateway(config, "s", tmp_path)
    try:
        start(g)
        g.request("tools/list")
        g.send({"jsonrpc": "2.0", "id": "cancel-me", "method": "tools/call",
                "params": {"name": "sleep", "arguments": {"seconds": 30}}})
        assert wait_for(lambda: received(log, "tools/call", "sleep"))
        g.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "cancel-me"}})
        assert wait_for(lambda: any("cancelled" in e for e in received(log)))
        bad = g.request("tools/call", {"name": "sleep", "arguments": {"seconds": "soon"}}, req_id="bad")
        assert bad["error"]["code"] == -32602 and "arguments.seconds" in bad["error"]["message"]
        dup_a = {"jsonrpc": "2.0", "id": "dup", "method": "tools/call",
                 "params": {"name": "sleep", "arguments": {"seconds": 30}}}
        g.send(dup_a)
        g.send(dup_a)
        refused = g.recv()
        assert refused["id"] == "dup" and refused["error"]["code"] == -32600
        g.send({"jsonrpc": "2.0", "id": "last", "method": "tools/call",
                "params": {"name": "sleep", "arguments": {"seconds": 30}}})
        assert wait_for(lambda: len(received(log, "tools/call", "sleep")) == 3)
        g.proc.stdin.close()            # shutdown with two calls in flight
        answers = []
        while True:
            try:
                answers.append(g.recv(15))
            except EOFError:
                break
    finally:
        g.close()
    by_id: dict[Any, int] = {}
    for a in answers:
        by_id[a.get("id")] = by_id.get(a.get("id"), 0) + 1
    assert by_id == {"dup": 1, "last": 1}, answers       # one answer each; none for the cancelled one


# ---- the HTTP front ---------------------------------------------------------------------------------------------

def modern_post(gw: HttpGateway, server: str, req_id: Any, method: str, params: dict | None = None) -> dict:
    body = {"jsonrpc": "2.0", "id": req_id, "method": method, "params": {**(params or {}), "_meta": MODERN_META}}
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json",
               "mcp-protocol-version": "2026-07-28", "mcp-method": method}
    if method == "tools/call":
        headers["mcp-name"] = params["name"]
    resp = httpx.post(gw.url(server), json=body, headers=headers, timeout=15)
    text = resp.text
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        text = [line[5:] for line in text.splitlines() if line.startswith("data:") and line[5:].strip()][-1]
    return json.loads(text)


def test_http_front_filters_and_caches_modern_requests(tmp_path: Path) -> None:
    log = tmp_path / "policy.log"
    gw = HttpGateway(tmp_path, {"p": {**fixture("policy", "--log", str(log), "--ttl-ms", "60000",
                                                "--cache-scope", "public"), **HIDE_ADMIN}}, http={"admin_port": 0})
    try:
        first = modern_post(gw, "p", 1, "tools/list")
        names = [t["name"] for t in first["result"]["tools"]]
        assert "admin_delete" not in names and "echo" in names
        second = modern_post(gw, "p", "two", "tools/list")
        assert second["id"] == "two" and [t["name"] for t in second["result"]["tools"]] == names
        assert 0 < second["result"]["ttlMs"] <= 60000
        assert len(received(log, "tools/list")) == 1
        refused = modern_post(gw, "p", 3, "tools/call", {"name": "admin_reset", "arguments": {}})
        assert refused["id"] == 3 and refused["error"]["message"] == "Unknown tool: admin_reset"
        assert not received(log, "tools/call", "admin_reset")
        ok = modern_post(gw, "p", 4, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
        assert ok["result"]["content"][0]["text"] == "x"
        status = httpx.get(gw.base + "/readyz", timeout=5).json()
        assert status["servers"] == {"p": "running"}
        import re

        admin = re.search(r"control plane on http://[^:]+:(\d+)/status", gw.log())
        assert admin, gw.log()
        shared = httpx.get(f"http://127.0.0.1:{admin.group(1)}/status", timeout=5).json()["servers"]["p"]["shared"]
        assert shared["state"] == "running" and shared["pid"] > 0 and shared["era"] == "modern"
        assert shared["framesIn"] >= 3 and shared["inFlight"] == 0     # /status reads through the runner
    finally:
        assert gw.stop() == 0, gw.log()


@pytest.mark.anyio
async def test_sdk_client_over_http_legacy_session_is_filtered(tmp_path: Path) -> None:
    log = tmp_path / "policy.log"
    gw = HttpGateway(tmp_path, {"p": {**fixture("policy", "--log", str(log)), **HIDE_ADMIN}})
    try:
        async with Client(streamable_http_client(gw.url("p")), mode="legacy", read_timeout_seconds=15) as client:
            names = [t.name for t in (await client.list_tools()).tools]
            assert names == ["echo", "pid", "add", "counter", "bump"]
            with pytest.raises(Exception, match="Unknown tool: admin_delete"):
                await client.call_tool("admin_delete", {})
            assert (await client.call_tool("add", {"a": 2, "b": 3})).content[0].text == "5"
    finally:
        assert gw.stop() == 0, gw.log()
    assert not received(log, "tools/call", "admin_delete")


def test_cli_check_shows_the_chain(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"p": {**fixture("policy"), **HIDE_ADMIN, "cache": {"results": True}},
                                     "plain": fixture("echo")})
    out = cli(config, "check")
    assert out.returncode == 0
    assert "p: filter -> pinning -> schema -> list_cache -> result_cache -> upstream" in out.stdout
    assert "plain: passthrough (no policy)" in out.stdout
    status = cli(config, "cache", "status")
    assert status.returncode == 0 and "memory store lives inside each running gateway" in status.stdout
    cleared = cli(config, "cache", "clear")
    assert cleared.returncode == 1 and "nothing cleared" in cleared.stderr
    bad = write_config(tmp_path, {"p": {**fixture("policy"), "pinning": "sometimes", "cache": {"ttl": 1}}})
    out = cli(bad, "check")
    assert out.returncode == 1 and "$.servers.p.pinning" in out.stderr and "$.servers.p.cache" in out.stderr


def test_guarded_server_frames_stay_byte_for_byte(tmp_path: Path) -> None:
    """Through the runner, answers no interceptor changed (tool answers included) are the
    server's exact bytes; so are client frames on their way to the server."""
    from gateway import fixture_module

    odd = fixture_module("oddformat")
    config = write_config(tmp_path, {"odd": {**fixture("oddformat"), "pinning": "warn",
                                             "cache": {"tools_list_ttl": 0}}})
    gw = gateway(config, "odd", tmp_path)
    try:
        for method, rid in [("initialize", 1), ("tools/list", 2), ("ping", 3), ("no/such", 4), ("tools/list", "again")]:
            gw.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": {}})
            assert gw.recv_raw() + b"\n" == odd.render(method, rid), method
        gw.send({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "odd"}})
        assert gw.recv_raw() + b"\n" == odd.NOTIFICATION
        assert gw.recv_raw() + b"\n" == odd.render("tools/call", 5)
    finally:
        assert gw.close() == 0, gw.log_text()


def test_modern_list_changed_on_a_listen_stream_invalidates_the_cache(tmp_path: Path) -> None:
    """Modern era: the server announces the change on a subscriptions/listen stream; the gateway
    drops its cached list first, then the client gets the notification under its own subscription id."""
    import threading

    from test_http_front import modern, post

    log = tmp_path / "echo.log"
    # the server says its list stays fresh for a minute (ttlMs): only list_changed may end that early
    gw = HttpGateway(tmp_path, {"echo": {**fixture("echo", "--log", str(log), "--ttl-ms", "60000"),
                                         "cache": {"tools_list_ttl": 300}}})
    try:
        listed = modern_post(gw, "echo", 1, "tools/list")["result"]
        cached = modern_post(gw, "echo", 2, "tools/list")["result"]
        # a cached answer says how much freshness is left, never more than the server gave
        assert 0 < cached.pop("ttlMs") <= listed.pop("ttlMs") == 60000 and cached == listed
        assert len(received(log, "tools/list")) == 1
        events: list[dict] = []
        got = threading.Event()

        def listen() -> None:
            body, headers = modern("sub-9", "subscriptions/listen", {"notifications": {"toolsListChanged": True}})
            with httpx.Client(timeout=20) as client, \
                    client.stream("POST", gw.url("echo"), content=json.dumps(body), headers=headers) as resp:
                for line in resp.iter_lines():
                    if line.startswith("data:") and line[5:].strip():
                        events.append(json.loads(line[5:]))
                        if events[-1].get("method") == "notifications/tools/list_changed":
                            got.set()
                            return

        reader = threading.Thread(target=listen, daemon=True)
        reader.start()
        assert wait_for(lambda: bool(events))                   # acknowledged: the stream is open
        body, headers = modern(3, "tools/call", {"name": "touch_tools", "arguments": {}}, name="touch_tools")
        assert post(gw, "echo", body, headers).json()["result"]["content"][0]["text"] == "notified 1"
        assert got.wait(10), events
        assert events[-1]["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "sub-9"
        modern_post(gw, "echo", 4, "tools/list")
        assert len(received(log, "tools/list")) == 2              # the cached list was dropped
        reader.join(5)
    finally:
        assert gw.stop() == 0, gw.log()


def test_a_crash_answers_guarded_calls_once_and_the_session_goes_on(tmp_path: Path) -> None:
    """The server dies under a tools/call: the client gets the gateway's -31001 once (passed back
    through the chain), the server is restarted and the next calls work, from the cache too."""
    config = write_config(tmp_path, {"c": {**fixture("crashing"), "pinning": "enforce",
                                           "restart": {"initial_delay": 0.05}}})
    g = gateway(config, "c", tmp_path)
    try:
        start(g)
        names = [t["name"] for t in g.request("tools/list", req_id="l1")["result"]["tools"]]
        assert "crash" in names
        died = g.call("crash", req_id="boom")
        assert died["id"] == "boom" and died["error"]["code"] == -31001
        assert text_of(g.call("echo", {"text": "back"}, req_id="after")) == "back"
        assert [t["name"] for t in g.request("tools/list", req_id="l2")["result"]["tools"]] == names
        bad = g.call("echo", {"text": 5}, req_id="bad")
        assert bad["error"]["code"] == -32602
    finally:
        assert g.close() == 0, g.log_text()
    assert not [f for f in g.other if isinstance(f, dict) and f.get("id") in ("boom", "after", "l2", "bad")]
