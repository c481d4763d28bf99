"""The shared session registry, end to end: two `wire-gateway serve` processes share a real
redis-server, and a legacy session opened on one is served by the other (adopted from its
record, its handshake replayed to an upstream of the second instance), for a command server,
a url server and the aggregate. DELETE on either ends it on both; a session stays bound to
the key that opened it; a call on the instance that holds the session costs Redis nothing,
an adoption one GET; with Redis gone each instance keeps its own sessions (and answers 503
for the others').

redis-server must be installed (as for tests/test_policy_redis.py): without it these FAIL.
"""
from __future__ import annotations

import hashlib
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
import redis
from gateway import fixture
from http_gateway import HttpGateway
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from test_aggregate_http import body_of
from test_http_front import ACCEPT
from test_http_upstream import http_echo
from test_policy_e2e import received, wait_for
from test_policy_redis import RedisProcess

from wire_gateway.auth.backends import RedisBackend
from wire_gateway.auth.tenancy import Tenancy

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {"roots": {}},
                   "clientInfo": {"name": "registry-test", "version": "1"}}}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def call(req_id: int, tool: str, **arguments: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}


def text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(body_of(response)["result"]["content"][0]["text"])


class Pair:
    """Two gateway instances with the same servers and the same Redis (and prefix)."""

    def __init__(self, tmp_path: Path, redis_server: RedisProcess, servers: Any, *, idle: float = 60.0,
                 prefix: str | None = None, **top: Any) -> None:
        self.prefix = prefix or f"wg-reg-{uuid.uuid4().hex[:8]}:"
        self.redis = redis.Redis(port=redis_server.port)
        self.gateways: list[HttpGateway] = []
        for name in "ab":
            folder = tmp_path / name
            folder.mkdir()
            self.gateways.append(HttpGateway(
                folder, servers(name) if callable(servers) else servers,
                store={"backend": "redis", "url": redis_server.url, "prefix": self.prefix},
                http={"session_idle_timeout": idle}, **top))
        self.a, self.b = self.gateways

    def post(self, gw: HttpGateway, path: str, body: Any, sid: str | None = None,
             key: str | None = None) -> httpx.Response:
        headers = dict(ACCEPT)
        if sid is not None:
            headers.update({"mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"})
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        return httpx.post(gw.base + path, json=body, headers=headers, timeout=20)

    def open(self, gw: HttpGateway, path: str, key: str | None = None) -> str:
        opened = self.post(gw, path, INIT, key=key)
        assert opened.status_code == 200, opened.text
        sid = opened.headers["mcp-session-id"]
        assert self.post(gw, path, INITIALIZED, sid, key).status_code == 202
        return sid

    def record(self, sid: str) -> dict[str, Any] | None:
        raw = self.redis.get(self.prefix + "session:" + hashlib.sha256(sid.encode()).hexdigest())
        return json.loads(raw) if raw is not None else None

    def commands(self) -> dict[str, int]:
        """Redis' count of each command it ran (INFO itself left out)."""
        stats = self.redis.info("commandstats")
        return {name[len("cmdstat_"):]: int(v["calls"]) for name, v in stats.items() if name != "cmdstat_info"}

    def stop(self) -> None:
        for gw in self.gateways:
            gw.stop()
        self.redis.close()


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The commands run between two `Pair.commands`, but for the instances' liveness heartbeats
    (PSETEX, once a second per instance: proxy/shared_streams.py), which no request causes."""
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0) and k != "psetex"}


def test_a_session_moves_between_instances_and_delete_ends_it_everywhere(
        redis_server: RedisProcess, tmp_path: Path) -> None:
    logs = {name: tmp_path / f"echo-{name}.log" for name in "ab"}
    pair = Pair(tmp_path, redis_server, lambda name: {"echo": fixture("echo", "--log", str(logs[name]))})
    try:
        sid = pair.open(pair.a, "/mcp/echo")
        pid_a = text(pair.post(pair.a, "/mcp/echo", call(2, "pid"), sid))

        record = pair.record(sid)
        assert record is not None and record["server"] == "echo" and record["principal"] is None
        assert record["initialize"]["params"]["clientInfo"]["name"] == "registry-test"
        assert record["initialized"] is not None and record["protocolVersion"] == "2025-11-25"
        assert record["capabilities"] == {"roots": {}} and record["lastUsed"] >= record["created"]
        ttl = pair.redis.pttl(pair.prefix + "session:" + hashlib.sha256(sid.encode()).hexdigest())
        assert 60_000 < ttl <= 75_000          # the idle timeout and one refresh period (a quarter of it)
        for key in pair.redis.scan_iter(pair.prefix + "*"):      # the id is the session's credential
            assert sid.encode() not in key and sid.encode() not in (pair.redis.get(key) or b"")

        # B has never seen the session: it adopts it and answers, with its own process.
        listed = pair.post(pair.b, "/mcp/echo", {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}, sid)
        assert listed.status_code == 200 and "echo" in [t["name"] for t in body_of(listed)["result"]["tools"]]
        assert listed.headers["mcp-session-id"] == sid
        assert text(pair.post(pair.b, "/mcp/echo", call(4, "echo", text="on b"), sid)) == "on b"
        pid_b = text(pair.post(pair.b, "/mcp/echo", call(5, "pid"), sid))
        assert pid_b != pid_a
        # B's process got the recorded handshake, replayed before the client's requests.
        seen = [e["method"] for e in received(logs["b"])]
        assert seen[:3] == ["initialize", "notifications/initialized", "tools/list"], seen
        assert received(logs["b"], "initialize")[0]["id"] == "wire-gateway/replay/1"
        assert "adopted from the session registry" in pair.b.log()
        # A still serves it too (a load balancer without stickiness alternates).
        assert text(pair.post(pair.a, "/mcp/echo", call(6, "echo", text="on a"), sid)) == "on a"

        # DELETE on B: the record goes, and A drops its copy.
        deleted = httpx.delete(pair.b.url("echo"), headers={**ACCEPT, "mcp-session-id": sid}, timeout=10)
        assert deleted.status_code == 200
        assert pair.record(sid) is None
        assert wait_for(lambda: pair.post(pair.a, "/mcp/echo", call(7, "pid"), sid).status_code == 404, 5.0)
        gone = pair.post(pair.b, "/mcp/echo", call(8, "pid"), sid)
        assert gone.status_code == 404 and "session not found" in gone.json()["error"]["message"]
        assert "ended by DELETE on another instance" in pair.a.log()

        # A DELETE on an instance that never held the session needs no process there.
        sid2 = pair.open(pair.a, "/mcp/echo")
        starts = len(received(logs["b"], "initialize"))
        assert httpx.delete(pair.b.url("echo"), headers={**ACCEPT, "mcp-session-id": sid2}).status_code == 200
        assert len(received(logs["b"], "initialize")) == starts
        assert wait_for(lambda: pair.post(pair.a, "/mcp/echo", call(9, "pid"), sid2).status_code == 404, 5.0)
        # An unknown id is still a 404, and a session is found only on its own route.
        assert pair.post(pair.b, "/mcp/echo", call(10, "pid"), "x" * 32).status_code == 404
    finally:
        pair.stop()


class RoundRobin(httpx2.AsyncBaseTransport):
    """A load balancer without stickiness: each request to the next instance in turn."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.sent = 0
        self.inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.url = request.url.copy_with(port=self.ports[self.sent % len(self.ports)])
        self.sent += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.anyio
