"""Modern-era header rules: value encoding (the spec's table), x-mcp-header, header/body agreement."""
import copy

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from wire_gateway.wire.headers import (
    HEADER_MISMATCH,
    HeaderError,
    HeaderParam,
    HeaderProblem,
    check_request_headers,
    decode_header_value,
    encode_header_value,
    header_mismatch_error,
    header_params,
    header_value_ok,
    mcp_headers_for,
    param_headers_for,
)

V = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": V,
        "io.modelcontextprotocol/clientInfo": {"name": "ExampleClient", "version": "1.0.0"},
        "io.modelcontextprotocol/clientCapabilities": {}}

EXECUTE_SQL = {  # the spec's example tool
    "name": "execute_sql",
    "description": "Execute SQL on Google Cloud Spanner",
    "inputSchema": {
        "type": "object",
        "properties": {
            "region": {"type": "string", "description": "The region to execute the query in",
                       "x-mcp-header": "Region"},
            "query": {"type": "string", "description": "The SQL query to execute"},
        },
        "required": ["region", "query"],
    },
}


def request(method, params=None, req_id=1):
    p = {"_meta": dict(META)}
    p.update(params or {})
    return {"jsonrpc": "2.0", "id": req_id, "method": method, "params": p}


def lower(headers):
    return {k.lower(): v for k, v in headers.items()}


# -- value encoding -------------------------------------------------------------------------

SPEC_TABLE = [  # "Encoding examples" in basic/transports/streamable-http, verbatim
    ("us-west1", "us-west1"),
    ("Hello, 世界", "=?base64?SGVsbG8sIOS4lueVjA==?="),
    (" padded ", "=?base64?IHBhZGRlZCA=?="),
    ("line1\nline2", "=?base64?bGluZTEKbGluZTI=?="),
    ("=?base64?literal?=", "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?="),
]


@pytest.mark.parametrize("original,encoded", SPEC_TABLE)
def test_spec_encoding_examples(original, encoded):
    assert encode_header_value(original) == encoded
    assert decode_header_value(encoded) == original


def test_plain_values_stay_plain():
    for value in ("a", "tools/call", "file:///projects/myapp/config.json", "a b\tc", "~!#$%^&*()"):
        assert encode_header_value(value) == value
        assert decode_header_value(value) == value


def test_values_that_need_encoding():
    for value in ("", " lead", "trail ", "\ttab", "tab\t", "a\rb", "nul\0", "del\x7f", "é", "=?base64?x?="):
        enc = encode_header_value(value)
        assert enc.startswith("=?base64?") and enc.endswith("?=") and header_value_ok(enc)
        assert decode_header_value(enc) == value
    assert encode_header_value("") == "=?base64??="
    # only an exact prefix and suffix make the pattern
    assert encode_header_value("=?BASE64?x?=") == "=?BASE64?x?="
    assert encode_header_value("x=?base64?x?=") == "x=?base64?x?="
    assert encode_header_value("=?base64?x") == "=?base64?x"


def test_lone_surrogate_cannot_be_encoded():
    with pytest.raises(HeaderError):
        encode_header_value("\ud800")


def test_decode_markers_are_case_sensitive():
    assert decode_header_value("=?BASE64?SGk=?=") == "=?BASE64?SGk=?="
    assert decode_header_value("=?base64?SGk=?=") == "Hi"


@pytest.mark.parametrize("bad", [
    "=?base64?not base64?=",   # space
    "=?base64?SGk?=",          # missing padding
    "=?base64?S-k_?=",         # URL-safe alphabet is not the spec's Base64
    "=?base64?/w==?=",         # valid Base64 of b"\xff", not UTF-8
    "=?base64?=",              # markers overlap: no payload at all
])
def test_decode_rejects_broken_sentinels(bad):
    with pytest.raises(HeaderError):
        decode_header_value(bad)


