"""The sans-IO parsers behind the HTTP edge checks (wire/authority.py, wire/media.py) and the
allow-lists built on them (proxy/http_edge.py, config validation), without a socket."""
from __future__ import annotations

import pytest

from wire_gateway.config import ConfigError, HttpSettings, parse_config
from wire_gateway.proxy.http_edge import EdgeCheck
from wire_gateway.transport.http_server import Request
from wire_gateway.wire.authority import (
    Authority,
    AuthorityError,
    parse_absolute_target,
    parse_host,
    parse_origins,
)
from wire_gateway.wire.media import (
    JSON_TYPE,
    SSE_TYPE,
    _ranges,
    accept_problem,
    json_content_type_problem,
    quality,
)

# ---- Host ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "host", "port"), [
    ("127.0.0.1", "127.0.0.1", None),
    ("127.0.0.1:8080", "127.0.0.1", 8080),
    ("LOCALHOST", "localhost", None),
    ("Example.COM:443", "example.com", 443),
    ("[::1]:8080", "::1", 8080),
    ("[::1]", "::1", None),
    ("[0:0:0:0:0:0:0:1]", "::1", None),
    ("[::FFFF:127.0.0.1]:1", "::ffff:7f00:1", 1),
    ("localhost:0", "localhost", 0),
    ("localhost:65535", "localhost", 65535),
    ("localhost:080", "localhost", 80),
    ("xn--bcher-kva.example", "xn--bcher-kva.example", None),
    ("a-b_c~d.e", "a-b_c~d.e", None),
    ("%41bc", "%41bc", None),           # pct-encoded octets are part of reg-name
])
def test_valid_hosts(value, host, port):
    assert parse_host(value) == Authority(host, port)


@pytest.mark.parametrize(("value", "why"), [
    ("evil.com@127.0.0.1", "userinfo"),
    ("user:pw@127.0.0.1", "userinfo"),
    ("127.0.0.1:80@evil.com", "userinfo"),
    ("127.0.0.1#evil.com", "path, query or fragment"),
    ("127.0.0.1/evil.com", "path, query or fragment"),
    ("127.0.0.1?x", "path, query or fragment"),
    ("localhost:99999", "out of range"),
    ("localhost:65536", "out of range"),
    ("localhost:000080", "out of range"),
    ("localhost:abc", "not a number"),
    ("localhost:-1", "not a number"),
    ("localhost:8\u0660", "not a number"),   # an Arabic-Indic digit is not DIGIT
    ("localhost:", "empty"),
    (":80", "host before ':' is empty"),
    ("::1", "brackets"),
    ("[::1", "not closed"),
    ("[::1]x", "only ':port'"),
    ("[::1]:", "empty"),
    ("[127.0.0.1]", "not an IPv6 address"),
    ("[fe80::1%eth0]", "zone id"),
    ("[v1.abc]", "IPvFuture"),
    ("local host", "whitespace"),
    ("localhost\t", "whitespace"),
    ("l\x00calhost", "control"),
    ("bad%zz", "percent-encoded"),
    ("a]b", "bracket"),
    ("h\u00e9llo", "not allowed in a host name"),
    ("", "empty"),
])
def test_hostile_hosts(value, why):
    with pytest.raises(AuthorityError) as info:
        parse_host(value)
    assert why in str(info.value)


# ---- Origin ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "keys"), [
    ("http://localhost:3000", [("http", "localhost", 3000)]),
    ("HTTP://LocalHost", [("http", "localhost", 80)]),
    ("http://localhost:80", [("http", "localhost", 80)]),
    ("https://example.com", [("https", "example.com", 443)]),
    ("http://[::1]:8080", [("http", "::1", 8080)]),
    ("chrome-extension://abcdef", [("chrome-extension", "abcdef", None)]),
    ("http://a https://b:1", [("http", "a", 80), ("https", "b", 1)]),
])
def test_valid_origins(value, keys):
    assert [o.key() for o in parse_origins(value)] == keys


def test_null_origin():
    assert parse_origins("null") is None


@pytest.mark.parametrize(("value", "why"), [
    ("http://evil.com@localhost", "userinfo"),
    ("//localhost", "not with //"),
    ("://localhost", "not with //"),
    ("localhost", "no scheme://"),
    ("http://localhost/", "path"),
    ("http://localhost?x", "query"),
    ("http://localhost#x", "fragment"),
    ("http://localhost:99999", "out of range"),
    ("http://", "empty"),
    ("1http://localhost", "not a URI scheme"),
    ("http://a  http://b", "single spaces"),
    ("NULL", "no scheme://"),
    ("", "empty"),
])
def test_hostile_origins(value, why):
    with pytest.raises(AuthorityError) as info:
        parse_origins(value)
    assert why in str(info.value)


