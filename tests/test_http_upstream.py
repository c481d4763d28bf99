"""Remote upstreams: the gateway as a Streamable HTTP client (`{"url": ...}` servers).

Real peers only:

* the SDK fixture server (`fixtures/servers/sdk_server.py`) served over streamable-http by a
  tiny launcher written to tmp_path, driven by the SDK client over the gateway's stdio front
  in every era, with the same results as a direct stdio connection;
* the raw fixture `fixtures/servers/http_echo.py` (both eras; checks the modern headers):
  sessions, modern errors delivered as they are, a lost upstream session re-opened;
* a closed port (unreachable), and a small threaded HTTP server answering garbage, errors,
  or echoing the credentials it was sent (secrets must not reach messages or logs).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from gateway import MODERN_META, LineClient
from http_gateway import HttpGateway
from mcp.client.streamable_http import streamable_http_client
from test_sdk_e2e import check_scenario, direct_target, run_logged, run_scenario

REPO_ROOT = Path(__file__).resolve().parents[1]
SDK_SERVER = REPO_ROOT / "fixtures" / "servers" / "sdk_server.py"
HTTP_ECHO = REPO_ROOT / "fixtures" / "servers" / "http_echo.py"
PY = sys.executable
UPSTREAM_UNAVAILABLE = -31002
UPSTREAM_BAD_FRAME = -31003

# Serves the SDK fixture's `mcp` object over streamable-http on a kernel-chosen port
# (written to a file once listening), recording any Authorization header it is sent.
LAUNCHER = '''
import asyncio, importlib.util, os, socket, sys
import uvicorn

server_path, port_file, seen_file = sys.argv[1:4]
spec = importlib.util.spec_from_file_location("sdk_fixture_server", server_path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
app = module.mcp.streamable_http_app(host="127.0.0.1")


async def recording(scope, receive, send):
    if scope["type"] == "http":
        auth = dict(scope["headers"]).get(b"authorization")
        if auth is not None:
            with open(seen_file, "ab") as f:
                f.write(auth + b"\\n")
    await app(scope, receive, send)


sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
sock.listen(128)
with open(port_file + ".tmp", "w") as f:
    f.write(str(sock.getsockname()[1]))
os.replace(port_file + ".tmp", port_file)
asyncio.run(uvicorn.Server(uvicorn.Config(recording, log_level="warning")).serve(sockets=[sock]))
'''


class Upstream:
    """A server subprocess that reports its port through a file."""

    def __init__(self, argv: list[str], port_file: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.port_file = port_file
        self.log_path = log_path
        self._log = open(log_path, "wb")   # noqa: SIM115 - the child's log, closed in close()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log,
                                     cwd=REPO_ROOT, env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 20
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"upstream {argv} did not start:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def sdk_http_server(tmp_path: Path) -> Upstream:
    launcher = tmp_path / "sdk_http_launcher.py"
    launcher.write_text(LAUNCHER)
    return Upstream([PY, str(launcher), str(SDK_SERVER), str(tmp_path / "sdk.port"), str(tmp_path / "sdk.seen")],
                    tmp_path / "sdk.port", tmp_path / "sdk-http.log")


def http_echo(tmp_path: Path, port: int = 0, tag: str = "echo") -> Upstream:
    port_file = tmp_path / f"{tag}.port"
    port_file.unlink(missing_ok=True)
    return Upstream([PY, str(HTTP_ECHO), "--port", str(port), "--port-file", str(port_file)],
                    port_file, tmp_path / f"{tag}.log")


def remote_config(tmp_path: Path, url: str, name: str = "cfg", **extra: Any) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"servers": {"remote": {"url": url, **extra}}}))
    return path


def stdio_gateway(config: Path, tmp_path: Path, name: str = "gateway",
                  env: dict[str, str] | None = None) -> LineClient:
    argv = [PY, "-m", "wire_gateway", "stdio", "--config", str(config), "--server", "remote", "--log-level", "debug"]
    client = LineClient(argv, log_path=tmp_path / f"{name}.log", env=env)
    client.other = []
    return client


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_error(answer: dict[str, Any], code: int) -> dict[str, Any]:
    assert "error" in answer, answer
    error = answer["error"]
    assert error["code"] == code, answer
    assert error["data"]["source"] == "wire-gateway"
    assert error["data"]["server"] == "remote"
    assert "'remote'" in error["message"]
    return error


# ---- (a) the SDK server over Streamable HTTP, the SDK client over stdio ---------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28", "auto"], ids=["legacy", "modern", "auto"])
async def test_sdk_server_over_http_matches_direct(mode: str, tmp_path: Path) -> None:
    direct = await run_logged(direct_target(), mode, tmp_path / "direct-stderr.log")
    check_scenario(direct, mode)
    upstream = sdk_http_server(tmp_path)   # a fresh server: `slow_stats` counts per process
    try:
        config = remote_config(tmp_path, upstream.url)
        target = (PY, ["-m", "wire_gateway", "stdio", "--config", str(config), "--server", "remote"])
        proxied = await run_logged(target, mode, tmp_path / "gateway-stderr.log")
    except BaseException:
        print(upstream.log_path.read_text(errors="replace"))
        raise
    finally:
        upstream.stop()
    check_scenario(proxied, mode)
    assert list(proxied) == list(direct)
    for key, expected in direct.items():
        assert proxied[key] == expected, f"scenario step {key!r} differs through the gateway to an HTTP upstream"


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"], ids=["legacy", "modern"])
async def test_sdk_client_over_the_http_front_to_an_http_upstream(mode: str, tmp_path: Path) -> None:
    """`wire-gateway serve` with a url server: legacy sessions and the modern pool both use it."""
    upstream = sdk_http_server(tmp_path)
    gateway = HttpGateway(tmp_path, {"remote": {"url": upstream.url}})
    try:
        results = await run_scenario(streamable_http_client(gateway.url("remote")), mode)
    except BaseException:
        print(gateway.log())
        print(upstream.log_path.read_text(errors="replace"))
        raise
    finally:
        assert gateway.stop() == 0
        upstream.stop()
    check_scenario(results, mode)


# ---- (b) the raw http_echo fixture ---------------------------------------------------------------


def test_http_echo_both_eras_and_a_lost_session(tmp_path: Path) -> None:
    upstream = http_echo(tmp_path)
    gw = stdio_gateway(remote_config(tmp_path, upstream.url), tmp_path)
    try:
        # legacy: a session opened by initialize, carried on every later POST
        init = gw.initialize()
        assert init["result"]["protocolVersion"] == "2025-11-25"
        assert {t["name"] for t in gw.request("tools/list")["result"]["tools"]} == {"echo", "pid", "wait"}
        text = "héllo \"wire\" ✓"
        assert gw.call("echo", {"text": text})["result"]["content"][0]["text"] == text
        assert gw.call("pid")["result"]["content"][0]["text"] == str(upstream.proc.pid)

        # modern, on the same connection: stateless POSTs whose headers the fixture checks
        meta = {"_meta": MODERN_META}
        answer = gw.request("tools/call", {"name": "echo", "arguments": {"text": text}, **meta})
        assert answer["result"]["content"][0]["text"] == text
        assert answer["result"]["resultType"] == "complete"
        # modern errors come with 4xx statuses and are delivered as the server wrote them
        missing = gw.request("no/such/method", meta)
        assert missing["error"]["code"] == -32601 and "source" not in missing["error"].get("data", {})
        future = {"_meta": {**MODERN_META, "io.modelcontextprotocol/protocolVersion": "2099-01-01"}}
        unsupported = gw.request("tools/list", future)
        assert unsupported["error"]["code"] == -32022
        assert "2026-07-28" in unsupported["error"]["data"]["supported"]

        # the upstream restarts (same port, no sessions): the next request learns of it by a 404
        port = upstream.port
        upstream.stop()
        upstream = http_echo(tmp_path, port, tag="echo2")
        lost = gw.call("pid")
        error = gateway_error(lost, UPSTREAM_UNAVAILABLE)
        assert "session" in error["message"] and upstream.url in error["message"]
        # ... and the gateway replays the client's initialize: later requests work again
        assert gw.call("pid")["result"]["content"][0]["text"] == str(upstream.proc.pid)
        assert gw.call("echo", {"text": "again"})["result"]["content"][0]["text"] == "again"
        assert gw.close() == 0
    finally:
        gw.close()
        upstream.stop()
    log = gw.log_text()
    assert "opened a new upstream session" in log
    assert "ended an upstream session (DELETE: HTTP 200)" in log


# ---- (c) unreachable ------------------------------------------------------------------------------


def test_unreachable_upstream_gets_a_clear_error_and_the_gateway_keeps_serving(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}/mcp"
    gw = stdio_gateway(remote_config(tmp_path, url, timeout=30), tmp_path)
    try:
        started = time.monotonic()   # refused at once: nothing waits for the 30 s timeout
        error = gateway_error(gw.request("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                                        "clientInfo": {"name": "t", "version": "0"}}),
                              UPSTREAM_UNAVAILABLE)
        assert "unreachable" in error["message"] and url in error["message"]
        assert error["data"]["url"] == url and error["data"]["method"] == "initialize"
        # still serving: every request gets its answer, in both eras
        gateway_error(gw.request("tools/list", {"_meta": MODERN_META}), UPSTREAM_UNAVAILABLE)
        gw.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        gateway_error(gw.request("ping", req_id="after"), UPSTREAM_UNAVAILABLE)
        assert time.monotonic() - started < 15
        assert gw.close() == 0
    finally:
        gw.close()


# ---- (d) garbage, errors; (e) secrets ----------------------------------------------------------------


class OddServer(ThreadingHTTPServer):
    """Answers by path: garbage, HTTP errors, silence, a valid answer, or (`/sse`) a legacy session
    whose event streams break and must be resumed with Last-Event-ID. Records what it was sent."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), OddHandler)
        self.seen: list[str | None] = []              # Authorization headers
        self.requests: list[tuple[str, str | None, str | None]] = []   # (method, session id, Last-Event-ID)
        self.call_id: Any = None                       # the tools/call whose stream `/sse` breaks
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{path}"

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()


