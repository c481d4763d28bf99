"""The policy chain's fast paths answer exactly what the slow ones would: the schema guard's
"certainly valid" test never lets through what jsonschema refuses, the pinning memo of a
cached list sees every approval (in process and through a pins file), and a cache hit
carrying ttlMs is written as bytes that say what its message says."""
from __future__ import annotations

import json
import random
from typing import Any

import jsonschema
import pytest

from wire_gateway.policy.cache import Generations, ListCache, ResultCache
from wire_gateway.policy.chain import Call, Reply
from wire_gateway.policy.fastcheck import compile_check
from wire_gateway.policy.pinning import PinBook, Pinning
from wire_gateway.policy.schema import SchemaGuard
from wire_gateway.policy.tools import ToolIndex
from wire_gateway.store.memory import MemoryStore
from wire_gateway.wire import jsonfast
from wire_gateway.wire.frame import Frame, decode

pytestmark = pytest.mark.anyio


def call(method: str, params: dict | None = None, req_id: Any = 1, version: str = "v") -> Call:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": req_id, "method": method}
    if params is not None:
        msg["params"] = params
    frame = decode(json.dumps(msg).encode())
    assert isinstance(frame, Frame)
    return Call("srv", frame, "", version)


def answer(result: Any, req_id: Any = 1) -> Reply:
    frame = decode(json.dumps({"jsonrpc": "2.0", "id": req_id, "result": result}).encode())
    assert isinstance(frame, Frame)
    return Reply.of(frame)


def tool(name: str, description: str = "d") -> dict[str, Any]:
    return {"name": name, "description": description, "inputSchema": {"type": "object"}}


# ---- the schema guard's fast test -------------------------------------------------------------------

TYPES = ["string", "integer", "number", "boolean", "object", "array", "null"]


def random_schema(rng: random.Random, depth: int = 0) -> Any:
    if depth > 2 or rng.random() < 0.3:
        return rng.choice([{}, {"type": rng.choice(TYPES)}, {"type": rng.sample(TYPES, 2)}, True,
                           {"type": "string", "minLength": 2}, {"enum": [1, "a"]}])
    schema: dict[str, Any] = {"type": "object"} if rng.random() < 0.8 else {}
    names = rng.sample(["a", "b", "c"], rng.randint(0, 3))
    schema["properties"] = {n: random_schema(rng, depth + 1) for n in names}
    if names and rng.random() < 0.6:
        schema["required"] = rng.sample(names, rng.randint(1, len(names)))
    choice = rng.random()
    if choice < 0.2:
        schema["additionalProperties"] = False
    elif choice < 0.4:
        schema["additionalProperties"] = random_schema(rng, depth + 1)
    if rng.random() < 0.2:
        schema = {"type": "array", "items": schema}
    if rng.random() < 0.3:
        schema["description"] = "annotated"
        schema["x-mcp-header"] = "X"
    return schema


def random_value(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.random()
    if depth > 2 or pick < 0.5:
        return rng.choice(["", "ab", 0, 3, -1.5, 2.0, True, False, None, 10 ** 30])
    if pick < 0.8:
        return {k: random_value(rng, depth + 1) for k in rng.sample(["a", "b", "c", "d"], rng.randint(0, 4))}
    return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]


def test_the_fast_test_never_passes_what_jsonschema_refuses():
    rng = random.Random(1309)
    passed = checked = 0
    for _ in range(3000):
        schema = random_schema(rng)
        validator = jsonschema.Draft202012Validator(schema)
        fast = compile_check(schema)
        if fast is None:
            continue
        for _ in range(10):
            value = random_value(rng)
            checked += 1
            if fast(value):
                passed += 1
                assert validator.is_valid(value), (schema, value)
    assert checked > 5000 and passed > 1000      # it is used, and often says yes


def test_the_fast_test_covers_the_usual_tool_schemas_and_nothing_else():
    echo = {"type": "object", "properties": {"text": {"type": "string", "description": "what to echo"}},
            "required": ["text"], "additionalProperties": False, "$schema": "https://json-schema.org/draft/2020-12/schema"}
    fast = compile_check(echo)
    assert fast is not None and fast({"text": "hi"})
    assert not fast({"text": 1}) and not fast({}) and not fast({"text": "hi", "other": 1}) and not fast([])
    for unsupported in ({"type": "object", "properties": {"a": {"type": "string", "pattern": "^x"}}},
                        {"$ref": "#/$defs/a"}, {"type": "object", "patternProperties": {}},
                        {"type": "string", "$schema": "http://json-schema.org/draft-03/schema#"},
                        {"type": "object", "properties": {"a": True}}, {"type": "decimal"}):
        assert compile_check(unsupported) is None, unsupported


