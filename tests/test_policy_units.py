"""Each interceptor alone, and the chain's order, without sockets or processes."""
from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from wire_gateway.policy.cache import Generations, ListCache, ResultCache, invalidate
from wire_gateway.policy.chain import Call, Chain, Interceptor, Reply
from wire_gateway.policy.filter import ToolFilter
from wire_gateway.policy.pinning import PinBook, Pinning, tool_hash
from wire_gateway.policy.schema import SchemaGuard
from wire_gateway.policy.tools import ToolIndex
from wire_gateway.store.memory import MemoryStore
from wire_gateway.wire import errors, jsonfast
from wire_gateway.wire.frame import Frame, decode

pytestmark = pytest.mark.anyio


def request(method: str, params: dict | None = None, req_id: Any = 1) -> Frame:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": req_id, "method": method}
    if params is not None:
        msg["params"] = params
    frame = decode(json.dumps(msg).encode())
    assert isinstance(frame, Frame)
    return frame


def call(method: str, params: dict | None = None, req_id: Any = 1, auth: str = "", version: str = "v") -> Call:
    return Call("srv", request(method, params, req_id), auth, version)


def answer(result: Any, req_id: Any = 1) -> Reply:
    frame = decode(json.dumps({"jsonrpc": "2.0", "id": req_id, "result": result}).encode())
    assert isinstance(frame, Frame)
    return Reply.of(frame)


def tool(name: str, description: str = "d", **extra: Any) -> dict[str, Any]:
    return {"name": name, "description": description, "inputSchema": {"type": "object"}, **extra}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- filter ---------------------------------------------------------------------------------------

def test_filter_globs_deny_wins():
    f = ToolFilter(allow=("read_*", "search"), deny=("read_secret*",))
    assert f.allowed("read_file") and f.allowed("search")
    assert not f.allowed("read_secrets") and not f.allowed("write_file") and not f.allowed("searchx")
    assert ToolFilter(deny=("admin_*",)).allowed("anything")


async def test_filter_refuses_a_hidden_tool_as_unknown():
    f = ToolFilter(deny=("admin_*",))
    reply = await f.on_request(call("tools/call", {"name": "admin_delete", "arguments": {}}, req_id="x"))
    assert reply is not None and reply.gateway
    assert reply.msg["id"] == "x"
    assert reply.msg["error"]["code"] == errors.INVALID_PARAMS
    assert reply.msg["error"]["message"] == "Unknown tool: admin_delete"
    assert await f.on_request(call("tools/call", {"name": "echo"})) is None
    assert await f.on_request(call("tools/list")) is None


async def test_filter_removes_hidden_tools_and_keeps_untouched_answers_byte_exact():
    f = ToolFilter(deny=("admin_*",))
    page = answer({"tools": [tool("echo"), tool("admin_x")], "nextCursor": "2"})
    out = await f.on_response(call("tools/list"), page)
    assert [t["name"] for t in out.msg["result"]["tools"]] == ["echo"]
    assert out.msg["result"]["nextCursor"] == "2" and out.raw is None and out.note == "filter"
    assert out.frame().note == "filter" and json.loads(out.frame().raw)["result"]["tools"][0]["name"] == "echo"
    clean = answer({"tools": [tool("echo")]})
    assert (await f.on_response(call("tools/list"), clean)).raw is clean.raw
    empty = await f.on_response(call("tools/list"), answer({"tools": [tool("admin_only")]}))
    assert empty.msg["result"]["tools"] == []


# ---- pinning --------------------------------------------------------------------------------------

def test_tool_hash_covers_the_definition_not_other_fields():
    base = tool("echo")
    assert tool_hash(base) == tool_hash({**base, "title": "ignored", "icons": []})
    for change in ({"description": "other"}, {"inputSchema": {"type": "object", "properties": {}}},
                   {"outputSchema": {"type": "object"}}, {"annotations": {"readOnlyHint": True}}):
        assert tool_hash({**base, **change}) != tool_hash(base)


