"""Pooled server processes (`"pool": {"size": N}`, upstream/pool.py): modern requests spread
over N supervised copies, least busy first; a copy's crash restarts that copy alone.

First the pool against fake copies (routing, cancellation, a copy's own requests), then a real
`wire-gateway serve` with three copies of the echo server, seen through /status on its admin port.
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from gateway import MODERN_META, fixture
from http_gateway import HttpGateway
from test_metrics import admin_port
from test_modern_direct import modern_post

from wire_gateway.config.loader import ConfigError, load_config
from wire_gateway.upstream.handshake import Handshake
from wire_gateway.upstream.pool import PooledUpstream
from wire_gateway.wire.frame import Frame, decode


def frame(msg: dict[str, Any]) -> Frame:
    got = decode(json.dumps(msg).encode())
    assert isinstance(got, Frame)
    return got


class FakeCopy:
    """An upstream that records what it is sent and answers when told."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.sent: list[Frame] = []
        self.tap = None
        self.state = "running"
        self.restarts = 0
        self.last_exit = None
        self.handshake = Handshake()
        self.frames_in = self.frames_out = 0

    def request(self, f: Frame) -> bytes | None:
        self.sent.append(f)
        return None

    def notify(self, f: Frame) -> None:
        self.sent.append(f)

    def reply(self, f: Frame) -> None:
        self.sent.append(f)

    def flush(self) -> None: ...
    def flush_soon(self) -> None: ...


class FakeSink:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.replies: list[Any] = []

    def server_frame(self, f: Frame) -> None:
        self.frames.append(f)

    def gateway_reply(self, req_id: Any, data: bytes) -> None:
        self.replies.append(req_id)

    def flush(self) -> None: ...
    async def wait_writable(self) -> None: ...


def call(i: int) -> Frame:
    return frame({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": "echo"}})


def test_least_busy_copy_running_first() -> None:
    sink = FakeSink()
    pool = PooledUpstream("echo", 3, FakeCopy, sink)
    copies: list[Any] = pool.copies          # the FakeCopy instances
    for i in range(1, 4):
        assert pool.request(call(i)) is None
    assert [len(c.sent) for c in copies] == [1, 1, 1]
    copies[1].sink.server_frame(frame({"jsonrpc": "2.0", "id": 2, "result": {}}))   # copy 1 answers
    assert pool.busy == [1, 0, 1] and sink.frames[-1].id == 2
    pool.request(call(4))
    assert copies[1].sent[-1].id == 4
    copies[2].sink.gateway_reply(3, b"{}")                                           # a timeout answer
    assert pool.busy == [1, 1, 0] and sink.replies == [3]
    copies[2].state = "restarting"                                                   # idle but not running
    pool.request(call(5))
    assert copies[0].sent[-1].id == 5 and pool.busy == [2, 1, 0]
    for c in copies:
        c.state = "restarting"
    pool.request(call(6))                                                            # none running: least busy
    assert copies[2].sent[-1].id == 6
    assert pool.state == "restarting"


def test_a_cancellation_goes_to_the_copy_with_the_request() -> None:
    pool = PooledUpstream("echo", 2, FakeCopy, FakeSink())
    copies: list[Any] = pool.copies
    pool.request(call(1))
    pool.request(call(2))
    pool.notify(frame({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}}))
    assert [f.method for f in copies[1].sent] == ["tools/call", "notifications/cancelled"]
    assert [f.method for f in copies[0].sent] == ["tools/call"]
    pool.notify(frame({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}}))
    pool.notify(frame({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}))     # to every copy
    assert [len(c.sent) for c in copies] == [2, 3]


def test_two_copies_requests_never_share_an_id() -> None:
    sink = FakeSink()
    pool = PooledUpstream("echo", 2, FakeCopy, sink)
    copies: list[Any] = pool.copies
    ask = {"jsonrpc": "2.0", "id": "srv-1", "method": "roots/list"}
    copies[0].sink.server_frame(frame(ask))
    copies[1].sink.server_frame(frame(ask))
    ours = [f.id for f in sink.frames]
    assert len(set(ours)) == 2 and all(json.loads(f.raw)["id"] == f.id for f in sink.frames)
    pool.reply(frame({"jsonrpc": "2.0", "id": ours[1], "result": {"roots": []}}))
    assert copies[1].sent[-1].id == "srv-1" and json.loads(copies[1].sent[-1].raw)["id"] == "srv-1"
    assert copies[0].sent == []
    pool.reply(frame({"jsonrpc": "2.0", "id": ours[1], "result": {}}))          # answered already: dropped
    assert len(copies[1].sent) == 1


