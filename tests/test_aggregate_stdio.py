"""The aggregate over stdio (`wire-gateway stdio` without --server), driven frame by frame:
routing errors, cursors, a legacy-only member (the gateway's own handshake, its replay after
a crash, server->client requests with remapped ids, list_changed), and the era limits."""
from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from gateway import LEGACY_INIT, MODERN_META, PY, LineClient, write_config

# A strict legacy-only server: no server/discover, nothing before initialize.
LEGACY_ONLY = textwrap.dedent('''
    import json, os, sys
    ready = False
    asked = {}
    def send(msg):
        sys.stdout.write(json.dumps(msg) + "\\n"); sys.stdout.flush()
    for line in sys.stdin:
        msg = json.loads(line)
        method, rid = msg.get("method"), msg.get("id")
        if method is None:
            call = asked.pop(rid, None)
            if call is not None:
                text = msg.get("result", {}).get("content", {}).get("text") if "result" in msg \
                    else "error: " + msg["error"]["message"]
                send({"jsonrpc": "2.0", "id": call, "result": {"content": [{"type": "text", "text": text}]}})
            continue
        if rid is None:
            continue
        def answer(result):
            send({"jsonrpc": "2.0", "id": rid, "result": result})
        if method == "initialize":
            ready = True
            answer({"protocolVersion": "2025-11-25", "capabilities": {"tools": {"listChanged": True}, "prompts": {}},
                    "serverInfo": {"name": "old", "version": "1"}})
        elif not ready:
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32600, "message": "not initialized"}})
        elif method == "prompts/list":
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32603, "message": "prompts are broken today"}})
        elif method == "tools/list":
            answer({"tools": [{"name": n, "inputSchema": {"type": "object"}} for n in ("pid", "ask", "changed")]})
        elif method == "tools/call" and msg["params"]["name"] == "pid":
            answer({"content": [{"type": "text", "text": str(os.getpid())}]})
        elif method == "tools/call" and msg["params"]["name"] == "changed":
            send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
            answer({"content": [{"type": "text", "text": "changed"}]})
        elif method == "tools/call" and msg["params"]["name"] == "ask":
            asked[7] = rid
            send({"jsonrpc": "2.0", "id": 7, "method": "sampling/createMessage",
                  "params": {"messages": [], "maxTokens": 5}})
        else:
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "Method not found"}})
''')


def start(tmp_path: Path, servers: dict[str, Any], **top: Any) -> LineClient:
    config = write_config(tmp_path, servers, **top)
    return LineClient([PY, "-m", "wire_gateway", "stdio", "--config", str(config), "--log-level", "debug"],
                      log_path=tmp_path / "gateway.log")


