"""Request timeouts for command (stdio) servers (issue 13, defect 4): a server that never answers
must not hold its caller forever.

A request with no answer and no progress notification for the server's `timeout` seconds gets
-31002 (data: server, method, timeout), and the server gets `notifications/cancelled` for it.
Progress for the request (its `_meta.progressToken`) restarts the clock; `null` turns it off; a
late answer is dropped; a request the client cancelled is never timed out; a subscription is
never timed out. Over stdio and over HTTP (legacy session and modern pool).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway import MODERN_META, LineClient, fixture, gateway, write_config
from http_gateway import HttpGateway
from test_http_front import ACCEPT, INIT, modern, sse_events

from wire_gateway.upstream.pending import NEVER, PendingTable
from wire_gateway.upstream.timeouts import UNTIMED_METHODS

UPSTREAM_UNAVAILABLE = -31002
# Short enough to keep the tests quick, long enough that a server starting up or a plain call on
# a busy machine does not time out by accident.
T = 1.5


def slow_gateway(tmp_path: Path, timeout: Any, *extra: str) -> tuple[LineClient, Path]:
    log = tmp_path / "slow.log"
    spec = {**fixture("slow", "--log", str(log)), "timeout": timeout}
    return gateway(write_config(tmp_path, {"slow": spec}), "slow", tmp_path, *extra), log


def server_log(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def text_of(answer: dict[str, Any]) -> str:
    return answer["result"]["content"][0]["text"]


def call(name: str, req_id: Any, token: Any = None, **args: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": args}
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return {"jsonrpc": "2.0", "id": req_id, "method": "tools/call", "params": params}


def check_timeout_error(answer: dict[str, Any], timeout: float) -> None:
    error = answer["error"]
    assert error["code"] == UPSTREAM_UNAVAILABLE
    assert f"did not answer tools/call within {timeout:g}s (its timeout); " in error["message"]
    assert error["data"] == {"source": "wire-gateway", "server": "slow", "method": "tools/call", "timeout": timeout}


# ---- the pending table's deadlines (sans-IO) ---------------------------------------------------------


def test_the_pending_table_expires_in_deadline_order_and_progress_moves_a_request_back() -> None:
    table = PendingTable()
    table.add("sub", "subscriptions/listen", 1)                   # no deadline: never expires
    table.add("a", "tools/call", 1, deadline=10.0, token="ta")
    table.add("b", "tools/call", 1, deadline=11.0)
    table.add("c", "tools/call", 1, deadline=12.0, token=7)
    assert table.next_deadline() == 10.0
    assert table.extend("ta", 13.0) == "a" and table.extend("nobody", 14.0) is None
    assert table.next_deadline() == 11.0
    assert [k for k, _ in table.expire(12.5)] == ["b", "c"]
    assert table.extend(7, 20.0) is None                          # expired: its token is forgotten
    assert table.pop("a") is not None and table.extend("ta", 20.0) is None
    assert table.next_deadline() is None and table.expire(1e9) == [] and "sub" in table
    assert table.pop("sub").deadline == NEVER


def test_a_reused_progress_token_stays_with_the_newer_request() -> None:
    table = PendingTable()
    table.add(1, "tools/call", 1, deadline=5.0, token="t")
    table.add(2, "tools/call", 1, deadline=6.0, token="t")
    table.pop(1)
    assert table.extend("t", 9.0) == 2


def test_an_open_subscription_is_not_an_answer_to_wait_for_at_shutdown() -> None:
    """An HTTP upstream's shutdown drains the requests in flight, but not subscriptions/listen
    streams: they end only when cancelled (waiting held every aggregate session's end 2 s)."""
    table = PendingTable()
    table.add("sub", "subscriptions/listen", 1)
    assert not table.awaiting_answers(UNTIMED_METHODS)
    table.add(1, "tools/call", 1, deadline=5.0)
    assert table.awaiting_answers(UNTIMED_METHODS)
    table.pop(1)
    assert not table.awaiting_answers(UNTIMED_METHODS) and len(table) == 1


# ---- stdio -----------------------------------------------------------------------------------------------


def test_a_request_with_no_answer_times_out_and_the_server_is_cancelled(tmp_path: Path) -> None:
    gw, log = slow_gateway(tmp_path, T)
    try:
        gw.initialize()
        started = time.monotonic()
        answer = gw.request("tools/call", {"name": "sleep", "arguments": {"seconds": 30}}, req_id="hung", timeout=15)
        took = time.monotonic() - started
        check_timeout_error(answer, T)
        assert answer["error"]["message"].endswith("; the gateway cancelled it")
        assert T - 0.1 <= took < T + 4, took
        assert wait_for(lambda: {"cancelled": "hung"} in server_log(log))
        assert text_of(gw.call("echo", {"text": "still here"})) == "still here"
    finally:
        gw.close()
    assert (f"request 'hung' (tools/call) got no answer within {T:g}s (timeout); the gateway cancelled it"
            in gw.log_text())


def test_progress_keeps_a_request_alive_past_its_timeout(tmp_path: Path) -> None:
    """Progress for one request restarts its clock only: the request beside it, without a token,
    still times out."""
    gw, log = slow_gateway(tmp_path, T)
    try:
        gw.initialize()
        gw.send(call("progress", "busy", token="tok", seconds=2 * T + 1, every=0.3))
        gw.send(call("progress", "quiet", seconds=2 * T + 1, every=0.3))
        answers: dict[Any, Any] = {}
        progress = 0
        deadline = time.monotonic() + 15
        while len(answers) < 2 and time.monotonic() < deadline:
            frame = gw.recv(timeout=max(0.01, deadline - time.monotonic()))
            if frame.get("method") == "notifications/progress":
                progress += frame["params"]["progressToken"] == "tok"
            elif "id" in frame:
                answers[frame["id"]] = (frame, time.monotonic())
        assert text_of(answers["busy"][0]) == f"worked {2 * T + 1}" and progress >= 5
        check_timeout_error(answers["quiet"][0], T)
        assert answers["quiet"][1] < answers["busy"][1]
    finally:
        gw.close()
    assert {"cancelled": "quiet"} in server_log(log) and {"cancelled": "busy"} not in server_log(log)


def test_null_turns_the_timeout_off(tmp_path: Path) -> None:
    gw, _ = slow_gateway(tmp_path, None)
    try:
        gw.initialize()
        assert text_of(gw.call("sleep", {"seconds": 1.5}, timeout=15)) == "slept 1.5"
    finally:
        gw.close()
    assert "no answer within" not in gw.log_text()


def test_the_default_timeout_is_60s_for_a_command_server_and_30s_for_a_url_server() -> None:
    from wire_gateway.config.loader import ConfigError, parse_config

    servers = parse_config({"servers": {"c": {"command": "x"}, "u": {"url": "http://127.0.0.1:1/mcp"}}}).servers
    assert servers["c"].timeout == 60.0 and servers["u"].timeout == 30.0
    assert parse_config({"servers": {"c": {"command": "x", "timeout": None}}}).servers["c"].timeout is None
    with pytest.raises(ConfigError, match="only for a command server"):
        parse_config({"servers": {"u": {"url": "http://127.0.0.1:1/mcp", "timeout": None}}})
    with pytest.raises(ConfigError, match="timeout"):
        parse_config({"servers": {"c": {"command": "x", "timeout": 0}}})


def test_a_late_answer_after_the_timeout_is_dropped(tmp_path: Path) -> None:
    """`stubborn` answers even though it was cancelled: the caller already has its one answer."""
    gw, _ = slow_gateway(tmp_path, T, "--log-level", "debug")
    try:
        gw.initialize()
        gw.send(call("stubborn", "late", seconds=T + 1))
        seen: list[dict[str, Any]] = []
        first = gw.recv(timeout=10)
        seen.append(first)
        check_timeout_error(first, T)
        assert wait_for(lambda: "answer to 'late', which nobody waits for any more" in gw.log_text())
        gw.send(call("echo", "next", text="after"))      # answered after anything the server sent before
        while True:
            frame = gw.recv(timeout=10)
            seen.append(frame)
            if frame.get("id") == "next":
                break
        assert text_of(frame) == "after"
        assert [f for f in seen if f.get("id") == "late"] == [first]
    finally:
        gw.close()


def test_a_cancelled_request_is_not_timed_out_later(tmp_path: Path) -> None:
    gw, log = slow_gateway(tmp_path, T)
    try:
        gw.initialize()
        gw.send(call("sleep", "gone", seconds=30))
        gw.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "gone"}})
        time.sleep(T + 1)
        assert text_of(gw.call("echo", {"text": "x"})) == "x"
        assert all(f.get("id") != "gone" for f in gw.other)
    finally:
        gw.close()
    assert server_log(log).count({"cancelled": "gone"}) == 1     # the client's, not a second one
    assert "no answer within" not in gw.log_text()


