"""Direct tests of the raw MCP fixture servers in fixtures/servers/ (no gateway).

Each test runs a fixture as a plain subprocess and talks newline-delimited
JSON-RPC to it, so the gateway tests can trust what the fixtures do.
"""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest
from gateway import fixture_module

SERVERS = Path(__file__).resolve().parent.parent / "fixtures" / "servers"
MODERN = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
SECRET = "Authorization: Bearer sk-test-1234567890abcdef"


class Fixture:
    """A running fixture server with line-oriented, timeout-guarded I/O."""

    def __init__(self, name: str, *args: str, cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVERS / f"{name}.py"), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd)
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.stderr: list[bytes] = []
        threading.Thread(target=self._pump, daemon=True).start()
        self._err = threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True)
        self._err.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def send(self, msg: dict) -> None:
        self.proc.stdin.write(json.dumps(msg).encode() + b"\n")
        self.proc.stdin.flush()

    def raw(self, timeout: float = 5.0) -> bytes | None:
        return self.lines.get(timeout=timeout)

    def recv(self, timeout: float = 5.0) -> dict:
        line = self.raw(timeout)
        assert line is not None, "server closed stdout"
        return json.loads(line)

    def call(self, rid, method: str, params: dict | None = None) -> dict:
        msg = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        reply = self.recv()
        assert reply.get("id") == rid, reply
        return reply

    def initialize(self, version: str = "2025-11-25") -> dict:
        reply = self.call(0, "initialize", {"protocolVersion": version, "capabilities": {},
                                            "clientInfo": {"name": "t", "version": "0"}})
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return reply["result"]

    def tool(self, rid, name: str, arguments: dict | None = None, **params) -> dict:
        return self.call(rid, "tools/call", {"name": name, "arguments": arguments or {}, **params})

    def close(self, timeout: float = 5.0) -> int:
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        rc = self.proc.wait(timeout)
        self._err.join(timeout)
        return rc

    def stderr_text(self) -> str:
        return b"".join(self.stderr).decode("utf-8", "replace")


@pytest.fixture
def run():
    started: list[Fixture] = []

    def start(name: str, *args: str, **kw) -> Fixture:
        started.append(Fixture(name, *args, **kw))
        return started[-1]
    yield start
    for f in started:
        if f.proc.poll() is None:
            f.proc.kill()
        f.proc.wait()
        for stream in (f.proc.stdin, f.proc.stdout, f.proc.stderr):
            try:
                stream.close()
            except OSError:  # stdin of a dead process may fail to flush
                pass


def text_of(reply: dict) -> str:
    return reply["result"]["content"][0]["text"]


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---- echo ----------------------------------------------------------------

def test_echo_handshake_and_version_choice(run):
    f = run("echo")
    result = f.initialize("2025-06-18")
    assert result["protocolVersion"] == "2025-06-18"
    assert result["serverInfo"] == {"name": "echo", "version": "1.0.0"}
    assert result["capabilities"]["tools"] == {"listChanged": True}
    assert f.call(1, "initialize", {"protocolVersion": "1999-01-01"})["result"]["protocolVersion"] == "2025-11-25"
    assert f.close() == 0
    g = run("echo", "--name", "custom")
    assert g.initialize()["serverInfo"]["name"] == "custom"


def test_strict_legacy_gating(run):
    f = run("echo")
    err = f.call(1, "tools/list")["error"]
    assert err == {"code": -32600, "message": "server not initialized: send initialize first"}
    assert f.tool(2, "echo", {"text": "x"})["error"]["code"] == -32600
    assert f.call(3, "ping") == {"jsonrpc": "2.0", "id": 3, "result": {}}
    assert "supportedVersions" in f.call(4, "server/discover")["result"]  # dual era: no _meta needed
    f.initialize()
    names = [t["name"] for t in f.call(5, "tools/list")["result"]["tools"]]
    assert names == ["echo", "pid", "add", "sample", "where", "touch_tools", "big", "progress", "wait"]


