"""The era bridge's other half on the stdio front (`wire-gateway stdio --server NAME`,
proxy/stdio_era.py): a legacy client (initialize, one session) of a server that speaks only
2026-07-28 (fixtures/servers/modern_only.py). The gateway answers initialize from the server's
`server/discover`, sends each request stateless with the modern `_meta`, puts the server's
input-required results to the client as requests of its own, and carries resource subscriptions
on a `subscriptions/listen` stream (docs/bridge.md). Driven frame by frame over real pipes, and
with the official Python SDK's client in its legacy mode as a second real peer."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from gateway import LEGACY_INIT, PY, LineClient, fixture, write_config
from mcp import types
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from test_bridge_stdio import close, start

ASKING_INIT = {**LEGACY_INIT, "capabilities": {"elicitation": {}, "sampling": {}}}


def text(answer: Any) -> str:
    assert "result" in answer, answer
    return answer["result"]["content"][0]["text"]


def answer_asks(client: LineClient, req_id: Any, answers: dict[str, Any], timeout: float = 10.0,
                server: str = "one") -> Any:
    """Wait for the answer to `req_id`, answering the gateway's requests meanwhile by method."""
    while True:
        frame = client.recv(timeout)
        if frame.get("id") == req_id and "method" not in frame:
            return frame
        if "method" in frame and "id" in frame:
            assert frame["id"].startswith(f"wire-gateway/{server}/in-"), frame
            client.send({"jsonrpc": "2.0", "id": frame["id"], "result": answers[frame["method"]]})
        else:
            client.other.append(frame)


@pytest.mark.parametrize("era", ["auto", "modern"])
def test_a_legacy_client_of_a_modern_only_server_is_bridged(tmp_path: Path, era: str) -> None:
    client = start(tmp_path, {**fixture("modern_only"), "era": era})
    try:
        init = client.request("initialize", ASKING_INIT, req_id=0)["result"]
        assert init["serverInfo"]["name"] == "modern-only" and init["protocolVersion"] == "2025-11-25"
        assert init["capabilities"]["resources"] == {"subscribe": True, "listChanged": True}
        assert init["instructions"].startswith("A modern-only fixture")
        client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        tools = client.request("tools/list", {}, req_id=1)["result"]
        assert "ask_name" in [t["name"] for t in tools["tools"]]
        assert "resultType" not in tools and "ttlMs" not in tools and "cacheScope" not in tools
        echoed = client.call("echo", {"text": "hi"}, req_id=2)
        assert text(echoed) == "hi" and "resultType" not in echoed["result"]
        read = client.request("resources/read", {"uri": "echo://info"}, req_id=3)["result"]
        assert "modern-only" in read["contents"][0]["text"] and "ttlMs" not in read
        got = client.request("prompts/get", {"name": "greet", "arguments": {"name": "Ada"}}, req_id=4)
        assert "Ada" in got["result"]["messages"][0]["content"]["text"]
        done = client.request("completion/complete", {"ref": {"type": "ref/prompt", "name": "greet"},
                                                      "argument": {"name": "name", "value": "a"}}, req_id=5)
        assert done["result"]["completion"]["values"] == ["alpha", "beta"]
        assert client.request("ping", None, req_id=6)["result"] == {}
        # progress comes back under the client's own token
        client.other.clear()
        prog = client.request("tools/call", {"name": "progress", "arguments": {"steps": 2},
                                             "_meta": {"progressToken": "p"}}, req_id=7)
        assert text(prog) == "done"
        assert [m["params"]["progressToken"] for m in client.other if m.get("method") == "notifications/progress"] \
            == ["p", "p"]
        # input-required: one request to the client, then the retry with its answer and the state
        client.send({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                     "params": {"name": "ask_name", "arguments": {}}})
        asked = answer_asks(client, 8, {"elicitation/create": {"action": "accept", "content": {"name": "Ada"}}})
        assert text(asked) == "hello Ada"
        client.send({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                     "params": {"name": "two_rounds", "arguments": {}}})
        rounds = answer_asks(client, 9, {"elicitation/create": {"action": "accept", "content": {"name": "x"}}})
        assert text(rounds) == "x x"
        client.send({"jsonrpc": "2.0", "id": 10, "method": "tools/call",
                     "params": {"name": "ask_sample", "arguments": {}}})
        sampled = answer_asks(client, 10, {"sampling/createMessage": {
            "role": "assistant", "model": "m", "content": {"type": "text", "text": "hi there"}}})
        assert text(sampled) == "sampled: hi there"
        # logging/setLevel: the level rides on each request's _meta from then on
        assert client.call("log", {}, req_id=11)["result"]["content"][0]["text"] == "None"
        assert client.request("logging/setLevel", {"level": "debug"}, req_id=12)["result"] == {}
        client.other.clear()
        assert text(client.call("log", {}, req_id=13)) == "debug"
        assert [m["params"]["data"] for m in client.other if m.get("method") == "notifications/message"] == ["logged"]
        # resources/subscribe: a listen stream with resourceSubscriptions; updates reach the client
        assert client.request("resources/subscribe", {"uri": "echo://info"}, req_id=14)["result"] == {}
        client.other.clear()
        assert text(client.call("touch_resource", {"uri": "echo://info"}, req_id=15)) == "notified 1"
        updated = [m for m in client.other if m.get("method") == "notifications/resources/updated"]
        while not updated:
            frame = client.recv(10)
            if frame.get("method") == "notifications/resources/updated":
                updated.append(frame)
        assert updated[0]["params"] == {"uri": "echo://info"}
        assert client.request("resources/unsubscribe", {"uri": "echo://info"}, req_id=16)["result"] == {}
        assert text(client.call("touch_resource", {"uri": "echo://info"}, req_id=17)) == "notified 0"
        # list changes arrive as legacy notifications
        client.other.clear()
        assert text(client.call("touch_tools", {}, req_id=18)).startswith("notified")
        changed = [m for m in client.other if m.get("method") == "notifications/tools/list_changed"]
        while not changed:
            frame = client.recv(10)
            if frame.get("method") == "notifications/tools/list_changed":
                changed.append(frame)
        assert "params" not in changed[0] or "_meta" not in changed[0]["params"]
        # cancellation: the server's call is cancelled, no answer comes
        client.send({"jsonrpc": "2.0", "id": 19, "method": "tools/call", "params": {"name": "wait",
                                                                                     "arguments": {"seconds": 30}}})
        client.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 19}})
        assert text(client.call("echo", {"text": "after"}, req_id=20)) == "after"
    finally:
        log = close(client, tmp_path)
    assert "the client speaks the legacy era, the server only the modern one" in log