def test_header_value_ok():
    assert header_value_ok("")
    assert header_value_ok("a")
    assert header_value_ok("a b\tc")
    assert header_value_ok("!~")
    for bad in (" a", "a ", "\ta", "a\t", "a\nb", "a\rb", "a\0b", "\x7f", "é", "\x80", "世界"):
        assert not header_value_ok(bad), bad


@settings(max_examples=500)
@given(st.text())
def test_encode_decode_round_trip(value):
    enc = encode_header_value(value)
    assert header_value_ok(enc)
    assert decode_header_value(enc) == value
    # plain exactly when the spec allows plain
    plain = value and value == value.strip(" \t") and all(c == "\t" or " " <= c <= "~" for c in value) \
        and not (value.startswith("=?base64?") and value.endswith("?="))
    assert (enc == value) == bool(plain)


@settings(max_examples=300)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e)))
def test_decode_never_raises_anything_but_header_error(value):
    try:
        decode_header_value(value)
    except HeaderError:
        pass


# -- x-mcp-header annotations ----------------------------------------------------------------


def tool_with(properties, name="t"):
    return {"name": name, "inputSchema": {"type": "object", "properties": properties}}


def test_header_params_of_the_spec_example():
    assert header_params(EXECUTE_SQL) == [HeaderParam("Region", ("region",))]
    assert header_params(EXECUTE_SQL)[0].header == "Mcp-Param-Region"


def test_nested_properties_are_reachable():
    tool = tool_with({"target": {"type": "object", "properties": {
        "tenant": {"type": "string", "x-mcp-header": "Tenant"},
        "shard": {"type": "integer", "x-mcp-header": "Shard"},
    }}, "dry": {"type": ["boolean", "null"], "x-mcp-header": "Dry-Run"}})
    assert header_params(tool) == [HeaderParam("Dry-Run", ("dry",)), HeaderParam("Shard", ("target", "shard")),
                                   HeaderParam("Tenant", ("target", "tenant"))]


def test_tools_without_annotations_or_schema():
    assert header_params({"name": "x"}) == []
    assert header_params(tool_with({"a": {"type": "string"}})) == []
    # a property *named* x-mcp-header is not an annotation; instance data is not schema
    assert header_params(tool_with({"x-mcp-header": {"type": "string", "default": {"x-mcp-header": "No"},
                                                     "enum": [{"x-mcp-header": "No"}]}})) == []


@pytest.mark.parametrize("schema", [
    {"type": "string", "x-mcp-header": ""},                       # empty
    {"type": "string", "x-mcp-header": "Has Space"},              # not a token
    {"type": "string", "x-mcp-header": "New\nLine"},              # control character
    {"type": "string", "x-mcp-header": "Ünï"},                    # not ASCII
    {"type": "string", "x-mcp-header": "a:b"},                    # ':' is not a tchar
    {"type": "string", "x-mcp-header": 7},                        # not a string
    {"type": "number", "x-mcp-header": "N"},                      # number is excluded
    {"type": ["integer", "number"], "x-mcp-header": "N"},
    {"type": "object", "x-mcp-header": "O"},
    {"type": "array", "x-mcp-header": "A"},
    {"type": "null", "x-mcp-header": "Z"},
    {"x-mcp-header": "Untyped"},
])
def test_invalid_annotation_values(schema):
    with pytest.raises(HeaderError):
        header_params(tool_with({"p": schema}))


