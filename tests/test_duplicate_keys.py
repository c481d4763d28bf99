"""Frames that repeat a member, and ids exactly as written (issue 13, defects 1 and 6): the decoder.

A frame whose top-level object names a member twice reads as two different messages to
parsers that keep the first or the last value; the gateway refuses it (-32600, first id)."""
import json

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from wire_gateway.wire import errors, ids, jsonfast, members, scan
from wire_gateway.wire.frame import Batch, Frame, Invalid, decode

BIG = "x\n\"y\\" * 300_000      # ~1.5 MB once escaped, so the large-frame path runs


def refused(raw: bytes, rid=None, key="id") -> None:
    bad = decode(raw)
    assert isinstance(bad, Invalid), bad
    assert bad.code == errors.INVALID_REQUEST and bad.id == rid and repr(key) in bad.message
    answer = json.loads(bad.error_frame())
    assert answer["id"] == rid and answer["error"]["code"] == -32600


@pytest.mark.parametrize("raw, rid, key", [
    (b'{"jsonrpc":"2.0","id":"x","id":3,"method":"tools/call","params":{}}', "x", "id"),
    (b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{},"id":"x"}', 3, "id"),
    (b'{"jsonrpc":"2.0","id":7,"method":"tools/list","method":"tools/call"}', 7, "method"),
    (b'{"jsonrpc":"2.0","id":7,"method":"m","params":{"a":1},"params":{"b":2}}', 7, "params"),
    (b'{"jsonrpc":"2.0","id":7,"result":{},"result":{"tools":[]}}', 7, "result"),
    (b'{"jsonrpc":"2.0","id":7,"error":{"code":1,"message":"a"},"error":{"code":2,"message":"b"}}', 7, "error"),
    (b'{"jsonrpc":"1.0","jsonrpc":"2.0","id":7,"method":"m"}', 7, "jsonrpc"),
    (b'{"jsonrpc":"2.0","id":7,"method":"m","extra":1,"extra":2}', 7, "extra"),
    (b'{ "jsonrpc" : "2.0" , "id" : 4 , "id" : 5 , "method" : "m" }', 4, "id"),
    (b'{"jsonrpc":"2.0","result":{},"id":3,"id":5}', 3, "id"),
])
def test_a_repeated_top_level_member_is_refused_with_the_first_id(raw, rid, key):
    refused(raw, rid, key)


@pytest.mark.parametrize("raw, rid", [
    (b'{"jsonrpc":"2.0","\\u0069d":"x","id":3,"method":"ping"}', "x"),
    (b'{"jsonrpc":"2.0","id":"x","\\u0069\\u0064":3,"method":"ping"}', "x"),
    (b'{"jsonrpc":"2.0","id":"x","i\\u0064":3,"method":"ping"}', "x"),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping","m\\u0065thod":"tools/call"}', 1),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping","\\u006D\\u0065thod":"tools/call"}', 1),
])
def test_a_repeat_spelled_with_escapes_is_refused(raw, rid):
    bad = decode(raw)
    assert isinstance(bad, Invalid) and bad.code == errors.INVALID_REQUEST and bad.id == rid


@pytest.mark.parametrize("raw", [
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"id","arguments":{"id":1,"id":2}}}',
    b'{"jsonrpc":"2.0","id":1,"result":{"items":[{"id":1},{"id":2}],"method":"x","params":{}}}',
    b'{"jsonrpc":"2.0","id":1,"method":"m","params":{"text":"\\"id\\":2, \\"id\\":3"}}',
    b'{"jsonrpc":"2.0","id":"\\u0069d","method":"m"}',
    b'{"jsonrpc":"2.0","id":1,"method":"m","params":{"k\\u0065y":"\\u0041"}}',
    b'{"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"id": 2}}',
])
def test_repeats_below_the_top_level_and_look_alikes_are_not_refused_here(raw):
    frame = decode(raw)
    assert isinstance(frame, Frame) and frame.id in (1, "id") and frame.raw == raw


def test_each_batch_member_is_checked_on_its_own():
    batch = decode(b'[{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"},'
                   b'{"jsonrpc":"2.0","id":3,"method":"ping","params":{"id":1,"id":2}},'
                   b'{"jsonrpc":"2.0","id":4,"\\u006dethod":"a","method":"b"}]')
    assert isinstance(batch, Batch)
    first, second, third = batch.items
    assert isinstance(first, Invalid) and first.id == 1 and first.code == errors.INVALID_REQUEST
    assert isinstance(second, Frame) and second.id == 3
    assert isinstance(third, Invalid) and third.id == 4