async def test_pinning_quarantines_a_changed_tool_until_approved(caplog):
    book = PinBook(MemoryStore())
    pin = Pinning("srv", book, "enforce")
    first = answer({"tools": [tool("echo"), tool("add")]})
    assert (await pin.on_response(call("tools/list"), first)).raw is first.raw   # first sighting: pinned
    assert (await pin.on_response(call("tools/list"), answer({"tools": [tool("echo"), tool("add")]}))).raw
    with caplog.at_level(logging.WARNING, "wire_gateway.policy.pinning"):
        changed = await pin.on_response(call("tools/list"), answer({"tools": [tool("echo", "evil"), tool("add")]}))
    assert [t["name"] for t in changed.msg["result"]["tools"]] == ["add"] and changed.note == "pinning"
    assert "wire-gateway tools approve srv echo" in caplog.text
    refused = await pin.on_request(call("tools/call", {"name": "echo", "arguments": {}}, req_id=9))
    assert refused is not None and refused.msg["id"] == 9
    assert refused.msg["error"]["code"] == errors.TOOL_QUARANTINED
    assert "wire-gateway tools approve srv echo" in refused.msg["error"]["message"]
    assert await pin.on_request(call("tools/call", {"name": "add"})) is None
    (record,) = await book.quarantine_list("srv")
    assert record["tool"] == "echo" and record["description"] == "evil"
    assert await book.approve("srv", "echo") == record
    assert await book.approve("srv", "echo") is None
    assert await pin.on_request(call("tools/call", {"name": "echo"})) is None
    again = await pin.on_response(call("tools/list"), answer({"tools": [tool("echo", "evil"), tool("add")]}))
    assert [t["name"] for t in again.msg["result"]["tools"]] == ["echo", "add"]


async def test_pinning_warn_mode_keeps_the_tool_and_logs(caplog):
    pin = Pinning("srv", PinBook(MemoryStore()), "warn")
    await pin.on_response(call("tools/list"), answer({"tools": [tool("echo")]}))
    with caplog.at_level(logging.WARNING, "wire_gateway.policy.pinning"):
        out = await pin.on_response(call("tools/list"), answer({"tools": [tool("echo", "changed")]}))
    assert [t["name"] for t in out.msg["result"]["tools"]] == ["echo"]
    assert "pinning: warn" in caplog.text
    assert await pin.on_request(call("tools/call", {"name": "echo"})) is None


# ---- schema --------------------------------------------------------------------------------------

