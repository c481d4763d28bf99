"""Repeated members and exact ids end to end (issue 13, defects 1 and 6), on every front.

The exploit: client A writes `{"jsonrpc":"2.0","id":"x","id":<B's gateway id>,...}`; a gateway
that rewrites only the first id forwards a request the server answers under B's id, and B gets
A's answer. Now A gets -32600 (with "x") and the frame never reaches the server."""
from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest
from gateway import MODERN_META, fixture, gateway, write_config
from http_gateway import HttpGateway

ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
MODERN_HEADERS = {**ACCEPT, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call"}
META = json.dumps(MODERN_META, separators=(",", ":"))
DUP_ID = (b'{"jsonrpc":"2.0","id":"x","id":%s,"method":"tools/call","params":{"name":"echo",'
          b'"arguments":{"text":"INJECTED"}%s}}')
DUP_NAME = (b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"%s","name":"%s",'
            b'"arguments":{"text":"hi"}%s}}')


def logged(path, **match):
    """The server's received-message log entries (rawmcp --log) that match."""
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in entries if all(e.get(k) == v for k, v in match.items())]


def modern_meta(extra: bytes = b"") -> bytes:
    return b',"_meta":' + META.encode() + extra


# ---- stdio ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("aggregate", [False, True])
def test_stdio_refuses_a_repeated_id_and_keeps_exact_ids(tmp_path, aggregate):
    log = tmp_path / "echo.log"
    servers = {"echo": fixture("echo", "--log", str(log))}
    if aggregate:
        servers["other"] = fixture("echo")
    cfg = write_config(tmp_path, servers)
    client = gateway(cfg, "echo", tmp_path) if not aggregate else _stdio_aggregate(cfg, tmp_path)
    try:
        client.initialize()
        client.send(DUP_ID % (b"5", b""))
        answer = client.recv()
        assert answer["id"] == "x" and answer["error"]["code"] == -32600
        assert "'id' appears more than once" in answer["error"]["message"]
        name = b"echo__echo" if aggregate else b"echo"
        for spelled in (b"-0", b"1.0", b"1e2", b'"\\u0061"'):
            client.send(b'{"jsonrpc":"2.0","id":%s,"method":"tools/call","params":{"name":"%s",'
                        b'"arguments":{"text":"hi"}}}' % (spelled, name))
            raw = client.recv_raw()
            assert re.match(rb'\{"jsonrpc":"2.0","id":' + re.escape(spelled) + rb',"result":', raw), raw
        client.send(b'{"jsonrpc":"2.0","id":-0,"method":"no/such/method"}')
        assert b'"id":-0,' in client.recv_raw()
        assert not logged(log, tool="echo", id="x")
        assert all(e.get("id") != 5 for e in logged(log))
    finally:
        client.close()


def _stdio_aggregate(cfg, tmp_path):
    from gateway import PY, LineClient
    client = LineClient([PY, "-m", "wire_gateway", "stdio", "--config", str(cfg)],
                        log_path=tmp_path / "gateway-aggregate.log")
    client.other = []
    return client


@pytest.mark.parametrize("aggregate", [False, True])
def test_a_tools_call_naming_its_tool_twice_never_reaches_the_policy_or_the_server(tmp_path, aggregate):
    log = tmp_path / "echo.log"
    servers = {"echo": {**fixture("echo", "--log", str(log)), "tools": {"allow": ["echo"]}}}
    if aggregate:
        servers["other"] = fixture("echo")
    cfg = write_config(tmp_path, servers)
    client = gateway(cfg, "echo", tmp_path) if not aggregate else _stdio_aggregate(cfg, tmp_path)
    try:
        client.initialize()
        allowed, hidden = (b"echo__echo", b"echo__pid") if aggregate else (b"echo", b"pid")
        for first, second in ((allowed, hidden), (hidden, allowed)):
            client.send(DUP_NAME % (first, second, b""))
            answer = client.recv()
            assert answer["id"] == 9 and answer["error"]["code"] == -32602, answer
            assert "'name' appears more than once" in answer["error"]["message"]
        client.send(b'{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"%s",'
                    b'"arguments":{"text":"a","text":"b"}}}' % allowed)
        assert client.recv()["error"]["code"] == -32602
        assert client.call(allowed.decode(), {"text": "fine"})["result"]["content"][0]["text"] == "fine"
        assert not logged(log, tool="pid") and len(logged(log, method="tools/call")) == 1
    finally:
        client.close()


def test_an_upstream_answer_repeating_its_id_is_dropped(tmp_path):
    """Over stdio: neither waiting request gets the injected answer; both get the usual -31001
    when the server exits, and the gateway says why it dropped the line."""
    cfg = write_config(tmp_path, {"dup": fixture("dupanswer")})
    client = gateway(cfg, "dup", tmp_path)
    try:
        client.initialize()
        for rid in (1, 2):
            client.send({"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": "hold"}})
        time.sleep(0.3)
        client.send({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "inject"}})
        answers = {}
        while len(answers) < 3:
            frame = client.recv(timeout=15)
            answers[frame["id"]] = frame
        assert sorted(answers) == [1, 2, 3]
        assert all(a["error"]["code"] == -31001 for a in answers.values()), answers
        assert "INJECTED" not in json.dumps(answers)
        text = client.log_text()
        assert "appears more than once" in text and "dropped" in text
    finally:
        client.close()


# ---- HTTP ----------------------------------------------------------------------------------------