def test_config(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"servers": {"e": {"command": "x", "pool": {"size": 4}}}}))
    assert load_config(str(path)).servers["e"].pool_size == 4
    assert load_config(str(path)).servers["e"].resolved().pool_size == 4
    path.write_text(json.dumps({"servers": {"e": {"url": "http://127.0.0.1:1/mcp", "pool": {"size": 2}}}}))
    with pytest.raises(ConfigError, match=r"servers\.e\.pool: a url server is one endpoint"):
        load_config(str(path))
    path.write_text(json.dumps({"servers": {"e": {"command": "x", "pool": {"size": 2}, "era": "legacy"}}}))
    with pytest.raises(ConfigError, match=r"servers\.e\.pool: copies serve requests that stand alone"):
        load_config(str(path))
    path.write_text(json.dumps({"servers": {"e": {"command": "x", "pool": {"size": 0}}}}))
    with pytest.raises(ConfigError, match=r"pool\.size"):
        load_config(str(path))


# ---- a real gateway ----------------------------------------------------------------------------

def tool(gw: HttpGateway, i: int, name: str, arguments: dict[str, Any] | None = None) -> str:
    r = modern_post(gw, "echo", i, "tools/call", {"name": name, "arguments": arguments or {}, "_meta": MODERN_META})
    assert r.status_code == 200, r.text
    body = r.json() if r.headers["content-type"].startswith("application/json") else \
        json.loads([line for line in r.text.splitlines() if line.startswith("data:")][-1][5:])
    return str(body["result"]["content"][0]["text"])


def copies(port: int) -> list[dict[str, Any]]:
    status = httpx.get(f"http://127.0.0.1:{port}/status", timeout=10).json()
    return list(status["servers"]["echo"]["shared"]["copies"])


def test_three_copies_serve_modern_requests_and_restart_alone(tmp_path: Path) -> None:
    gw = HttpGateway(tmp_path, {"echo": {**fixture("echo"), "pool": {"size": 3}}}, http={"admin_port": 0})
    try:
        port = admin_port(gw)
        first = tool(gw, 1, "pid")                          # an idle pool: the first copy
        running = copies(port)
        pids = [c["pid"] for c in running]
        assert [c["state"] for c in running] == ["running"] * 3 and len(set(pids)) == 3
        assert int(first) == pids[0]
        # Two slow calls hold two copies; a call made meanwhile goes to the third.
        slow = [threading.Thread(target=tool, args=(gw, 10 + i, "wait", {"seconds": 1.5})) for i in range(2)]
        for t in slow:
            t.start()
        deadline = time.monotonic() + 10
        while sum(c["inFlight"] for c in copies(port)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        busy = [c["inFlight"] for c in copies(port)]
        assert sorted(busy) == [0, 1, 1]
        assert int(tool(gw, 2, "pid")) == pids[busy.index(0)]
        for t in slow:
            t.join()
        assert [c["inFlight"] for c in copies(port)] == [0, 0, 0]
        # A copy that dies is restarted alone; the pool serves on meanwhile.
        os.kill(pids[1], signal.SIGKILL)
        answers = {tool(gw, 100 + i, "echo", {"text": f"n{i}"}) for i in range(20)}
        assert answers == {f"n{i}" for i in range(20)}
        while copies(port)[1]["restarts"] < 1 and time.monotonic() < deadline + 10:
            time.sleep(0.05)
        after = copies(port)
        assert after[1]["restarts"] == 1 and after[0]["pid"] == pids[0] and after[2]["pid"] == pids[2]
    finally:
        gw.stop()


async def _cancel_by_closing(gw: HttpGateway, port: int) -> None:
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "wait", "arguments": {"seconds": 30}, "_meta": MODERN_META}}
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json",
               "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "wait"}
    async with httpx.AsyncClient(timeout=10) as client:
        with trio.move_on_after(1.0):
            async with client.stream("POST", gw.url("echo"), content=json.dumps(body), headers=headers) as r:
                async for _ in r.aiter_bytes():
                    pass
    deadline = trio.current_time() + 10
    while sum(c["inFlight"] for c in copies(port)) and trio.current_time() < deadline:
        await trio.sleep(0.05)


def test_a_closed_stream_cancels_on_the_copy_that_had_the_call(tmp_path: Path) -> None:
    gw = HttpGateway(tmp_path, {"echo": {**fixture("echo"), "pool": {"size": 2}}}, http={"admin_port": 0})
    try:
        port = admin_port(gw)
        trio.run(_cancel_by_closing, gw, port)
        assert [c["inFlight"] for c in copies(port)] == [0, 0]
    finally:
        gw.stop()
    assert "cancelled request 7 upstream" in gw.log()