class OddHandler(BaseHTTPRequestHandler):
    server: OddServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        auth = self.headers.get("authorization")
        self.server.seen.append(auth)
        self.server.requests.append(("POST", self.headers.get("mcp-session-id"), None))
        mode = self.path.strip("/")
        if mode == "sse":
            self._sse_post(json.loads(body))
        elif mode == "hang":
            self.server.stopping.wait(3)
            self._send(200, "application/json", b"{}")
        elif mode == "html":
            self._send(200, "text/html", b"<html><body>hello, not MCP</body></html>")
        elif mode == "notjson":
            self._send(200, "application/json", b"this is not json at all")
        elif mode == "error500":
            self._send(500, "text/plain", b"internal oops")
        elif mode == "rpcerror":
            self._send(400, "application/json",
                       b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"no session, no service"}}')
        elif mode == "echoauth":
            self._send(401, "text/plain", f"bad credentials: {auth}".encode())
        else:
            msg = json.loads(body)
            self._send(200, "application/json", json.dumps(
                {"jsonrpc": "2.0", "id": msg.get("id"), "result": {"protocolVersion": "2025-11-25",
                                                                   "capabilities": {}, "serverInfo": {
                                                                       "name": "odd", "version": "0"}}}).encode())

    def do_GET(self) -> None:
        last = self.headers.get("last-event-id")
        self.server.requests.append(("GET", self.headers.get("mcp-session-id"), last))
        if self.path.strip("/") != "sse":
            self._send(405, "text/plain", b"no GET stream here")
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        if last is None:            # the standalone stream: one event, then the connection drops
            self._event("g-1", {"jsonrpc": "2.0", "method": "notifications/message",
                                "params": {"level": "info", "data": "first"}})
        elif last == "g-1":         # resumed: one more event, then kept open
            self._event("g-2", {"jsonrpc": "2.0", "method": "notifications/message",
                                "params": {"level": "info", "data": "resumed"}})
            while not self.server.stopping.wait(0.1):
                try:
                    self.wfile.write(b": ping\n\n")
                    self.wfile.flush()
                except OSError:
                    return
        elif last == "p-2":         # the broken POST stream, resumed: its answer
            self._event("p-3", {"jsonrpc": "2.0", "id": self.server.call_id,
                                "result": {"content": [{"type": "text", "text": "answered after resuming"}]}})

    def do_DELETE(self) -> None:
        self.server.requests.append(("DELETE", self.headers.get("mcp-session-id"), None))
        self._send(200, "text/plain", b"")

    def _sse_post(self, msg: dict[str, Any]) -> None:
        if msg.get("method") == "initialize":
            body = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "sse", "version": "0"}}})
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("mcp-session-id", "sess-1")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())
        elif "id" not in msg:
            self._send(202, "text/plain", b"")
        else:                       # priming event, one progress event, then the connection drops
            self.server.call_id = msg["id"]
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            self.wfile.write(b"id: p-1\ndata:\n\n")
            self._event("p-2", {"jsonrpc": "2.0", "method": "notifications/progress",
                                "params": {"progressToken": "t", "progress": 1}})

    def _event(self, event_id: str, msg: dict[str, Any]) -> None:
        self.wfile.write(f"id: {event_id}\ndata: {json.dumps(msg)}\n\n".encode())
        self.wfile.flush()

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def odd_server():
    server = OddServer()
    yield server
    server.stop()