def legacy_only(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "legacy_only.py"
    path.write_text(LEGACY_ONLY)
    return {"command": PY, "args": [str(path)], "restart": {"initial_delay": 0.05}}


def echo() -> dict[str, Any]:
    return {"command": PY, "args": ["-m", "wire_gateway.demo.echo"]}


def answer_to(client: LineClient, req_id: Any, timeout: float = 15.0) -> tuple[Any, list[Any]]:
    """The answer to `req_id`, and whatever else arrived first."""
    others = []
    deadline = time.monotonic() + timeout
    while True:
        msg = client.recv(max(0.1, deadline - time.monotonic()))
        if msg.get("id") == req_id and "method" not in msg:
            return msg, others
        others.append(msg)


def call(client: LineClient, req_id: Any, method: str, params: Any = None) -> tuple[Any, list[Any]]:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": req_id, "method": method}
    if params is not None:
        msg["params"] = params
    client.send(msg)
    return answer_to(client, req_id)


def text(answer: Any) -> str:
    assert "result" in answer, answer
    return answer["result"]["content"][0]["text"]


def close(client: LineClient, tmp_path: Path) -> None:
    client.proc.stdin.close()
    try:
        assert client.proc.wait(20) == 0, (tmp_path / "gateway.log").read_text()
    finally:
        if client.proc.poll() is None:
            client.proc.kill()


def test_legacy_client_with_a_legacy_only_member_and_its_crash(tmp_path: Path) -> None:
    client = start(tmp_path, {"old": legacy_only(tmp_path), "echo": echo()}, aggregate={"page_size": 3})
    try:
        init, _ = call(client, 1, "initialize", LEGACY_INIT)
        assert init["result"]["serverInfo"]["name"] == "wire-gateway-aggregate"
        assert init["result"]["capabilities"]["tools"] == {"listChanged": True}
        client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        pong, _ = call(client, 2, "ping")
        assert pong["result"] == {}

        # pagination: old's 3 tools, then echo's 8 in pages of 3
        names, cursor, pages = [], None, 0
        while True:
            page, _ = call(client, f"l{pages}", "tools/list", {"cursor": cursor} if cursor else {})
            assert len(page["result"]["tools"]) <= 3 and "resultType" not in page["result"]
            names += [t["name"] for t in page["result"]["tools"]]
            pages += 1
            cursor = page["result"].get("nextCursor")
            if cursor is None:
                break
        assert names[:3] == ["old__pid", "old__ask", "old__changed"] and "echo__echo" in names
        assert len(names) == 12 and pages == 4

        bad, _ = call(client, 3, "tools/list", {"cursor": "not-ours"})
        assert bad["error"]["code"] == -32602 and "cursor" in bad["error"]["message"]
        unknown, _ = call(client, 4, "tools/call", {"name": "nosuch__x", "arguments": {}})
        assert unknown["error"]["code"] == -32602 and "unknown tool" in unknown["error"]["message"]
        nosep, _ = call(client, 5, "tools/call", {"name": "pid", "arguments": {}})
        assert nosep["error"]["code"] == -32602
        nomethod, _ = call(client, 6, "bogus/method", {})
        assert nomethod["error"]["code"] == -32601

        # a member that fails to list is left out of the listing; the others are listed
        prompts, _ = call(client, "pr", "prompts/list")
        assert [p["name"] for p in prompts["result"]["prompts"]] == ["echo__greet"]
        assert "nextCursor" not in prompts["result"]

        # a server->client request crosses with an id of the aggregate's own, and the answer goes back
        client.send({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                     "params": {"name": "old__ask", "arguments": {}}})
        ask = client.recv(10)
        assert ask["method"] == "sampling/createMessage" and ask["id"] != 7 and "old" in ask["id"]
        client.send({"jsonrpc": "2.0", "id": ask["id"], "result": {"role": "assistant", "model": "m",
                                                                  "content": {"type": "text", "text": "sampled"}}})
        done, _ = answer_to(client, 7)
        assert text(done) == "sampled"

        # list_changed from a legacy member reaches the legacy client
        changed, others = call(client, 8, "tools/call", {"name": "old__changed", "arguments": {}})
        assert text(changed) == "changed"
        assert {"jsonrpc": "2.0", "method": "notifications/tools/list_changed"} in others

        # kill the legacy member: the supervisor replays the aggregate's own handshake to its successor
        first_pid = int(text(call(client, 9, "tools/call", {"name": "old__pid", "arguments": {}})[0]))
        os.kill(first_pid, signal.SIGKILL)
        echo_answer, _ = call(client, 10, "tools/call", {"name": "echo__echo", "arguments": {"text": "alive"}})
        assert text(echo_answer) == "alive"
        for attempt in range(50):
            again, _ = call(client, f"p{attempt}", "tools/call", {"name": "old__pid", "arguments": {}})
            if "result" in again:
                break
            assert again["error"]["data"]["source"] == "wire-gateway"
            time.sleep(0.1)
        assert int(text(again)) != first_pid      # a strict server: it answers only after a replayed initialize
    finally:
        close(client, tmp_path)
    log = (tmp_path / "gateway.log").read_text()
    assert "replayed the session's initialize" in log
    assert "member old connected (legacy era)" in log and "member echo connected (modern era)" in log


def test_modern_client_cannot_be_asked_by_a_legacy_member(tmp_path: Path) -> None:
    client = start(tmp_path, {"old": legacy_only(tmp_path), "echo": echo()})
    try:
        disc, _ = call(client, 1, "server/discover", {"_meta": MODERN_META})
        assert "2026-07-28" in disc["result"]["supportedVersions"] and disc["result"]["resultType"] == "complete"
        tools, _ = call(client, 2, "tools/list", {"_meta": MODERN_META})
        assert tools["result"]["resultType"] == "complete"
        # the legacy member's sampling request cannot reach a modern client that did not declare the
        # capability: the call is answered -32021 (MissingRequiredClientCapabilityError) naming it
        asked, others = call(client, 3, "tools/call", {"name": "old__ask", "arguments": {}, "_meta": MODERN_META})
        assert asked["error"]["code"] == -32021, asked
        assert asked["error"]["data"]["requiredCapabilities"] == {"sampling": {}}
        assert not [m for m in others if m.get("method") == "sampling/createMessage"]
        # progress from a modern member comes back under the client's own token
        prog, others = call(client, 4, "tools/call", {"name": "echo__progress", "arguments": {"steps": 2},
                                                      "_meta": {**MODERN_META, "progressToken": "tok"}})
        assert text(prog) == "done"
        assert [m["params"]["progressToken"] for m in others if m.get("method") == "notifications/progress"] == \
            ["tok", "tok"]
        # a listen stream gets the list change of a modern member, under the client's subscription id
        client.send({"jsonrpc": "2.0", "id": "sub", "method": "subscriptions/listen",
                     "params": {"notifications": {"toolsListChanged": True}, "_meta": MODERN_META}})
        ack = client.recv(10)
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        assert ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "sub"
        touched, others = call(client, 5, "tools/call", {"name": "echo__touch_tools", "arguments": {},
                                                         "_meta": MODERN_META})
        assert text(touched) == "notified 1"
        for _ in range(3):
            if any(m.get("method") == "notifications/tools/list_changed" for m in others):
                break
            others.append(client.recv(5))
        changed = [m for m in others if m.get("method") == "notifications/tools/list_changed"]
        assert changed[0]["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "sub"
        client.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "sub"}})
        pong, _ = call(client, 6, "ping", {"_meta": MODERN_META})       # 2026-07-28 removed ping
        assert pong["error"]["code"] == -32601 and "stands alone" in pong["error"]["message"]
        listed, _ = call(client, 7, "tools/list", {"_meta": MODERN_META})  # the session goes on
        assert listed["result"]["resultType"] == "complete"
    finally:
        close(client, tmp_path)