@pytest.mark.parametrize("schema", [
    {"type": "object", "x-mcp-header": "Root", "properties": {}},
    {"type": "object", "properties": {"list": {"type": "array", "items": {"type": "string", "x-mcp-header": "I"}}}},
    {"type": "object", "properties": {"a": {"oneOf": [{"type": "string", "x-mcp-header": "O"}]}}},
    {"type": "object", "anyOf": [{"properties": {"a": {"type": "string", "x-mcp-header": "A"}}}]},
    {"type": "object", "allOf": [{"properties": {"a": {"type": "string", "x-mcp-header": "A"}}}]},
    {"type": "object", "properties": {"a": {"not": {"type": "string", "x-mcp-header": "N"}}}},
    {"type": "object", "if": {"properties": {"a": {"type": "string", "x-mcp-header": "I"}}}},
    {"type": "object", "$defs": {"d": {"type": "string", "x-mcp-header": "D"}},
     "properties": {"a": {"$ref": "#/$defs/d"}}},
    {"type": "object", "additionalProperties": {"type": "string", "x-mcp-header": "X"}},
    {"type": "object", "patternProperties": {"^a": {"type": "string", "x-mcp-header": "P"}}},
    {"type": "object", "properties": {"o": {"type": "object", "additionalProperties":
                                            {"type": "object", "properties": {"x": {"type": "string",
                                                                                   "x-mcp-header": "X"}}}}}},
])
def test_annotations_that_are_not_statically_reachable(schema):
    with pytest.raises(HeaderError, match="reachable"):
        header_params({"name": "t", "inputSchema": schema})


def test_annotation_names_are_case_insensitively_unique():
    with pytest.raises(HeaderError, match="duplicates"):
        header_params(tool_with({"a": {"type": "string", "x-mcp-header": "Region"},
                                 "b": {"type": "object", "properties": {
                                     "c": {"type": "string", "x-mcp-header": "REGION"}}}}))


def test_deep_schema_does_not_blow_the_stack():
    schema = {"type": "string"}
    for _ in range(5000):
        schema = {"type": "object", "properties": {"a": schema}}
    assert header_params({"name": "deep", "inputSchema": schema}) == []


# -- building headers ------------------------------------------------------------------------


def test_mcp_headers_for_the_spec_examples():
    call = request("tools/call", {"name": "get_weather", "arguments": {"location": "Seattle, WA"}})
    assert mcp_headers_for(call) == {"MCP-Protocol-Version": V, "Mcp-Method": "tools/call",
                                     "Mcp-Name": "get_weather"}
    read = request("resources/read", {"uri": "file:///projects/myapp/config.json"}, 2)
    assert mcp_headers_for(read) == {"MCP-Protocol-Version": V, "Mcp-Method": "resources/read",
                                     "Mcp-Name": "file:///projects/myapp/config.json"}
    assert mcp_headers_for(request("prompts/get", {"name": "p"}))["Mcp-Name"] == "p"
    assert mcp_headers_for(request("tools/list")) == {"MCP-Protocol-Version": V, "Mcp-Method": "tools/list"}


def test_mcp_name_is_encoded_when_unsafe():
    headers = mcp_headers_for(request("tools/call", {"name": "météo"}))
    assert headers["Mcp-Name"] == "=?base64?bcOpdMOpbw==?="


@pytest.mark.parametrize("msg", [
    {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},                      # no _meta version
    request("tools/call", {"arguments": {}}),                                 # no params.name
    request("resources/read", {"uri": 5}),                                    # uri not a string
    request("bad method"[:3] + "\n"),                                         # method not header-safe
])
def test_mcp_headers_for_refuses_what_it_cannot_mirror(msg):
    with pytest.raises(HeaderError):
        mcp_headers_for(msg)


def test_param_headers_for_the_spec_example():
    args = {"region": "us-west1", "query": "SELECT * FROM users"}
    assert param_headers_for(EXECUTE_SQL, args) == {"Mcp-Param-Region": "us-west1"}


def test_param_headers_type_conversion_and_omission():
    tool = tool_with({
        "s": {"type": "string", "x-mcp-header": "S"},
        "i": {"type": "integer", "x-mcp-header": "I"},
        "b": {"type": "boolean", "x-mcp-header": "B"},
        "n": {"type": ["string", "null"], "x-mcp-header": "N"},
        "o": {"type": "object", "properties": {"t": {"type": "string", "x-mcp-header": "T"}}},
    })
    assert param_headers_for(tool, {"s": "Hello, 世界", "i": -7, "b": False, "n": None, "o": {"t": " x"}}) == {
        "Mcp-Param-S": "=?base64?SGVsbG8sIOS4lueVjA==?=", "Mcp-Param-I": "-7", "Mcp-Param-B": "false",
        "Mcp-Param-T": "=?base64?IHg=?="}
    assert param_headers_for(tool, {"i": 42.0, "b": True}) == {"Mcp-Param-I": "42", "Mcp-Param-B": "true"}
    assert param_headers_for(tool, {}) == {}
    assert param_headers_for(tool, None) == {}
    assert param_headers_for(tool, {"o": "not an object"}) == {}  # nothing at the path