def test_garbage_and_http_errors_are_answered(odd_server: OddServer, tmp_path: Path) -> None:
    cases = {"html": UPSTREAM_BAD_FRAME, "notjson": UPSTREAM_BAD_FRAME, "error500": UPSTREAM_UNAVAILABLE,
             "rpcerror": None}
    # rpcerror refuses server/discover as a legacy-only server would: pinned modern, its own error passes
    # through (with era auto the bridge would take it for a legacy server, and find it refuses initialize too)
    gateways = {path: stdio_gateway(remote_config(tmp_path, odd_server.url(path), name=path,
                                                  **({"era": "modern"} if path == "rpcerror" else {})),
                                    tmp_path, name=path)
                for path in cases}
    try:
        for path, code in cases.items():
            answer = gateways[path].request("tools/list", {"_meta": MODERN_META}, req_id=f"req-{path}")
            assert answer["id"] == f"req-{path}"
            if code is None:   # a 4xx carrying a JSON-RPC error: the server's error, for our request
                assert answer["error"] == {"code": -32600, "message": "no session, no service"}
                continue
            error = gateway_error(answer, code)
            assert odd_server.url(path) in error["message"]
            if path == "html":
                assert "text/html" in error["message"]
            if path == "error500":
                assert "HTTP 500" in error["message"] and "internal oops" in error["message"]
            # still serving after the failure
            again = gateways[path].request("tools/list", {"_meta": MODERN_META})
            gateway_error(again, code)
        for gw in gateways.values():
            assert gw.close() == 0
    finally:
        for gw in gateways.values():
            gw.close()