@pytest.mark.parametrize("layout", ["last", "first", "middle", "nested-first"])
def test_large_frames_are_checked_around_their_large_value(layout):
    big = {"content": [{"type": "text", "text": BIG}], "isError": False}
    members_ = {"last": [("jsonrpc", "2.0"), ("id", 3), ("result", big)],
                "first": [("result", big), ("jsonrpc", "2.0"), ("id", 3)],
                "middle": [("jsonrpc", "2.0"), ("result", big), ("id", 3)],
                "nested-first": [("result", {"id": 9, **big}), ("jsonrpc", "2.0"), ("id", 3)]}[layout]
    good = b"{" + b",".join(orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in members_) + b"}"
    assert len(good) > members.SMALL
    frame = decode(good)
    assert isinstance(frame, Frame) and frame.id == 3 and frame.msg["result"]["content"][0]["text"] == BIG
    assert list(frame.msg) == [k for k, _ in members_]
    for extra in (b',"id":5}', b',"\\u0069d":5}', b',"result":{}}', b',"id":5,"extra":[1]}'):
        bad = decode(good[:-1] + extra)
        assert isinstance(bad, Invalid) and bad.code == errors.INVALID_REQUEST
    bad = decode(b'{"id":5,' + good[1:])
    assert isinstance(bad, Invalid) and bad.id == 5


def test_large_frames_with_two_large_values_take_the_exact_path():
    half = {"text": BIG[: len(BIG) // 2]}
    good = orjson.dumps({"jsonrpc": "2.0", "id": 3, "result": half, "other": half})
    assert isinstance(decode(good), Frame)
    bad = good[:-1] + b',"other":[]}'
    assert isinstance(decode(bad), Invalid)
    assert members._split(good) is None      # the layout the split does not take


@pytest.mark.parametrize("raw", [
    b'{"jsonrpc":"2.0","id":3,"result":{"a":' + b'"' + b"x" * 5000 + b'"},}',
    b'{"jsonrpc":"2.0","id":3,"result":{"a":' + b'"' + b"x" * 5000 + b'"}',
    b'{"jsonrpc":"2.0","id":3,"result":{"a":' + b'"' + b"x" * 5000 + b'"}}}',
    b'{"jsonrpc":"2.0","id":3,"result":{"a":' + b'"' + b"x" * 5000 + b'"}} x',
])
def test_large_invalid_json_is_still_a_parse_error(raw):
    bad = decode(raw)
    assert isinstance(bad, Invalid) and bad.code == errors.PARSE_ERROR and bad.id == 3


_key = st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error", "x"])
_value = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=5),
                      lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(["id", "a"]), inner, max_size=2), max_leaves=6)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(_key, _value), min_size=1, max_size=6), st.booleans(), st.integers(0, 3),
       st.sampled_from([b"", b" ", b"\n  ", b"\t"]))
def test_the_verdict_matches_a_parser_that_keeps_every_pair(pairs, pad, big_at, ws):
    if pad:    # make it large, in one member, so the split path runs
        pairs = list(pairs)
        pairs.insert(big_at % (len(pairs) + 1), ("big", {"t": "z" * 5000}))
    raw = ws + b"{" + (b"," + ws).join(ws + orjson.dumps(k) + ws + b":" + ws + orjson.dumps(v) + ws
                                       for k, v in pairs) + b"}" + ws
    keys = [k for k, _ in pairs]
    dup = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
    obj, found = members.loads(raw)
    assert found == dup
    if dup is None:
        assert obj == json.loads(raw)


def test_nested_repeats_are_found_at_any_depth():
    assert members.nested_repeat(b'{"params":{"name":"a","name":"b"}}') == "name"
    assert members.nested_repeat(b'{"params":{"arguments":{"x":[{"k":1,"k":2}]}}}') == "k"
    assert members.nested_repeat(b'{"params":{"arguments":{"x":[{"k":1},{"k":2}]}}}') is None
    assert members.nested_repeat(b'{"params":{"n\\u0061me":"a","name":"b"}}') == "name"


_nested_text = st.text(alphabet=st.sampled_from(list('ab:"\\ {}[],')), max_size=6)


def _write(node: object, ws: bytes, escape_colons: bool) -> bytes:
    """A JSON text for a tree whose objects are lists of (key, value) pairs (repeats allowed)."""
    if isinstance(node, tuple):      # ("obj", pairs)
        return b"{" + b",".join(ws + _write(k, ws, escape_colons) + ws + b":" + ws + _write(v, ws, escape_colons)
                               for k, v in node[1]) + b"}"
    if isinstance(node, list):
        return b"[" + (b"," + ws).join(_write(v, ws, escape_colons) for v in node) + b"]"
    text = orjson.dumps(node)
    return text.replace(b":", b"\\u003a") if escape_colons and isinstance(node, str) else text