# ---- absolute-form targets ------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "scheme", "authority"), [
    ("http://127.0.0.1:8080/mcp", "http", Authority("127.0.0.1", 8080)),
    ("HTTPS://Example.com/mcp/echo?x=1&y=%20", "https", Authority("example.com", None)),
    ("http://[::1]/", "http", Authority("::1", None)),
    ("http://localhost", "http", Authority("localhost", None)),
])
def test_valid_absolute_targets(target, scheme, authority):
    assert parse_absolute_target(target) == (scheme, authority)


@pytest.mark.parametrize(("target", "why"), [
    ("http://evil.com@127.0.0.1/mcp", "userinfo"),
    ("http://127.0.0.1/mcp#x", "fragment"),
    ("ftp://127.0.0.1/mcp", "not http or https"),
    ("http://127.0.0.1:abc/mcp", "not a number"),
    ("http:///mcp", "empty"),
    ("http://127.0.0.1/m\\cp", "characters a URI does not allow"),
    ("mcp", "neither a path"),
])
def test_hostile_absolute_targets(target, why):
    with pytest.raises(AuthorityError) as info:
        parse_absolute_target(target)
    assert why in str(info.value)


# ---- Content-Type and Accept ------------------------------------------------------------------


@pytest.mark.parametrize("value", ["application/json", "APPLICATION/JSON", "application/json; charset=utf-8",
                                   'application/json;charset="UTF-8"', "application/json ; charset=utf-8",
                                   "application/json;;", "application/json; foo=bar; charset=utf-8"])
def test_utf8_json_content_types(value):
    assert json_content_type_problem(value) is None


@pytest.mark.parametrize(("value", "why"), [
    ("application/json; charset=utf-16", "charset 'utf-16' is not supported"),
    ('application/json; charset="utf-32"', "charset 'utf-32' is not supported"),
    ("application/json; charset=utf8", "charset 'utf8' is not supported"),
    ("application/json; CHARSET=latin1", "charset 'latin1' is not supported"),
    ("application/json; charset=utf-8; charset=utf-16", "more than once"),
    ("application/json; charset", "not a media type"),
    ("application/json; charset=\"utf-8", "not a media type"),
    ("application/jsonx", "must be application/json"),
    ("application/json-seq", "must be application/json"),
    ("text/json", "must be application/json"),
    ("application/json, text/plain", "not a media type"),
    (None, "missing"),
    ("", "missing"),
])
def test_content_types_refused(value, why):
    problem = json_content_type_problem(value)
    assert problem is not None and why in problem


BOTH = (JSON_TYPE, SSE_TYPE)


@pytest.mark.parametrize("value", [None, "*/*", "application/json, text/event-stream", "application/*, text/*",
                                   "text/event-stream, application/json;q=0.001", "*/*;q=0.1",
                                   'application/json;x="a,b", text/event-stream', "text/html, */*;q=0.8",
                                   "application/json, text/event-stream;q=1.000;ext=1"])
def test_accept_allowing_json_and_sse(value):
    assert accept_problem(value, BOTH) is None


@pytest.mark.parametrize(("value", "why"), [
    ("text/html", "allows neither"),
    ("", "allows neither"),
    ("garbage", "allows neither"),
    ("application/json", "does not allow text/event-stream"),
    ("application/json;q=0, */*", "does not allow application/json"),
    ("*/*;q=0", "allows neither"),
    ("*/*, text/*;q=0", "does not allow text/event-stream"),
    ("*/json, text/event-stream", "does not allow application/json"),   # */subtype is not a media range
    ("application/json;q=1.5, text/event-stream", "does not allow application/json"),
    ("application/json;q=0.0001, text/event-stream", "does not allow application/json"),
])
def test_accept_refused(value, why):
    problem = accept_problem(value, BOTH)
    assert problem is not None and why in problem


def test_the_most_specific_range_decides():
    ranges = [("*", "*", 1.0), ("application", "*", 0.0), ("application", "json", 0.5)]
    assert quality(ranges, "application/json") == 0.5
    assert quality(ranges, "application/xml") == 0.0
    assert quality(ranges, "text/event-stream") == 1.0
    assert quality(_ranges("text/*;q=0.3, text/event-stream;q=0"), "text/event-stream") == 0.0