async def test_the_sdk_client_behind_a_round_robin_balancer(redis_server: RedisProcess, tmp_path: Path) -> None:
    pair = Pair(tmp_path, redis_server, {"echo": fixture("echo")})
    try:
        balancer = RoundRobin([pair.a.port, pair.b.port])
        http = httpx2.AsyncClient(transport=balancer, timeout=30)
        async with http, Client(streamable_http_client(pair.a.url("echo"), http_client=http), mode="legacy") as client:
            assert "echo" in [tool.name for tool in (await client.list_tools()).tools]
            texts = [(await client.call_tool("echo", {"text": f"call {i}"})).content[0].text for i in range(4)]
            pids = {(await client.call_tool("pid", {})).content[0].text for _ in range(4)}
        assert texts == [f"call {i}" for i in range(4)]
        assert len(pids) == 2 and balancer.sent >= 12      # both instances served the one session
        assert "adopted from the session registry" in pair.a.log() + pair.b.log()
        assert not list(pair.redis.scan_iter(pair.prefix + "session:*"))     # the SDK's DELETE ended it
    finally:
        pair.stop()


def test_the_holder_pays_no_redis_round_trip_and_an_adoption_one(redis_server: RedisProcess, tmp_path: Path) -> None:
    pair = Pair(tmp_path, redis_server, {"echo": fixture("echo")})
    try:
        sid = pair.open(pair.a, "/mcp/echo")
        text(pair.post(pair.a, "/mcp/echo", call(2, "echo", text="warm"), sid))
        before = pair.commands()
        for i in range(20):
            assert text(pair.post(pair.a, "/mcp/echo", call(10 + i, "echo", text=str(i)), sid)) == str(i)
        assert delta(before, pair.commands()) == {}
        # Adoption: one GET of the record, then nothing more for the calls that follow. (A first
        # adoption warms B's connection pool: a new connection says HELLO once.)
        text(pair.post(pair.b, "/mcp/echo", call(39, "echo", text="warm"), pair.open(pair.a, "/mcp/echo")))
        before = pair.commands()
        assert text(pair.post(pair.b, "/mcp/echo", call(40, "echo", text="b"), sid)) == "b"
        assert delta(before, pair.commands()) == {"get": 1}
        before = pair.commands()
        for i in range(10):
            text(pair.post(pair.b, "/mcp/echo", call(50 + i, "echo", text="b"), sid))
        assert delta(before, pair.commands()) == {}
        # Requests arriving together for a session B does not hold: one adoption serves them all.
        sid3 = pair.open(pair.a, "/mcp/echo")
        adoptions = pair.b.log().count("adopted from the session registry")
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda i: text(pair.post(pair.b, "/mcp/echo", call(70 + i, "echo", text=str(i)),
                                                             sid3)), range(6)))
        assert answers == [str(i) for i in range(6)]
        assert pair.b.log().count("adopted from the session registry") == adoptions + 1
    finally:
        pair.stop()