_tree = st.recursive(st.none() | st.integers(-3, 3) | _nested_text,
                     lambda inner: st.lists(inner, max_size=3)
                     | st.tuples(st.just("obj"), st.lists(st.tuples(st.sampled_from(["k", "a:b", 'q"'])
                                                                      | _nested_text, inner), max_size=3)),
                     max_leaves=8)


@settings(max_examples=600, deadline=None)
@given(_tree, st.sampled_from([b"", b" ", b"\n"]), st.booleans())
def test_the_nested_verdict_matches_a_parser_that_keeps_every_pair(tree, ws, escape_colons):
    """nested_repeat with the parsed message (its fast colon count) agrees with the stdlib parser
    that sees every pair, whatever the spacing, colons in strings and escaped colons."""
    raw = b'{"params":' + _write(("obj", [("arguments", tree)]), ws, escape_colons) + b"}"
    repeats: list[str] = []

    def pairs(items: list) -> dict:
        keys = [k for k, _ in items]
        repeats.extend(k for i, k in enumerate(keys) if k in keys[:i])
        return dict(items)

    json.loads(raw, object_pairs_hook=pairs)
    found = members.nested_repeat(raw, jsonfast.loads(raw))
    assert (found is None) == (not repeats), (raw, found, repeats)


# ---- ids exactly as written ------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    (b"-0", 0), (b"1.0", 1), (b"1e2", 100), (b"1E+2", 100), (b"-0.0", 0), (b"2.50e1", 25),
    (b'"\\u0061"', "a"), (b'"a\\/b"', "a/b"),
])
def test_an_id_keeps_its_spelling(text, value):
    raw = b'{"jsonrpc":"2.0","id":' + text + b',"method":"ping"}'
    frame = decode(raw)
    assert isinstance(frame, Frame) and frame.id == value and type(frame.id) in ids.SPELLED
    assert hash(frame.id) == hash(value) and {value: 1}[frame.id] == 1
    assert jsonfast.dumps({"jsonrpc": "2.0", "id": frame.id, "result": {}}) == \
        b'{"jsonrpc":"2.0","id":' + text + b',"result":{}}'
    assert errors.error_frame(frame.id, -32600, "m").startswith(b'{"jsonrpc":"2.0","id":' + text + b",")
    assert scan.replace_id(b'{"jsonrpc":"2.0","id":77,"result":{}}', jsonfast.dumps(frame.id)) == \
        b'{"jsonrpc":"2.0","id":' + text + b',"result":{}}'


@pytest.mark.parametrize("text", [b"1.5", b"1e-2", b"1e2000", b"null", b"true", b"[1]"])
def test_what_is_no_integer_is_still_no_id(text):
    bad = decode(b'{"jsonrpc":"2.0","id":' + text + b',"method":"ping"}')
    assert isinstance(bad, Invalid) and bad.id is None


@pytest.mark.parametrize("text", [b"0", b"17", b'"a"', b'"\\n"', '"\u00e9"'.encode()])
def test_canonical_ids_stay_plain(text):
    frame = decode(b'{"jsonrpc":"2.0","id":' + text + b',"method":"ping","params":{"a":"\\\\"}}')
    assert type(frame.id) in (int, str)


def test_a_spelled_id_is_found_where_the_typescript_sdk_writes_it():
    raw = b'{"result":{"text":"' + b"a\\n" * 3000 + b'"},"jsonrpc":"2.0","id":-0}'
    frame = decode(raw)
    assert type(frame.id) is ids.SpelledInt and frame.id.spelling == b"-0"


def test_recovered_ids_keep_their_spelling():
    assert jsonfast.dumps(scan.recover_id(b'{"jsonrpc":"2.0","id":-0,"method":')) == b"-0"


def test_params_nested_beyond_what_can_be_checked_are_refused_too():
    from wire_gateway.wire.frame import repeated_params

    deep = b'{"a":' * 1010 + b"1" + b"}" * 1010
    frame = decode(b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"t","arguments":' + deep + b"}}")
    if isinstance(frame, Invalid):        # this orjson refuses that depth itself: nothing reaches a policy
        assert frame.code in (errors.PARSE_ERROR, errors.INVALID_REQUEST)
        return
    answer = json.loads(repeated_params(frame))
    assert answer["id"] == 4 and answer["error"]["code"] == errors.INVALID_PARAMS


def test_repeated_params_names_the_key():
    from wire_gateway.wire.frame import repeated_params

    frame = decode(b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"a","name":"b"}}')
    answer = json.loads(repeated_params(frame))
    assert answer["id"] == 4 and answer["error"]["code"] == -32602 and answer["error"]["data"]["key"] == "name"
    assert repeated_params(decode(b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"a"}}')) is None
