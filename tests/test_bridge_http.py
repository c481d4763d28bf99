"""The era bridge on `/mcp/{server}`: modern (2026-07-28) clients of servers that speak only the
legacy era, served through a shared legacy session, and a session of its own for each call the
server could ask something (proxy/era_bridge.py, proxy/aggregate/sessions.py, docs/bridge.md).

Real peers on 127.0.0.1: `wire-gateway serve` in front of the legacy-only echo fixture over stdio
(probed, `era` auto, and pinned, `era: legacy`), the HTTP echo fixture with `--legacy-only`, and the
dual-era echo fixture for the passthrough that must stay as it was. The modern side is driven with
raw JSON-RPC over httpx (every byte visible) and with the official SDK's client in its 2026-07-28
mode, which answers input-required results itself.
"""
from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from gateway import LEGACY_INIT, MODERN_META, PY, fixture
from http_gateway import HttpGateway
from mcp import types
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from test_http_upstream import HTTP_ECHO, Upstream, closed_port

CAPS_KEY = "io.modelcontextprotocol/clientCapabilities"
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
ELICIT_META = {**MODERN_META, CAPS_KEY: {"elicitation": {}}}
ROUTES = ["old", "pinned", "oldhttp"]
SERVER_LOG: list[Path] = []      # what the "old" server received (its --log)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("bridge-http")
    port_file = tmp_path / "oldhttp.port"
    remote = Upstream([PY, str(HTTP_ECHO), "--port", "0", "--port-file", str(port_file), "--legacy-only"],
                      port_file, tmp_path / "oldhttp.log")
    gateway = None
    try:
        gateway = HttpGateway(tmp_path, {
            "old": fixture("legacy_echo", "--log", str(tmp_path / "old.jsonl")),
            "pinned": {**fixture("legacy_echo"), "era": "legacy"},
            "shared": {**fixture("legacy_echo"), "era": "legacy", "bridge_sessions": 0},
            "one": {**fixture("legacy_echo"), "era": "legacy", "bridge_sessions": 1},
            "oldhttp": {"url": remote.url}, "echo": fixture("echo"),
            "down": {"url": f"http://127.0.0.1:{closed_port()}/mcp", "timeout": 2}},
            http={"keepalive_interval": 0.5})
        SERVER_LOG.append(tmp_path / "old.jsonl")
        yield gateway
    finally:
        try:
            if gateway is not None:
                assert gateway.stop() == 0, gateway.log()
                assert "Traceback" not in gateway.log(), gateway.log()
                assert " ERROR " not in gateway.log(), gateway.log()
        finally:
            remote.stop()


def post(gw: HttpGateway, route: str, req_id: Any, method: str, params: Any = None,
         headers: dict[str, str] | None = None) -> httpx.Response:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": req_id, "method": method}
    if params is not None:
        body["params"] = params
    h = {**ACCEPT, "mcp-protocol-version": "2026-07-28", "mcp-method": method, **(headers or {})}
    if isinstance(params, dict):
        name = params.get("name") if method != "resources/read" else params.get("uri")
        if isinstance(name, str):
            h["mcp-name"] = name
    return httpx.post(gw.url(route), content=json.dumps(body), headers=h, timeout=20)


def events(resp: httpx.Response) -> list[dict[str, Any]]:
    """The messages of an answer, whether a JSON body or an SSE stream."""
    if resp.headers["content-type"].startswith("application/json"):
        return [resp.json()]
    return [json.loads(line[5:]) for line in resp.text.splitlines() if line.startswith("data:")]