def test_lazy_refresh_keeps_the_record_and_notices_it_gone(redis_server: RedisProcess, tmp_path: Path) -> None:
    pair = Pair(tmp_path, redis_server, {"echo": fixture("echo")}, idle=2.0)   # refreshed every 0.5 s
    try:
        sid = pair.open(pair.a, "/mcp/echo")
        key = pair.prefix + "session:" + hashlib.sha256(sid.encode()).hexdigest()
        for i in range(8):               # used for 4 s, twice the idle timeout: the record stays
            text(pair.post(pair.a, "/mcp/echo", call(2 + i, "echo", text="x"), sid))
            time.sleep(0.5)
        assert pair.redis.exists(key)
        assert text(pair.post(pair.b, "/mcp/echo", call(20, "echo", text="b"), sid)) == "b"
        # The record goes without an announcement (as if the event were missed): each holder
        # drops its copy at its next refresh after a use.
        pair.redis.delete(key)
        text(pair.post(pair.a, "/mcp/echo", call(21, "echo", text="x"), sid))
        assert wait_for(lambda: pair.post(pair.a, "/mcp/echo", call(22, "pid"), sid).status_code == 404, 5.0)
        assert "its record is gone from the session registry" in pair.a.log()
    finally:
        pair.stop()


def test_url_servers_and_the_aggregate(redis_server: RedisProcess, tmp_path: Path) -> None:
    web = http_echo(tmp_path)
    pair = Pair(tmp_path, redis_server, {"remote": {"url": web.url}, "echo": fixture("echo")})
    try:
        sid = pair.open(pair.a, "/mcp/remote")
        assert text(pair.post(pair.a, "/mcp/remote", call(2, "echo", text="a"), sid)) == "a"
        assert text(pair.post(pair.b, "/mcp/remote", call(3, "echo", text="b"), sid)) == "b"
        assert "opened an upstream session (replayed the client's initialize)" in pair.b.log()
        assert text(pair.post(pair.a, "/mcp/remote", call(4, "echo", text="a2"), sid)) == "a2"
        # The same id on another route is not that session.
        assert pair.post(pair.b, "/mcp/echo", call(5, "echo", text="x"), sid).status_code == 404

        agg = pair.open(pair.a, "/mcp")
        assert text(pair.post(pair.a, "/mcp", call(6, "echo__echo", text="a"), agg)) == "a"
        assert text(pair.post(pair.b, "/mcp", call(7, "remote__echo", text="b"), agg)) == "b"
        assert text(pair.post(pair.b, "/mcp", call(8, "echo__echo", text="b2"), agg)) == "b2"
    finally:
        pair.stop()
        web.stop()