def test_param_headers_for_refuses_invalid_tools_and_unmirrorable_values():
    with pytest.raises(HeaderError):
        param_headers_for(tool_with({"p": {"type": "number", "x-mcp-header": "P"}}), {"p": 1.5})
    with pytest.raises(HeaderError):
        param_headers_for(EXECUTE_SQL, {"region": {"nested": 1}})
    with pytest.raises(HeaderError):
        param_headers_for(EXECUTE_SQL, {"region": float("inf")})


# -- checking requests -----------------------------------------------------------------------


def headers_for(msg, tools=None):
    out = mcp_headers_for(msg)
    if tools and msg["method"] == "tools/call":
        out.update(param_headers_for(tools[msg["params"]["name"]], msg["params"].get("arguments")))
    return lower(out)


SQL_CALL = request("tools/call", {"name": "execute_sql",
                                  "arguments": {"region": "us-west1", "query": "SELECT * FROM users"}})
TOOLS = {"execute_sql": EXECUTE_SQL}


@pytest.mark.parametrize("msg", [
    SQL_CALL,
    request("resources/read", {"uri": "file:///projects/myapp/config.json"}),
    request("prompts/get", {"name": "Grüße"}),
    request("tools/list"),
    request("subscriptions/listen", {}),
])
def test_what_we_build_passes_the_check(msg):
    assert check_request_headers(headers_for(msg, TOOLS), msg, TOOLS) is None


def test_the_spec_example_message():
    msg = request("tools/call", {"name": "bar"})
    problem = check_request_headers({**headers_for(msg), "mcp-name": "foo"}, msg)
    assert problem == HeaderProblem(
        "Header mismatch: Mcp-Name header value 'foo' does not match body value 'bar'", "Mcp-Name")


@pytest.mark.parametrize("drop,header", [("mcp-protocol-version", "MCP-Protocol-Version"),
                                         ("mcp-method", "Mcp-Method"), ("mcp-name", "Mcp-Name")])
def test_required_headers(drop, header):
    headers = headers_for(SQL_CALL)
    del headers[drop]
    problem = check_request_headers(headers, SQL_CALL)
    assert problem.header == header
    assert problem.message == f"Header mismatch: required header {header} is missing"


def test_protocol_version_must_match_meta():
    problem = check_request_headers({**headers_for(SQL_CALL), "mcp-protocol-version": "2025-11-25"}, SQL_CALL)
    assert problem.message == ("Header mismatch: MCP-Protocol-Version header value '2025-11-25' does not match "
                               "body value '2026-07-28'")
    no_meta = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    problem = check_request_headers({"mcp-protocol-version": V, "mcp-method": "tools/list"}, no_meta)
    assert problem.header == "MCP-Protocol-Version" and "absent" in problem.message


def test_method_must_match_exactly():
    msg = request("tools/list")
    problem = check_request_headers({**headers_for(msg), "mcp-method": "Tools/List"}, msg)
    assert problem.message == ("Header mismatch: Mcp-Method header value 'Tools/List' does not match "
                               "body value 'tools/list'")
    # the method header is never Base64-decoded
    problem = check_request_headers({**headers_for(msg), "mcp-method": encode_header_value("=?base64?x?=")}, msg)
    assert problem is not None and problem.header == "Mcp-Method"