def test_a_subscription_is_never_timed_out(tmp_path: Path) -> None:
    gw, _log = slow_gateway(tmp_path, T)
    try:
        gw.send({"jsonrpc": "2.0", "id": "sub", "method": "subscriptions/listen",
                 "params": {"_meta": MODERN_META, "notifications": {"toolsListChanged": True}}})
        time.sleep(T + 1)
        answer = gw.request("tools/call", {"name": "echo", "arguments": {"text": "m"}, "_meta": MODERN_META})
        assert text_of(answer) == "m"
        assert all(f.get("id") != "sub" or "error" not in f for f in gw.other), gw.other
    finally:
        gw.close()
    assert "no answer within" not in gw.log_text()


def test_a_request_queued_for_a_restarting_server_times_out_and_is_never_sent(tmp_path: Path) -> None:
    log = tmp_path / "crashing.log"
    spec = {**fixture("crashing", "--log", str(log)), "timeout": T,
            "restart": {"initial_delay": T + 3, "max_delay": T + 3, "jitter": 0}}
    gw = gateway(write_config(tmp_path, {"crashing": spec}), "crashing", tmp_path)

    def modern_call(tool: str, req_id: str, **args: Any) -> dict[str, Any]:
        return gw.request("tools/call", {"name": tool, "arguments": args, "_meta": MODERN_META}, req_id=req_id,
                          timeout=15)
    try:
        assert modern_call("crash", "boom")["error"]["code"] == -31001
        started = time.monotonic()
        queued = modern_call("echo", "queued", text="never sent")          # the server is restarting
        assert time.monotonic() - started < T + 2.5
        assert queued["error"]["code"] == UPSTREAM_UNAVAILABLE and queued["error"]["data"]["timeout"] == T
        assert wait_for(lambda: sum("started" in e for e in server_log(log)) == 2)
        assert text_of(modern_call("echo", "later", text="sent")) == "sent"
    finally:
        gw.close()
    assert [e.get("id") for e in server_log(log) if e.get("tool") == "echo"] == ["later"]
    assert "it was not sent (the server was restarting)" in queued["error"]["message"]


