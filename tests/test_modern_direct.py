"""The direct modern path answers as a 2026-07-28 server must (the stateless rules), whatever is
behind it: a server process, an HTTP server, or the aggregate.

Real peers on 127.0.0.1: `wire-gateway serve` in front of the echo fixture (stdio), the SDK
fixture served over Streamable HTTP, and a small threaded HTTP server in this file that answers
as told, spec-breaking answers included:

* a modern request without `params._meta`, or whose `_meta` lacks the protocol version or the
  client capabilities: 400 with -32602, saying what is missing (basic/index, per-request fields);
* an HTTP upstream's status for an error answer reaches the client (through a policy chain too);
* `initialize` carrying the modern `_meta` is not a method of that era: 404 with -32601; the
  aggregate, the gateway's own modern server, also refuses the other methods that era removed
  and a protocol version it does not speak (400, -32022);
* a `subscriptions/listen` stream's acknowledgement reaches the client at once, the stream open;
* an upstream that streams several messages in one `application/json` body gets a clear error
  at once, not after its timeout.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from gateway import MODERN_META, fixture
from http_gateway import HttpGateway
from test_http_upstream import sdk_http_server

VERSION_KEY = "io.modelcontextprotocol/protocolVersion"
CAPS_KEY = "io.modelcontextprotocol/clientCapabilities"
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
ODD_TIMEOUT = 20.0      # the spec-breaking upstream's timeout: a clear error must come long before it


class OddUpstream(ThreadingHTTPServer):
    """A modern HTTP server that answers some requests the way no server should."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), OddHandler)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/mcp"

    def close(self) -> None:
        self.stop.set()
        self.shutdown()
        self.server_close()


class OddHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"      # a body without Content-Length ends when the connection does
    server: OddUpstream

    def do_POST(self) -> None:
        msg = json.loads(self.rfile.read(int(self.headers["content-length"])))
        if "id" not in msg:
            self._reply(202, b"")
            return
        method, params, rid = msg["method"], msg.get("params") or {}, msg["id"]
        answer = {"jsonrpc": "2.0", "id": rid, "result": {"resultType": "complete"}}
        if method == "server/discover":
            answer["result"].update(supportedVersions=["2026-07-28"], capabilities={"tools": {}})
        elif method == "tools/list":
            answer["result"]["tools"] = [{"name": n, "inputSchema": {"type": "object"}}
                                         for n in ("bad_args", "twice", "stream_two")]
        elif method == "subscriptions/listen":    # the acknowledgement, then quiet: in a JSON body
            ack = {"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                   "params": {"_meta": {"io.modelcontextprotocol/subscriptionId": rid}, "notifications": {}}}
            self._open_json(json.dumps(ack).encode() + b"\n")
            return
        elif method == "tools/call" and params.get("name") == "bad_args":
            error = {"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": "bad arguments"}}
            self._reply(400, json.dumps(error).encode())
            return
        elif method == "tools/call" and params.get("name") == "twice":   # two answers, one bounded body
            one = json.dumps(answer).encode()
            self._reply(200, one + b"\n" + one)
            return
        elif method == "tools/call" and params.get("name") == "stream_two":
            progress = {"jsonrpc": "2.0", "method": "notifications/progress",
                        "params": {"progressToken": 1, "progress": 1}}
            self._open_json(json.dumps(progress).encode() + b"\n" + json.dumps(answer).encode() + b"\n")
            return
        self._reply(200, json.dumps(answer).encode())

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        if body:
            self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _open_json(self, first: bytes) -> None:
        """An application/json body without a length that does not end (until the test does)."""
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(first)
        self.wfile.flush()
        self.server.stop.wait(ODD_TIMEOUT + 10)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("modern-direct")
    sdk = sdk_http_server(tmp_path)
    odd = OddUpstream()
    gateway = None
    try:
        gateway = HttpGateway(tmp_path, {
            "echo": fixture("echo"), "sdk": {"url": sdk.url},
            "odd": {"url": odd.url, "timeout": ODD_TIMEOUT},
            "oddchain": {"url": odd.url, "timeout": ODD_TIMEOUT, "tools": {"deny": ["admin_*"]}}},
            http={"keepalive_interval": 0.5})
        yield gateway
    finally:
        odd.close()
        try:
            if gateway is not None:
                assert gateway.stop() == 0, gateway.log()
                assert "Traceback" not in gateway.log(), gateway.log()
        finally:
            sdk.stop()


def url(gateway: HttpGateway, route: str) -> str:
    return gateway.base + "/mcp" if route == "aggregate" else gateway.url(route)


def modern_post(gateway: HttpGateway, route: str, req_id: Any, method: str, params: Any = None,
                headers: dict[str, str] | None = None, timeout: float = 15) -> httpx.Response:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": req_id, "method": method}
    if params is not None:
        body["params"] = params
    h = {**ACCEPT, "mcp-protocol-version": "2026-07-28", "mcp-method": method, **(headers or {})}
    if isinstance(params, dict) and isinstance(params.get("name"), str):
        h["mcp-name"] = params["name"]
    return httpx.post(url(gateway, route), content=json.dumps(body), headers=h, timeout=timeout)


ROUTES = ["echo", "sdk", "aggregate"]
NO_VERSION = {k: v for k, v in MODERN_META.items() if k != VERSION_KEY}
NO_CAPS = {k: v for k, v in MODERN_META.items() if k != CAPS_KEY}


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("params", "missing"), [
    (None, ["params._meta"]),
    ({}, ["params._meta"]),
    ({"_meta": NO_VERSION}, [f"params._meta[{VERSION_KEY!r}]"]),
    ({"_meta": NO_CAPS}, [f"params._meta[{CAPS_KEY!r}]"]),
    ({"_meta": {"io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"}}},
     [f"params._meta[{VERSION_KEY!r}]", f"params._meta[{CAPS_KEY!r}]"]),
], ids=["no-params", "no-meta", "no-version", "no-capabilities", "neither"])
def test_a_modern_request_without_the_required_meta_is_400_invalid_params(peers, route, params, missing):
    resp = modern_post(peers, route, 101, "server/discover", params)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert resp.json()["id"] == 101
    assert error["code"] == -32602, error
    assert error["data"]["missing"] == missing
    assert all(m in error["message"] for m in missing) and "initialize" in error["message"], error