def test_modern_requests_are_stateless(run):
    f = run("echo")
    discover = f.call("d", "server/discover", {"_meta": MODERN})["result"]
    assert discover["resultType"] == "complete"
    assert discover["supportedVersions"][0] == "2026-07-28"
    assert discover["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "echo"
    reply = f.tool(1, "echo", {"text": "hi"}, _meta=MODERN)
    assert reply["result"] == {"content": [{"type": "text", "text": "hi"}], "isError": False,
                               "resultType": "complete"}
    assert f.call(2, "ping", {"_meta": MODERN})["result"] == {"resultType": "complete"}
    err = f.call(3, "tools/list", {"_meta": {"io.modelcontextprotocol/protocolVersion": "1900-01-01"}})["error"]
    assert err["code"] == -32022 and err["data"]["requested"] == "1900-01-01"
    assert f.call(4, "tools/list")["error"]["code"] == -32600  # legacy still needs initialize
    listed = f.call(5, "tools/list", {"_meta": MODERN})["result"]   # cacheable: 2026-07-28 wants these
    assert (listed["ttlMs"], listed["cacheScope"], listed["resultType"]) == (0, "private", "complete")
    assert "ttlMs" not in f.call(6, "ping", {"_meta": MODERN})["result"]


def test_echo_tools_errors_resources_prompts(run, tmp_path):
    f = run("echo", "--log", str(tmp_path / "log"))
    f.initialize()
    assert text_of(f.tool(1, "echo", {"text": "h\u00e9 \ud800"})) == "h\u00e9 \ud800"
    assert text_of(f.tool(2, "add", {"a": 2, "b": 3})) == "5"
    assert text_of(f.tool(3, "pid")) == str(f.proc.pid)
    assert f.tool(4, "nope")["error"] == {"code": -32602, "message": "unknown tool: nope"}
    assert f.tool(5, "echo", {})["error"]["code"] == -32602
    assert f.call(6, "bogus/method")["error"] == {"code": -32601, "message": "method not found: bogus/method"}
    f.send({"jsonrpc": "2.0", "method": "notifications/whatever"})  # never answered
    assert f.call(7, "ping")["result"] == {}
    assert f.call(8, "resources/list")["result"]["resources"][0]["uri"] == "echo://info"
    assert "pid" in f.call(9, "resources/read", {"uri": "echo://info"})["result"]["contents"][0]["text"]
    assert f.call(90, "resources/read", {"uri": "echo://text/abc"})["result"]["contents"][0]["text"] == "abc"
    assert f.call(10, "prompts/list")["result"]["prompts"][0]["name"] == "greet"
    got = f.call(11, "prompts/get", {"name": "greet", "arguments": {"name": "Ada"}})["result"]
    assert got["messages"][0]["content"]["text"] == "Hello, Ada!"
    f.proc.stdin.write(b"{not json\n")
    f.proc.stdin.flush()
    assert f.recv()["error"]["code"] == -32700
    assert f.close() == 0  # EOF -> exit 0
    log = read_log(tmp_path / "log")
    assert log[:3] == [{"method": "initialize", "id": 0}, {"method": "notifications/initialized", "id": None},
                       {"method": "tools/call", "id": 1, "tool": "echo"}]
    assert {"method": "notifications/whatever", "id": None} in log


def test_echo_sampling_round_trip(run):
    f = run("echo")
    f.initialize()
    f.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "sample", "arguments": {"prompt": "hi?"}}})
    req = f.recv()
    assert req["method"] == "sampling/createMessage" and req["id"] == "srv-1"
    assert req["params"]["messages"][0]["content"]["text"] == "hi?"
    f.send({"jsonrpc": "2.0", "id": req["id"], "result": {
        "role": "assistant", "model": "m", "content": {"type": "text", "text": "sampled!"}}})
    assert text_of(f.recv()) == "sampled!"
    modern = f.tool(2, "sample", _meta=MODERN)["result"]
    assert modern["isError"] is True


def test_echo_progress(run):
    f = run("echo")
    f.initialize()
    f.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "progress", "arguments": {"steps": 3}, "_meta": {"progressToken": "tok"}}})
    notes = [f.recv() for _ in range(3)]
    assert [n["params"]["progress"] for n in notes] == [1, 2, 3]
    assert all(n["method"] == "notifications/progress" and n["params"]["progressToken"] == "tok" for n in notes)
    assert text_of(f.recv()) == "done"
    assert text_of(f.tool(2, "progress", {"steps": 2})) == "done"  # no token: no notifications


# ---- slow ----------------------------------------------------------------

def test_slow_sleep_does_not_block_and_cancel_suppresses_reply(run, tmp_path):
    f = run("slow", "--log", str(tmp_path / "log"))
    f.initialize()
    start = time.monotonic()
    f.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "sleep", "arguments": {"seconds": 0.4}}})
    f.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "sleep", "arguments": {"seconds": 0.6}}})
    assert text_of(f.tool(3, "echo", {"text": "quick"})) == "quick"  # read loop not blocked
    f.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2, "reason": "t"}})
    reply = f.recv()
    assert reply["id"] == 1 and text_of(reply) == "slept 0.4"
    assert time.monotonic() - start >= 0.35
    assert f.call(4, "ping")["result"] == {}
    with pytest.raises(queue.Empty):
        f.raw(timeout=max(0.1, start + 0.9 - time.monotonic()))  # id 2 is never answered
    assert f.close() == 0
    log = read_log(tmp_path / "log")
    assert {"cancelled": 2} in log and {"cancelled": 1} not in log
    assert {"method": "notifications/cancelled", "id": None} in log


