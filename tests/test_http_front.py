"""Protocol edges of the Streamable HTTP front, with a raw HTTP client (httpx)."""
from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from gateway import MODERN_META, fixture
from http_gateway import HttpGateway

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def modern(req_id, method, params=None, name=None):
    body = {"jsonrpc": "2.0", "id": req_id, "method": method, "params": {**(params or {}), "_meta": MODERN_META}}
    headers = {**ACCEPT, "mcp-protocol-version": "2026-07-28", "mcp-method": method}
    if name is not None:
        headers["mcp-name"] = name
    return body, headers


@pytest.fixture
def gw(tmp_path):
    log = tmp_path / "slow.log"
    gateway = HttpGateway(tmp_path, {"echo": fixture("echo"), "slow": fixture("slow", "--log", str(log))},
                          http={"max_body_bytes": 4096, "session_idle_timeout": 1.0})
    gateway.slow_log = log
    try:
        yield gateway
    finally:
        assert gateway.stop() == 0, gateway.log()


def post(gw, server, body, headers=None, **kw):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(gw.url(server), content=data, headers=headers or ACCEPT, timeout=10, **kw)


def test_health_and_readiness(gw):
    assert httpx.get(gw.base + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(gw.base + "/readyz")
    assert ready.status_code == 200 and ready.json()["servers"] == {"echo": "running", "slow": "running"}


def test_legacy_session_lifecycle(gw):
    opened = post(gw, "echo", INIT)
    assert opened.status_code == 200
    sid = opened.headers["mcp-session-id"]
    assert len(sid) >= 32 and opened.json()["result"]["serverInfo"]["name"] == "echo"
    h = {**ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
    assert post(gw, "echo", {"jsonrpc": "2.0", "method": "notifications/initialized"}, h).status_code == 202
    call = post(gw, "echo", {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                             "params": {"name": "echo", "arguments": {"text": "over http"}}}, h)
    assert call.json()["result"]["content"][0]["text"] == "over http"
    assert httpx.delete(gw.url("echo"), headers=h).status_code == 200
    gone = post(gw, "echo", {"jsonrpc": "2.0", "id": 3, "method": "ping"}, h)
    assert gone.status_code == 404 and "session not found" in gone.json()["error"]["message"]


def test_idle_sessions_expire(gw):
    sid = post(gw, "echo", INIT).headers["mcp-session-id"]
    time.sleep(2.0)
    expired = post(gw, "echo", {"jsonrpc": "2.0", "id": 2, "method": "ping"}, {**ACCEPT, "mcp-session-id": sid})
    assert expired.status_code == 404


def test_legacy_request_without_session_is_400(gw):
    resp = post(gw, "echo", {"jsonrpc": "2.0", "id": 5, "method": "tools/list"})
    assert resp.status_code == 400 and "Mcp-Session-Id" in resp.json()["error"]["message"]


def test_progress_and_server_requests_stream_as_sse(gw):
    sid = post(gw, "echo", INIT).headers["mcp-session-id"]
    h = {**ACCEPT, "mcp-session-id": sid}
    resp = post(gw, "echo", {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                             "params": {"name": "progress", "arguments": {"steps": 2},
                                        "_meta": {"progressToken": "t"}}}, h)
    assert resp.headers["content-type"] == "text/event-stream" and resp.headers["x-accel-buffering"] == "no"
    events = [json.loads(data) for _, data in sse_events(resp.text.splitlines())]
    assert [e.get("method") for e in events] == ["notifications/progress", "notifications/progress", None]
    assert events[-1]["id"] == 9


def test_modern_request_and_header_rules(gw):
    body, headers = modern(1, "tools/call", {"name": "echo", "arguments": {"text": "modern"}}, name="echo")
    ok = post(gw, "echo", body, headers)
    assert ok.status_code == 200 and ok.json()["result"]["content"][0]["text"] == "modern"
    assert ok.json()["id"] == 1 and "mcp-session-id" not in ok.headers
    body, headers = modern(2, "tools/call", {"name": "echo", "arguments": {"text": "x"}}, name="add")
    bad = post(gw, "echo", body, headers)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == -32020 and bad.json()["id"] == 2
    body, headers = modern(3, "tools/list")
    headers["mcp-method"] = "tools/call"
    assert post(gw, "echo", body, headers).json()["error"]["code"] == -32020
    body, headers = modern(4, "no/such/method")
    missing = post(gw, "echo", body, headers)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == -32601


def test_concurrent_modern_clients_get_their_own_answers(gw):
    with httpx.Client(timeout=10) as client:
        bodies = [modern(1, "tools/call", {"name": "echo", "arguments": {"text": f"client-{i}"}}, name="echo")
                  for i in range(30)]
        # every client uses id 1: the gateway must remap
        import concurrent.futures
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda bh: client.post(gw.url("echo"), content=json.dumps(bh[0]),
                                                           headers=bh[1]).json(), bodies))
    assert [a["result"]["content"][0]["text"] for a in answers] == [f"client-{i}" for i in range(30)]
    assert all(a["id"] == 1 for a in answers)