@pytest.mark.parametrize("route", ROUTES)
def test_client_info_is_optional_and_a_legacy_request_still_needs_its_session(peers, route):
    meta = {k: v for k, v in MODERN_META.items() if k != "io.modelcontextprotocol/clientInfo"}
    served = modern_post(peers, route, 105, "server/discover", {"_meta": meta})
    assert served.status_code == 200 and "2026-07-28" in served.json()["result"]["supportedVersions"]
    legacy = httpx.post(url(peers, route), headers=ACCEPT, timeout=10,
                        json={"jsonrpc": "2.0", "id": 5, "method": "tools/list"})
    assert legacy.status_code == 400 and legacy.json()["error"]["code"] == -32600
    assert "Mcp-Session-Id" in legacy.json()["error"]["message"]


@pytest.mark.parametrize("route", ROUTES)
def test_initialize_with_the_modern_meta_is_not_a_method(peers, route):
    resp = modern_post(peers, route, 500, "initialize", {"_meta": MODERN_META})
    assert resp.status_code == 404, resp.text
    assert resp.json()["id"] == 500 and resp.json()["error"]["code"] == -32601, resp.text
    assert "mcp-session-id" not in resp.headers
    if route != "sdk":    # the gateway's own answer says what to do instead
        assert "without the modern _meta" in resp.json()["error"]["message"]


@pytest.mark.parametrize("method", ["logging/setLevel", "resources/subscribe", "resources/unsubscribe"])
def test_the_aggregate_refuses_what_the_modern_era_removed(peers, method):
    resp = modern_post(peers, "aggregate", 600, method, {"_meta": MODERN_META})
    assert resp.status_code == 404, resp.text
    assert resp.json()["id"] == 600 and resp.json()["error"]["code"] == -32601, resp.text


def test_the_aggregate_answers_an_unsupported_version_as_a_modern_server_must(peers):
    meta = {**MODERN_META, VERSION_KEY: "v999.0.0"}
    resp = modern_post(peers, "aggregate", 301, "server/discover", {"_meta": meta},
                       headers={"mcp-protocol-version": "v999.0.0"})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert resp.json()["id"] == 301 and error["code"] == -32022
    discovered = modern_post(peers, "aggregate", 302, "server/discover", {"_meta": MODERN_META}).json()
    assert error["data"]["requested"] == "v999.0.0"
    assert error["data"]["supported"] == discovered["result"]["supportedVersions"]


@pytest.mark.parametrize("route", ["odd", "oddchain"])
def test_an_http_upstreams_status_for_an_error_reaches_the_client(peers, route):
    resp = modern_post(peers, route, 7, "tools/call", {"name": "bad_args", "arguments": {}, "_meta": MODERN_META})
    assert resp.status_code == 400, resp.text
    assert resp.json() == {"jsonrpc": "2.0", "id": 7, "error": {"code": -32602, "message": "bad arguments"}}
    # An error answer with no status of its own still gets the one its code implies.
    unknown = modern_post(peers, "sdk", 8, "no/such/method", {"_meta": MODERN_META})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == -32601


@pytest.mark.parametrize("route", ROUTES)
def test_a_listen_streams_its_acknowledgement_at_once_and_stays_open(peers, route):
    body = {"jsonrpc": "2.0", "id": 1765000000123, "method": "subscriptions/listen",
            "params": {"_meta": MODERN_META, "notifications": {"toolsListChanged": True}}}
    h = {**ACCEPT, "mcp-protocol-version": "2026-07-28", "mcp-method": "subscriptions/listen"}
    events: list[dict[str, Any]] = []
    started = time.monotonic()
    with httpx.Client(timeout=httpx.Timeout(10, read=8)) as client, \
            client.stream("POST", url(peers, route), content=json.dumps(body), headers=h) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"] == "text/event-stream"
        lines = resp.iter_lines()
        for line in lines:
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                break
        acked = time.monotonic() - started
        for line in lines:   # then only keep-alive comments: the stream stays open
            assert not line.startswith("data:"), line
            if line.startswith(":"):
                break
    assert acked < 5, acked
    assert events[0]["method"] == "notifications/subscriptions/acknowledged"
    assert events[0]["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == 1765000000123


@pytest.mark.parametrize(("method", "params", "says"), [
    ("subscriptions/listen", {"notifications": {"toolsListChanged": True}}, "as its application/json body"),
    ("tools/call", {"name": "stream_two", "arguments": {}}, "several JSON messages in one application/json body"),
    ("tools/call", {"name": "twice", "arguments": {}}, "several JSON messages in one application/json body"),
], ids=["listen-in-json", "streamed-json-lines", "two-in-one-body"])
def test_an_upstream_streaming_messages_in_a_json_body_gets_a_clear_error_at_once(peers, method, params, says):
    started = time.monotonic()
    resp = modern_post(peers, "odd", 9, method, {**params, "_meta": MODERN_META}, timeout=ODD_TIMEOUT + 10)
    took = time.monotonic() - started
    error = resp.json()["error"]
    assert resp.json()["id"] == 9
    assert error["code"] == -31003 and says in error["message"] and "'odd'" in error["message"], error
    assert took < 5, took