def test_input_required_hostile_paths(tmp_path: Path) -> None:
    client = start(tmp_path, {**fixture("modern_only"), "timeout": 3})
    try:
        client.request("initialize", {**LEGACY_INIT, "capabilities": {"elicitation": {}}}, req_id=0)
        client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        # a server that asks forever: bounded rounds, a clear error
        client.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "ask_forever",
                                                                                    "arguments": {}}})
        forever = answer_asks(client, 1, {"elicitation/create": {"action": "accept", "content": {"name": "x"}}})
        assert forever["error"]["code"] == -31005 and "8 times" in forever["error"]["message"], forever
        # a malformed input_required result
        bad = client.call("malformed", {}, req_id=2)
        assert bad["error"]["code"] == -31005 and "malformed" in bad["error"]["message"], bad
        # a capability the client did not declare: not asked, the call fails saying so
        sample = client.call("ask_sample", {}, req_id=3)
        assert sample["error"]["code"] == -31005 and "sampling capability" in sample["error"]["message"], sample
        # a client that never answers: the member's timeout, and the request is cancelled toward it
        client.send({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "ask_name",
                                                                                    "arguments": {}}})
        asked = client.recv(10)
        assert asked["method"] == "elicitation/create"
        frames = [client.recv(10), client.recv(10)]
        cancelled = [f for f in frames if f.get("method") == "notifications/cancelled"]
        assert cancelled and cancelled[0]["params"]["requestId"] == asked["id"], frames
        late = next(f for f in frames if f.get("id") == 4)
        assert late["error"]["code"] == -31002 and "did not answer elicitation/create within 3s" in \
            late["error"]["message"], late
        # an error answer from the client ends the call with it
        client.send({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "ask_name",
                                                                                    "arguments": {}}})
        asked = client.recv(10)
        client.send({"jsonrpc": "2.0", "id": asked["id"], "error": {"code": -1, "message": "user said no"}})
        refused = client.recv(10)
        assert refused["id"] == 5 and "user said no" in refused["error"]["message"], refused
    finally:
        close(client, tmp_path)


