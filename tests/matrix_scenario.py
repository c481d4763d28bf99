"""The combination matrix's one canonical scenario, and the clients it drives each front with.

A cell is (front, policy, upstream kind, observe, auth); the `http-bridge` front is a modern client
of a legacy-only server (legacy_echo, or http_echo --legacy-only) on its single-server route, and the
`*-legacy-bridge` fronts the other way round: a legacy client of a modern-only server (modern_only,
or http_echo --modern-only); over HTTP that client declares no capability, so its requests take the
aggregate's fast path (direct.py), over stdio it declares sampling, so they take the general one.
`observe: on` is what an operator turns on to look inside: frame dumps, OpenTelemetry traces
(exported to a receiver the cell runs) and JSON logs, together (metrics are on in every cell: they
are the default). Its gateway serves two servers: `s`, the one under test (a `command` echo server
or a `url` one, with the cell's policy), and `p`, a plain echo server with no policy and no request
timeout, so that the aggregate always combines a guarded member with a plain one. The scenario:
handshake; `tools/list` (every page) with exactly the expected names; a call that works; a call the
policy refuses (policies that refuse nothing: none, cache); an unknown method passed through (its
answer is the server's own, for a single-server front); a hostile request that names its id twice,
refused under its first id without reaching the server; four hops of the working call in the dump,
and its span (the server's name, the client's parent context, the same request id as its log line)
when observe is on; and a log in which every member connected and nothing failed inside the gateway.
With auth (`keys`) the client sends an API key (a header, or WIRE_GATEWAY_KEY on stdio) of a project
that hides the tool `wait`: it is gone from the list and a call to it is an unknown tool; over HTTP
a request without the key gets 401; the key appears in no log, no dump and no span.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from gateway import LEGACY_INIT, MODERN_META, PY, SERVERS, LineClient, fixture_module
from http_gateway import HttpGateway
from test_aggregate_http import body_of

from wire_gateway.demo.echo import build as build_echo

# http-bridge: a modern client of a legacy-only `s` on /mcp/s, through the era bridge (docs/bridge.md);
# *-legacy-bridge: a legacy client of a modern-only `s` (--server s, /mcp/s), the bridge's other half
FRONTS = ("stdio", "stdio-aggregate", "http-legacy", "http-modern", "http-aggregate-legacy",
          "http-aggregate-modern", "http-bridge", "stdio-legacy-bridge", "http-legacy-bridge")
POLICIES = ("none", "filter", "pinning", "schema", "guardrails", "cache")
UPSTREAMS = ("command", "url")
OBSERVE = ("off", "on")
AUTHS = ("off", "keys")
AXES = (FRONTS, POLICIES, UPSTREAMS, OBSERVE, AUTHS)

SEP = "__"
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
COMMAND_TOOLS = frozenset(build_echo("matrix").tools)
URL_TOOLS = frozenset(t["name"] for t in fixture_module("http_echo").TOOLS)
# fixtures/servers/legacy_echo.py
LEGACY_COMMAND_TOOLS = COMMAND_TOOLS | {"ask", "roots", "meta", "touch_resource", "log"}
MODERN_COMMAND_TOOLS = frozenset(fixture_module("modern_only").build("matrix").tools)
HELLO = "matrix-hello-7d1f"          # the working call's text: found again at every hop of the dump
# guardrails: a synthetic AWS access key id (blocked on input) and an address (redacted on input,
# restored in the answer)
AWS_KEY = "AKIA" + "Q7XJ3M2PZK4WN6RT"  # synthetic; base32 like a real id
EMAIL = "matrix.user@example.org"
# observe: the client's trace context on the working call
TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def pairwise(axes: tuple[tuple[str, ...], ...]) -> list[tuple[str, ...]]:
    """A small set of cells that contains every pair of values of every two axes (greedy,
    deterministic): the default run. The whole product runs under the `slow` marker."""
    import itertools

    uncovered = {((i, a), (j, b)) for i, j in itertools.combinations(range(len(axes)), 2)
                 for a in axes[i] for b in axes[j]}
    chosen: list[tuple[str, ...]] = []
    candidates = list(itertools.product(*axes))

    def gain(cell: tuple[str, ...]) -> int:
        return sum(((i, cell[i]), (j, cell[j])) in uncovered
                   for i, j in itertools.combinations(range(len(cell)), 2))

    while uncovered:
        best = max(candidates, key=gain)
        chosen.append(best)
        uncovered -= {((i, best[i]), (j, best[j])) for i, j in itertools.combinations(range(len(best)), 2)}
    return chosen


# ---- the gateway a cell runs ------------------------------------------------------------------

@dataclass
class Cell:
    front: str
    policy: str
    upstream: str
    observe: str
    tmp: Path
    url_server: str = ""           # the url upstream's endpoint, when upstream == "url"
    legacy_url_server: str = ""    # the same, legacy-only (http_echo --legacy-only): the http-bridge front's
    modern_url_server: str = ""    # and modern-only (--modern-only): the legacy-bridge fronts'
    auth: str = "off"
    dump_path: Path | None = None
    log_path: Path = field(init=False)
    key: str | None = None         # with auth: the client's API key (made before the gateway starts)
    receiver: Any = None           # with observe on: the OTLP receiver the gateway's spans go to

    def __post_init__(self) -> None:
        self.log_path = self.tmp / "gateway.log"
        if self.observe == "on":
            self.dump_path = self.tmp / "frames.jsonl"
        if self.auth == "keys":     # the store beside the config, as `wire-gateway keys create` makes it
            from wire_gateway.auth.backends import SqliteBackend
            from wire_gateway.auth.model import ToolRule
            from wire_gateway.auth.tenancy import Tenancy

            t = Tenancy(SqliteBackend(str(self.tmp / "auth.sqlite3")), ["s", "p"])
            t.create_project("m", ["*"], {"s": ToolRule(deny=("wait",))})
            t.create_user("u")
            self.key = t.create_key("m", "u")[1]

    @property
    def aggregate(self) -> bool:
        return "aggregate" in self.front

    @property
    def bridge(self) -> bool:
        return self.front == "http-bridge"

    @property
    def legacy_bridge(self) -> bool:
        return self.front.endswith("legacy-bridge")

    @property
    def modern(self) -> bool:
        return self.front.endswith("modern") or self.bridge

    def config(self) -> dict[str, Any]:
        if self.bridge:         # a server that speaks only the legacy era (its era probed: `auto`)
            s: dict[str, Any] = ({"url": self.legacy_url_server} if self.upstream == "url"
                                 else {"command": PY, "args": [str(SERVERS / "legacy_echo.py")]})
        elif self.legacy_bridge:  # one that speaks only the modern era (probed too)
            s = ({"url": self.modern_url_server} if self.upstream == "url"
                 else {"command": PY, "args": [str(SERVERS / "modern_only.py")]})
        else:
            s = ({"url": self.url_server} if self.upstream == "url"
                 else {"command": PY, "args": [str(SERVERS / "echo.py")]})
        top: dict[str, Any] = {}
        if self.policy == "filter":
            s["tools"] = {"deny": ["pid"]}
        elif self.policy == "pinning":
            s["pinning"] = "enforce"
            pins = self.tmp / "pins.json"       # a pin that pid's definition does not match: a rug pull
            pins.write_text(json.dumps({"pins:s:pid": "0" * 64}))
            top["store"] = {"backend": "memory", "pins_file": str(pins)}
        elif self.policy == "schema":
            s["schema"] = True
        elif self.policy == "guardrails":
            s["guardrails"] = "matrix"
            top["guardrails"] = {"matrix": {"input": [{"detectors": ["aws_key"], "action": "block"},
                                                      {"detectors": ["email"], "action": "redact"}],
                                            "output": [{"detectors": ["secrets"], "action": "block"}]}}
        elif self.policy == "cache":
            s["cache"] = {"tools_list_ttl": 60}
        # `p` waits for its answers with no time limit (`timeout: null`): the aggregate meets both kinds
        servers = {"s": s, "p": {"command": PY, "args": [str(SERVERS / "echo.py")], "timeout": None}}
        if self.auth == "keys":
            top["auth"] = {"mode": "keys"}
        if self.observe == "on":
            top["telemetry"] = {"tracing": True}
            top["logging"] = {"format": "json"}
        return {"servers": servers, "aggregate": {"separator": SEP}, **top}

    def expected_names(self) -> set[str]:
        own = set(URL_TOOLS if self.upstream == "url" else LEGACY_COMMAND_TOOLS if self.bridge
                  else MODERN_COMMAND_TOOLS if self.legacy_bridge else COMMAND_TOOLS)
        if self.policy in ("filter", "pinning"):
            own.discard("pid")
        if self.auth == "keys":
            own.discard("wait")
        if not self.aggregate:
            return own
        return {f"s{SEP}{n}" for n in own} | {f"p{SEP}{n}" for n in COMMAND_TOOLS}

    def tool(self, name: str) -> str:
        return f"s{SEP}{name}" if self.aggregate else name


# ---- clients: one request/answer surface over every front ---------------------------------------

class StdioFront:
    def __init__(self, cell: Cell) -> None:
        cfg = cell.tmp / "gateway.json"
        cfg.write_text(json.dumps(cell.config()))
        argv = [PY, "-m", "wire_gateway", "stdio", "--config", str(cfg)]
        if not cell.aggregate:
            argv += ["--server", "s"]
        if cell.dump_path is not None:
            argv += ["--dump", str(cell.dump_path)]
        self.client = LineClient(argv, log_path=cell.log_path,
                                 env={"WIRE_GATEWAY_KEY": cell.key} if cell.key else None)
        self.client.other = []

    def body(self, req_id: Any, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": req_id, "method": method, "params": params or {}}

    def handshake(self) -> None:
        answer = self.client.initialize()
        assert "result" in answer, answer

    def request(self, req_id: Any, method: str, params: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        return 200, self.client.request(method, params, req_id=req_id, timeout=20)

    def send_raw(self, req_id: Any, body: bytes) -> tuple[int, dict[str, Any]]:
        self.client.send(body)
        deadline = time.monotonic() + 20
        while True:
            frame = self.client.recv(max(0.01, deadline - time.monotonic()))
            if isinstance(frame, dict) and frame.get("id") == req_id and "method" not in frame:
                return 200, frame
            self.client.other.append(frame)

    def close(self) -> None:
        assert self.client.close() == 0, self.client.log_text()


class HttpFront:
    def __init__(self, cell: Cell) -> None:
        self.modern = cell.modern
        self.init = {**LEGACY_INIT, "capabilities": {}} if cell.legacy_bridge else LEGACY_INIT
        extra = ["--dump", str(cell.dump_path)] if cell.dump_path is not None else []
        self.gw = HttpGateway(cell.tmp, cell.config()["servers"], extra_args=extra,
                              **{k: v for k, v in cell.config().items() if k != "servers"})
        cell.log_path = self.gw.log_path
        self.url = f"{self.gw.base}/mcp" if cell.aggregate else self.gw.url("s")
        self.http = httpx.Client(timeout=20, headers={"authorization": f"Bearer {cell.key}"} if cell.key else None)
        self.sid: str | None = None

    def handshake(self) -> None:
        if self.modern:
            return
        opened = self.http.post(self.url, headers=ACCEPT,
                                json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": self.init})
        assert opened.status_code == 200, opened.text
        assert "result" in body_of(opened)
        self.sid = opened.headers["mcp-session-id"]
        sent = self.http.post(self.url, headers=self._headers(),
                              json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert sent.status_code == 202, sent.text

    def _headers(self, method: str | None = None, name: str | None = None) -> dict[str, str]:
        if not self.modern:
            return {**ACCEPT, "mcp-session-id": self.sid or "", "mcp-protocol-version": LEGACY_INIT["protocolVersion"]}
        headers = {**ACCEPT, "mcp-protocol-version": MODERN_META["io.modelcontextprotocol/protocolVersion"]}
        if method is not None:
            headers["mcp-method"] = method
        if name is not None:
            headers["mcp-name"] = name
        return headers

    def request(self, req_id: Any, method: str, params: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        return self.send_raw(req_id, json.dumps(self.body(req_id, method, params)).encode())

    def body(self, req_id: Any, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        params = dict(params or {})
        if self.modern:
            params["_meta"] = {**MODERN_META, **params.get("_meta", {})}
        return {"jsonrpc": "2.0", "id": req_id, "method": method, "params": params}

    def send_raw(self, req_id: Any, body: bytes) -> tuple[int, dict[str, Any]]:
        msg = json.loads(body)     # the last of a repeated key: the headers follow what a server would read
        method = msg.get("method")
        name = msg["params"].get("name") if method == "tools/call" else None
        answer = self.http.post(self.url, content=body, headers=self._headers(method, name))
        return answer.status_code, body_of(answer)

    def close(self) -> None:
        if self.sid is not None:
            self.http.delete(self.url, headers=self._headers())
        self.http.close()
        assert self.gw.stop() == 0, self.gw.log()


# ---- the scenario --------------------------------------------------------------------------------

def run_cell(cell: Cell) -> None:
    front = StdioFront(cell) if cell.front.startswith("stdio") else HttpFront(cell)
    try:
        front.handshake()

        # tools/list, every page: exactly the names the policy lets through (twice with a cache)
        for _ in range(2 if cell.policy == "cache" else 1):
            names: list[str] = []
            cursor = None
            for page in range(20):
                status, listed = front.request(f"list-{page}", "tools/list", {"cursor": cursor} if cursor else None)
                assert status == 200 and "result" in listed, listed
                names += [t["name"] for t in listed["result"]["tools"]]
                cursor = listed["result"].get("nextCursor")
                if not cursor:
                    break
            assert sorted(names) == sorted(cell.expected_names()), (names, cell.expected_names())

        # a call that works (in a trace the client started: the gateway's span is its child)
        status, called = front.request("call-ok", "tools/call",
                                       {"name": cell.tool("echo"), "arguments": {"text": HELLO},
                                        "_meta": {"traceparent": TRACEPARENT}})
        assert status == 200 and called.get("id") == "call-ok", called
        assert called["result"]["content"][0]["text"] == HELLO, called

        # a call the policy refuses: it never reaches the server
        refused = {"filter": ("pid", {}, -32602, "Unknown tool"),
                   "pinning": ("pid", {}, -31006, "quarantined"),
                   "schema": ("echo", {"text": 5}, -32602, "Invalid arguments")}.get(cell.policy)
        if refused is not None:
            tool, args, code, words = refused
            status, answer = front.request("call-refused", "tools/call", {"name": cell.tool(tool), "arguments": args})
            assert answer.get("id") == "call-refused" and answer.get("error", {}).get("code") == code, answer
            assert words in answer["error"]["message"], answer
        if cell.policy == "guardrails":
            check_guardrails(cell, front)

        # an unknown method: the server's own answer through a single-server front, the aggregate's own otherwise
        status, unknown = front.request("unknown", "wg/no-such-method", {"x": [1, 2]})
        assert unknown.get("id") == "unknown" and unknown["error"]["code"] == -32601, unknown
        if not cell.aggregate:
            assert "wire-gateway" not in json.dumps(unknown["error"]), unknown    # the server said it
        if cell.modern:
            assert status == 404, (status, unknown)

        # hostile: a request that names its id twice (the second: an id a server could answer another
        # request under) is refused under its first id, and never reaches the server
        body = json.dumps(front.body("dup-first", "tools/call", {"name": cell.tool("echo"),
                                                                "arguments": {"text": "dup-" + HELLO}}))
        body = body.replace('"id": "dup-first",', '"id": "dup-first", "id": "call-ok",', 1)
        status, dup = front.send_raw("dup-first", body.encode())
        assert dup.get("id") == "dup-first" and dup["error"]["code"] == -32600, dup

        if cell.auth == "keys":
            # the project hides `wait`: an unknown tool, exactly like one that does not exist
            status, hidden = front.request("call-hidden", "tools/call", {"name": cell.tool("wait"),
                                                                         "arguments": {"seconds": 0}})
            assert hidden.get("error", {}).get("code") == -32602 and "Unknown tool" in hidden["error"]["message"], \
                hidden
            if isinstance(front, HttpFront):      # and without the key, nothing at all
                bare = httpx.post(front.url, headers=front._headers("tools/list"), timeout=20,
                                  content=json.dumps(front.body("bare", "tools/list")).encode())
                assert bare.status_code == 401 and "resource_metadata=" in bare.headers["www-authenticate"], bare
    finally:
        front.close()
    check_log(cell)
    if cell.key is not None:
        assert cell.key not in cell.log_path.read_text(errors="replace")
        if cell.dump_path is not None:
            assert cell.key not in cell.dump_path.read_text(errors="replace")
    if cell.receiver is not None:
        check_trace(cell)
    if cell.dump_path is not None:
        check_dump(cell)
        assert not [r for r in records_of(cell) if r["dir"] == "gateway->server" and "dup-" + HELLO in r["frame"]]
        if cell.policy == "guardrails":     # what reached the server: the placeholder, never the address or key
            to_server = [r["frame"] for r in records_of(cell) if r["dir"] == "gateway->server"]
            assert not [f for f in to_server if EMAIL in f or AWS_KEY in f], to_server
            assert [f for f in to_server if "[REDACTED_EMAIL_1]" in f], to_server
            notes = [r.get("policy") for r in records_of(cell) if r["dir"] == "gateway->client"]
            assert "guardrails:block:matrix/aws_key" in notes, notes


def check_guardrails(cell: Cell, front: Any) -> None:
    """A key in the arguments is blocked before the server (an error result naming the rule, never
    the key); an address is replaced by a placeholder on the way in and restored on the way out."""
    _, blocked = front.request("call-blocked", "tools/call",
                                    {"name": cell.tool("echo"), "arguments": {"text": f"use {AWS_KEY} now"}})
    result = blocked.get("result", {})
    assert blocked.get("id") == "call-blocked" and result.get("isError") is True, blocked
    assert "aws_key" in result["content"][0]["text"] and AWS_KEY not in json.dumps(blocked), blocked
    assert result["_meta"]["dev.wire-gateway/guardrails"]["detector"] == "aws_key", blocked
    if cell.modern:
        assert result.get("resultType") == "complete", blocked
    _, redacted = front.request("call-redacted", "tools/call",
                                     {"name": cell.tool("echo"), "arguments": {"text": f"mail {EMAIL} please"}})
    assert redacted["result"]["content"][0]["text"] == f"mail {EMAIL} please", redacted


def check_log(cell: Cell) -> None:
    text = cell.log_path.read_text(errors="replace")
    assert "setup failed" not in text and "Traceback" not in text, text
    if cell.observe == "on":      # JSON lines, every one of them
        levels = [json.loads(line)["level"] for line in text.splitlines() if line.strip()]
        assert "ERROR" not in levels and "CRITICAL" not in levels, text
        text = "\n".join(json.loads(line)["message"] for line in text.splitlines() if line.strip())
    assert not [line for line in text.splitlines() if " ERROR " in line or " CRITICAL " in line], text
    if cell.aggregate:
        for member in ("s", "p"):
            assert f"member {member} connected" in text, text


def check_trace(cell: Cell) -> None:
    """The working call's span: a child of the client's context, naming server `s` (the member,
    through the aggregate), tied to its log line by the request id; the API key in no span."""
    def mine(spans: list[Any]) -> list[Any]:
        return [x for x in spans if x.kind == 2 and x.name == "tools/call echo"
                and x.trace_id == TRACE_ID and x.parent_span_id == PARENT_ID]

    spans = cell.receiver.wait_for(lambda got: bool(mine(got)))
    [span] = mine(spans)
    assert span.attributes["wire_gateway.server"] == "s", span
    assert span.attributes["gen_ai.tool.name"] == "echo", span
    request_id = span.attributes["wire_gateway.request_id"]
    lines = [json.loads(line) for line in cell.log_path.read_text().splitlines() if line.strip()]
    assert {line.get("request_id") for line in lines if line.get("trace_id") == TRACE_ID} <= {request_id}, lines
    if cell.key is not None:
        assert cell.key not in repr([(x.attributes, x.resource) for x in spans]), spans


def records_of(cell: Cell) -> list[dict[str, Any]]:
    from wire_gateway.dump.tools import iter_records

    assert cell.dump_path is not None
    return list(iter_records(cell.dump_path))


def check_dump(cell: Cell) -> None:
    from wire_gateway.dump.tap import C2G, G2C, G2S, S2G

    records = records_of(cell)
    hello = [r for r in records if HELLO in (r.get("frame") or "")]
    dirs = [r["dir"] for r in hello]
    for hop in (C2G, G2S, S2G, G2C):
        assert hop in dirs, (hop, dirs)
    server_side = [r for r in hello if r["dir"] in (G2S, S2G)]
    assert {r["server"] for r in server_side} == {"s"}, server_side
    assert dirs.index(C2G) < dirs.index(G2S) < dirs.index(S2G) < dirs.index(G2C), dirs


# ---- the url upstream ------------------------------------------------------------------------------

class UrlServer:
    """The HTTP echo fixture on a free port, for `url` cells (one per test module)."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        port_file = tmp / "http-echo.port"
        self.proc = subprocess.Popen([sys.executable, str(SERVERS / "http_echo.py"), "--port", "0",
                                      "--port-file", str(port_file), *extra], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            assert time.monotonic() < deadline and self.proc.poll() is None, "http_echo did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}/mcp"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