# ---- over HTTP, with a command server ------------------------------------------------------------------


@pytest.fixture
def http_gw(tmp_path: Path):
    log = tmp_path / "slow.log"
    gateway_ = HttpGateway(tmp_path, {"slow": {**fixture("slow", "--log", str(log)), "timeout": T}})
    gateway_.slow_log = log
    try:
        yield gateway_
    finally:
        assert gateway_.stop() == 0, gateway_.log()


def answer_of(resp: httpx.Response) -> dict[str, Any]:
    if resp.headers["content-type"].startswith("text/event-stream"):
        return [json.loads(data) for _, data in sse_events(resp.text.splitlines())][-1]
    return resp.json()


def test_a_legacy_http_session_gets_the_timeout_error(http_gw: HttpGateway) -> None:
    opened = httpx.post(http_gw.url("slow"), json=INIT, headers=ACCEPT, timeout=10)
    h = {**ACCEPT, "mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    httpx.post(http_gw.url("slow"), json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h,
               timeout=10)
    started = time.monotonic()
    resp = httpx.post(http_gw.url("slow"), json=call("sleep", 7, seconds=30), headers=h, timeout=15)
    assert time.monotonic() - started < T + 4
    answer = answer_of(resp)
    assert answer["id"] == 7
    check_timeout_error(answer, T)
    assert wait_for(lambda: any("cancelled" in e for e in server_log(http_gw.slow_log)))


def test_a_modern_http_request_gets_the_timeout_error(http_gw: HttpGateway) -> None:
    body, headers = modern("m-1", "tools/call", {"name": "sleep", "arguments": {"seconds": 30}}, name="sleep")
    started = time.monotonic()
    resp = httpx.post(http_gw.url("slow"), json=body, headers=headers, timeout=15)
    assert time.monotonic() - started < T + 4
    answer = answer_of(resp)
    assert answer["id"] == "m-1"
    check_timeout_error(answer, T)
    assert wait_for(lambda: any("cancelled" in e for e in server_log(http_gw.slow_log)))
    body, headers = modern("m-2", "tools/call", {"name": "echo", "arguments": {"text": "ok"}}, name="echo")
    assert text_of(answer_of(httpx.post(http_gw.url("slow"), json=body, headers=headers, timeout=10))) == "ok"