def test_an_unreachable_member_degrades_the_aggregate(tmp_path: Path) -> None:
    """A url member nobody listens on and a member whose command cannot start: the others work."""
    client = start(tmp_path, {"gone": {"url": "http://127.0.0.1:9/mcp", "timeout": 2},
                              "broken": {"command": str(tmp_path / "no-such-program")},
                              "echo": echo()})
    try:
        init, _ = call(client, 1, "initialize", LEGACY_INIT)
        assert "tools" in init["result"]["capabilities"]
        tools, _ = call(client, 2, "tools/list")
        names = [t["name"] for t in tools["result"]["tools"]]
        while "nextCursor" in tools["result"]:
            tools, _ = call(client, f"n{len(names)}", "tools/list", {"cursor": tools["result"]["nextCursor"]})
            names += [t["name"] for t in tools["result"]["tools"]]
        assert names and all(n.startswith("echo__") for n in names)
        down, _ = call(client, 3, "tools/call", {"name": "gone__x", "arguments": {}})
        assert down["error"]["code"] == -31002 and "gone" in down["error"]["message"]
        ok, _ = call(client, 4, "tools/call", {"name": "echo__echo", "arguments": {"text": "fine"}})
        assert text(ok) == "fine"
    finally:
        close(client, tmp_path)
    log = (tmp_path / "gateway.log").read_text()
    assert "member gone is unavailable" in log and "member broken is unavailable" in log


@pytest.mark.parametrize("name", ["a_", "x__y"])
def test_a_server_name_that_clashes_with_the_separator_is_a_config_error(tmp_path: Path, name: str) -> None:
    client = start(tmp_path, {name: echo(), "echo": echo()})
    assert client.proc.wait(20) == 1
    log = (tmp_path / "gateway.log").read_text()
    assert f"$.servers.{name}" in log and "separator" in log


def test_cancellation_reaches_the_member_under_its_own_id(tmp_path: Path) -> None:
    slow_log = tmp_path / "slow.jsonl"
    servers = {"echo": echo(), "slowpoke": {"command": PY, "args": [
        str(Path(__file__).resolve().parent.parent / "fixtures" / "servers" / "slow.py"), "--log", str(slow_log)]}}
    client = start(tmp_path, servers)
    try:
        call(client, 1, "initialize", LEGACY_INIT)
        tools, _ = call(client, 2, "tools/list", {})
        cursor = tools["result"]["nextCursor"]
        slow_tools, _ = call(client, 3, "tools/list", {"cursor": cursor})
        slow_names = [t["name"] for t in slow_tools["result"]["tools"]]
        assert slow_names and all(n.startswith("slowpoke__") for n in slow_names)
        target = "slowpoke__sleep"
        assert target in slow_names
        client.send({"jsonrpc": "2.0", "id": 42, "method": "tools/call",
                     "params": {"name": target, "arguments": {"seconds": 30}}})
        time.sleep(0.5)
        client.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 42}})
        ok, others = call(client, 4, "tools/call", {"name": "echo__echo", "arguments": {"text": "next"}})
        assert text(ok) == "next" and not [m for m in others if m.get("id") == 42]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            entries = [json.loads(line) for line in slow_log.read_text().splitlines()] if slow_log.exists() else []
            called = [e["id"] for e in entries if e.get("method") == "tools/call"]
            if called and {"cancelled": called[-1]} in entries:
                break
            time.sleep(0.1)
        assert called and called[-1] != 42 and {"cancelled": called[-1]} in entries
    finally:
        close(client, tmp_path)