def test_secrets_reach_the_upstream_and_nowhere_else(odd_server: OddServer, tmp_path: Path) -> None:
    token = "s3cr3t-T0ken-4-tests-only"
    headers = {"Authorization": "Bearer ${TOKEN}", "X-Api-Key": "${TOKEN}-key"}
    env = {"TOKEN": token}
    ok = stdio_gateway(remote_config(tmp_path, odd_server.url("ok"), name="ok", headers=headers),
                       tmp_path, name="ok", env=env)
    echo = stdio_gateway(remote_config(tmp_path, odd_server.url("echoauth"), name="echoauth", headers=headers),
                         tmp_path, name="echoauth", env=env)
    try:
        init = ok.initialize()
        assert init["result"]["serverInfo"]["name"] == "odd"
        refused = echo.request("tools/list", {"_meta": MODERN_META})
        error = gateway_error(refused, UPSTREAM_UNAVAILABLE)
        assert "HTTP 401" in error["message"] and "bad credentials" in error["message"]
        assert token not in json.dumps(refused)
        assert ok.close() == 0 and echo.close() == 0
    finally:
        ok.close()
        echo.close()
    assert f"Bearer {token}" in odd_server.seen
    for gw in (ok, echo):
        log = gw.log_text()
        assert "remote" in log
        assert token not in log


def test_timeouts_and_tls_failures_are_answered(odd_server: OddServer, tmp_path: Path) -> None:
    hang = stdio_gateway(remote_config(tmp_path, odd_server.url("hang"), name="hang", timeout=0.5),
                         tmp_path, name="hang")
    tls_url = odd_server.url("ok").replace("http://", "https://")
    tls = stdio_gateway(remote_config(tmp_path, tls_url, name="tls"), tmp_path, name="tls")
    try:
        # (the server would answer after 3 s, with a body that is not JSON-RPC: -31003, not this)
        error = gateway_error(hang.request("tools/list", {"_meta": MODERN_META}), UPSTREAM_UNAVAILABLE)
        assert "did not answer within 0.5s" in error["message"]
        error = gateway_error(tls.request("tools/list", {"_meta": MODERN_META}), UPSTREAM_UNAVAILABLE)
        assert "TLS" in error["message"] and tls_url in error["message"]
        assert hang.close() == 0 and tls.close() == 0
    finally:
        hang.close()
        tls.close()


def test_legacy_streams_resume_with_last_event_id(odd_server: OddServer, tmp_path: Path) -> None:
    gw = stdio_gateway(remote_config(tmp_path, odd_server.url("sse")), tmp_path)
    try:
        gw.initialize()
        # the GET stream drops after its first event and is resumed after it
        notes = [gw.recv(), gw.recv()]
        assert [n["params"]["data"] for n in notes] == ["first", "resumed"]
        # a POST stream drops before its answer: resumed by a GET with the last event id
        answer = gw.call("anything", {}, req_id="call-1")
        assert answer["result"]["content"][0]["text"] == "answered after resuming"
        assert [m["method"] for m in gw.other] == ["notifications/progress"]
        assert gw.close() == 0
    finally:
        gw.close()
    gets = [(sid, last) for method, sid, last in odd_server.requests if method == "GET"]
    assert (("sess-1", None) in gets and ("sess-1", "g-1") in gets and ("sess-1", "p-2") in gets), gets
    posts = [sid for method, sid, _ in odd_server.requests if method == "POST"]
    assert posts[0] is None and set(posts[1:]) == {"sess-1"}
    assert ("DELETE", "sess-1", None) in odd_server.requests
