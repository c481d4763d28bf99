"""The aggregate's task-free path for tools/call (proxy/aggregate/direct.py), in process against
fake members: it is taken for a plain call, it keeps exactly one answer per request through
answers, cancellations, timeouts and shutdown, and it declines what the general path must adapt
(a progress token, a member of another era)."""
from __future__ import annotations

from typing import Any

import pytest
import trio

from wire_gateway.config import parse_config
from wire_gateway.proxy.aggregate import Aggregate
from wire_gateway.upstream.handshake import Handshake
from wire_gateway.upstream.pending import PendingTable
from wire_gateway.wire import jsonfast
from wire_gateway.wire.era import MODERN_VERSIONS
from wire_gateway.wire.frame import Frame, decode

pytestmark = pytest.mark.anyio

META = {"io.modelcontextprotocol/protocolVersion": MODERN_VERSIONS[0],
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "0"},
        "io.modelcontextprotocol/clientCapabilities": {}}


class FakeMember:
    """A modern member that answers discovery itself and keeps every tools/call for the test."""

    def __init__(self, spec: Any, limits: Any, sink: Any) -> None:
        self.name, self.sink = spec.name, sink
        self.state, self.era, self.restarts, self.last_exit = "running", None, 0, None
        self.pending, self.handshake = PendingTable(), Handshake()
        self.frames_in = self.frames_out = 0
        self.tap = None
        self.calls: list[Frame] = []
        self.notes: list[dict[str, Any]] = []
        self.flushed = 0
        self._stop = trio.Event()

    def request(self, frame: Frame) -> bytes | None:
        if frame.method == "server/discover":
            self.answer(frame.id, {"supportedVersions": list(MODERN_VERSIONS), "capabilities": {"tools": {}}})
            return None
        self.calls.append(frame)
        return None

    def answer(self, req_id: Any, result: dict[str, Any]) -> None:
        decoded = decode(jsonfast.dumps({"jsonrpc": "2.0", "id": req_id, "result": result}))
        assert isinstance(decoded, Frame)
        self.sink.server_frame(decoded)

    def notify(self, frame: Frame) -> None:
        self.notes.append(frame.msg)

    def reply(self, frame: Frame) -> None:
        pass

    def flush(self) -> None:
        self.flushed += 1

    flush_soon = flush

    async def wait_writable(self) -> None:
        pass

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self._stop.wait()

    async def shutdown(self) -> None:
        self._stop.set()


class Client:
    """The session in front of the aggregate: every answer it gets, by id."""

    def __init__(self) -> None:
        self.answers: list[dict[str, Any]] = []

    def server_frame(self, frame: Frame) -> None:
        self.answers.append(jsonfast.loads(frame.raw))

    def gateway_reply(self, req_id: Any, data: bytes) -> None:
        self.answers.append(jsonfast.loads(data))

    def flush(self) -> None:
        pass

    async def wait_writable(self) -> None:
        pass

    def to(self, req_id: Any) -> list[dict[str, Any]]:
        return [a for a in self.answers if a.get("id") == req_id]


def tools_call(req_id: Any, name: str = "echo__echo", meta: dict[str, Any] | None = None) -> Frame:
    frame = decode(jsonfast.dumps({"jsonrpc": "2.0", "id": req_id, "method": "tools/call",
                                   "params": {"name": name, "arguments": {"text": "hi"}, "_meta": meta or META}}))
    assert isinstance(frame, Frame)
    return frame


def cancel(req_id: Any) -> Frame:
    frame = decode(jsonfast.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                   "params": {"requestId": req_id}}))
    assert isinstance(frame, Frame)
    return frame


async def running(nursery: trio.Nursery, timeout: float = 30) -> tuple[Aggregate, Client, dict[str, FakeMember]]:
    config = parse_config({"servers": {"echo": {"command": "unused", "timeout": timeout}}})
    members: dict[str, FakeMember] = {}

    def factory(spec: Any, limits: Any, sink: Any) -> FakeMember:
        members[spec.name] = FakeMember(spec, limits, sink)
        return members[spec.name]

    client = Client()
    agg = Aggregate(config, client, factory, client_era="modern")
    await nursery.start(agg.run)
    with trio.fail_after(5):     # the member connected, and the fast path's watchdog running (a task of run())
        while not agg.members["echo"].ok or agg.direct._watch is None:
            await trio.sleep(0.01)
    return agg, client, members


async def test_a_plain_call_runs_no_task_and_its_answer_keeps_the_members_bytes() -> None:
    async with trio.open_nursery() as nursery:
        agg, client, members = await running(nursery)
        echo = members["echo"]
        flushed = echo.flushed
        assert agg.request(tools_call("c1")) is None
        assert not agg.tasks and echo.calls and echo.flushed == flushed   # written with the front's flush
        agg.flush()
        assert echo.flushed == flushed + 1
        sent = echo.calls[-1]
        assert sent.msg["params"]["name"] == "echo" and sent.msg["params"]["_meta"] == META
        echo.answer(sent.id, {"content": [{"type": "text", "text": "hi"}], "resultType": "complete"})
        assert client.to("c1") == [{"jsonrpc": "2.0", "id": "c1",
                                    "result": {"content": [{"type": "text", "text": "hi"}], "resultType": "complete"}}]
        # an answer without resultType is completed for the modern client, as on the general path
        agg.request(tools_call(2))
        echo.answer(echo.calls[-1].id, {"content": []})
        assert client.to(2)[0]["result"] == {"content": [], "resultType": "complete"}
        await agg.shutdown()