def test_mcp_name_is_compared_after_decoding():
    msg = request("resources/read", {"uri": "file:///naïve.txt"})
    assert check_request_headers(headers_for(msg), msg) is None
    assert headers_for(msg)["mcp-name"].startswith("=?base64?")
    problem = check_request_headers({**headers_for(msg), "mcp-name": "file:///naive.txt"}, msg)
    assert problem.message == ("Header mismatch: Mcp-Name header value 'file:///naive.txt' does not match "
                               "body value 'file:///naïve.txt'")
    problem = check_request_headers({**headers_for(msg), "mcp-name": "=?base64?%%%?="}, msg)
    assert problem.header == "Mcp-Name" and "invalid Base64" in problem.message


def test_mcp_name_with_invalid_characters():
    msg = request("tools/call", {"name": "a b"})
    for raw in ("a b ", "a\nb", "añb"):
        problem = check_request_headers({**headers_for(msg), "mcp-name": raw}, msg)
        assert problem.header == "Mcp-Name" and "not allowed" in problem.message


def test_mcp_name_when_body_has_no_name():
    msg = request("tools/call", {"arguments": {}})
    problem = check_request_headers({"mcp-protocol-version": V, "mcp-method": "tools/call", "mcp-name": "x"}, msg)
    assert problem.header == "Mcp-Name" and "absent" in problem.message


def test_mcp_name_is_not_required_for_other_methods():
    msg = request("tools/list")
    assert check_request_headers({**headers_for(msg), "mcp-name": "whatever"}, msg) is None


def test_param_header_present_iff_value_present():
    headers = headers_for(SQL_CALL, TOOLS)
    # missing header while the body has the value
    missing = {k: v for k, v in headers.items() if k != "mcp-param-region"}
    problem = check_request_headers(missing, SQL_CALL, TOOLS)
    assert problem.message == "Header mismatch: required header Mcp-Param-Region is missing (body value 'us-west1')"
    # header while the body has no value, or null
    for args in ({"query": "q"}, {"query": "q", "region": None}):
        msg = request("tools/call", {"name": "execute_sql", "arguments": args})
        problem = check_request_headers({**headers_for(msg), "mcp-param-region": "us-west1"}, msg, TOOLS)
        assert problem.header == "Mcp-Param-Region" and "arguments.region is absent" in problem.message
        assert check_request_headers(headers_for(msg), msg, TOOLS) is None


def test_param_header_mismatch_and_case_insensitive_name():
    headers = {**headers_for(SQL_CALL), "mcp-param-region": "eu-west1"}
    problem = check_request_headers(headers, SQL_CALL, TOOLS)
    assert problem.message == ("Header mismatch: Mcp-Param-Region header value 'eu-west1' does not match "
                               "body value 'us-west1'")
    tool = tool_with({"r": {"type": "string", "x-mcp-header": "rEgIoN"}}, "t")
    msg = request("tools/call", {"name": "t", "arguments": {"r": "x"}})
    assert check_request_headers({**headers_for(msg), "mcp-param-region": "x"}, msg, {"t": tool}) is None


def test_param_header_invalid_characters_and_bad_base64():
    for raw, text in (("us-west1 ", "not allowed"), ("us\x01", "not allowed"), ("=?base64?***?=", "Base64")):
        problem = check_request_headers({**headers_for(SQL_CALL), "mcp-param-region": raw}, SQL_CALL, TOOLS)
        assert problem.header == "Mcp-Param-Region" and text in problem.message


