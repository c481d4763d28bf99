"""The era bridge's other half on `/mcp/{server}`: legacy clients (initialize, `Mcp-Session-Id`) of
servers that speak only 2026-07-28 (proxy/era_bridge.py, docs/bridge.md).

Real peers on 127.0.0.1: `wire-gateway serve` in front of the modern-only stdio fixture
(fixtures/servers/modern_only.py; probed, `era` auto, and pinned, `era: modern`), the conformance
fixture's modern-only Streamable HTTP variant, and the dual-era echo fixture, whose legacy clients
must stay passed through. The legacy side is driven with raw JSON-RPC over httpx (every byte
visible), the official Python SDK's client in its legacy mode and the TypeScript SDK v1 (a legacy
client), each answering the server's input requests as the requests of a legacy server.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from gateway import LEGACY_INIT, PY, fixture
from http_gateway import HttpGateway
from mcp import types
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from test_http_upstream import Upstream
from test_sdk_e2e import SDK_SERVER
from test_ts_sdk import ROOT, SAMPLING_ANSWER, check_results, run_client

ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
CONFORMANCE = ROOT / "fixtures" / "servers" / "conformance_server.py"
SDK_ROUTES = ["modern", "pinned"]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("bridge-legacy-http")
    port_file = tmp_path / "remote.port"
    remote = Upstream([PY, str(CONFORMANCE), "--era", "modern", "--port-file", str(port_file)],
                      port_file, tmp_path / "remote.log")
    gateway = None
    try:
        gateway = HttpGateway(tmp_path, {
            "modern": fixture("modern_only"), "pinned": {**fixture("modern_only"), "era": "modern"},
            "echo": fixture("modern_only", "--name", "echo"), "remote": {"url": remote.url},
            "dual": fixture("echo")}, http={"keepalive_interval": 0.5})
        yield gateway
    finally:
        try:
            if gateway is not None:
                assert gateway.stop() == 0, gateway.log()
                assert "Traceback" not in gateway.log(), gateway.log()
                assert " ERROR " not in gateway.log(), gateway.log()
        finally:
            remote.stop()


class Session:
    """A legacy session over raw HTTP: the requests the gateway sends on a POST's stream are
    answered by `answers` (method -> result)."""

    def __init__(self, gw: HttpGateway, route: str, capabilities: dict[str, Any]) -> None:
        self.url = gw.url(route)
        self.headers = dict(ACCEPT)
        init = httpx.post(self.url, headers=self.headers, timeout=20, json={
            "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {**LEGACY_INIT,
                                                                          "capabilities": capabilities}})
        assert init.status_code == 200, init.text
        self.init = self.messages(init)[-1]
        self.headers["mcp-session-id"] = init.headers["mcp-session-id"]
        self.headers["mcp-protocol-version"] = self.init["result"]["protocolVersion"]
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        self.seen: list[dict[str, Any]] = []

    @staticmethod
    def messages(resp: httpx.Response) -> list[dict[str, Any]]:
        if resp.headers["content-type"].startswith("application/json"):
            return [resp.json()]
        return [json.loads(line[5:]) for line in resp.text.splitlines()
                if line.startswith("data:") and line[5:].strip()]

    def post(self, msg: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.url, headers=self.headers, json=msg, timeout=20)

    def request(self, req_id: Any, method: str, params: Any, answers: dict[str, Any] | None = None) -> dict[str, Any]:
        """The answer to one request, answering on the side what the gateway asks on its stream."""
        body = {"jsonrpc": "2.0", "id": req_id, "method": method, "params": params}
        with httpx.stream("POST", self.url, headers=self.headers, json=body, timeout=20) as resp:
            assert resp.status_code == 200
            if resp.headers["content-type"].startswith("application/json"):
                return json.loads(resp.read())
            for line in resp.iter_lines():
                if not line.startswith("data:") or not line[5:].strip():
                    continue
                msg = json.loads(line[5:])
                if msg.get("id") == req_id and "method" not in msg:
                    return msg
                self.seen.append(msg)
                if "method" in msg and "id" in msg:
                    assert answers is not None and msg["method"] in answers, msg
                    answered = self.post({"jsonrpc": "2.0", "id": msg["id"], "result": answers[msg["method"]]})
                    assert answered.status_code == 202
        raise AssertionError("the stream ended without the answer")

    def close(self) -> None:
        httpx.delete(self.url, headers=self.headers, timeout=10)


def text(answer: dict[str, Any]) -> str:
    assert "result" in answer, answer
    return answer["result"]["content"][0]["text"]


@pytest.mark.parametrize("route", SDK_ROUTES)
def test_a_legacy_client_of_a_modern_only_server_over_raw_http(gw, route):
    s = Session(gw, route, {"elicitation": {}})
    try:
        res = s.init["result"]
        assert res["serverInfo"] == {"name": "modern-only", "version": "1.0.0"} and "resultType" not in res
        assert res["capabilities"]["resources"]["subscribe"] is True
        listed = s.request(1, "tools/list", {})["result"]
        assert "ask_name" in [t["name"] for t in listed["tools"]] and "ttlMs" not in listed
        asked = s.request(2, "tools/call", {"name": "ask_name", "arguments": {}},
                          {"elicitation/create": {"action": "accept", "content": {"name": "Ada"}}})
        assert text(asked) == "hello Ada" and "resultType" not in asked["result"]
        ask = next(m for m in s.seen if m.get("method") == "elicitation/create")
        assert ask["id"].startswith(f"wire-gateway/{route}/in-")
        refused = s.request(3, "tools/call", {"name": "ask_sample", "arguments": {}})
        assert refused["error"]["code"] == -31005 and "sampling capability" in refused["error"]["message"]
        modern_only = s.request(4, "initialize", LEGACY_INIT)        # a second initialize in the session
        assert "result" in modern_only or "error" in modern_only
    finally:
        s.close()
    assert f"({route}): the client speaks the legacy era, the server only the modern one" in gw.log()


@pytest.mark.filterwarnings("ignore:resources/subscribe is removed")    # legacy calls, on purpose
@pytest.mark.filterwarnings("ignore:The logging capability is deprecated")
def test_the_sdk_client_in_the_legacy_mode(gw):
    for route in SDK_ROUTES:
        run_sdk(gw.url(route))


def test_the_sdk_client_in_the_legacy_mode_through_the_aggregate(gw):
    run_sdk(f"{gw.base}/mcp", "modern__")


def run_sdk(url: str, prefix: str = "") -> None:
    """The SDK's client in its legacy mode against `url`; `prefix`: the aggregate's name prefix of
    the server's tools and prompts (`modern__`)."""
    asked: list[str] = []
    seen: list[Any] = []

    async def on_elicit(context: Any, p: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(p.message)
        return types.ElicitResult(action="accept", content={"name": "Grace"})

    async def on_sample(context: Any, p: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(role="assistant", model="m",
                                         content=types.TextContent(type="text", text="hello"))

    async def on_message(message: Any) -> None:
        seen.append(message)

    async def main() -> None:
        with anyio.fail_after(60):
            async with Client(streamable_http_client(url), mode="legacy", elicitation_callback=on_elicit,
                              sampling_callback=on_sample, message_handler=on_message) as client:
                assert (await client.call_tool(f"{prefix}ask_name", {})).content[0].text == "hello Grace"
                assert (await client.call_tool(f"{prefix}ask_sample", {})).content[0].text == "sampled: hello"
                assert (await client.call_tool(f"{prefix}two_rounds", {})).content[0].text == "Grace Grace"
                assert f"{prefix}echo" in [t.name for t in (await client.list_tools()).tools]
                progress: list[float] = []

                async def on_progress(value: float, total: float | None, message: str | None) -> None:
                    progress.append(value)
                done = await client.call_tool(f"{prefix}progress", {"steps": 3}, progress_callback=on_progress)
                assert done.content[0].text == "done" and progress == [1, 2, 3]
                read = await client.read_resource("echo://info")
                assert "modern-only" in read.contents[0].text
                prompt = await client.get_prompt(f"{prefix}greet", {"name": "Ada"})
                assert "Ada" in prompt.messages[0].content.text
                completed = await client.complete(types.PromptReference(type="ref/prompt", name=f"{prefix}greet"),
                                                  {"name": "name", "value": "a"})
                assert completed.completion.values == ["alpha", "beta"]
                await client.set_logging_level("info")
                assert (await client.call_tool(f"{prefix}log", {})).content[0].text == "info"
                await client.subscribe_resource("echo://info")
                await client.call_tool(f"{prefix}touch_resource", {"uri": "echo://info"})
                await client.call_tool(f"{prefix}touch_tools", {})
                with anyio.fail_after(10):
                    while not {type(m) for m in seen} >= {types.ResourceUpdatedNotification,
                                                          types.ToolListChangedNotification}:
                        await anyio.sleep(0.05)

    anyio.run(main)
    assert asked == ["What is your name?", "First?", "Second?"]
    logged = [m for m in seen if isinstance(m, types.LoggingMessageNotification)]
    assert logged and logged[0].params.data == "logged"


def test_the_sdk_client_in_the_legacy_mode_of_a_modern_http_server(gw):
    """The conformance fixture's modern HTTP variant: its own input-required tools and keys."""
    asked: list[str] = []

    async def on_elicit(context: Any, p: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(p.message)
        return types.ElicitResult(action="accept", content={"name": "Lin"})

    async def main() -> None:
        with anyio.fail_after(60):
            async with Client(streamable_http_client(gw.url("remote")), mode="legacy",
                              elicitation_callback=on_elicit) as client:
                simple = await client.call_tool("test_simple_text", {})
                assert simple.content[0].text
                answer = await client.call_tool("test_input_required_result_elicitation", {})
                assert "Lin" in answer.content[0].text, answer
                prompt = await client.get_prompt("test_input_required_result_prompt", {})
                assert "Lin" in prompt.messages[0].content.text or prompt.messages

    anyio.run(main)
    assert asked and asked[0] == "What is your name?"


def test_the_typescript_sdk_through_the_bridge_over_http(gw, node):
    results = run_client(node, "http", gw.url("echo"))
    check_results(results)
    assert results["era"] == "legacy" and results["sessionIdAssigned"] is True


def test_the_typescript_sdk_through_the_aggregate(gw, node):
    """/mcp in the legacy era, the modern-only `modern` one of its members (the first: the first page of
    each list is its own): its names prefixed."""
    r = run_client(node, "http", f"{gw.base}/mcp", prefix="modern__")
    assert r["errors"] == [] and r["era"] == "legacy" and r["sessionIdAssigned"] is True, r
    assert {"modern__echo", "modern__add", "modern__sample"} <= set(r["tools"]) and "modern__greet" in r["prompts"]
    assert (r["echo"], r["add"], r["promptText"]) == ("hello from TypeScript", "5", "Hello, TypeScript!")
    assert r["progressResult"] == "done" and [p["progress"] for p in r["progress"]] == [1, 2, 3]
    assert r["sample"] == SAMPLING_ANSWER and r["samplingRequests"] == [["Say hi to the gateway"]]


def test_the_typescript_sdk_through_the_bridge_over_stdio(node, tmp_path: Path):
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({"servers": {"echo": fixture("modern_only", "--name", "echo")}}))
    log = tmp_path / "stdio-gateway.log"
    spec = {"command": sys.executable, "args": ["-m", "wire_gateway", "stdio", "--config", str(config), "--server",
                                                "echo", "--log-file", str(log)], "cwd": str(ROOT)}
    try:
        results = run_client(node, "stdio", json.dumps(spec))
    except BaseException:
        print(log.read_text(errors="replace") if log.exists() else "(no gateway log)")
        raise
    check_results(results)
    assert "served through the era bridge" in log.read_text()


def test_a_legacy_client_of_a_dual_era_server_is_still_passed_through(gw):
    s = Session(gw, "dual", {})
    try:
        assert s.init["result"]["serverInfo"]["name"] == "echo"
        assert text(s.request(1, "tools/call", {"name": "echo", "arguments": {"text": "x"}})) == "x"
    finally:
        s.close()
    assert "(dual): the client speaks the legacy era" not in gw.log()


def test_a_malformed_initialize_decides_nothing_for_the_route(tmp_path: Path):
    """The SDK's server lists only 2026-07-28 in server/discover yet takes a legacy initialize. A
    client whose initialize it refuses for being malformed must not make the route bridge every
    later legacy client: it gets the server's own refusal, and the next client is passed through."""
    gateway = HttpGateway(tmp_path, {"sdk": {"command": sys.executable, "args": [str(SDK_SERVER)]}})
    try:
        bad = httpx.post(gateway.url("sdk"), headers=ACCEPT, timeout=30, json={
            "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": 7}})
        assert Session.messages(bad)[-1]["error"]["code"] == -32602, bad.text
        s = Session(gateway, "sdk", {})
        try:
            assert s.init["result"]["serverInfo"]["name"] == "sdk-fixture"
            assert s.request(1, "tools/list", {})["result"]["tools"]
        finally:
            s.close()
    finally:
        assert gateway.stop() == 0, gateway.log()
    assert "through the era bridge" not in gateway.log(), gateway.log()