def result(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    answer = events(resp)[-1]
    assert "result" in answer, answer
    return answer["result"]


def text(res: dict[str, Any]) -> str:
    return res["content"][0]["text"]


@pytest.mark.parametrize("route", ["old", "pinned"])
def test_discover_is_the_servers_own_initialize_answer(gw, route):
    res = result(post(gw, route, "d1", "server/discover", {"_meta": MODERN_META}))
    assert res["resultType"] == "complete"
    assert res["supportedVersions"][0] == "2026-07-28" and "2025-11-25" in res["supportedVersions"]
    assert res["_meta"]["io.modelcontextprotocol/serverInfo"] == {"name": "legacy-echo", "version": "1.0.0"}
    assert res["capabilities"] == {"tools": {"listChanged": True}, "resources": {"subscribe": True}, "prompts": {},
                                   "logging": {}, "completions": {}}
    assert res["instructions"].startswith("A legacy-only echo server")
    assert res["ttlMs"] == 0 and res["cacheScope"] == "private"     # the cache hints every discover has


def test_discover_of_a_legacy_http_server(gw):
    res = result(post(gw, "oldhttp", 1, "server/discover", {"_meta": MODERN_META}))
    assert res["resultType"] == "complete" and "2026-07-28" in res["supportedVersions"]
    assert "tools" in res["capabilities"]


@pytest.mark.parametrize("route", ROUTES)
def test_tools_with_their_own_names_and_modern_results(gw, route):
    listed = result(post(gw, route, 2, "tools/list", {"_meta": MODERN_META}))
    names = [t["name"] for t in listed["tools"]]
    assert "echo" in names and not any("__" in n for n in names)      # no aggregate prefixes
    assert listed["resultType"] == "complete" and listed["ttlMs"] == 0 and listed["cacheScope"] == "private"
    called = result(post(gw, route, 3, "tools/call", {"name": "echo", "arguments": {"text": "across eras"},
                                                      "_meta": MODERN_META}))
    assert text(called) == "across eras" and called["resultType"] == "complete"


@pytest.mark.parametrize("method", ["tools/list", "prompts/list", "resources/list", "resources/templates/list"])
def test_every_list_carries_the_modern_fields_warm_or_not(gw, method):
    """The first requests of a route take the general path, the later ones the fast one (direct.py):
    the client cannot tell them apart."""
    key = method.split("/")[0] if method != "resources/templates/list" else "resourceTemplates"
    answers = [result(post(gw, "pinned", f"l{i}", method, {"_meta": MODERN_META})) for i in range(3)]
    for res in answers:
        assert (res["resultType"], res["ttlMs"], res["cacheScope"]) == ("complete", 0, "private"), res
        assert res[key] == answers[0][key]


def test_the_legacy_server_gets_no_modern_meta(gw):
    res = result(post(gw, "old", 4, "tools/call", {"name": "meta", "arguments": {},
                                                    "_meta": {**MODERN_META, "custom/key": 1}}))
    assert text(res) == "custom/key"       # the io.modelcontextprotocol/* envelope stripped, the rest kept


@pytest.mark.parametrize("route", ["old", "oldhttp"])
def test_resources_and_prompts(gw, route):
    uri = "echo://info" if route == "old" else "http-echo://info"
    listed = result(post(gw, route, 5, "resources/list", {"_meta": MODERN_META}))
    assert [r["uri"] for r in listed["resources"]] == [uri] and listed["ttlMs"] == 0
    read = result(post(gw, route, 6, "resources/read", {"uri": uri, "_meta": MODERN_META}))
    assert read["contents"][0]["uri"] == uri and read["resultType"] == "complete" and "cacheScope" in read
    prompts = result(post(gw, route, 7, "prompts/list", {"_meta": MODERN_META}))
    assert [p["name"] for p in prompts["prompts"]] == ["greet"]
    got = result(post(gw, route, 8, "prompts/get", {"name": "greet", "arguments": {"name": "Ada"},
                                                    "_meta": MODERN_META}))
    assert "Ada" in got["messages"][0]["content"]["text"] and got["resultType"] == "complete"


def test_a_missing_resource_is_invalid_params_in_the_modern_era(gw):
    resp = post(gw, "old", 9, "resources/read", {"uri": "echo://nowhere", "_meta": MODERN_META})
    error = resp.json()["error"]
    assert error["code"] == -32602 and "nowhere" in error["message"], error     # legacy -32002, 2026-07-28 -32602


def test_completion(gw):
    res = result(post(gw, "old", 10, "completion/complete", {
        "ref": {"type": "ref/prompt", "name": "greet"}, "argument": {"name": "name", "value": "A"},
        "_meta": MODERN_META}))
    assert res["completion"]["values"] == ["Ada", "Alan"] and res["resultType"] == "complete"


def test_progress_comes_back_under_the_clients_token(gw):
    resp = post(gw, "old", 11, "tools/call", {"name": "progress", "arguments": {"steps": 3},
                                              "_meta": {**MODERN_META, "progressToken": "mine"}})
    got = events(resp)
    progress = [m for m in got if m.get("method") == "notifications/progress"]
    assert [p["params"]["progressToken"] for p in progress] == ["mine"] * 3
    assert text(got[-1]["result"]) == "done" and got[-1]["id"] == 11


def test_closing_the_stream_cancels_the_call_on_the_server(gw):
    body = {"jsonrpc": "2.0", "id": 12, "method": "tools/call",
            "params": {"name": "wait", "arguments": {"seconds": 30}, "_meta": {**MODERN_META, "progressToken": 1}}}
    h = {**ACCEPT, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "wait"}
    with httpx.Client(timeout=10) as client, client.stream("POST", gw.url("old"), content=json.dumps(body),
                                                           headers=h) as resp:
        for line in resp.iter_lines():
            if line.startswith("data:"):      # the progress notification: the call is running
                break
    for _ in range(100):
        if "client closed its stream; cancelled request 12" in gw.log():
            break
        time.sleep(0.05)
    assert "client closed its stream; cancelled request 12" in gw.log()
    for _ in range(100):      # the server was told, under the id the bridge gave the call
        cancelled = [json.loads(line) for line in SERVER_LOG[-1].read_text().splitlines() if '"cancelled"' in line]
        if cancelled:
            break
        time.sleep(0.05)
    assert str(cancelled[-1]["cancelled"]).startswith("agg-")
    # the shared session still serves
    assert text(result(post(gw, "old", 13, "tools/call", {"name": "echo", "arguments": {"text": "still"},
                                                           "_meta": MODERN_META}))) == "still"


# ---- input-required: the server's requests during a call ------------------------------------

def ask(gw: HttpGateway, req_id: Any, message: str = "who are you?", meta: dict | None = None,
        route: str = "old", **retry: Any) -> httpx.Response:
    return post(gw, route, req_id, "tools/call", {"name": "ask", "arguments": {"message": message},
                                                  "_meta": meta or ELICIT_META, **retry})


def test_each_asking_call_has_a_session_of_its_own(gw):
    """Two clients' calls waiting for their input at once: each is asked its own question and each
    retry ends its own call (a shared session could not tell whose question was whose)."""
    first = result(ask(gw, 60, "first?"))
    second = result(ask(gw, 61, "second?"))       # the first still waits for its input meanwhile
    for res, message in ((first, "first?"), (second, "second?")):
        assert res["resultType"] == "input_required", res
        (request,) = res["inputRequests"].values()
        assert request["params"]["message"] == message
    for res, name, req_id in ((second, "Bob", 62), (first, "Ann", 63)):
        (key,) = res["inputRequests"]
        done = result(ask(gw, req_id, "first?" if name == "Ann" else "second?", requestState=res["requestState"],
                          inputResponses={key: {"action": "accept", "content": {"name": name}}}))
        assert text(done) == f'accept: {{"name": "{name}"}}'
    # roots are a session's state: that session is closed, not given to the next call
    roots = result(post(gw, "old", 64, "tools/call", {"name": "roots", "arguments": {},
                                                       "_meta": {**MODERN_META, CAPS_KEY: {"roots": {}}}}))
    (key,) = roots["inputRequests"]
    done = result(post(gw, "old", 65, "tools/call", {
        "name": "roots", "arguments": {}, "_meta": {**MODERN_META, CAPS_KEY: {"roots": {}}},
        "requestState": roots["requestState"], "inputResponses": {key: {"roots": [{"uri": "file:///a"}]}}}))
    assert text(done) == "file:///a"
    assert "opened legacy session 2 of 16 with old" in gw.log()


def test_the_pool_reuses_a_session_closes_it_after_roots_and_shares_beyond_its_bound(gw):
    """`bridge_sessions: 1`: the first asking call takes the one session; the next runs on the shared
    session (asked there, as the only asking call on it); a third is refused (two on the shared
    session). The session is reused by the next call, and closed after one that was asked for roots."""
    opened = "opened legacy session 1 of 1 with one"
    a = result(ask(gw, 80, "a?", route="one"))
    assert gw.log().count(opened) == 1
    b = result(ask(gw, 81, "b?", route="one"))
    c = result(ask(gw, 82, "c?", route="one"))
    assert a["resultType"] == "input_required" and b["resultType"] == "input_required", (a, b)
    assert c["resultType"] == "complete" and "cannot tell which of 2 calls" in text(c)
    for res, req_id, message in ((a, 83, "a?"), (b, 84, "b?")):
        (key,) = res["inputRequests"]
        done = result(ask(gw, req_id, message, route="one", requestState=res["requestState"],
                          inputResponses={key: {"action": "decline"}}))
        assert text(done) == "decline: null"
    roots_meta = {**MODERN_META, CAPS_KEY: {"roots": {}}}
    roots = result(post(gw, "one", 85, "tools/call", {"name": "roots", "arguments": {}, "_meta": roots_meta}))
    (key,) = roots["inputRequests"]
    result(post(gw, "one", 86, "tools/call", {"name": "roots", "arguments": {}, "_meta": roots_meta,
                                              "requestState": roots["requestState"],
                                              "inputResponses": {key: {"roots": []}}}))
    assert gw.log().count(opened) == 1          # a's session, reused
    d = result(ask(gw, 87, "d?", route="one"))
    assert d["resultType"] == "input_required"
    assert gw.log().count(opened) == 2          # the roots call's session was closed: a new one
    (key,) = d["inputRequests"]
    result(ask(gw, 88, "d?", route="one", requestState=d["requestState"], inputResponses={key: {"action": "decline"}}))


def test_a_url_server_gives_an_asking_call_a_session_of_its_own(gw):
    """A url server's extra session is another Mcp-Session-Id, opened with the same initialize."""
    for req_id in (110, 111):     # the second reuses the first's session
        res = result(post(gw, "oldhttp", req_id, "tools/call",
                          {"name": "echo", "arguments": {"text": "own"}, "_meta": ELICIT_META}))
        assert text(res) == "own" and res["resultType"] == "complete"
    assert gw.log().count("opened legacy session 1 of 16 with oldhttp") == 1


def test_the_aggregate_gives_asking_calls_sessions_of_their_own_too(gw):
    """/mcp, the modern aggregate every modern client shares: a legacy member's questions during two
    calls in flight at once each reach their own call."""
    def call(req_id: int, message: str, **retry: Any) -> dict[str, Any]:
        body = {"jsonrpc": "2.0", "id": req_id, "method": "tools/call",
                "params": {"name": "old__ask", "arguments": {"message": message}, "_meta": ELICIT_META, **retry}}
        h = {**ACCEPT, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "old__ask"}
        return result(httpx.post(f"{gw.base}/mcp", content=json.dumps(body), headers=h, timeout=20))

    first, second = call(100, "one?"), call(101, "two?")
    for res, message, req_id in ((second, "two?", 102), (first, "one?", 103)):
        assert res["resultType"] == "input_required", res
        (key, request), = res["inputRequests"].items()
        assert request["params"]["message"] == message
        done = call(req_id, message, requestState=res["requestState"],
                    inputResponses={key: {"action": "accept", "content": {"name": message}}})
        assert text(done) == f'accept: {{"name": "{message}"}}'


class SdkPeer:
    """What the SDK's client answers a server's questions with, and what it saw."""

    def __init__(self, name: str = "Edsger", sampled: str = "sampled") -> None:
        self.name, self.sampled = name, sampled
        self.asked: list[str] = []
        self.progress: list[float] = []

    async def on_elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": self.name})

    async def on_sample(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.asked.append(params.messages[0].content.text)
        return types.CreateMessageResult(role="assistant", model="fixture-llm",
                                         content=types.TextContent(type="text", text=self.sampled))

    async def on_progress(self, done: float, total: float | None, message: str | None) -> None:
        self.progress.append(done)


def test_the_sdk_client_in_the_modern_mode_through_the_aggregate(gw):
    """/mcp with the SDK in its 2026-07-28 mode: the legacy members' tools under their prefixes,
    their questions (an elicitation, a sampling request) as input-required results the SDK answers,
    progress under the SDK's token, a dual-era member beside them."""
    peer = SdkPeer()

    async def main() -> None:
        with anyio.fail_after(30):
            async with Client(streamable_http_client(f"{gw.base}/mcp"), mode="2026-07-28",
                              elicitation_callback=peer.on_elicit, sampling_callback=peer.on_sample) as client:
                names: set[str] = set()
                cursor = None
                for _ in range(20):           # every page (the aggregate pages by member)
                    page = await client.list_tools(cursor=cursor)
                    names |= {t.name for t in page.tools}
                    cursor = page.next_cursor
                    if not cursor:
                        break
                assert {"old__ask", "old__sample", "pinned__echo", "echo__echo"} <= names, names
                asked_answer = await client.call_tool("old__ask", {"message": "who?"})
                assert asked_answer.content[0].text == 'accept: {"name": "Edsger"}', asked_answer
                sampled = await client.call_tool("pinned__sample", {"prompt": "hum"})
                assert sampled.content[0].text == "sampled", sampled
                stepped = await client.call_tool("old__progress", {"steps": 2}, progress_callback=peer.on_progress)
                assert stepped.content[0].text == "done" and peer.progress == [1, 2], peer.progress
                assert (await client.call_tool("echo__echo", {"text": "dual"})).content[0].text == "dual"

    anyio.run(main)
    assert peer.asked == ["who?", "hum"]


def test_without_sessions_of_their_own_a_second_asking_call_is_refused(gw):
    """`bridge_sessions: 0`: every call shares the route's session, and a question arriving while two
    calls could be asked is refused rather than guessed (the shared session's rule)."""
    first = result(ask(gw, 70, "first?", route="shared"))
    assert first["resultType"] == "input_required"
    second = result(ask(gw, 71, "second?", route="shared"))
    assert second["resultType"] == "complete" and second["isError"]
    assert "cannot tell which of 2 calls" in text(second)
    (key,) = first["inputRequests"]
    done = result(ask(gw, 72, "first?", route="shared", requestState=first["requestState"],
                      inputResponses={key: {"action": "decline"}}))
    assert text(done) == "decline: null"


def test_an_elicitation_becomes_input_required_and_the_retry_continues_the_call(gw):
    first = result(ask(gw, 20))
    assert first["resultType"] == "input_required"
    (key, request), = first["inputRequests"].items()
    assert request["method"] == "elicitation/create" and request["params"]["message"] == "who are you?"
    assert isinstance(first["requestState"], str) and "ttlMs" not in first
    done = result(ask(gw, 21, requestState=first["requestState"],
                      inputResponses={key: {"action": "accept", "content": {"name": "Ada"}}}))
    assert done["resultType"] == "complete" and text(done) == 'accept: {"name": "Ada"}'
    # a state is good for one retry: the call it named is over
    again = ask(gw, 22, requestState=first["requestState"],
                inputResponses={key: {"action": "accept", "content": {"name": "Eve"}}}).json()
    assert again["error"]["code"] == -32602 and "no waiting request" in again["error"]["message"]


def test_a_retry_without_the_answer_is_asked_again(gw):
    first = result(ask(gw, 23))
    (key, _), = first["inputRequests"].items()
    second = result(ask(gw, 24, requestState=first["requestState"], inputResponses={}))
    assert second["resultType"] == "input_required" and list(second["inputRequests"]) == [key]
    done = result(ask(gw, 25, requestState=second["requestState"],
                      inputResponses={key: {"action": "decline"}}))
    assert text(done) == "decline: null"


@pytest.mark.parametrize("tamper", ["payload", "mac", "garbage", "other-call"])
def test_a_tampered_request_state_is_refused(gw, tamper):
    first = result(ask(gw, 30))
    (key, _), = first["inputRequests"].items()
    state: str = first["requestState"]
    head, mac = state.split(".")
    message = "who are you?"
    if tamper == "payload":      # another key, the MAC kept
        payload = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
        payload["k"] = "1"
        state = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=") + "." + mac
    elif tamper == "mac":
        state = head + "." + ("A" if mac[0] != "A" else "B") + mac[1:]
    elif tamper == "garbage":
        state = "not-a-state"
    else:                        # a real state, presented with another request's params
        message = "someone else?"
    resp = ask(gw, 31, message=message, requestState=state,
               inputResponses={key: {"action": "accept", "content": {"name": "Mallory"}}})
    error = resp.json()["error"]
    assert error["code"] == -32602 and "requestState" in error["message"], error
    # the genuine retry still works: a refused state does not end the call it names
    done = result(ask(gw, 32, requestState=first["requestState"],
                      inputResponses={key: {"action": "accept", "content": {"name": "Ada"}}}))
    assert text(done) == 'accept: {"name": "Ada"}'


def test_a_client_without_the_capability_is_not_asked(gw):
    """It gets -32021 (MissingRequiredClientCapabilityError, HTTP 400) instead (test_bridge_stateless.py)."""
    resp = ask(gw, 40, meta=MODERN_META)
    assert resp.status_code == 400, resp.text
    assert not [m for m in events(resp) if m.get("method") == "elicitation/create"]
    error = events(resp)[-1]["error"]
    assert error["code"] == -32021 and error["data"]["requiredCapabilities"] == {"elicitation": {}}


def test_the_sdk_client_in_the_modern_mode_answers_the_elicitation(gw):
    asked: list[str] = []

    async def on_elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Grace"})

    async def main() -> None:
        with anyio.fail_after(30):
            async with Client(streamable_http_client(gw.url("old")), mode="2026-07-28",
                              elicitation_callback=on_elicit) as client:
                tools = await client.list_tools()
                assert "ask" in [t.name for t in tools.tools]
                answer = await client.call_tool("ask", {"message": "your name?"})
                assert answer.content[0].text == 'accept: {"name": "Grace"}'
                echoed = await client.call_tool("echo", {"text": "sdk"})
                assert echoed.content[0].text == "sdk"
                prompt = await client.get_prompt("greet", {"name": "Ada"})
                assert "Ada" in prompt.messages[0].content.text

    anyio.run(main)
    assert asked == ["your name?"]


def test_the_sdk_client_in_the_modern_mode_samples_completes_follows_progress_and_cancels(gw):
    """The rest of what a modern client does with a legacy server, through the bridge with the SDK:
    a sampling request during a tool call (an input-required result the SDK answers), completion,
    progress under the SDK's own token, and a call cancelled by the SDK (the server is told)."""
    peer = SdkPeer(sampled="sampled by the sdk")

    async def main() -> None:
        with anyio.fail_after(30):
            async with Client(streamable_http_client(gw.url("old")), mode="2026-07-28",
                              sampling_callback=peer.on_sample) as client:
                answer = await client.call_tool("sample", {"prompt": "say something"})
                assert answer.content[0].text == "sampled by the sdk", answer
                done = await client.complete(types.PromptReference(type="ref/prompt", name="greet"),
                                             {"name": "name", "value": "A"})
                assert done.completion.values == ["Ada", "Alan"], done
                stepped = await client.call_tool("progress", {"steps": 3}, progress_callback=peer.on_progress)
                assert stepped.content[0].text == "done" and peer.progress == [1, 2, 3], peer.progress
                with anyio.move_on_after(1):          # the SDK gives up on a long call: its stream closes
                    await client.call_tool("wait", {"seconds": 30})
                echoed = await client.call_tool("echo", {"text": "after the cancel"})
                assert echoed.content[0].text == "after the cancel"

    def cancels() -> int:
        return SERVER_LOG[-1].read_text().count('"cancelled"') if SERVER_LOG[-1].exists() else 0

    before = cancels()
    anyio.run(main)
    assert peer.asked == ["say something"]
    for _ in range(100):      # the server was told the call is off
        if cancels() > before:
            break
        time.sleep(0.05)
    assert cancels() > before


# ---- resource subscriptions: subscriptions/listen -> resources/subscribe ---------------------

def test_resource_subscriptions_are_carried_to_the_legacy_session(gw):
    """Two listen streams name the same URI: one resources/subscribe on the shared session, each
    stream gets the server's update with its own subscriptionId, and the last one to close
    unsubscribes; what is no URI is left out of the acknowledgement."""
    h = {**ACCEPT, "mcp-protocol-version": "2026-07-28", "mcp-method": "subscriptions/listen"}

    def listen(req_id: int, uris: list[str]) -> tuple[Any, Any, Any]:
        body = {"jsonrpc": "2.0", "id": req_id, "method": "subscriptions/listen",
                "params": {"notifications": {"resourceSubscriptions": uris}, "_meta": MODERN_META}}
        client = httpx.Client(timeout=10)
        cm = client.stream("POST", gw.url("old"), content=json.dumps(body), headers=h)
        resp = cm.__enter__()
        return client, cm, resp.iter_lines()

    def next_message(lines: Any) -> dict[str, Any]:
        for line in lines:
            if line.startswith("data:"):
                return json.loads(line[5:])
        raise AssertionError("the stream ended")

    log = SERVER_LOG[-1]
    streams = [listen(90, ["echo://info"]), listen(91, ["echo://info", 42])]
    try:
        for (_, _, lines), req_id in zip(streams, (90, 91), strict=True):
            ack = next_message(lines)
            assert ack["method"] == "notifications/subscriptions/acknowledged", ack
            assert ack["params"]["notifications"] == {"resourceSubscriptions": ["echo://info"]}
            assert ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == req_id
        subscribes = [json.loads(x) for x in log.read_text().splitlines() if '"subscribe"' in x]
        assert subscribes == [{"subscribe": "echo://info"}]
        touched = result(post(gw, "old", 92, "tools/call", {"name": "touch_resource", "arguments": {
            "uri": "echo://info"}, "_meta": MODERN_META}))
        assert text(touched) == "touched"
        for (_, _, lines), req_id in zip(streams, (90, 91), strict=True):
            update = next_message(lines)
            assert update["method"] == "notifications/resources/updated" and update["params"]["uri"] == "echo://info"
            assert update["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"] == req_id
        client, cm, _ = streams.pop(0)
        cm.__exit__(None, None, None)
        client.close()
        time.sleep(0.3)
        assert '"unsubscribe"' not in log.read_text()     # the other stream still wants it
    finally:
        for client, cm, _ in streams:
            cm.__exit__(None, None, None)
            client.close()
    for _ in range(100):
        if '"unsubscribe"' in log.read_text():
            break
        time.sleep(0.05)
    assert [json.loads(x) for x in log.read_text().splitlines() if '"unsubscribe"' in x] == \
        [{"unsubscribe": "echo://info"}]


# ---- what must not change ---------------------------------------------------------------------

def test_a_legacy_client_of_the_legacy_server_is_still_passed_through(gw):
    h = {**ACCEPT}
    init = httpx.post(gw.url("old"), headers=h, timeout=10,
                      json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": LEGACY_INIT})
    assert init.status_code == 200, init.text
    sid = init.headers["mcp-session-id"]
    res = events(init)[-1]["result"]
    assert res["serverInfo"]["name"] == "legacy-echo" and "resultType" not in res
    h["mcp-session-id"] = sid
    httpx.post(gw.url("old"), headers=h, timeout=10, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    called = events(httpx.post(gw.url("old"), headers=h, timeout=10, json={
        "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}))
    assert called[-1] == {"jsonrpc": "2.0", "id": 2, "result": {"content": [{"type": "text", "text": "x"}],
                                                               "isError": False}}
    httpx.delete(gw.url("old"), headers=h, timeout=10)


def test_a_modern_server_is_still_passed_through_byte_for_byte(gw):
    body = (b'{"jsonrpc":"2.0","id":  -0,"method":"tools/call","params":{"name":"echo",'
            b'"arguments":{"text":"as is"},"_meta":' + json.dumps(MODERN_META).encode() + b"}}")
    h = {**ACCEPT, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "echo"}
    resp = httpx.post(gw.url("echo"), content=body, headers=h, timeout=10)
    assert resp.status_code == 200
    # the server's own bytes, with the id as the client wrote it: nothing the bridge adds
    assert resp.content == (b'{"jsonrpc":"2.0","id":-0,"result":{"content":[{"type":"text","text":"as is"}],'
                            b'"isError":false,"resultType":"complete"}}')
    assert "server echo: modern clients are served through the era bridge" not in gw.log()


@pytest.mark.parametrize("route", ROUTES)
def test_a_modern_request_without_its_meta_is_still_400_invalid_params(gw, route):
    resp = post(gw, route, 50, "tools/list", {})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == -32602
    resp = post(gw, route, 51, "initialize", {"_meta": MODERN_META})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == -32601


@pytest.mark.parametrize("route", ROUTES)
def test_an_unsupported_version_is_refused_for_the_legacy_server(gw, route):
    """The legacy server cannot say so itself: the bridge, as the modern server, refuses it (-32022),
    for a call of the fast path too (the second, once the route is warm)."""
    meta = {**MODERN_META, "io.modelcontextprotocol/protocolVersion": "2099-01-01"}
    for attempt in (70, 71):
        resp = post(gw, route, attempt, "tools/call", {"name": "echo", "arguments": {"text": "x"}, "_meta": meta},
                    headers={"mcp-protocol-version": "2099-01-01"})
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["code"] == -32022 and "2026-07-28" in error["data"]["supported"], error


def test_a_server_the_probe_cannot_reach_is_not_taken_for_a_legacy_one(gw):
    for attempt in (60, 61):        # each request probes again, and gets the failure itself
        resp = post(gw, "down", attempt, "tools/list", {"_meta": MODERN_META})
        error = resp.json()["error"]
        assert resp.json()["id"] == attempt and error["code"] == -31002, error
    assert "server down: could not tell its era" in gw.log()
    assert "server down: modern clients are served through the era bridge" not in gw.log()