async def test_schema_guard_validates_against_the_last_seen_schema():
    index = ToolIndex()
    index.learn({"tools": [{"name": "add", "inputSchema": {
        "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}},
        {"name": "broken", "inputSchema": {"type": "no-such-type"}}]})
    guard = SchemaGuard("srv", index)
    assert await guard.on_request(call("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})) is None
    bad = await guard.on_request(call("tools/call", {"name": "add", "arguments": {"a": "x", "b": 2}}, req_id=4))
    assert bad is not None and bad.msg["id"] == 4 and bad.msg["error"]["code"] == errors.INVALID_PARAMS
    assert bad.msg["error"]["message"] == "Invalid arguments for tool add: arguments.a: 'x' is not of type 'number'"
    missing = await guard.on_request(call("tools/call", {"name": "add", "arguments": {"a": 1}}))
    assert missing is not None and "'b' is a required property" in missing.msg["error"]["message"]
    no_args = await guard.on_request(call("tools/call", {"name": "add"}))
    assert no_args is not None
    assert await guard.on_request(call("tools/call", {"name": "unknown", "arguments": {"z": 1}})) is None
    assert await guard.on_request(call("tools/call", {"name": "broken", "arguments": {}})) is None


# ---- caches ----------------------------------------------------------------------------------------

async def test_list_cache_hit_is_answered_under_the_requesters_id():
    clock = Clock()
    store = MemoryStore(clock=clock)
    cache = ListCache("srv", store, 30, Generations(), clock=clock)
    first = call("tools/list", req_id=1)
    assert await cache.on_request(first) is None
    await cache.on_response(first, answer({"tools": [tool("echo")]}))
    hit = await cache.on_request(call("tools/list", req_id="second"))
    assert hit is not None and hit.msg == {"jsonrpc": "2.0", "id": "second", "result": {"tools": [tool("echo")]}}
    assert hit.note == "cache" and not hit.gateway
    # keyed by cursor, version and auth context
    assert await cache.on_request(call("tools/list", {"cursor": "2"})) is None
    assert await cache.on_request(call("tools/list", version="other")) is None
    assert await cache.on_request(call("tools/list", auth="alice")) is None
    clock.now += 31
    assert await cache.on_request(call("tools/list")) is None


async def test_list_cache_follows_ttl_ms_and_cache_scope():
    clock = Clock()
    store = MemoryStore(clock=clock)
    cache = ListCache("srv", store, 300, Generations(), clock=clock)
    alice = call("tools/list", auth="alice")
    await cache.on_request(alice)
    await cache.on_response(alice, answer({"tools": [], "ttlMs": 5000, "cacheScope": "public",
                                           "resultType": "complete"}))
    bob = await cache.on_request(call("tools/list", auth="bob"))
    assert bob is not None     # public: shared across auth contexts
    clock.now += 2
    assert (await cache.on_request(call("tools/list", auth="bob"))).msg["result"]["ttlMs"] == 3000
    clock.now += 4
    assert await cache.on_request(call("tools/list", auth="bob")) is None   # ttlMs, not the config's 300s

    carol = call("tools/list", auth="carol", version="w")
    await cache.on_request(carol)
    await cache.on_response(carol, answer({"tools": [], "ttlMs": 5000, "cacheScope": "private"}))
    assert await cache.on_request(call("tools/list", auth="carol", version="w")) is not None
    assert await cache.on_request(call("tools/list", auth="dave", version="w")) is None
    zero = call("tools/list", version="z")
    await cache.on_request(zero)
    await cache.on_response(zero, answer({"tools": [], "ttlMs": 0}))
    assert await cache.on_request(call("tools/list", version="z")) is None
    interim = call("tools/list", version="i")
    await cache.on_request(interim)
    await cache.on_response(interim, answer({"resultType": "input_required", "inputRequests": {}}))
    assert await cache.on_request(call("tools/list", version="i")) is None


async def test_invalidation_drops_entries_and_answers_in_flight_are_not_stored():
    store = MemoryStore()
    gens = Generations()
    cache = ListCache("srv", store, 30, gens)
    c1 = call("tools/list")
    await cache.on_request(c1)
    await cache.on_response(c1, answer({"tools": []}))
    events: list[str] = []
    store.subscribe(events.append)
    assert await invalidate(store, "srv", gens) == 1
    assert events == ["invalidate:srv"]
    assert await cache.on_request(call("tools/list")) is None
    c2 = call("tools/list")
    await cache.on_request(c2)
    await invalidate(store, "srv", gens)        # the list changed while c2 was in flight
    await cache.on_response(c2, answer({"tools": [tool("old")]}))
    assert await cache.on_request(call("tools/list")) is None


async def test_result_cache_only_for_read_only_idempotent_tools():
    index = ToolIndex()
    index.learn({"tools": [tool("get", annotations={"readOnlyHint": True, "idempotentHint": True}),
                           tool("ro", annotations={"readOnlyHint": True}),
                           tool("plain")]})
    store = MemoryStore()
    cache = ResultCache("srv", store, 30, index, Generations())
    first = call("tools/call", {"name": "get", "arguments": {"a": 1, "b": [1, 2]}})
    assert await cache.on_request(first) is None
    await cache.on_response(first, answer({"content": [{"type": "text", "text": "v1"}]}))
    hit = await cache.on_request(call("tools/call", {"name": "get", "arguments": {"b": [1, 2], "a": 1}}, req_id=7))
    assert hit is not None and hit.msg["id"] == 7 and hit.msg["result"]["content"][0]["text"] == "v1"
    assert await cache.on_request(call("tools/call", {"name": "get", "arguments": {"a": 2, "b": [1, 2]}})) is None
    assert await cache.on_request(call("tools/call", {"name": "get", "arguments": {"a": 1, "b": [1, 2]}},
                                        auth="other")) is None
    for name in ("ro", "plain"):
        c = call("tools/call", {"name": name, "arguments": {}})
        assert await cache.on_request(c) is None
        await cache.on_response(c, answer({"content": []}))
        assert await cache.on_request(call("tools/call", {"name": name, "arguments": {}})) is None
    failed = call("tools/call", {"name": "get", "arguments": {"x": 1}})
    await cache.on_request(failed)
    await cache.on_response(failed, answer({"content": [], "isError": True}))
    assert await cache.on_request(call("tools/call", {"name": "get", "arguments": {"x": 1}})) is None


# ---- the chain ---------------------------------------------------------------------------------------

class Recorder(Interceptor):
    def __init__(self, name: str, seen: list[str]) -> None:
        self.name = name
        self.seen = seen

    async def on_request(self, call: Call) -> Reply | None:
        self.seen.append(f"{self.name}>")
        return None

    async def on_response(self, call: Call, reply: Reply) -> Reply:
        self.seen.append(f"<{self.name}")
        return reply


async def test_chain_runs_in_the_fixed_order_and_answers_flow_back_in_reverse():
    seen: list[str] = []
    chain = Chain("srv", [Recorder(n, seen) for n in ("filter", "pinning", "schema", "list_cache")])

    async def upstream(c: Call) -> Reply:
        seen.append("upstream")
        return answer({"tools": [tool("echo")]}, c.frame.id)

    await chain.handle(call("tools/list"), upstream)
    assert seen == ["filter>", "pinning>", "schema>", "list_cache>", "upstream",
                    "<list_cache", "<schema", "<pinning", "<filter"]
    assert chain.index.get("echo") is not None      # the tool index learns from every list
    with pytest.raises(ValueError, match="out of order"):
        Chain("srv", [Recorder("list_cache", seen), Recorder("filter", seen)])


async def test_a_cache_hit_is_still_filtered_and_an_early_answer_skips_the_rest():
    store = MemoryStore()
    gens = Generations()
    f = ToolFilter(deny=("admin_*",))
    chain = Chain("srv", [f, ListCache("srv", store, 30, gens)])
    calls = []

    async def upstream(c: Call) -> Reply:
        calls.append(c.frame.id)
        return answer({"tools": [tool("echo"), tool("admin_x")]}, c.frame.id)

    one = await chain.handle(call("tools/list", req_id=1), upstream)
    two = await chain.handle(call("tools/list", req_id=2), upstream)
    assert calls == [1]
    assert [t["name"] for t in two.msg["result"]["tools"]] == ["echo"] \
        == [t["name"] for t in one.msg["result"]["tools"]]
    assert two.msg["id"] == 2
    refused = await chain.handle(call("tools/call", {"name": "admin_x"}, req_id=3), upstream)
    assert calls == [1] and refused.msg["error"]["message"] == "Unknown tool: admin_x"


async def test_memory_store_ttl_prefix_and_pins_file(tmp_path):
    clock = Clock()
    store = MemoryStore(clock=clock)
    assert await store.set("a:1", b"x", ttl=5)
    assert not await store.set("a:1", b"y", only_new=True)
    assert await store.get("a:1") == b"x"
    await store.set("a:2", b"z")
    await store.set("b:1", b"w")
    assert await store.delete_prefix("a:") == 2 and await store.get("b:1") == b"w"
    await store.set("c", b"1", ttl=1)
    clock.now += 2
    assert await store.get("c") is None

    pins = tmp_path / "pins.json"
    one = MemoryStore(str(pins))
    events: list[str] = []
    one.subscribe(events.append)
    await one.set("pins:srv:echo", b"abc")
    await one.set("cache:list:srv:x", b"never on disk")
    assert json.loads(pins.read_text()) == {"pins:srv:echo": "abc"}
    other = MemoryStore(str(pins))           # another process (the CLI) changes the file
    assert await other.get("pins:srv:echo") == b"abc"
    await other.set("pins:srv:echo", b"def")
    assert await one.get("pins:srv:echo") == b"def" and "pins:*" in events


def test_reply_frame_keeps_bytes_unless_changed():
    raw = b'{"jsonrpc":"2.0", "id":1,"result":{"tools":[]}}'
    frame = decode(raw)
    assert isinstance(frame, Frame)
    assert Reply.of(frame).frame().raw is raw
    changed = Reply.of(frame).with_result({"tools": [1]}, "filter").frame()
    assert jsonfast.loads(changed.raw) == {"jsonrpc": "2.0", "id": 1, "result": {"tools": [1]}}
    assert changed.note == "filter"


async def test_unwritable_pins_file_costs_persistence_not_service(tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    store = MemoryStore(str(blocker / "pins.json"))
    with caplog.at_level(logging.ERROR, "wire_gateway.store"):
        assert await store.set("pins:srv:echo", b"abc")
    assert await store.get("pins:srv:echo") == b"abc"
    assert "cannot write pins file" in caplog.text
