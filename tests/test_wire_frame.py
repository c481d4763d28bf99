"""Decoding frames: kinds, JSON that orjson refuses, invalid JSON-RPC, batches, id recovery."""
import json

import pytest
from hypothesis import given, strategies as st

from wire_gateway.wire import errors, scan
from wire_gateway.wire.frame import Batch, Frame, Invalid, Kind, decode


def test_kinds():
    assert decode(b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}').kind is Kind.REQUEST
    assert decode(b'{"jsonrpc":"2.0","method":"notifications/initialized"}').kind is Kind.NOTIFICATION
    assert decode(b'{"jsonrpc":"2.0","id":"a","result":{}}').kind is Kind.RESPONSE
    err = decode(b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}')
    assert err.kind is Kind.ERROR and err.id is None


@pytest.mark.parametrize("raw", [
    b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"s":"\\ud800"}}',   # lone surrogate
    b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"n":1e400}}',       # beyond double range
    b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"n":123456789012345678901234567890}}',
])
def test_valid_json_orjson_refuses_is_still_understood(raw):
    frame = decode(raw)
    assert isinstance(frame, Frame) and frame.method == "x" and frame.id == 1 and frame.raw == raw


def test_big_integer_id_stays_exact():
    frame = decode(b'{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"ping"}')
    assert frame.id == 123456789012345678901234567890


def test_escaped_keys_and_values_are_parsed_not_peeked():
    frame = decode(b'{"jsonrpc":"2.0","id":1,"m\\u0065thod":"tools\\/call","params":{"method":"ping"}}')
    assert frame.method == "tools/call"


@pytest.mark.parametrize("raw, code, rid", [
    (b"not json", errors.PARSE_ERROR, None),
    (b'{"jsonrpc":"2.0","id":9,"method":', errors.PARSE_ERROR, 9),
    (b"NaN", errors.PARSE_ERROR, None),
    (b"\xff\xfe{}", errors.PARSE_ERROR, None),
    (b"[]", errors.INVALID_REQUEST, None),
    (b"42", errors.INVALID_REQUEST, None),
    (b'{"id":5,"method":"x"}', errors.INVALID_REQUEST, 5),
    (b'{"jsonrpc":"1.0","id":"a","method":"x"}', errors.INVALID_REQUEST, "a"),
    (b'{"jsonrpc":"2.0","id":5,"method":7}', errors.INVALID_REQUEST, 5),
    (b'{"jsonrpc":"2.0","id":1.5,"method":"x"}', errors.INVALID_REQUEST, None),
    (b'{"jsonrpc":"2.0","id":null,"method":"x"}', errors.INVALID_REQUEST, None),
    (b'{"jsonrpc":"2.0","id":true,"method":"x"}', errors.INVALID_REQUEST, None),
    (b'{"jsonrpc":"2.0","id":3,"method":"x","params":"s"}', errors.INVALID_REQUEST, 3),
    (b'{"jsonrpc":"2.0","id":3,"result":{},"error":{"code":1,"message":"m"}}', errors.INVALID_REQUEST, 3),
    (b'{"jsonrpc":"2.0","id":3,"error":"bad"}', errors.INVALID_REQUEST, 3),
])
def test_invalid_frames_get_the_right_error(raw, code, rid):
    bad = decode(raw)
    assert isinstance(bad, Invalid) and bad.code == code and bad.id == rid
    reply = json.loads(bad.error_frame())
    assert reply["jsonrpc"] == "2.0" and reply["id"] == rid and reply["error"]["code"] == code
    assert reply["error"]["message"]


def test_batch_members_keep_their_exact_bytes():
    raw = b'[ {"jsonrpc":"2.0","id":1,"method":"a","params":{"x":[1,{"y":"],}"}]}} ,\n' \
          b'{"jsonrpc":"2.0","method":"n"}, 7 ]'
    batch = decode(raw)
    assert isinstance(batch, Batch)
    assert [i.raw for i in batch.items] == [
        b'{"jsonrpc":"2.0","id":1,"method":"a","params":{"x":[1,{"y":"],}"}]}}',
        b'{"jsonrpc":"2.0","method":"n"}', b"7"]
    assert isinstance(batch.items[2], Invalid)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20)


@given(st.lists(json_values, min_size=1, max_size=6), st.sampled_from([",", " , ", ",\n"]))
def test_split_array_matches_a_full_parse(values, sep):
    raw = ("[" + sep.join(json.dumps(v) for v in values) + "]").encode()
    assert [json.loads(p) for p in scan.split_array(raw)] == values


@pytest.mark.parametrize("prefix, rid", [
    (b'{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"x":"aaaa', 42),
    (b'{"jsonrpc":"2.0","id":"req-\\"7\\"","method":"x"', 'req-"7"'),
    (b'{"params":{"id":5},"i\\u0064":6', 6),          # nested "id" ignored, escaped key understood
    (b'{"params":{"id":5},"method":"x","data":"', None),
    (b'{"jsonrpc":"2.0","method":"x","params":{"text":"\\"id\\": 9', None),
    (b'{"id":{"x":1}}', None),
    (b'{"id":1.5}', None),
])
def test_recover_id(prefix, rid):
    assert scan.recover_id(prefix) == rid


@pytest.mark.parametrize("raw, new, expected", [
    (b'{"jsonrpc":"2.0","id":7,"method":"x"}', b"101", b'{"jsonrpc":"2.0","id":101,"method":"x"}'),
    (b'{ "method" : "x", "params":{"id":1}, "id" :\t"a\\"b" , "jsonrpc":"2.0"}', b'"c"',
     b'{ "method" : "x", "params":{"id":1}, "id" :\t"c" , "jsonrpc":"2.0"}'),
    (b'{"result":{"n":1e400,"s":"\\ud800"},"jsonrpc":"2.0","id":123456789012345678901234567890}', b"5",
     b'{"result":{"n":1e400,"s":"\\ud800"},"jsonrpc":"2.0","id":5}'),
])
def test_replace_id_touches_only_the_id(raw, new, expected):
    assert scan.replace_id(raw, new) == expected


@pytest.mark.parametrize("raw, expected", [
    (b'{"jsonrpc":"2.0","id":"agg-1","result":{"content":[],"isError":false}}',
     b'{"jsonrpc":"2.0","id":9,"result":{"k":1,"content":[],"isError":false}}'),
    (b'{"id": "a\\"b", "jsonrpc": "2.0", "result": { } }\n', b'{"id": 9, "jsonrpc": "2.0", "result": {"k":1 } }\n'),
    (b'{"jsonrpc":"2.0","id":3,"result":{"result":{"x":1}}}',
     b'{"jsonrpc":"2.0","id":9,"result":{"k":1,"result":{"x":1}}}'),
    # not the usual head: the caller re-encodes the message
    (b'{"result":{"a":1},"jsonrpc":"2.0","id":3}', None),
    (b'{"jsonrpc":"2.0","extra":{"result":{}},"id":3,"result":{"a":1}}', None),
    (b'{"jsonrpc":"2.0","id":3,"result":[1]}', None),
])
def test_with_result_member_adds_to_the_top_level_result_only(raw, expected):
    out = scan.with_result_member(raw, b"9", b'"k":1')
    assert out == expected
    if out is not None:
        assert json.loads(out)["result"]["k"] == 1


def test_replace_id_refuses_a_frame_without_one():
    with pytest.raises(ValueError):
        scan.replace_id(b'{"jsonrpc":"2.0","method":"n","params":{"id":1}}', b"2")