@pytest.mark.parametrize("headers, status", [
    ({"origin": "http://evil.example"}, 403),
    ({"host": "evil.example"}, 403),
    ({"content-type": "text/plain"}, 415),
])
def test_edge_refusals(gw, headers, status):
    resp = post(gw, "echo", INIT, {**ACCEPT, **headers})
    assert resp.status_code == status
    assert "error" in resp.json()


def test_loopback_origin_is_allowed(gw):
    assert post(gw, "echo", INIT, {**ACCEPT, "origin": "http://localhost:3000"}).status_code == 200


def test_oversize_body_and_garbage(gw):
    big = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"pad": "x" * 10000}}
    assert post(gw, "echo", big).status_code == 413
    garbage = post(gw, "echo", b"{not json")
    assert garbage.status_code == 400 and garbage.json()["error"]["code"] == -32700


def test_client_disconnect_cancels_a_modern_request_upstream(gw):
    body, headers = modern(1, "tools/call", {"name": "sleep", "arguments": {"seconds": 30}}, name="sleep")
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", gw.port))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"POST /mcp/slow HTTP/1.1\r\nhost: 127.0.0.1\r\n{head}content-length: {len(data)}\r\n\r\n".encode()
                 + data)
    time.sleep(1.0)   # the call is running upstream
    sock.close()      # the client goes away: in the modern era that is the cancellation
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        entries = [json.loads(line) for line in gw.slow_log.read_text().splitlines()] if gw.slow_log.exists() else []
        if any("cancelled" in e for e in entries):
            break
        time.sleep(0.1)
    else:
        pytest.fail("the upstream never saw notifications/cancelled:\n" + gw.log())


def test_a_repeated_mcp_header_is_refused(gw):
    body, headers = modern(1, "tools/call", {"name": "echo", "arguments": {"text": "x"}}, name="echo")
    raw = [(k, v) for k, v in headers.items()] + [("mcp-name", "add")]
    resp = httpx.post(gw.url("echo"), content=json.dumps(body), headers=raw, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == -32020


def sse_events(lines):
    """(id, data) per SSE event from an iterator of lines."""
    event_id, data = None, []
    for line in lines:
        if line == "":
            if "".join(data).strip():   # an id-only event primes Last-Event-ID; it carries no message
                yield event_id, "\n".join(data)
            data = []
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def test_last_event_id_resume_delivers_exactly_the_missed_events(tmp_path):
    import sys

    from test_sdk_e2e import REPO_ROOT, SDK_SERVER

    gateway = HttpGateway(tmp_path, {"sdk": {"command": sys.executable, "args": [str(SDK_SERVER)],
                                             "cwd": str(REPO_ROOT)}})
    try:
        sid = post(gateway, "sdk", INIT).headers["mcp-session-id"]
        h = {**ACCEPT, "mcp-session-id": sid}
        post(gateway, "sdk", {"jsonrpc": "2.0", "method": "notifications/initialized"}, h)
        call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": "slow", "arguments": {"seconds": 1.5}, "_meta": {"progressToken": "tok"}}}
        seen = []
        with httpx.Client(timeout=20) as client, \
                client.stream("POST", gateway.url("sdk"), content=json.dumps(call), headers=h) as resp:
            assert resp.headers["content-type"] == "text/event-stream"
            for event_id, data in sse_events(resp.iter_lines()):
                seen.append((event_id, json.loads(data)))
                if len(seen) == 3:
                    break           # the client loses its connection mid-stream
        last_id = seen[-1][0]
        time.sleep(2.5)                 # the call finishes while nobody listens
        with httpx.Client(timeout=20) as client:
            resumed = client.get(gateway.url("sdk"), headers={**h, "last-event-id": last_id})
        assert resumed.status_code == 200
        missed = [(i, json.loads(d)) for i, d in sse_events(resumed.text.splitlines())]
        stream = last_id.rsplit("-", 1)[0]
        seqs = [int(i.rsplit("-", 1)[1]) for i, _ in seen + missed]
        assert all(i.startswith(stream + "-") for i, _ in seen + missed)
        assert seqs == list(range(1, len(seqs) + 1))      # nothing lost, nothing twice
        assert missed[-1][1]["id"] == 7 and "result" in missed[-1][1]
        assert all(m.get("method") == "notifications/progress" for _, m in seen + missed[:-1])
        # the stream is finished: resuming it again is refused
        again = httpx.get(gateway.url("sdk"), headers={**h, "last-event-id": last_id}, timeout=10)
        assert again.status_code == 404
    finally:
        assert gateway.stop() == 0, gateway.log()


def test_a_busy_port_is_a_clear_error(tmp_path):
    import subprocess
    import sys

    from gateway import ROOT

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "wire_gateway", "serve", "--port", str(port)],
                                capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 1
    assert "cannot listen" in result.stderr and "Traceback" not in result.stderr