def test_requests_written_before_stdin_closes_are_answered(tmp_path: Path) -> None:
    """Like the one-server front: a client that writes its requests and closes stdin gets every answer."""
    client = start(tmp_path, {"echo": echo(), "slowpoke": {"command": PY, "args": [
        str(Path(__file__).resolve().parent.parent / "fixtures" / "servers" / "slow.py")]}})
    try:
        client.send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": LEGACY_INIT})
        client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        client.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                     "params": {"name": "slowpoke__sleep", "arguments": {"seconds": 0.5}}})
        client.send({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                     "params": {"name": "echo__echo", "arguments": {"text": "last"}}})
        client.proc.stdin.close()
        answers = {}
        while len(answers) < 3:
            msg = client.recv(15)
            answers[msg["id"]] = msg
        assert text(answers[2]) == "slept 0.5" and text(answers[3]) == "last"
        assert client.proc.wait(20) == 0
    finally:
        if client.proc.poll() is None:
            client.proc.kill()


def test_a_legacy_only_http_member_and_its_lost_session(tmp_path: Path) -> None:
    """An HTTP member without the modern era: the probe's 400 makes the aggregate do the legacy
    handshake itself; when the server restarts (session lost), that handshake is replayed."""
    from test_http_upstream import HTTP_ECHO, Upstream

    def web(port: int = 0, tag: str = "web") -> Upstream:
        port_file = tmp_path / f"{tag}.port"
        return Upstream([PY, str(HTTP_ECHO), "--port", str(port), "--port-file", str(port_file), "--legacy-only"],
                        port_file, tmp_path / f"{tag}.log")

    server = web()
    client = start(tmp_path, {"web": {"url": server.url, "timeout": 5}, "echo": echo()})
    try:
        disc, _ = call(client, 1, "server/discover", {"_meta": MODERN_META})
        assert disc["result"]["resultType"] == "complete" and "tools" in disc["result"]["capabilities"]
        first = text(call(client, 2, "tools/call", {"name": "web__pid", "arguments": {}, "_meta": MODERN_META})[0])
        server.stop()
        server = web(server.port, "web2")
        for attempt in range(50):
            again, _ = call(client, f"a{attempt}", "tools/call",
                            {"name": "web__pid", "arguments": {}, "_meta": MODERN_META})
            if "result" in again:
                break
            assert again["error"]["data"]["source"] == "wire-gateway"
            time.sleep(0.1)
        assert text(again) != first
        echoed, _ = call(client, 3, "tools/call", {"name": "web__echo", "arguments": {"text": "back"},
                                                  "_meta": MODERN_META})
        assert text(echoed) == "back" and echoed["result"]["resultType"] == "complete"
    finally:
        close(client, tmp_path)
        server.stop()
    log = (tmp_path / "gateway.log").read_text()
    assert "member web connected (legacy era)" in log
    assert "replayed the client's initialize" in log


def test_a_crash_looping_member_is_left_out_and_comes_back(tmp_path: Path) -> None:
    gate = tmp_path / "crash-while-this-exists"
    gate.write_text("")
    crashy = {"command": PY, "args": [str(Path(__file__).resolve().parent.parent / "fixtures" / "servers" /
                                          "crashing.py"), "--crash-on-start-file", str(gate)],
              "restart": {"initial_delay": 0.01, "max_delay": 0.05, "crash_loop_exits": 2,
                          "crash_loop_window": 30, "crash_loop_cooldown": 0.5},
              "handshake_timeout": 2}
    client = start(tmp_path, {"crashy": crashy, "echo": echo()})
    try:
        call(client, 1, "initialize", LEGACY_INIT)
        client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        tools, _ = call(client, 2, "tools/list")    # crashy's page is skipped: echo's comes first
        names = [t["name"] for t in tools["result"]["tools"]]
        assert "echo__echo" in names and all(n.startswith("echo__") for n in names)
        assert "nextCursor" not in tools["result"]
        down, _ = call(client, 4, "tools/call", {"name": "crashy__echo", "arguments": {"text": "x"}})
        assert down["error"]["code"] == -31002 and "crashy" in down["error"]["message"]
        ok, _ = call(client, 5, "tools/call", {"name": "echo__echo", "arguments": {"text": "fine"}})
        assert text(ok) == "fine"

        gate.unlink()                     # the server starts cleanly from now on
        deadline = time.monotonic() + 40
        while True:
            msg = client.recv(max(0.1, deadline - time.monotonic()))
            if msg.get("method") == "notifications/tools/list_changed":
                break
        back, _ = call(client, 6, "tools/call", {"name": "crashy__echo", "arguments": {"text": "back"}})
        assert text(back) == "back"
    finally:
        close(client, tmp_path)
    log = (tmp_path / "gateway.log").read_text()
    assert "member crashy is unavailable" in log and "member crashy connected" in log