# ---- crashing --------------------------------------------------------------

def test_crashing_crash_tool_and_exit_code(run):
    f = run("crashing")
    assert f.tool(1, "echo", {"text": "x"})["error"]["code"] == -32600  # strict gating
    f.initialize()
    assert text_of(f.tool(2, "echo", {"text": "x"})) == "x"
    f.send({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "crash"}})
    assert f.raw() is None  # no answer, stdout closed
    assert f.proc.wait(5) == 3
    g = run("crashing", "--exit-code", "7")
    g.initialize()
    g.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "crash"}})
    assert g.proc.wait(5) == 7


def test_crashing_crash_after(run, tmp_path):
    f = run("crashing", "--crash-after", "2", "--log", str(tmp_path / "log"))
    f.initialize()
    assert text_of(f.tool(1, "pid")) == str(f.proc.pid)
    f.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}})
    assert f.raw() is None
    assert f.proc.wait(5) == 3
    log = read_log(tmp_path / "log")
    assert log[0] == {"started": f.proc.pid}
    assert log[-1] == {"method": "tools/call", "id": 2, "tool": "echo"}


def test_crashing_on_start_and_start_file(run, tmp_path):
    f = run("crashing", "--crash-on-start", "--exit-code", "5")
    assert f.proc.wait(5) == 5
    assert f.close() == 5 and "crash-on-start" in f.stderr_text()
    marker = tmp_path / "crash"
    marker.write_text("")
    g = run("crashing", "--crash-on-start-file", str(marker))
    assert g.proc.wait(5) == 3
    marker.unlink()
    h = run("crashing", "--crash-on-start-file", str(marker))
    assert h.initialize()["serverInfo"]["name"] == "crashing"
    assert h.close() == 0


# ---- noisy -----------------------------------------------------------------