def test_a_client_that_can_be_asked_nothing(tmp_path: Path) -> None:
    """A legacy client that declared no capability: its calls and lists take the aggregate's fast
    path (direct.py), warm or not, in its own era; a member's question is refused as asks_legacy.py
    refuses it; a call with a progress token still gets its progress."""
    client = start(tmp_path, fixture("modern_only"))
    try:
        client.request("initialize", {**LEGACY_INIT, "capabilities": {}}, req_id=0)
        client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        for i in range(3):
            echoed = client.call("echo", {"text": f"plain {i}"}, req_id=f"e{i}")
            assert echoed["result"]["content"][0]["text"] == f"plain {i}", echoed
            assert "resultType" not in echoed["result"], echoed
            listed = client.request("tools/list", {}, req_id=f"l{i}")
            assert "echo" in [t["name"] for t in listed["result"]["tools"]], listed
            assert not {"resultType", "ttlMs", "cacheScope"} & set(listed["result"]), listed
        asked = client.call("ask_name", {}, req_id="a")
        assert asked["error"]["code"] == -31005 and "elicitation capability" in asked["error"]["message"], asked
        bad = client.call("malformed", {}, req_id="m")
        assert bad["error"]["code"] == -31005 and "malformed" in bad["error"]["message"], bad
        client.send({"jsonrpc": "2.0", "id": "p", "method": "tools/call",
                     "params": {"name": "progress", "arguments": {"steps": 2}, "_meta": {"progressToken": "tok"}}})
        seen = [client.recv(10) for _ in range(3)]
        assert [f["params"]["progressToken"] for f in seen if f.get("method") == "notifications/progress"] == \
            ["tok", "tok"], seen
        assert seen[-1]["id"] == "p" and seen[-1]["result"]["content"][0]["text"] == "done", seen
    finally:
        close(client, tmp_path)


def test_a_dual_era_server_stays_passed_through(tmp_path: Path) -> None:
    client = start(tmp_path, fixture("echo"))
    try:
        init = client.request("initialize", LEGACY_INIT, req_id=0)
        assert init["result"]["serverInfo"]["name"] == "echo"
        assert text(client.call("echo", {"text": "x"}, req_id=1)) == "x"
    finally:
        log = close(client, tmp_path)
    # no probe: the server accepted initialize
    assert "served through the era bridge" not in log and "server one: speaks the" not in log


@pytest.mark.filterwarnings("ignore:resources/subscribe is removed")    # the legacy call, on purpose
def test_the_sdk_client_in_the_legacy_mode_over_stdio(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"one": fixture("modern_only")})
    params = StdioServerParameters(command=PY, args=["-m", "wire_gateway", "stdio", "--config", str(config),
                                                     "--server", "one"])
    asked: list[str] = []
    updates: list[str] = []

    async def on_elicit(context: Any, p: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(p.message)
        return types.ElicitResult(action="accept", content={"name": "Alan"})

    async def on_sample(context: Any, p: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        return types.CreateMessageResult(role="assistant", model="m", content=types.TextContent(type="text",
                                                                                               text="hello"))

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updates.append(str(message.params.uri))

    async def main() -> None:
        with anyio.fail_after(60), (tmp_path / "sdk.err").open("w") as errlog:
            async with Client(stdio_client(params, errlog=errlog), mode="legacy", elicitation_callback=on_elicit,
                              sampling_callback=on_sample, message_handler=on_message) as client:
                assert (await client.call_tool("ask_name", {})).content[0].text == "hello Alan"
                assert (await client.call_tool("ask_sample", {})).content[0].text == "sampled: hello"
                assert (await client.call_tool("echo", {"text": "x"})).content[0].text == "x"
                names = [t.name for t in (await client.list_tools()).tools]
                assert "two_rounds" in names
                read = await client.read_resource("echo://info")
                assert "modern-only" in read.contents[0].text
                prompt = await client.get_prompt("greet", {"name": "Ada"})
                assert "Ada" in prompt.messages[0].content.text
                await client.subscribe_resource("echo://info")
                await client.call_tool("touch_resource", {"uri": "echo://info"})
                with anyio.fail_after(10):
                    while not updates:
                        await anyio.sleep(0.05)

    anyio.run(main)
    assert asked == ["What is your name?"]
    assert updates == ["echo://info"]


def test_the_aggregate_asks_a_legacy_client_for_a_modern_member(tmp_path: Path) -> None:
    """The same code serves the multi-server aggregate: a legacy client of `/mcp` (here `stdio`
    without `--server`) is asked for a modern member's input, and subscribes to its resources."""
    config = write_config(tmp_path, {"new": fixture("modern_only"), "old": fixture("legacy_echo")})
    client = LineClient([PY, "-m", "wire_gateway", "stdio", "--config", str(config), "--log-level", "debug"],
                        log_path=tmp_path / "gateway.log")
    try:
        assert "serverInfo" in client.request("initialize", ASKING_INIT, req_id=0, timeout=20)["result"]
        client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        client.send({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                     "params": {"name": "new__ask_name", "arguments": {}}})
        asked = answer_asks(client, 1, {"elicitation/create": {"action": "accept", "content": {"name": "Ada"}}},
                            server="new")
        assert text(asked) == "hello Ada"
        assert client.request("resources/subscribe", {"uri": "echo://info"}, req_id=2)["result"] == {}
        assert text(client.call("new__touch_resource", {"uri": "echo://info"}, req_id=3)) == "notified 1"
    finally:
        close(client, tmp_path)