def test_subscriptions_listen_stream_with_keepalive(tmp_path):
    """A modern listen stream stays open, gets the server's notifications with the client's own
    subscription id (the gateway remapped it), keep-alive comments while quiet, and ends upstream
    when the client closes it."""
    import threading

    log = tmp_path / "echo.log"
    gateway = HttpGateway(tmp_path, {"echo": fixture("echo", "--log", str(log))}, http={"keepalive_interval": 0.3})
    try:
        listen, headers = modern("sub-1", "subscriptions/listen", {"notifications": {"toolsListChanged": True}})
        lines: list[str] = []
        got_two = threading.Event()

        def listen_for_events():
            with httpx.Client(timeout=20) as client, \
                    client.stream("POST", gateway.url("echo"), content=json.dumps(listen), headers=headers) as resp:
                assert resp.headers["content-type"] == "text/event-stream"
                for line in resp.iter_lines():
                    lines.append(line)
                    if sum(1 for x in lines if x.startswith("data:")) >= 2 and any(x.startswith(":") for x in lines):
                        got_two.set()
                        return

        reader = threading.Thread(target=listen_for_events, daemon=True)
        reader.start()
        time.sleep(1.0)   # acknowledged, then quiet: keep-alive comments
        body, h = modern(2, "tools/call", {"name": "touch_tools", "arguments": {}}, name="touch_tools")
        assert post(gateway, "echo", body, h).json()["result"]["content"][0]["text"] == "notified 1"
        assert got_two.wait(10), lines
        reader.join(5)
        events = [json.loads(x[5:]) for x in lines if x.startswith("data:") and x[5:].strip()]
        assert [e["method"] for e in events] == ["notifications/subscriptions/acknowledged",
                                                 "notifications/tools/list_changed"]
        assert all(e["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "sub-1" for e in events)
        assert any(x.startswith(":") for x in lines)   # keep-alive comment while quiet
        deadline = time.monotonic() + 10   # the client closed the stream: the subscription ends upstream
        while time.monotonic() < deadline and "cancelled" not in log.read_text():
            time.sleep(0.1)
        assert "cancelled" in log.read_text()
    finally:
        assert gateway.stop() == 0, gateway.log()


def test_legacy_batch_is_answered_as_one_array(gw):
    init = {**INIT, "params": {**INIT["params"], "protocolVersion": "2025-03-26"}}
    sid = post(gw, "echo", init).headers["mcp-session-id"]
    h = {**ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-03-26"}
    batch = [{"jsonrpc": "2.0", "method": "notifications/initialized"},
             {"jsonrpc": "2.0", "id": "a", "method": "ping"},
             {"jsonrpc": "2.0", "id": "b", "method": "tools/call",
              "params": {"name": "add", "arguments": {"a": 2, "b": 3}}},
             {"jsonrpc": "2.0", "id": 5}]
    resp = post(gw, "echo", batch, h)
    assert resp.status_code == 200
    answers = {a.get("id"): a for a in resp.json()}
    assert answers["a"]["result"] == {} and answers["b"]["result"]["content"][0]["text"] == "5"
    assert answers[5]["error"]["code"] == -32600
    only_notes = post(gw, "echo", [{"jsonrpc": "2.0", "method": "notifications/x"}], h)
    assert only_notes.status_code == 202


def test_mcp_param_headers_are_checked_once_the_tool_is_known(gw):
    body, headers = modern(1, "tools/list")
    tools = {t["name"]: t for t in post(gw, "echo", body, headers).json()["result"]["tools"]}
    assert tools["where"]["inputSchema"]["properties"]["region"]["x-mcp-header"] == "Region"
    call, h = modern(2, "tools/call", {"name": "where", "arguments": {"region": "us-west1"}}, name="where")
    ok = post(gw, "echo", call, {**h, "mcp-param-region": "us-west1"})
    assert ok.status_code == 200 and ok.json()["result"]["content"][0]["text"] == "us-west1"
    encoded = post(gw, "echo", call, {**h, "mcp-param-region": "=?base64?dXMtd2VzdDE=?="})
    assert encoded.status_code == 200
    wrong = post(gw, "echo", call, {**h, "mcp-param-region": "eu-north1"})
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == -32020
    missing = post(gw, "echo", call, h)
    assert missing.status_code == 400 and "Mcp-Param-Region" in missing.json()["error"]["message"]


def test_sigterm_with_a_drain_grace_turns_readyz_off_and_serves_on_until_the_grace_ends(tmp_path):
    """http.drain_grace: /readyz answers 503 at once, requests are still served, the gateway stops
    when the grace is over; a second SIGTERM ends the grace at once."""
    import signal

    def leaving(gateway):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            ready = httpx.get(gateway.base + "/readyz", timeout=5)
            if ready.status_code == 503:
                return ready.json()
            time.sleep(0.02)
        raise AssertionError(gateway.log())

    gateway = HttpGateway(tmp_path, {"echo": fixture("echo")}, http={"drain_grace": 1.5})
    assert httpx.get(gateway.base + "/readyz").json()["leaving"] is False
    started = time.monotonic()
    gateway.proc.send_signal(signal.SIGTERM)
    assert leaving(gateway) == {"ready": False, "leaving": True, "servers": {"echo": "running"}}
    opened = post(gateway, "echo", INIT)                     # still served
    assert opened.status_code == 200 and opened.json()["result"]["serverInfo"]["name"] == "echo"
    assert gateway.proc.wait(15) == 0, gateway.log()
    assert time.monotonic() - started >= 1.5
    assert "serving 1.5s more (http.drain_grace)" in gateway.log()

    (tmp_path / "again").mkdir()
    again = HttpGateway(tmp_path / "again", {"echo": fixture("echo")}, http={"drain_grace": 60})
    started = time.monotonic()
    again.proc.send_signal(signal.SIGTERM)
    leaving(again)
    again.proc.send_signal(signal.SIGTERM)
    assert again.proc.wait(15) == 0, again.log()
    assert time.monotonic() - started < 15 and "received SIGTERM during the grace" in again.log()


def test_sigterm_drains_in_flight_requests_then_stops(tmp_path):
    import concurrent.futures

    gateway = HttpGateway(tmp_path, {"slow": fixture("slow")}, http={"drain_timeout": 10})
    sid = post(gateway, "slow", {**INIT}).headers["mcp-session-id"]
    h = {**ACCEPT, "mcp-session-id": sid}
    post(gateway, "slow", {"jsonrpc": "2.0", "method": "notifications/initialized"}, h)
    body, mh = modern(1, "tools/call", {"name": "sleep", "arguments": {"seconds": 1.0}}, name="sleep")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        modern_call = pool.submit(post, gateway, "slow", body, mh)
        sleep = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                 "params": {"name": "sleep", "arguments": {"seconds": 1.0}}}
        legacy_call = pool.submit(post, gateway, "slow", sleep, h)
        stream = pool.submit(httpx.get, gateway.url("slow"), headers=h, timeout=20)   # an open GET stream
        lbody, lh = modern("L", "subscriptions/listen", {"notifications": {"toolsListChanged": True}})
        listen = pool.submit(post, gateway, "slow", lbody, lh)                       # an open listen stream
        time.sleep(0.4)
        started = time.monotonic()
        code = gateway.stop()
        assert code == 0, gateway.log()
        assert modern_call.result().json()["result"]["content"][0]["text"] == "slept 1.0"
        assert legacy_call.result().json()["result"]["content"][0]["text"] == "slept 1.0"
        assert stream.result().status_code == 200          # ended cleanly, not cut
        events = [json.loads(d) for _, d in sse_events(listen.result().text.splitlines())]
        assert events[-1] == {"jsonrpc": "2.0", "id": "L", "result": {"resultType": "complete"}}
    assert time.monotonic() - started < 10
    with pytest.raises(httpx.ConnectError):               # and it no longer listens
        httpx.get(gateway.base + "/healthz", timeout=2)