def test_a_session_stays_bound_to_the_key_that_opened_it(redis_server: RedisProcess, tmp_path: Path) -> None:
    servers = {"echo": fixture("echo")}
    prefix = f"wg-reg-{uuid.uuid4().hex[:8]}:"
    tenancy = Tenancy(RedisBackend(redis_server.url, prefix, "redis"), servers)   # the Redis store holds the keys
    tenancy.create_project("team", ["echo"])
    tenancy.create_user("alice")
    key, key2 = tenancy.create_key("team", "alice")[1], tenancy.create_key("team", "alice")[1]
    pair = Pair(tmp_path, redis_server, servers, prefix=prefix, auth={"mode": "keys"})
    try:
        sid = pair.open(pair.a, "/mcp/echo", key)
        record = pair.record(sid)
        assert record is not None and record["project"] == "team" and record["principal"] == key[:15]
        stolen = pair.post(pair.b, "/mcp/echo", call(2, "echo", text="x"), sid, key2)
        assert stolen.status_code == 403 and "bound to the key" in stolen.json()["error"]["message"]
        assert "adopted" not in pair.b.log()                  # refused before anything was started
        assert pair.post(pair.b, "/mcp/echo", call(3, "echo", text="x"), sid).status_code == 401
        assert text(pair.post(pair.b, "/mcp/echo", call(4, "echo", text="mine"), sid, key)) == "mine"
        stolen = pair.post(pair.b, "/mcp/echo", call(5, "echo", text="x"), sid, key2)
        assert stolen.status_code == 403
    finally:
        pair.stop()


def test_without_redis_each_instance_keeps_its_own_sessions(redis_server: RedisProcess, tmp_path: Path) -> None:
    pair = Pair(tmp_path, redis_server, {"echo": fixture("echo")}, idle=4.0)      # refreshed every second
    try:
        sid = pair.open(pair.a, "/mcp/echo")
        redis_server.kill()
        for i in range(3):
            assert text(pair.post(pair.a, "/mcp/echo", call(2 + i, "echo", text="still"), sid)) == "still"
        lost = pair.post(pair.b, "/mcp/echo", call(9, "echo", text="x"), sid)       # it may exist: 503, not 404
        assert lost.status_code == 503 and lost.json()["error"]["code"] == -31009, lost.text
        assert "the session registry is unreachable" in pair.b.log()
        # A new session still opens, served by its instance only.
        sid2 = pair.open(pair.b, "/mcp/echo")
        assert text(pair.post(pair.b, "/mcp/echo", call(10, "echo", text="local"), sid2)) == "local"

        # Redis is back, empty (no persistence): each holder writes its records again at its next
        # refresh after a use, rather than taking the missing record for a DELETE.
        back = RedisProcess(redis_server.port)
        try:
            pair.redis = redis.Redis(port=back.port)

            def recorded() -> bool:
                text(pair.post(pair.a, "/mcp/echo", call(20, "echo", text="a"), sid))
                text(pair.post(pair.b, "/mcp/echo", call(21, "echo", text="b"), sid2))
                return pair.record(sid) is not None and pair.record(sid2) is not None
            assert wait_for(recorded, 15.0), pair.a.log() + pair.b.log()
            assert text(pair.post(pair.b, "/mcp/echo", call(22, "echo", text="moved"), sid)) == "moved"
            assert text(pair.post(pair.a, "/mcp/echo", call(23, "echo", text="moved"), sid2)) == "moved"
            assert httpx.delete(pair.a.url("echo"), headers={**ACCEPT, "mcp-session-id": sid2}).status_code == 200
            assert wait_for(lambda: pair.post(pair.b, "/mcp/echo", call(24, "pid"), sid2).status_code == 404, 5.0)
        finally:
            back.kill()
    finally:
        pair.stop()