async def test_a_cancelled_call_gets_no_answer_and_the_member_is_told() -> None:
    async with trio.open_nursery() as nursery:
        agg, client, members = await running(nursery)
        echo = members["echo"]
        agg.request(tools_call(7))
        ours = echo.calls[-1].id
        agg.notify(cancel(7))
        assert echo.notes[-1]["params"]["requestId"] == ours
        echo.answer(ours, {"content": [], "resultType": "complete"})   # late: dropped
        assert client.to(7) == []
        agg.request(tools_call(7))                                       # the id may be used again
        echo.answer(echo.calls[-1].id, {"content": [], "resultType": "complete"})
        assert len(client.to(7)) == 1
        await agg.shutdown()


async def test_a_call_the_member_never_answers_times_out_once() -> None:
    async with trio.open_nursery() as nursery:
        agg, client, members = await running(nursery, timeout=0.3)
        echo = members["echo"]
        agg.request(tools_call("slow"))
        ours = echo.calls[-1].id
        with trio.fail_after(5):
            while not client.to("slow"):
                await trio.sleep(0.02)
        (late,) = client.to("slow")
        assert "did not answer tools/call within 0.3s" in late["error"]["message"]
        assert echo.notes[-1]["params"]["requestId"] == ours
        echo.answer(ours, {"content": [], "resultType": "complete"})
        assert len(client.to("slow")) == 1
        await agg.shutdown()


async def test_shutdown_answers_what_is_still_owed_exactly_once() -> None:
    async with trio.open_nursery() as nursery:
        agg, client, _members = await running(nursery)
        agg.request(tools_call("left"))
        with trio.fail_after(15):
            await agg.shutdown()
        assert len(client.to("left")) == 1 and "error" in client.to("left")[0]


async def test_a_progress_token_or_an_unknown_name_takes_the_general_path() -> None:
    async with trio.open_nursery() as nursery:
        agg, client, members = await running(nursery)
        echo = members["echo"]
        agg.request(tools_call("p", meta={**META, "progressToken": "tok"}))
        assert set(agg.tasks) == {"p"}
        with trio.fail_after(5):
            while not echo.calls:
                await trio.sleep(0.01)
        assert echo.calls[-1].msg["params"]["_meta"]["progressToken"] != "tok"   # remapped there
        echo.answer(echo.calls[-1].id, {"content": [], "resultType": "complete"})
        agg.request(tools_call("u", name="nobody__echo"))
        assert set(agg.tasks) >= {"u"}
        with trio.fail_after(5):
            while not (client.to("p") and client.to("u")):
                await trio.sleep(0.01)
        assert "unknown tool" in client.to("u")[0]["error"]["message"]
        await agg.shutdown()


def test_through_http_a_policy_member_still_filters_and_validates_on_the_fast_path(tmp_path) -> None:
    """/mcp over modern HTTP with a member behind filter + schema: allowed calls come back,
    a hidden tool and bad arguments are refused by the member's chain, as on /mcp/echo."""
    import json
    import sys
    import urllib.error
    import urllib.request

    from http_gateway import HttpGateway

    gateway = HttpGateway(tmp_path, {"echo": {"command": sys.executable, "args": ["-m", "wire_gateway.demo.echo"],
                                              "tools": {"deny": ["add"]}, "pinning": "off", "schema": True}})

    def post(req_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
        body = json.dumps({"jsonrpc": "2.0", "id": req_id, "method": method, "params": {**params, "_meta": META}})
        headers = {"content-type": "application/json", "accept": "application/json, text/event-stream",
                   "mcp-protocol-version": MODERN_VERSIONS[0], "mcp-method": method}
        if method == "tools/call":
            headers["mcp-name"] = params["name"]
        req = urllib.request.Request(gateway.base + "/mcp", body.encode(), method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=15) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())

    try:
        listed = post(1, "tools/list", {})
        names = [t["name"] for t in listed["result"]["tools"]]
        assert "echo__echo" in names and "echo__add" not in names
        for i in range(3):
            ok = post(10 + i, "tools/call", {"name": "echo__echo", "arguments": {"text": f"hi{i}"}})
            assert ok["id"] == 10 + i and ok["result"]["content"][0]["text"] == f"hi{i}"
        hidden = post(20, "tools/call", {"name": "echo__add", "arguments": {"a": 1, "b": 2}})
        assert hidden["id"] == 20 and hidden["error"]["message"] == "Unknown tool: add"
        bad = post(21, "tools/call", {"name": "echo__echo", "arguments": {"text": 5}})
        assert bad["id"] == 21 and bad["error"]["code"] == -32602 and "arguments.text" in bad["error"]["message"]
    finally:
        gateway.stop()
    assert "Traceback" not in gateway.log()