# ---- the allow-lists --------------------------------------------------------------------------------


def request(host: str | None, origin: str | None = None, target: str = "/mcp") -> Request:
    headers = [("host", host)] if host is not None else []
    if origin is not None:
        headers.append(("origin", origin))
    return Request("POST", target, target, headers, b"", None)


def test_allowed_hosts_compare_parsed_values():
    edge = EdgeCheck(HttpSettings(allowed_hosts=("Gateway.Example", "api.example:8443", "tls.example:443",
                                                 "[2001:db8::1]"),
                                  allowed_origins=("https://App.Example", "http://dev.example:8080")))
    ok = [("gateway.example", None), ("GATEWAY.EXAMPLE:9", None), ("api.example:8443", None),
          ("tls.example", None), ("[2001:DB8:0::1]:80", None),
          ("127.0.0.1", "https://app.example:443"), ("127.0.0.1", "HTTPS://APP.EXAMPLE"),
          ("127.0.0.1", "http://dev.example:8080")]
    for host, origin in ok:
        assert edge.refusal(request(host, origin)) is None, (host, origin)
    bad = [("api.example", None), ("api.example:8444", None), ("tls.example:444", None),
           ("gateway.example@127.0.0.1", None), ("127.0.0.1", "http://app.example"),
           ("127.0.0.1", "https://app.example:8443"), ("127.0.0.1", "http://dev.example"), (None, None)]
    for host, origin in bad:
        refusal = edge.refusal(request(host, origin))
        assert refusal is not None and refusal[0] == 403, (host, origin)


def test_wildcards_still_refuse_what_does_not_parse():
    edge = EdgeCheck(HttpSettings(allowed_hosts=("*",), allowed_origins=("*",)))
    assert edge.refusal(request("anything.example", "https://anything.example")) is None
    assert edge.refusal(request("evil.com@127.0.0.1"))[0] == 403
    assert edge.refusal(request("127.0.0.1", "//localhost"))[0] == 403


def test_null_origin_only_when_listed():
    assert EdgeCheck(HttpSettings()).refusal(request("127.0.0.1", "null"))[0] == 403
    assert EdgeCheck(HttpSettings(allowed_origins=("null",))).refusal(request("127.0.0.1", "null")) is None


def test_the_bound_address_is_allowed_unless_a_wildcard():
    assert EdgeCheck(HttpSettings(host="10.0.0.5")).refusal(request("10.0.0.5:8080")) is None
    assert EdgeCheck(HttpSettings(host="0.0.0.0")).refusal(request("10.0.0.5:8080"))[0] == 403
    assert EdgeCheck(HttpSettings(host="[FE80::0:1]")).refusal(request("[fe80::1]")) is None


def test_absolute_target_must_agree_with_host():
    edge = EdgeCheck(HttpSettings(allowed_hosts=("gateway.example",)))
    assert edge.refusal(request("gateway.example", target="http://gateway.example:80/mcp")) is None
    assert edge.refusal(request("gateway.example:443", target="https://gateway.example/mcp")) is None
    assert "same host and port" in edge.refusal(request("gateway.example", target="http://localhost/mcp"))[1]
    assert "not allowed" in edge.refusal(request("gateway.example", target="http://evil.example/mcp"))[1]


def test_verdicts_are_bounded():
    edge = EdgeCheck(HttpSettings())
    for i in range(3000):
        edge.refusal(request(f"h{i}.example"))
    assert len(edge._verdicts) <= 1024


@pytest.mark.parametrize(("key", "entry", "why"), [
    ("allowed_hosts", "evil.com@gw.example", "userinfo"),
    ("allowed_hosts", "gw.example:99999", "out of range"),
    ("allowed_hosts", "https://gw.example", "path"),
    ("allowed_origins", "https://app.example/", "path"),
    ("allowed_origins", "app.example", "no scheme://"),
])
def test_config_refuses_allow_list_entries_no_request_could_match(key, entry, why):
    with pytest.raises(ConfigError) as info:
        parse_config({"servers": {"s": {"command": "x"}}, "http": {key: ["ok.example" if key == "allowed_hosts"
                                                                        else "https://ok.example", entry]}})
    assert info.value.problems[0].startswith(f"$.http.{key}[1]: {entry!r} is not") and why in info.value.problems[0]
