"""Resumable streams across instances (proxy/shared_streams.py), end to end: two `wire-gateway
serve` processes share a real redis-server; a legacy session's SSE stream broken on one resumes
on the other with `Last-Event-ID`: exactly the events after that id, then the rest live, whether
the instance that wrote the stream still runs (the reader follows it in Redis) or was killed (a
recorded answer is replayed; a request that was still in flight gets a JSON-RPC error event
saying its instance died). The event ids carry their writer's instance id. Recording costs
far fewer Redis round trips than events, and the holder of a session still makes none per call.

redis-server must be installed (as for tests/test_policy_redis.py): without it these FAIL.
"""
from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
from gateway import fixture
from http_gateway import HttpGateway
from test_http_front import ACCEPT, sse_events
from test_metrics import admin_port
from test_policy_redis import RedisProcess
from test_session_registry import Pair, call, delta, text

WAIT = "wait"


def streamed_call(req_id: int, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tools/call asking for progress: answered as an SSE stream (progress, then the answer)."""
    body = call(req_id, tool, **arguments)
    body["params"]["_meta"] = {"progressToken": f"tok-{req_id}"}
    return body


def headers(sid: str) -> dict[str, str]:
    return {**ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}


def first_events(gw: HttpGateway, sid: str, body: dict[str, Any], n: int = 1) -> list[tuple[str, Any]]:
    """POST `body`, read `n` events of its SSE stream, and drop the connection (the client lost it)."""
    seen: list[tuple[str, Any]] = []
    with httpx.Client(timeout=20) as client, \
            client.stream("POST", gw.url("echo"), content=json.dumps(body), headers=headers(sid)) as resp:
        assert resp.headers["content-type"] == "text/event-stream", resp.read()
        for event_id, data in sse_events(resp.iter_lines()):
            seen.append((event_id, json.loads(data)))
            if len(seen) == n:
                break
    return seen


def resume(gw: HttpGateway | str, sid: str, last_id: str,
           timeout: float = 20) -> tuple[int, list[tuple[str | None, Any]]]:
    """GET with Last-Event-ID, on an instance (or a URL: a balancer); the status and the events."""
    url = gw if isinstance(gw, str) else gw.url("echo")
    got = httpx.get(url, headers={**headers(sid), "last-event-id": last_id}, timeout=timeout)
    if got.status_code != 200:
        return got.status_code, [(None, got.json())]
    return 200, [(i, json.loads(d)) for i, d in sse_events(got.text.splitlines())]


def seqs(events: list[tuple[Any, Any]]) -> list[int]:
    return [int(str(i).rsplit("-", 1)[1]) for i, _ in events]


def stream_of(event_id: str) -> str:
    return event_id.rsplit("-", 1)[0]


def live_stream_ids(gw: HttpGateway, sid: str, last_id: str | None, n: int) -> list[tuple[str, str]]:
    """GET the session's stream (resuming `last_id`) and read its first `n` events, data-less ones
    (the priming id) included, as (id, data); then drop the connection (the stream stays open)."""
    out: list[tuple[str, str]] = []
    extra = {"last-event-id": last_id} if last_id else {}
    with httpx.Client(timeout=10) as client, \
            client.stream("GET", gw.url("echo"), headers={**headers(sid), **extra}) as resp:
        assert resp.status_code == 200, resp.read()
        event_id, data = "", ""
        for line in resp.iter_lines():
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif line == "" and event_id:
                out.append((event_id, data))
                event_id, data = "", ""
                if len(out) == n:
                    break
    return out


def test_a_broken_stream_resumes_on_another_instance_while_its_writer_runs(
        redis_server: RedisProcess, tmp_path: Path) -> None:
    pair = Pair(tmp_path, redis_server, {"echo": fixture("echo")})
    try:
        sid = pair.open(pair.a, "/mcp/echo")
        seen = first_events(pair.a, sid, streamed_call(2, WAIT, seconds=1.5))
        last_id = seen[0][0]
        assert seen[0][1]["method"] == "notifications/progress"
        owner = last_id.split(".", 1)[0]
        assert len(owner) == 16 and stream_of(last_id) == f"{owner}.p1"      # the writer's instance id first
        # B resumes it at once: nothing recorded after that id yet, so B follows what A writes.
        status, missed = resume(pair.b, sid, last_id)
        assert status == 200, missed
        assert all(stream_of(str(i)) == stream_of(last_id) for i, _ in missed)
        assert seqs(seen + missed) == [1, 2]                                # no gap, nothing twice
        assert missed[-1][1]["id"] == 2 and missed[-1][1]["result"]["content"][0]["text"] == "waited 1.5s"
        assert "resuming stream" in pair.b.log()
        # The same resume again, on either instance, gets the same events.
        for gw in pair.gateways:
            assert resume(gw, sid, last_id) == (200, missed)
        # A stream of B's, resumed on A, from its first event.
        seen_b = first_events(pair.b, sid, streamed_call(3, "progress", steps=3), n=4)
        assert stream_of(seen_b[0][0]).split(".")[0] not in ("", owner)
        status, replayed = resume(pair.a, sid, seen_b[0][0])
        assert status == 200 and seqs(seen_b[:1] + replayed) == [1, 2, 3, 4] and replayed[-1][1]["id"] == 3
        # An id the session never had is refused as before.
        assert resume(pair.b, sid, f"{owner}.p99-1")[0] == 404
        assert resume(pair.b, sid, "p1-1")[0] == 404

        # A GET stream resumed elsewhere: what its writer recorded after the id, then the new
        # instance's own stream (its own id), live.
        g_key = f"{pair.prefix}events:{hashlib.sha256(sid.encode()).hexdigest()}:{owner}.g"
        note = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}}
        pair.redis.xadd(g_key, {"d": json.dumps(note)}, id="1-1")
        got = live_stream_ids(pair.b, sid, f"{owner}.g-0", 2)
        assert got[0] == (f"{owner}.g-1", json.dumps(note))
        assert got[1][0].endswith(".g-0") and not got[1][0].startswith(owner) and got[1][1] == ""
        assert live_stream_ids(pair.b, sid, f"{owner}.g-1", 1)[0][0] == got[1][0]
    finally:
        pair.stop()


def test_the_writer_killed_its_answers_replay_and_its_requests_in_flight_fail_clearly(
        redis_server: RedisProcess, tmp_path: Path) -> None:
    pair = Pair(tmp_path, redis_server, {"echo": fixture("echo")})
    try:
        sid = pair.open(pair.a, "/mcp/echo")
        done = first_events(pair.a, sid, streamed_call(2, WAIT, seconds=0.2))
        pending = first_events(pair.a, sid, streamed_call(3, WAIT, seconds=60))
        time.sleep(1.0)            # the first call's answer is recorded while nobody listens
        pair.a.proc.send_signal(signal.SIGKILL)
        pair.a.proc.wait(10)

        status, missed = resume(pair.b, sid, done[0][0])
        assert status == 200 and seqs(done + missed) == [1, 2], missed
        assert missed[0][1]["id"] == 2 and missed[0][1]["result"]["content"][0]["text"] == "waited 0.2s"

        started = time.monotonic()
        status, missed = resume(pair.b, sid, pending[0][0])
        took = time.monotonic() - started
        assert status == 200 and seqs(pending + missed) == [1, 2], missed
        error = missed[0][1]["error"]
        assert missed[0][1]["id"] == 3 and error["code"] == -31010, missed
        assert "instance that held this request" in error["message"] and error["data"]["source"] == "wire-gateway"
        assert took < 10, took               # its liveness key expires (3 s), checked twice
        # Written into the stream: a second resume gets the same error at once.
        started = time.monotonic()
        assert resume(pair.b, sid, pending[0][0]) == (200, missed)
        assert time.monotonic() - started < 2
        # The session goes on on B.
        assert text(pair.post(pair.b, "/mcp/echo", call(4, "echo", text="on b"), sid)) == "on b"
    finally:
        pair.stop()


def test_recording_batches_events_and_a_call_on_the_holder_still_costs_nothing(
        redis_server: RedisProcess, tmp_path: Path) -> None:
    pair = Pair(tmp_path, redis_server, {"echo": fixture("echo")}, extra_args=["--admin-port", "0"])
    try:
        status_url = f"http://127.0.0.1:{admin_port(pair.a)}/status"
        sid = pair.open(pair.a, "/mcp/echo")
        text(pair.post(pair.a, "/mcp/echo", call(2, "echo", text="warm"), sid))
        before, counted = pair.commands(), httpx.get(status_url).json()["sharedStreams"]
        for i in range(20):       # JSON answers: no stream, nothing recorded
            assert text(pair.post(pair.a, "/mcp/echo", call(10 + i, "echo", text=str(i)), sid)) == str(i)
        assert delta(before, pair.commands()) == {}

        first_events(pair.a, sid, streamed_call(40, "progress", steps=1), n=2)    # Redis loads the script once
        steps = 400
        time.sleep(0.3)
        before, counted = pair.commands(), httpx.get(status_url).json()["sharedStreams"]
        events = first_events(pair.a, sid, streamed_call(50, "progress", steps=steps), n=steps + 1)
        assert seqs(events) == list(range(1, steps + 2)) and events[-1][1]["id"] == 50
        time.sleep(0.3)
        after = httpx.get(status_url).json()["sharedStreams"]
        written, batches = after["events"] - counted["events"], after["batches"] - counted["batches"]
        commands = delta(before, pair.commands())
        assert written == steps + 1 and commands["xadd"] == steps + 1 and after["lost"] == 0
        # One script per round trip (EVALSHA), one PEXPIRE per stream in it.
        assert commands["evalsha"] == batches == commands["pexpire"], commands
        assert batches < written / 4, (written, batches)
        print(f"{written} events in {batches} round trips ({written / batches:.1f} events per round trip)")
    finally:
        pair.stop()


def test_while_redis_is_away_a_session_held_elsewhere_gets_503_not_404(
        redis_server: RedisProcess, tmp_path: Path) -> None:
    pair = Pair(tmp_path, redis_server, {"echo": fixture("echo")})
    try:
        sid = pair.open(pair.a, "/mcp/echo")
        seen = first_events(pair.a, sid, streamed_call(2, WAIT, seconds=0.5))
        redis_server.kill()
        refused = pair.post(pair.b, "/mcp/echo", call(3, "echo", text="x"), sid)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == -31009 and "do not start a new session" in refused.text
        assert text(pair.post(pair.a, "/mcp/echo", call(4, "echo", text="held"), sid)) == "held"
        # A's own stream resumes on A from memory; elsewhere it needs Redis: 503.
        status, again = resume(pair.a, sid, seen[0][0])
        assert status == 200 and seqs(again) == [2] and again[-1][1]["id"] == 2
        assert resume(pair.b, sid, seen[0][0])[0] == 503
    finally:
        pair.stop()


def test_a_stream_its_instance_gives_up_on_ends_with_an_error_everywhere(
        redis_server: RedisProcess, tmp_path: Path) -> None:
    pair = Pair(tmp_path, redis_server, {"echo": fixture("echo")}, idle=2.0)
    try:
        sid = pair.open(pair.a, "/mcp/echo")
        pending = first_events(pair.a, sid, streamed_call(2, WAIT, seconds=60))
        # A's copy of the session idles out (its broken stream does not keep it), while the client
        # goes on with B: the stream's last event, in Redis, is an error for its request.
        assert text(pair.post(pair.b, "/mcp/echo", call(3, "echo", text="b"), sid)) == "b"
        deadline = time.monotonic() + 10
        while "idle for 2s; expired" not in pair.a.log() and time.monotonic() < deadline:
            assert text(pair.post(pair.b, "/mcp/echo", call(4, "echo", text="b"), sid)) == "b"
            time.sleep(0.3)
        status, missed = resume(pair.b, sid, pending[0][0])
        assert status == 200 and seqs(pending + missed) == [1, 2], missed
        assert missed[0][1]["id"] == 2 and missed[0][1]["error"]["code"] == -31010
        assert "ended its copy of the session" in missed[0][1]["error"]["message"]
    finally:
        pair.stop()
