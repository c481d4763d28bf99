"""The era bridge on the stdio front (`wire-gateway stdio --server NAME`, proxy/stdio_era.py): the
client's first request chooses passthrough or the bridge, whose answers a modern client of a
legacy-only server gets (docs/bridge.md). Driven frame by frame over real pipes, with the SDK's
client in its 2026-07-28 mode as a second real peer."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import anyio
import pytest
from gateway import LEGACY_INIT, MODERN_META, PY, LineClient, fixture, write_config
from mcp import types
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from test_aggregate_stdio import call, text

from wire_gateway.proxy.aggregate.asks import Asks
from wire_gateway.wire.frame import Frame, Kind

ELICIT_META = {**MODERN_META, "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}}}


def start(tmp_path: Path, server: dict[str, Any]) -> LineClient:
    config = write_config(tmp_path, {"one": server})
    return LineClient([PY, "-m", "wire_gateway", "stdio", "--config", str(config), "--server", "one",
                       "--log-level", "debug"], log_path=tmp_path / "gateway.log")


def close(client: LineClient, tmp_path: Path) -> str:
    assert client.close() == 0
    log = (tmp_path / "gateway.log").read_text()
    assert "Traceback" not in log and " ERROR " not in log, log
    return log


@pytest.mark.parametrize("pinned", [False, True], ids=["auto", "era-legacy"])
def test_a_modern_client_of_a_legacy_server_is_bridged(tmp_path: Path, pinned: bool) -> None:
    server = fixture("legacy_echo")
    client = start(tmp_path, {**server, "era": "legacy"} if pinned else server)
    try:
        disc, _ = call(client, 1, "server/discover", {"_meta": MODERN_META})
        res = disc["result"]
        assert res["supportedVersions"][0] == "2026-07-28" and res["resultType"] == "complete"
        assert res["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "legacy-echo"
        assert res["instructions"].startswith("A legacy-only echo server") and res["ttlMs"] == 0
        tools, _ = call(client, 2, "tools/list", {"_meta": MODERN_META})
        assert "echo" in [t["name"] for t in tools["result"]["tools"]] and tools["result"]["cacheScope"] == "private"
        echoed, _ = call(client, 3, "tools/call", {"name": "echo", "arguments": {"text": "hi"}, "_meta": MODERN_META})
        assert text(echoed) == "hi" and echoed["result"]["resultType"] == "complete"
        prog, others = call(client, 4, "tools/call", {"name": "progress", "arguments": {"steps": 2},
                                                      "_meta": {**MODERN_META, "progressToken": "p"}})
        assert text(prog) == "done"
        assert [m["params"]["progressToken"] for m in others if m.get("method") == "notifications/progress"] == \
            ["p", "p"]
        read, _ = call(client, 5, "resources/read", {"uri": "echo://info", "_meta": MODERN_META})
        assert read["result"]["contents"][0]["uri"] == "echo://info"
        got, _ = call(client, 6, "prompts/get", {"name": "greet", "arguments": {"name": "Ada"}, "_meta": MODERN_META})
        assert "Ada" in got["result"]["messages"][0]["content"]["text"]
        removed, _ = call(client, 7, "initialize", {**LEGACY_INIT, "_meta": MODERN_META})
        assert removed["error"]["code"] == -32601
        # the server's list changes reach a listen stream that asked for them, under its id
        client.send({"jsonrpc": "2.0", "id": "sub", "method": "subscriptions/listen",
                     "params": {"notifications": {"toolsListChanged": True}, "_meta": MODERN_META}})
        ack = client.recv(10)
        assert ack["method"] == "notifications/subscriptions/acknowledged"
        assert ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "sub"
        touched, others = call(client, 8, "tools/call", {"name": "touch_tools", "arguments": {}, "_meta": MODERN_META})
        assert text(touched) == "notified 1"
        changed = [m for m in others if m.get("method") == "notifications/tools/list_changed"]
        assert changed and changed[0]["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == "sub"
        client.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "sub"}})
    finally:
        log = close(client, tmp_path)
    assert "served through the era bridge" in log
    assert ("server one: speaks the legacy era" in log) is not pinned      # pinned: no probe


def test_an_elicitation_through_input_required_over_stdio(tmp_path: Path) -> None:
    client = start(tmp_path, fixture("legacy_echo"))
    try:
        params = {"name": "ask", "arguments": {"message": "name?"}, "_meta": ELICIT_META}
        first, others = call(client, 1, "tools/call", params)
        assert not [m for m in others if m.get("method") == "elicitation/create"]   # no server request reaches it
        res = first["result"]
        assert res["resultType"] == "input_required"
        (key, request), = res["inputRequests"].items()
        assert request["method"] == "elicitation/create"
        assert key.startswith("srv-"), key          # the server's own id for its request
        forged = res["requestState"][:-2] + ("AA" if not res["requestState"].endswith("AA") else "BB")
        refused, _ = call(client, 2, "tools/call", {**params, "requestState": forged, "inputResponses": {}})
        assert refused["error"]["code"] == -32602 and "verification" in refused["error"]["message"]
        done, _ = call(client, 3, "tools/call", {**params, "requestState": res["requestState"],
                                                 "inputResponses": {key: {"action": "accept",
                                                                          "content": {"name": "Ada"}}}})
        assert text(done) == 'accept: {"name": "Ada"}'
        # cancelling a call: no answer, and the session goes on
        client.send({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                     "params": {"name": "wait", "arguments": {"seconds": 30}, "_meta": MODERN_META}})
        client.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 4}})
        after, others = call(client, 5, "tools/call", {"name": "echo", "arguments": {"text": "on"},
                                                       "_meta": MODERN_META})
        assert text(after) == "on" and not [m for m in others if m.get("id") == 4]
    finally:
        close(client, tmp_path)


def test_input_request_keys_are_the_servers_request_ids() -> None:
    def ask(rid: Any) -> Frame:
        msg = {"jsonrpc": "2.0", "id": rid, "method": "roots/list"}
        return Frame(b"", Kind.REQUEST, msg, "roots/list", rid)
    asks = Asks(cast(Any, None))
    named = asks._name([ask("user_name"), ask(7), ask("7"), ask("x" * 65), ask("")])
    assert [(key, frame.id) for key, frame in named.items()] == [
        ("user_name", "user_name"), ("7", 7), ("input-1", "7"), ("input-2", "x" * 65), ("input-3", "")]


def test_a_legacy_client_is_passed_through_byte_for_byte(tmp_path: Path) -> None:
    client = start(tmp_path, fixture("legacy_echo"))
    try:
        client.send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": LEGACY_INIT})
        init = client.recv_raw()
        assert json.loads(init)["result"]["serverInfo"]["name"] == "legacy-echo"
        client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        client.send(b'{"jsonrpc":"2.0","id":  -0,"method":"tools/call","params":{"name":"echo",'
                    b'"arguments":{"text":"x"}}}')
        assert client.recv_raw() == b'{"jsonrpc":"2.0","id":-0,"result":{"content":[{"type":"text","text":"x"}],' \
            b'"isError":false}}'
    finally:
        log = close(client, tmp_path)
    assert "era bridge" not in log and "server one: speaks the" not in log       # no probe for a legacy client


@pytest.mark.parametrize("era", ["auto", "modern"])
def test_a_modern_client_of_a_modern_server_is_passed_through(tmp_path: Path, era: str) -> None:
    client = start(tmp_path, {**fixture("echo"), "era": era})
    try:
        disc, _ = call(client, 1, "server/discover", {"_meta": MODERN_META})
        # the server's own answer (its ttlMs and cacheScope come first, as it writes them)
        assert list(disc["result"])[:3] == ["ttlMs", "cacheScope", "resultType"]
        assert disc["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"] == "echo"
        client.send(b'{"jsonrpc":"2.0","id":  -0,"method":"tools/call","params":{"name":"echo","arguments":'
                    b'{"text":"x"},"_meta":' + json.dumps(MODERN_META).encode() + b"}}")
        assert client.recv_raw() == b'{"jsonrpc":"2.0","id":-0,"result":{"content":[{"type":"text","text":"x"}],' \
            b'"isError":false,"resultType":"complete"}}'
    finally:
        log = close(client, tmp_path)
    assert "era bridge" not in log
    assert ("server one: speaks the modern era" in log) is (era == "auto")


def test_the_sdk_client_in_the_modern_mode_over_stdio(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"one": fixture("legacy_echo")})
    params = StdioServerParameters(command=PY, args=["-m", "wire_gateway", "stdio", "--config", str(config),
                                                     "--server", "one"])
    asked: list[str] = []

    async def on_elicit(context: Any, p: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(p.message)
        return types.ElicitResult(action="accept", content={"name": "Alan"})

    async def main() -> None:
        with anyio.fail_after(30), (tmp_path / "sdk.err").open("w") as errlog:
            async with Client(stdio_client(params, errlog=errlog), mode="2026-07-28",
                              elicitation_callback=on_elicit) as client:
                answer = await client.call_tool("ask", {"message": "and you?"})
                assert answer.content[0].text == 'accept: {"name": "Alan"}'
                read = await client.read_resource("echo://info")
                assert "legacy-echo" in read.contents[0].text

    anyio.run(main)
    assert asked == ["and you?"]