async def test_schema_guard_errors_are_jsonschemas_whatever_the_fast_test_says():
    index = ToolIndex()
    index.learn({"tools": [{"name": "add", "inputSchema": {
        "type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}]})
    guard = SchemaGuard("srv", index)
    assert await guard.on_request(call("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}})) is None
    # 2.0 is an integer to jsonschema: the fast test is not sure, jsonschema says yes
    assert await guard.on_request(call("tools/call", {"name": "add", "arguments": {"a": 1, "b": 2.0}})) is None
    bad = await guard.on_request(call("tools/call", {"name": "add", "arguments": {"a": True, "b": 2}}, req_id=4))
    assert bad is not None
    assert bad.msg["error"]["message"] == "Invalid arguments for tool add: arguments.a: True is not of type 'number'"


# ---- pinning: a cached list's verdict is remembered until a pin changes -----------------------------

async def test_the_verdict_on_a_cached_list_follows_quarantine_and_approval():
    book = PinBook(MemoryStore())
    pin = Pinning("srv", book, "enforce")
    await pin.on_response(call("tools/list"), answer({"tools": [tool("echo"), tool("add")]}))
    cached = answer({"tools": [tool("echo", "evil"), tool("add")]})   # the one list object every hit hands back
    for _ in range(2):
        out = await pin.on_response(call("tools/list"), cached)
        assert [t["name"] for t in out.msg["result"]["tools"]] == ["add"]
    assert await book.approve("srv", "echo") is not None
    out = await pin.on_response(call("tools/list"), cached)
    assert [t["name"] for t in out.msg["result"]["tools"]] == ["echo", "add"] and out.raw is cached.raw


async def test_the_verdict_on_a_cached_list_sees_an_approval_made_through_the_pins_file(tmp_path):
    pins = str(tmp_path / "pins.json")
    book = PinBook(MemoryStore(pins))
    pin = Pinning("srv", book, "enforce")
    await pin.on_response(call("tools/list"), answer({"tools": [tool("echo")]}))
    cached = answer({"tools": [tool("echo", "evil")]})
    assert (await pin.on_response(call("tools/list"), cached)).msg["result"]["tools"] == []
    cli = PinBook(MemoryStore(pins))          # `wire-gateway tools approve` in another process
    assert await cli.approve("srv", "echo") is not None
    assert [t["name"] for t in (await pin.on_response(call("tools/list"), cached)).msg["result"]["tools"]] == ["echo"]


# ---- the list cache -------------------------------------------------------------------------------------

async def test_a_hit_with_ttl_ms_is_written_as_bytes_equal_to_its_message():
    clock = [1000.0]
    store = MemoryStore(clock=lambda: clock[0])
    cache = ListCache("srv", store, 300, Generations(), clock=lambda: clock[0])
    for result in ({"tools": [tool("echo")], "ttlMs": 5000, "cacheScope": "private", "resultType": "complete"},
                   {"ttlMs": 5000}):
        first = call("tools/list", version=str(len(result)))
        assert await cache.on_request(first) is None
        await cache.on_response(first, answer(result))
        clock[0] += 2
        hit = await cache.on_request(call("tools/list", req_id="h", version=str(len(result))))
        assert hit is not None and hit.raw is not None
        assert jsonfast.loads(hit.raw) == hit.msg == {"jsonrpc": "2.0", "id": "h", "result": {**result, "ttlMs": 3000}}


async def test_a_relisted_schema_keeps_its_validator_and_a_changed_one_gets_a_new_one():
    index = ToolIndex()
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    index.learn({"tools": [{"name": "t", "inputSchema": schema}]})
    guard = SchemaGuard("srv", index)

    async def validator_after(arguments: dict) -> Any:
        await guard.on_request(call("tools/call", {"name": "t", "arguments": arguments}))
        return guard._validators["t"][1]

    first = await validator_after({"n": 1})
    index.learn({"tools": [{"name": "t", "inputSchema": json.loads(json.dumps(schema))}]})   # listed again: equal
    assert await validator_after({"n": 1}) is first
    index.learn({"tools": [{"name": "t", "inputSchema": {**schema, "required": []}}]})      # changed
    assert await guard.on_request(call("tools/call", {"name": "t", "arguments": {}})) is None
    changed = guard._validators["t"][1]
    assert changed is not first
    index.learn({"tools": [{"name": "t", "inputSchema": {**schema, "properties": {"n": {"type": "number"}}}}]})
    assert await guard.on_request(call("tools/call", {"name": "t", "arguments": {"n": 1.5}})) is None
    assert guard._validators["t"][1] is not changed


async def test_the_chain_decides_the_same_without_coroutines_and_skips_what_does_not_act():
    from wire_gateway.policy.chain import Chain, drive
    from wire_gateway.policy.filter import ToolFilter

    index = ToolIndex()
    index.learn({"tools": [{"name": "add",
                            "inputSchema": {"type": "object", "properties": {"a": {"type": "number"}}}}]})
    chain = Chain("srv", [ToolFilter(deny=("admin_*",)), SchemaGuard("srv", index),
                          ListCache("srv", MemoryStore(), 30, Generations())], index)
    for params in ({"name": "add", "arguments": {"a": 1}}, {"name": "admin_x"},
                   {"name": "add", "arguments": {"a": "x"}}):
        now = chain.down_now(call("tools/call", params))
        ok, later = drive(chain.down(call("tools/call", params)))
        assert ok and now is not None and now[1] == later[1]
        assert (now[0] is None) == (later[0] is None) and (now[0] is None or now[0].msg == later[0].msg)
    assert chain.passes_up("tools/call", 3) and not chain.passes_up("tools/list", 3)
    assert chain.down_now(call("tools/list")) is None          # the list cache reads the store: a coroutine
    pinned = Chain("srv", [Pinning("srv", PinBook(MemoryStore()))])
    assert pinned.down_now(call("tools/call", {"name": "add"})) is None
    results = ResultCache("srv", MemoryStore(), 30, ToolIndex(), Generations())
    assert Chain("srv", [results]).passes_up("tools/call", 1) is False