def test_integer_and_boolean_comparison():
    tool = tool_with({"n": {"type": "integer", "x-mcp-header": "N"}, "b": {"type": "boolean", "x-mcp-header": "B"}})
    tools = {"t": tool}
    msg = request("tools/call", {"name": "t", "arguments": {"n": 42, "b": True}})
    base = headers_for(msg)
    for n in ("42", "42.0", "4.2e1", "42.000"):
        assert check_request_headers({**base, "mcp-param-n": n, "mcp-param-b": "true"}, msg, tools) is None, n
    for n in ("43", "42.5", "042", "+42", "0x2a", " 42", "42abc", "1e99999999999999999999", "NaN", "Infinity"):
        problem = check_request_headers({**base, "mcp-param-n": n, "mcp-param-b": "true"}, msg, tools)
        assert problem is not None and problem.header == "Mcp-Param-N", n
    for b in ("True", "1", "TRUE", "yes"):
        problem = check_request_headers({**base, "mcp-param-n": "42", "mcp-param-b": b}, msg, tools)
        assert problem.header == "Mcp-Param-B", b
    # a big integer is compared exactly, not through a double
    msg = request("tools/call", {"name": "t", "arguments": {"n": 2**64 + 1}})
    assert check_request_headers({**headers_for(msg), "mcp-param-n": str(2**64 + 1)}, msg, tools) is None
    assert check_request_headers({**headers_for(msg), "mcp-param-n": str(2**64)}, msg, tools) is not None


def test_string_body_value_is_compared_as_a_string():
    tool = tool_with({"v": {"type": ["string", "integer"], "x-mcp-header": "V"}})
    msg = request("tools/call", {"name": "t", "arguments": {"v": "42"}})
    assert check_request_headers({**headers_for(msg), "mcp-param-v": "42.0"}, msg, {"t": tool}) is not None
    assert check_request_headers({**headers_for(msg), "mcp-param-v": "42"}, msg, {"t": tool}) is None


def test_nested_param_path():
    tool = tool_with({"o": {"type": "object", "properties": {"t": {"type": "string", "x-mcp-header": "Tenant"}}}})
    msg = request("tools/call", {"name": "t", "arguments": {"o": {"t": "acme"}}})
    assert check_request_headers({**headers_for(msg), "mcp-param-tenant": "acme"}, msg, {"t": tool}) is None
    problem = check_request_headers(headers_for(msg), msg, {"t": tool})
    assert problem.header == "Mcp-Param-Tenant"


def test_unknown_tools_invalid_tools_and_unannotated_headers_are_not_judged():
    headers = {**headers_for(SQL_CALL), "mcp-param-region": "anything", "mcp-param-other": "x"}
    assert check_request_headers(headers, SQL_CALL) is None            # no tool list
    assert check_request_headers(headers, SQL_CALL, {"other": EXECUTE_SQL}) is None  # tool not listed
    broken = copy.deepcopy(EXECUTE_SQL)
    broken["inputSchema"]["properties"]["query"]["x-mcp-header"] = "bad name"
    assert check_request_headers(headers, SQL_CALL, {"execute_sql": broken}) is None
    ok = {**headers_for(SQL_CALL, TOOLS), "mcp-param-other": "x"}
    assert check_request_headers(ok, SQL_CALL, TOOLS) is None


def test_header_mismatch_error_frame():
    problem = HeaderProblem("Header mismatch: Mcp-Name header value 'foo' does not match body value 'bar'",
                            "Mcp-Name")
    frame = orjson.loads(header_mismatch_error(1, problem))
    assert frame == {"jsonrpc": "2.0", "id": 1, "error": {
        "code": HEADER_MISMATCH, "message": problem.message,
        "data": {"source": "wire-gateway", "header": "Mcp-Name"}}}
    assert HEADER_MISMATCH == -32020


def test_messages_are_bounded_and_escaped():
    msg = request("tools/call", {"name": "x"})
    problem = check_request_headers({**headers_for(msg), "mcp-name": "=?base64?" + encode_header_value(
        "a" * 10_000)[9:]}, msg)
    assert len(problem.message) < 400
    problem = check_request_headers({**headers_for(msg), "mcp-name": encode_header_value("a\nb")}, msg)
    assert "'a\\x0ab'" in problem.message


@settings(max_examples=200, deadline=None)
@given(st.text(), st.one_of(st.none(), st.text(), st.integers(), st.booleans()))
def test_built_headers_always_pass_the_check(name, region):
    tools = {name: {**EXECUTE_SQL, "name": name}}
    msg = request("tools/call", {"name": name, "arguments": {"region": region}})
    assert check_request_headers(headers_for(msg, tools), msg, tools) is None
