"""Sans-IO rules of the aggregate: namespaced names, hash shortening, cursors, era adaptation."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from wire_gateway.config import ConfigError, parse_config
from wire_gateway.wire import namespacing as ns

SERVER_CHARS = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789_.-"
servers = st.text(SERVER_CHARS, min_size=1, max_size=64).filter(lambda s: s[0].isalnum())
separators = st.text(SERVER_CHARS, min_size=1, max_size=8)
tool_names = st.text(min_size=1, max_size=200)


@given(servers, separators, tool_names)
def test_a_valid_server_name_always_routes_back(server, sep, name):
    """Whatever the tool is called, a server name that passes validation is found again."""
    if ns.server_name_problem(server, sep) is not None:
        return
    public = ns.join_name(server, name, sep)
    assert len(public) <= ns.MAX_NAME
    got = ns.split_name(public, sep)
    assert got is not None and got[0] == server
    if len(f"{server}{sep}{name}") <= ns.MAX_NAME:
        assert got[1] == name


@given(servers, servers, separators, tool_names, tool_names)
def test_no_collisions_between_servers(s1, s2, sep, n1, n2):
    if s1 == s2 or ns.server_name_problem(s1, sep) or ns.server_name_problem(s2, sep):
        return
    assert ns.join_name(s1, n1, sep) != ns.join_name(s2, n2, sep)


def test_the_ambiguous_names_are_refused():
    # "a_" + "__" + "b" would read as "a" + "__" + "_b"
    assert ns.server_name_problem("a_", "__") is not None
    assert ns.server_name_problem("a__b", "__") is not None
    assert ns.server_name_problem("a_b", "__") is None
    assert ns.server_name_problem("a.b", ".") is not None
    assert ns.server_name_problem("ab", "-x-") is None
    assert ns.server_name_problem("ab-", "-x-") is not None
    assert ns.server_name_problem("ab-x", "-x-") is not None


def test_long_names_are_shortened_deterministically():
    name = "t" * 300
    one = ns.join_name("srv", name, "__")
    assert one == ns.join_name("srv", name, "__")
    assert len(one) == ns.MAX_NAME and one.startswith("srv__ttt")
    other = ns.join_name("srv", "t" * 299 + "u", "__")
    assert other != one and len(other) == ns.MAX_NAME       # same prefix, different hash
    assert ns.is_shortened("srv", ns.split_name(one, "__")[1], "__")
    assert not ns.is_shortened("srv", "echo", "__")
    assert ns.join_name("srv", "echo", "__") == "srv__echo"


@given(st.text(max_size=30), st.one_of(st.none(), st.text(max_size=40)), st.integers(0, 10**6))
def test_cursor_round_trip(server, member_cursor, offset):
    token = ns.mint_cursor(server, member_cursor, offset)
    assert ns.read_cursor(token) == (server, member_cursor, offset)
    assert "=" not in token and "/" not in token and "+" not in token


@pytest.mark.parametrize("junk", [None, 3, "", "abc", "!!!", ns.mint_cursor("a", None)[:-2] + "zz",
                                  "WyJ3Z2ExIiwiYSIsbnVsbCwtMV0"])   # ["wga1","a",null,-1]
def test_foreign_cursors_are_refused(junk):
    assert ns.read_cursor(junk) is None


def test_page_plan_walks_servers_in_turn():
    order = ["a", "b", "c"]
    items, nxt = ns.page_plan(order, "a", [1, 2, 3], 0, None, None, None)
    assert items == [1, 2, 3] and ns.read_cursor(nxt) == ("b", None, 0)
    items, nxt = ns.page_plan(order, "b", [4], 0, "m2", None, None)          # b has more pages of its own
    assert items == [4] and ns.read_cursor(nxt) == ("b", "m2", 0)
    items, nxt = ns.page_plan(order, "c", [5], 0, None, None, None)
    assert items == [5] and nxt is None


def test_page_plan_cuts_member_pages_to_the_page_size():
    order = ["a", "b"]
    items, nxt = ns.page_plan(order, "a", [1, 2, 3, 4, 5], 0, "m2", "m1", 2)
    assert items == [1, 2] and ns.read_cursor(nxt) == ("a", "m1", 2)
    items, nxt = ns.page_plan(order, "a", [1, 2, 3, 4, 5], 4, "m2", "m1", 2)
    assert items == [5] and ns.read_cursor(nxt) == ("a", "m2", 0)


@given(st.lists(st.integers(0, 6), min_size=1, max_size=4), st.integers(1, 4))
def test_paging_sees_every_item_exactly_once(sizes, page_size):
    """Simulated members, each with one page of `size` items: walking cursors yields all of them."""
    order = [f"s{i}" for i in range(len(sizes))]
    pages = {s: [f"{s}-{k}" for k in range(n)] for s, n in zip(order, sizes)}
    seen, cursor = [], None
    for _ in range(100):
        server, member_cursor, offset = (order[0], None, 0) if cursor is None else ns.read_cursor(cursor)
        items, cursor = ns.page_plan(order, server, pages[server], offset, None, member_cursor, page_size)
        assert len(items) <= page_size
        seen += items
        if cursor is None:
            break
    assert seen == [x for s in order for x in pages[s]]


def test_template_matching():
    assert ns.template_regex("greeting://{name}").match("greeting://ada")
    assert not ns.template_regex("greeting://{name}").match("greeting://a/b")
    assert ns.template_regex("file:///{+path}").match("file:///a/b/c")
    assert not ns.template_regex("greeting://{name}").match("other://ada")


def test_era_adaptation():
    params = {"name": "x", "_meta": {"progressToken": 1, "io.modelcontextprotocol/protocolVersion": "2026-07-28"}}
    assert ns.strip_modern_meta(params) == {"name": "x", "_meta": {"progressToken": 1}}
    assert ns.strip_modern_meta({"_meta": {"io.modelcontextprotocol/clientInfo": {}}}) == {}
    env = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
    assert ns.with_modern_meta({"a": 1}, env) == {"a": 1, "_meta": env}
    assert ns.result_for_legacy({"resultType": "complete", "ttlMs": 5, "tools": [],
                                 "_meta": {"io.modelcontextprotocol/serverInfo": {}, "k": 1}}) == \
        {"tools": [], "_meta": {"k": 1}}
    assert ns.result_for_modern({"tools": []}) == {"tools": [], "resultType": "complete"}
    assert ns.result_for_modern({"resultType": "input_required"}) == {"resultType": "input_required"}
    assert ns.result_for_modern({"tools": []}, cacheable=True) == \
        {"tools": [], "resultType": "complete", "ttlMs": 0, "cacheScope": "private"}
    kept = {"contents": [], "resultType": "complete", "ttlMs": 500, "cacheScope": "public"}
    assert ns.result_for_modern(kept, cacheable=True) == kept
    assert ns.result_for_modern({"resultType": "input_required"}, cacheable=True) == {"resultType": "input_required"}


def test_merged_capabilities():
    merged = ns.merge_capabilities([{"tools": {}}, {"resources": {"subscribe": True}, "logging": {}}])
    assert merged == {"tools": {"listChanged": True}, "resources": {"subscribe": True, "listChanged": True},
                      "logging": {}}


def test_config_refuses_server_names_that_clash_with_the_separator():
    with pytest.raises(ConfigError) as info:
        parse_config({"servers": {"a_": {"command": "x"}, "ok": {"command": "y"}}})
    assert "$.servers.a_" in info.value.report() and "separator" in info.value.report()
    config = parse_config({"servers": {"a_": {"command": "x"}}, "aggregate": {"separator": "--", "page_size": 2}})
    assert config.aggregate.separator == "--" and config.aggregate.page_size == 2
    with pytest.raises(ConfigError):
        parse_config({"servers": {"a": {"command": "x"}}, "aggregate": {"separator": "a b"}})