def test_noisy_junk_on_stdout_and_chatter_on_stderr(run):
    f = run("noisy")
    assert f.raw() == b"noisy server starting...\n"
    assert b"\x1b[" in f.raw()
    assert f.raw() == b"{not json\n"
    f.send({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}})
    assert f.raw() == b'noisy: about to answer id=0 {not json\n'
    assert f.recv()["result"]["serverInfo"]["name"] == "noisy"
    f.send({"jsonrpc": "2.0", "id": "e", "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "hi"}}})
    junk = f.raw()
    with pytest.raises(ValueError):
        json.loads(junk)
    assert text_of(f.recv()) == "hi"
    assert f.close() == 0
    err = f.stderr_text()
    assert err.count(SECRET) == 2 and "noisy: got tools/call" in err


# ---- oddformat -------------------------------------------------------------

def test_oddformat_exact_bytes_and_valid_json(run):
    odd = fixture_module("oddformat")
    f = run("oddformat")
    requests = [(1, "initialize"), ("s-2", "server/discover"), (3, "tools/list"),
                (4, "tools/call"), (5, "ping"), (6, "no/such")]
    for rid, method in requests:
        f.send({"jsonrpc": "2.0", "id": rid, "method": method, "params": {"name": "odd"}})
    got = [f.raw() for _ in range(len(requests) + 1)]
    expected = [odd.render(m, rid) for rid, m in requests]
    expected.insert(3, odd.NOTIFICATION)
    assert got == expected
    parsed = [json.loads(line) for line in got]  # every line is valid JSON for Python
    assert [p.get("id") for p in parsed] == [1, "s-2", 3, None, 4, 5, 6]
    assert parsed[3]["method"] == "notifications/message"
    data = parsed[3]["params"]["data"]
    assert data["big"] == 123456789012345678901234567890 and data["huge"] == float("inf")
    assert data["surrogate"] == "\ud800" and data["escaped"] == "caf\u00e9 / na\u00efve"
    assert str(data["negzero"]) == "-0.0" and data["sci"] == 100.0
    assert parsed[4]["result"]["structuredContent"] == data
    assert list(parsed[0]) == ["result", "jsonrpc", "id"]
    assert got[5].endswith(b"\r\n") and got[2].endswith(b"} \n")
    assert "☃".encode() in got[0] and b"\t" in got[0] and b"\\/" in got[2]
    assert f.close() == 0


# ---- hostile ---------------------------------------------------------------

def test_hostile_descriptions_and_results(run):
    hostile = fixture_module("hostile")
    f = run("hostile")
    result = f.initialize()
    assert "instructions" not in result and result["serverInfo"] == {"name": "hostile", "version": "1.0.0"}
    tools = {t["name"]: t for t in f.call(1, "tools/list")["result"]["tools"]}
    assert list(tools) == ["echo", "pid", "poisoned", "sidenote", "fetch_page", "leak", "shifty", "big", "unicode",
                           "bad_output", "echo_args"]
    assert "<IMPORTANT>" in tools["poisoned"]["description"] and "~/.ssh/id_rsa" in tools["poisoned"]["description"]
    assert tools["poisoned"]["inputSchema"]["required"] == ["a", "b"]
    hidden = "".join(chr(ord(c) - 0xE0000) for c in tools["sidenote"]["description"] if 0xE0020 <= ord(c) <= 0xE007E)
    assert hidden == hostile.HIDDEN_INSTRUCTION and hidden not in tools["sidenote"]["description"]
    assert {n for n, t in tools.items() if "outputSchema" in t} == {"leak", "bad_output", "echo_args"}
    assert text_of(f.tool(2, "poisoned", {"a": 2, "b": 3})) == "5"
    assert hostile.INJECTION in text_of(f.tool(3, "fetch_page", {"url": "https://example.com/"}))
    leak = f.tool(4, "leak")["result"]
    assert hostile.AWS_KEY_ID in leak["content"][0]["text"] and hostile.CARD in leak["content"][0]["text"]
    assert leak["structuredContent"] == hostile.LEAK_STRUCTURED
    assert hostile.AWS_KEY_ID != "AKIAIOSFODNN7EXAMPLE" and len(hostile.AWS_KEY_ID) == 20
    digits = [int(d) for d in hostile.CARD.replace(" ", "")][::-1]   # Luhn-valid, as a detector must see it
    assert sum(d if i % 2 == 0 else (2 * d - 9 if d > 4 else 2 * d) for i, d in enumerate(digits)) % 10 == 0
    jsonschema.validate(leak["structuredContent"], tools["leak"]["outputSchema"])
    text = text_of(f.tool(5, "unicode"))
    assert text == hostile.UNICODE_TEXT and "\u202e" in text and "\u200b" in text
    bad = f.tool(6, "bad_output")["result"]["structuredContent"]
    paths = sorted(list(e.absolute_path) for e in jsonschema.Draft202012Validator(
        tools["bad_output"]["outputSchema"]).iter_errors(bad))
    assert paths == [[], ["count"], ["items", 1]]    # the extra key (at the root), then two wrong types
    args = {"path": "/etc/passwd", "nested": {"list": [1, "two", None]}, "card": "[REDACTED:1]"}
    echoed = f.tool(7, "echo_args", args)["result"]
    assert json.loads(text_of({"result": echoed})) == args and echoed["structuredContent"] == {"arguments": args}
    assert f.close() == 0


def test_hostile_shifty_and_big(run):
    hostile = fixture_module("hostile")
    f = run("hostile", "--shift-after", "2")
    f.initialize()

    def shifty_schema(rid):
        tools = f.call(rid, "tools/list")["result"]["tools"]
        return next(t["inputSchema"] for t in tools if t["name"] == "shifty")

    first, second, third, fourth = (shifty_schema(i) for i in range(1, 5))
    assert first == second and first["required"] == ["path"]      # --shift-after 2: the same twice
    assert third != second and third["required"] == ["path", "command"] and fourth != third
    assert text_of(f.tool(5, "shifty", {"path": "notes.txt"})) == "read notes.txt (revision 3)"
    assert f.recv() == {"jsonrpc": "2.0", "method": "notifications/tools/list_changed", "params": {}}
    g = run("hostile")
    g.initialize()
    assert g.call(1, "tools/list")["result"] != g.call(2, "tools/list")["result"]    # no flag: every list differs
    big = text_of(g.tool(3, "big"))
    assert len(big) == 1 << 20 and big.startswith("line of filler")
    assert text_of(g.tool(4, "big", {"size": 100, "tail": "END"})) == (hostile.BIG_LINE * 2)[:97] + "END"
    assert g.tool(5, "big", {"size": 2, "tail": "END"})["error"]["code"] == -32602


def test_hostile_poisoned_instructions(run):
    hostile = fixture_module("hostile")
    f = run("hostile", "--poison-instructions")
    result = f.initialize()
    assert result["instructions"] == hostile.POISONED_INSTRUCTIONS
    assert "ignore all previous instructions" in result["instructions"]
    assert result["serverInfo"]["title"] == hostile.POISONED_TITLE
    discover = f.call(1, "server/discover", {"_meta": MODERN})["result"]
    assert discover["instructions"] == hostile.POISONED_INSTRUCTIONS
    assert discover["_meta"]["io.modelcontextprotocol/serverInfo"]["title"] == hostile.POISONED_TITLE