@pytest.fixture
def http(tmp_path):
    log = tmp_path / "echo.log"
    gw = HttpGateway(tmp_path, {"echo": fixture("echo", "--log", str(log)), "other": fixture("echo"),
                                "guarded": {**fixture("echo"), "tools": {"allow": ["echo"]}}})
    gw.echo_log = log
    try:
        yield gw
    finally:
        assert gw.stop() == 0, gw.log()


def test_modern_http_another_clients_gateway_id_cannot_be_hijacked(http):
    """Client B waits on a slow call; client A sends the exploit with B's gateway id (read from the
    server's log). A gets -32600 for "x"; B gets its own answer; the server never saw A's frame."""
    url = http.url("echo")
    body_b = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
              "params": {"name": "wait", "arguments": {"seconds": 1.5}, "_meta": MODERN_META}}
    answer_b: dict = {}
    t = threading.Thread(target=lambda: answer_b.update(httpx.post(
        url, content=json.dumps(body_b), headers={**MODERN_HEADERS, "mcp-name": "wait"}, timeout=20).json()))
    t.start()
    deadline = time.monotonic() + 10
    while not logged(http.echo_log, tool="wait") and time.monotonic() < deadline:
        time.sleep(0.02)
    gw_id_b = logged(http.echo_log, tool="wait")[0]["id"]
    resp = httpx.post(url, content=DUP_ID % (str(gw_id_b).encode(), modern_meta()),
                      headers={**MODERN_HEADERS, "mcp-name": "echo"}, timeout=10)
    t.join(20)
    assert resp.status_code == 400 and resp.json()["id"] == "x" and resp.json()["error"]["code"] == -32600
    assert answer_b["id"] == 1 and answer_b["result"]["content"][0]["text"] == "waited 1.5s", answer_b
    assert not logged(http.echo_log, id="x") and len(logged(http.echo_log, tool="echo")) == 0
    assert isinstance(gw_id_b, int) and gw_id_b > 1000    # a random 48-bit start, not 1, 2, 3...


@pytest.mark.parametrize("server", ["echo", "*"])
def test_http_modern_ids_come_back_as_written(http, server):
    url = http.url(server) if server != "*" else http.base + "/mcp"
    name = b"echo" if server == "echo" else b"echo__echo"
    for spelled in (b"-0", b"1.0", b"1e2", b'"\\u0061"'):
        body = (b'{"jsonrpc":"2.0","id":%s,"method":"tools/call","params":{"name":"%s","arguments":{"text":"hi"}'
                % (spelled, name) + modern_meta(b"}}"))
        resp = httpx.post(url, content=body, headers={**MODERN_HEADERS, "mcp-name": name.decode()}, timeout=10)
        assert resp.status_code == 200, resp.text
        assert re.match(rb'\{"jsonrpc":"2.0","id":' + re.escape(spelled) + rb',', resp.content), resp.content
    resp = httpx.post(url, content=DUP_ID % (b"3", modern_meta()),
                      headers={**MODERN_HEADERS, "mcp-name": name.decode()}, timeout=10)
    assert resp.status_code == 400 and resp.json()["id"] == "x" and resp.json()["error"]["code"] == -32600


@pytest.mark.parametrize("server", ["echo", "*", "guarded"])
def test_http_legacy_refuses_repeats_and_keeps_exact_ids(http, server):
    url = http.url(server) if server != "*" else http.base + "/mcp"
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "t", "version": "0"}}}
    opened = httpx.post(url, json=init, headers=ACCEPT, timeout=10)
    sid = opened.headers["mcp-session-id"]
    headers = {**ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
    httpx.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers, timeout=10)
    name = b"echo__echo" if server == "*" else b"echo"
    resp = httpx.post(url, content=DUP_ID % (b"4", b""), headers=headers, timeout=10)
    assert resp.status_code == 400 and resp.json()["id"] == "x" and resp.json()["error"]["code"] == -32600
    body = b'{"jsonrpc":"2.0","id":-0,"method":"tools/call","params":{"name":"%s","arguments":{"text":"hi"}}}' % name
    resp = httpx.post(url, content=body, headers=headers, timeout=10)
    assert b'"id":-0,' in resp.content, resp.content
    if server != "echo":
        resp = httpx.post(url, content=DUP_NAME % (name, b"pid" if server == "guarded" else b"echo__pid", b""),
                          headers=headers, timeout=10)
        assert b'"code":-32602' in resp.content and b"'name' appears more than once" in resp.content


def test_an_http_upstream_answer_repeating_its_id_is_dropped(tmp_path):
    """Over a url server: the body repeating its id (`"id":7,"id":8`) reaches neither request 7
    nor 8; 7 gets -31003 (a body that is no usable answer), 8 its own answer."""
    from test_http_upstream import http_echo, remote_config, stdio_gateway

    upstream = http_echo(tmp_path)
    client = None
    try:
        client = stdio_gateway(remote_config(tmp_path, upstream.url), tmp_path)
        client.initialize()
        client.send({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                     "params": {"name": "dupid", "arguments": {"also": 8}}})
        client.send({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                     "params": {"name": "echo", "arguments": {"text": "mine"}}})
        answers = {}
        while len(answers) < 2:
            frame = client.recv(timeout=15)
            answers[frame["id"]] = frame
        assert answers[7]["error"]["code"] == -31003 and "appears more than once" in answers[7]["error"]["message"]
        assert answers[8]["result"]["content"][0]["text"] == "mine"
        assert "INJECTED" not in json.dumps(answers)
    finally:
        if client is not None:
            client.close()
        upstream.stop()
