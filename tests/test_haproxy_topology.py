"""The scale-out topology for real: three `wire-gateway serve` instances sharing a redis-server,
behind a real HAProxy that balances round robin with no stickiness (deploy/haproxy.cfg, with only
its addresses and check timings changed), the bundled echo server behind each instance.

- 50 legacy sessions make 40 calls each through HAProxy (`load run --check`): every answer is
  right, and every session was served by more than one instance (the instances' logs: opened on
  one, adopted from the session registry by others).
- A rolling restart under load: while `load run --duration` goes through HAProxy, each instance
  in turn gets SIGTERM, leaves HAProxy's rotation during its `http.drain_grace` (its /readyz
  answers 503 while it still serves), drains and exits, and a replacement takes its port. Not
  one request fails.
- SIGKILL of one instance under load: the requests it was answering fail at once (HAProxy's
  502), none waits out its timeout, every session goes on on the two others, and SSE streams it
  was writing resume through HAProxy with `Last-Event-ID` on another instance: a recorded answer
  exactly after the last event seen, a request still in flight a JSON-RPC error (-31010); the
  official SDK client, whose `wait` call the victim was streaming, resumes by itself and gets
  that error, and its session goes on.
- Redis restarted under load: the sessions each instance holds go on without one failure; a
  session one instance opened while Redis was away gets 503 (-31009, `Retry-After`) on the
  others, never 404, until Redis is back and its record written again; the instances reconnect
  by themselves.

redis-server and haproxy must be installed (.ci/run installs both): without them these FAIL.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_gateway import ROOT, HttpGateway
from test_http_front import ACCEPT
from test_policy_e2e import wait_for
from test_policy_redis import RedisProcess, free_port
from test_session_registry import INIT, INITIALIZED, call
from test_shared_streams import first_events, resume, seqs, sse_events, stream_of, streamed_call

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
DEPLOY_CFG = ROOT / "deploy" / "haproxy.cfg"
ECHO = {"command": sys.executable, "args": ["-m", "wire_gateway.demo.echo"]}    # the bundled echo server
GRACE = 2.5          # http.drain_grace: HAProxy's checks (every 0.2 s, 2 failures) notice well within it
CHECKS = "    default-server check inter 200ms fall 2 rise 1"
SESSION_LINE = re.compile(r"session ([0-9A-Za-z_-]{8}) \(echo\): (opened|adopted)")


def haproxy_config(port: int, stats_port: int, servers: dict[str, int]) -> str:
    """deploy/haproxy.cfg on 127.0.0.1: its binds, its servers and their check timings replaced, and
    fewer connections (the file descriptors they need may be over this machine's limit)."""
    out: list[str] = []
    for line in DEPLOY_CFG.read_text().splitlines():
        words = line.split()
        if words[:1] == ["maxconn"]:
            line = "    maxconn 1000"
        elif words[:2] == ["bind", ":8080"]:
            line = f"    bind 127.0.0.1:{port}"
        elif words[:2] == ["bind", ":8404"]:
            line = f"    bind 127.0.0.1:{stats_port}"
        elif words[:1] == ["default-server"]:
            line = CHECKS
        elif words[:1] == ["server"]:
            if words[1] != "gw1":
                continue
            out.extend(f"    server {name} 127.0.0.1:{p}" for name, p in servers.items())
            continue
        out.append(line)
    text = "\n".join(out) + "\n"
    assert CHECKS in text and f"127.0.0.1:{port}" in text and "127.0.0.1:" + str(servers["gw1"]) in text, text
    return text


class Slot:
    """One instance's place behind HAProxy: a fixed port, and whichever instance serves it now."""

    def __init__(self, name: str, tmp_path: Path, store: dict[str, str], http: dict[str, Any]) -> None:
        self.name = name
        self.port = free_port()
        self.tmp_path = tmp_path
        self.store = store
        self.http = http
        self.instances: list[HttpGateway] = []    # every generation, for their logs

    @property
    def gateway(self) -> HttpGateway:
        return self.instances[-1]

    def start(self) -> HttpGateway:
        folder = self.tmp_path / f"{self.name}-{len(self.instances)}"
        folder.mkdir()
        self.instances.append(HttpGateway(folder, {"echo": ECHO}, port=self.port, store=self.store,
                                          http=self.http))
        return self.gateway


class HAProxy:
    def __init__(self, tmp_path: Path, slots: list[Slot]) -> None:
        if not os.path.exists(HAPROXY):
            pytest.fail("haproxy is not installed; install it (e.g. `apt-get install haproxy`, as .ci/run "
                        "does) to run the HAProxy topology test")
        self.port, self.stats_port = free_port(), free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(haproxy_config(self.port, self.stats_port, {s.name: s.port for s in slots}))
        self.log_path = tmp_path / "haproxy.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        self.target = f"http://127.0.0.1:{self.port}/mcp/echo"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def states(self) -> dict[str, str]:
        """Each gateway's state as HAProxy sees it: UP, DOWN, or "UP 1/2" on the way down."""
        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=5).text
        rows = csv.DictReader(text.lstrip("# ").splitlines())
        return {row["svname"]: row["status"] for row in rows
                if row["pxname"] == "gateways" and row["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_for(self, name: str, state: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"haproxy exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if self.states().get(name) == state:
                    return
            except httpx.TransportError:      # not listening yet
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"HAProxy never saw {name} {state}: {self.states()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class Topology:
    def __init__(self, redis_server: RedisProcess, slots: list[Slot]) -> None:
        self.redis = redis_server       # a test that restarts Redis puts the new process here
        self.slots = slots
        self.haproxy: HAProxy


@pytest.fixture
def topology(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Topology]:
    """Redis, three instances, HAProxy; `http` settings over the defaults by indirect parametrization."""
    redis_server = RedisProcess()
    store = {"backend": "redis", "url": redis_server.url, "prefix": "wg-haproxy:"}
    http = {"drain_grace": GRACE, "session_idle_timeout": 300, **getattr(request, "param", {})}
    slots = [Slot(f"gw{i}", tmp_path, store, http) for i in (1, 2, 3)]
    top = Topology(redis_server, slots)
    haproxy: HAProxy | None = None
    try:
        for slot in slots:
            slot.start()
        haproxy = top.haproxy = HAProxy(tmp_path, slots)
        for slot in slots:
            haproxy.wait_for(slot.name, "UP")
        yield top
    finally:
        if haproxy is not None:
            haproxy.stop()
        running = [gw for slot in slots for gw in slot.instances if gw.proc.poll() is None]
        for gw in running:              # all at once: each keeps serving for its grace
            gw.proc.send_signal(signal.SIGTERM)
        for gw in running:
            gw.stop()
        top.redis.kill()


def load_run(target: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "load", "run", "--target", target, "--fixture", "echo-small-legacy",
            "--check", "--json", *args]


def checked(out: str, err: str) -> dict[str, Any]:
    """`load run --json`'s one run, after asserting that every answer was right."""
    result = json.loads(out)
    run = result["runs"][0]
    assert result["errors"] == 0 and result["mismatches"] == 0, json.dumps(
        {k: run[k] for k in ("errors", "error_examples", "mismatch_kinds", "mismatch_examples")}, indent=1) + err
    assert run["session_failures"] == 0 and run["answered_ok"] == run["calls"], run
    return dict(run)


def served_by(slots: list[Slot]) -> dict[str, set[str]]:
    """Session (first 8 characters of its id) -> the instances that opened or adopted it."""
    sessions: dict[str, set[str]] = {}
    for slot in slots:
        for i, gw in enumerate(slot.instances):
            for sid, _ in SESSION_LINE.findall(gw.log()):
                sessions.setdefault(sid, set()).add(f"{slot.name}-{i}")
    return sessions


def test_legacy_sessions_round_robin_over_three_instances(topology: Topology) -> None:
    haproxy, slots = topology.haproxy, topology.slots
    done = subprocess.run(load_run(haproxy.target, "-c", "50", "-n", "2000"), cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    run = checked(done.stdout, done.stderr)
    assert run["calls"] == 2000 and run["sessions"] == 50
    sessions = served_by(slots)
    assert len(sessions) == 50, sessions
    assert all(len(instances) > 1 for instances in sessions.values()), sessions
    for slot in slots:       # each instance opened some sessions and adopted others'
        assert "adopted from the session registry" in slot.gateway.log(), slot.gateway.log()
    print(f"through HAProxy: {run['calls_per_s']:.0f} calls/s, p50 {run['latency']['all']['p50_ms']} ms")


def test_rolling_restart_under_load_fails_no_request(topology: Topology) -> None:
    haproxy, slots = topology.haproxy, topology.slots
    duration = 30
    load = subprocess.Popen(load_run(haproxy.target, "-c", "16", "--duration", f"{duration}s", "--timeout", "20"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)
        for slot in slots:
            old = slot.gateway
            old.proc.send_signal(signal.SIGTERM)
            haproxy.wait_for(slot.name, "DOWN", timeout=GRACE + 5)
            assert old.proc.poll() is None, "the instance stopped before HAProxy took it out of rotation"
            assert old.proc.wait(30) == 0, old.log()
            assert f"serving {GRACE:.1f}s more (http.drain_grace)" in old.log()
            slot.start()
            haproxy.wait_for(slot.name, "UP")
            assert load.poll() is None, "the load ended before the rolling restart did: raise its duration"
        out, err = load.communicate(timeout=duration + 60)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    run = checked(out, err)
    assert run["calls"] > 500, run
    for slot in slots:       # the replacements served sessions opened before they started
        assert "adopted from the session registry" in slot.gateway.log(), slot.gateway.log()
    print(f"rolling restart: {run['calls']} calls, {run['calls_per_s']:.0f} calls/s, none failed")


class Caller(threading.Thread):
    """One legacy session through HAProxy calling echo in a loop until `stop`; each call's start,
    end (time.monotonic) and outcome ("ok", or the status and body, or the transport error)."""

    TIMEOUT = 10.0

    def __init__(self, target: str, n: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.target, self.n, self.stop = target, n, stop
        self.client = httpx.Client(timeout=self.TIMEOUT)
        self.calls: list[tuple[float, float, str]] = []
        self.sent = 0
        opened = self.post(INIT)
        assert opened.status_code == 200, opened.text
        self.sid = opened.headers["mcp-session-id"]
        for _ in range(10):      # through the balancer: another instance may not be able to adopt it yet
            if self.post(INITIALIZED).status_code == 202:
                break
        else:
            pytest.fail("notifications/initialized was never accepted")

    def post(self, body: dict[str, Any]) -> httpx.Response:
        headers = dict(ACCEPT)
        if hasattr(self, "sid"):
            headers.update({"mcp-session-id": self.sid, "mcp-protocol-version": "2025-11-25"})
        return self.client.post(self.target, json=body, headers=headers)

    def call_once(self) -> str:
        self.sent += 1
        want = f"{self.n}:{self.sent}"
        start = time.monotonic()
        try:
            answer = self.post(call(self.sent, "echo", text=want))
            outcome = "ok" if answer.status_code == 200 and \
                answer.json()["result"]["content"][0]["text"] == want else f"{answer.status_code} {answer.text[:300]}"
        except httpx.HTTPError as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        self.calls.append((start, time.monotonic(), outcome))
        return outcome

    def run(self) -> None:
        while not self.stop.is_set():
            self.call_once()
            time.sleep(0.02)


def start_callers(target: str, n: int) -> tuple[list[Caller], threading.Event]:
    stop = threading.Event()
    callers = [Caller(target, i, stop) for i in range(n)]
    for caller in callers:
        caller.start()
    return callers, stop


def stop_callers(callers: list[Caller], stop: threading.Event) -> None:
    stop.set()
    for caller in callers:
        caller.join(Caller.TIMEOUT + 5)
        caller.client.close()


def sdk_client(target: str, victim_port: int, waiting: threading.Event, out: dict[str, Any]) -> None:
    """The official SDK client, its session through HAProxy, but its `wait` call's POST sent straight
    to the victim (so that the victim writes that stream); the SDK resumes the stream by itself
    (GET with Last-Event-ID, through HAProxy) when the victim dies. `out`: what it got."""
    import anyio
    import httpx2
    from mcp.client import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPError

    class Pin(httpx2.AsyncBaseTransport):
        def __init__(self) -> None:
            self.inner = httpx2.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            if request.method == "POST" and b'"wait"' in request.content:
                request.url = request.url.copy_with(port=victim_port)
            return await self.inner.handle_async_request(request)

        async def aclose(self) -> None:
            await self.inner.aclose()

    async def main() -> None:
        async def progress(done: float, total: float | None, message: str | None) -> None:
            waiting.set()

        http = httpx2.AsyncClient(transport=Pin(), timeout=30)
        async with http, Client(streamable_http_client(target, http_client=http), mode="legacy") as client:
            try:
                await client.call_tool("wait", {"seconds": 60}, progress_callback=progress)
                out["wait"] = "answered"
            except MCPError as exc:
                out["wait"] = exc.code
            out["ended"] = time.monotonic()
            out["echo"] = (await client.call_tool("echo", {"text": "after"})).content[0].text
    try:
        anyio.run(main)
    except BaseException as exc:        # reported by the test
        out["failed"] = repr(exc)
        waiting.set()


def test_sigkill_of_one_instance_under_load(topology: Topology) -> None:
    haproxy, slots = topology.haproxy, topology.slots
    victim = slots[0].gateway
    callers, stop = start_callers(haproxy.target, 12)
    sdk_waiting, sdk_out = threading.Event(), {}
    sdk = threading.Thread(target=sdk_client, args=(haproxy.target, victim.port, sdk_waiting, sdk_out), daemon=True)
    try:
        sdk.start()
        time.sleep(2)
        assert sdk_waiting.wait(15) and "failed" not in sdk_out, sdk_out
        # Two SSE streams the victim writes (straight to it, so that it is the one): one answered
        # while its client was away, one still waiting for its answer when the victim dies.
        sid = callers[0].sid
        done = first_events(victim, sid, streamed_call(9001, "wait", seconds=0.2))
        time.sleep(0.5)
        h = {**ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
        body = json.dumps(streamed_call(9002, "wait", seconds=60))
        with httpx.Client(timeout=20) as client, client.stream("POST", victim.url("echo"), content=body,
                                                               headers=h) as resp:
            events = sse_events(resp.iter_lines())
            pending = [(i, json.loads(d)) for i, d in [next(events)]]
            killed = time.monotonic()
            victim.proc.send_signal(signal.SIGKILL)
            try:
                rest = list(events)
            except httpx.HTTPError:
                rest = []
            assert rest == []                                   # its client had nothing more from it
        assert victim.proc.wait(10) == -signal.SIGKILL
        haproxy.wait_for(slots[0].name, "DOWN", timeout=5)
        down = time.monotonic()

        # Resumed through HAProxy, on a survivor: the recorded answer, exactly after the last event seen...
        status, missed = resume(haproxy.target, sid, done[0][0])
        assert status == 200 and seqs(done + missed) == [1, 2], missed
        assert missed[0][1]["id"] == 9001 and missed[0][1]["result"]["content"][0]["text"] == "waited 0.2s"
        # ... and for the request in flight, an error saying so, once the victim's liveness key is gone.
        status, missed = resume(haproxy.target, sid, pending[0][0])
        assert status == 200 and seqs(pending + missed) == [1, 2], missed
        assert all(stream_of(str(i)) == stream_of(pending[0][0]) for i, _ in missed)
        assert missed[0][1]["id"] == 9002 and missed[0][1]["error"]["code"] == -31010, missed
        # The SDK client resumed its stream by itself, got the same error, and its session goes on.
        sdk.join(30)
        assert sdk_out.get("wait") == -31010 and sdk_out.get("echo") == "after", sdk_out
        assert sdk_out["ended"] - killed < 10
        time.sleep(1)            # the load goes on on the survivors
    finally:
        stop_callers(callers, stop)
    calls = [(c.n, *call) for c in callers for call in c.calls]
    assert all(end - start < Caller.TIMEOUT - 1 for _, start, end, _ in calls)    # none waited out its timeout
    failed = [x for x in calls if x[3] != "ok"]
    # Only requests sent before HAProxy took the victim out could fail, at once: HAProxy answers 502,
    # or closes the client's connection without an answer, for those it had sent to the victim.
    assert all(killed - 1 < start < down and ("502" in outcome or "RemoteProtocolError" in outcome)
               for _, start, _, outcome in failed), (killed, down, failed)
    for caller in callers:      # every session went on, on the survivors, without another failure
        after = [outcome for start, _, outcome in caller.calls if start > down]
        assert len(after) >= 5 and set(after) == {"ok"}, (caller.n, after[:5])
    assert all(slot.gateway.proc.poll() is None for slot in slots[1:])
    print(f"SIGKILL under load: {len(calls)} calls, {len(failed)} failed (in flight at the kill), "
          f"HAProxy took the instance out {down - killed:.2f}s after it")


@pytest.mark.parametrize("topology", [{"session_idle_timeout": 8}], indirect=True)     # refreshed every 2 s
def test_redis_restarted_under_load(topology: Topology) -> None:
    haproxy, slots = topology.haproxy, topology.slots
    callers, stop = start_callers(haproxy.target, 9)
    late: Caller | None = None
    try:
        # Every session held by all three instances: none of them needs Redis to be served.
        assert wait_for(lambda: all(len(served_by(slots).get(c.sid[:8], ())) == 3 for c in callers), 30)
        port = topology.redis.port
        topology.redis.kill()
        # A session opened while Redis is away: its instance serves it, the others cannot adopt it and
        # say so (503, -31009, Retry-After), never 404.
        late = Caller(haproxy.target, 99, threading.Event())
        outcomes = [late.call_once() for _ in range(9)]
        assert "ok" in outcomes and any(o.startswith("503") for o in outcomes), outcomes
        assert all(o == "ok" or (o.startswith("503 ") and '"code":-31009' in o.replace(" ", "")) for o in outcomes)
        time.sleep(2)
        topology.redis = RedisProcess(port)          # back, empty (no persistence)
        assert wait_for(lambda: all("is reachable again" in slot.gateway.log() for slot in slots), 20), \
            [slot.gateway.log()[-2000:] for slot in slots]
        # The late session's record is written again by its holder (its next refresh after a use);
        # then any instance serves it.
        assert wait_for(lambda: [late.call_once() for _ in range(3)] == ["ok"] * 3, 20), late.calls[-6:]
        time.sleep(1)
    finally:
        stop_callers(callers, stop)
        if late is not None:
            late.client.close()
    calls = [call for c in callers for call in c.calls]
    assert len(calls) > 300 and {outcome for _, _, outcome in calls} == {"ok"}, \
        [c for c in calls if c[2] != "ok"][:5]
    refused = sum(o.startswith("503") for _, _, o in late.calls)
    print(f"Redis restarted under load: {len(calls)} calls of the sessions held, none failed; a session opened "
          f"meanwhile: {refused} answers 503 until its record was written again")


def test_the_reference_files_are_valid_and_agree() -> None:
    """deploy/haproxy.cfg as shipped passes HAProxy's own check (its servers' names resolve only
    in Docker: init-addr none lets it start without them); the gateways' configs (deploy/gateway.json,
    the ConfigMap in deploy/kubernetes.yaml) are usable, use the Redis store, and have a drain grace
    longer than HAProxy's checks take to notice (fall 2 x inter 1 s); and the time each orchestrator
    gives a stopping instance covers its grace, its drain and its servers' shutdown."""
    import textwrap

    from wire_gateway.config import load_config, parse_config

    if not os.path.exists(HAPROXY):
        pytest.fail("haproxy is not installed; install it (e.g. `apt-get install haproxy`, as .ci/run does)")
    checked = subprocess.run([HAPROXY, "-c", "-f", str(DEPLOY_CFG)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    compose = (ROOT / "deploy" / "docker-compose.yml").read_text()
    kubernetes = (ROOT / "deploy" / "kubernetes.yaml").read_text()
    configmap = re.search(r"gateway\.json: \|\n(.*?)\n---", kubernetes, re.S)
    assert configmap is not None
    stops = {"compose": (load_config(str(ROOT / "deploy" / "gateway.json")),
                         re.search(r"stop_grace_period: (\d+)s", compose)),
             "kubernetes": (parse_config(json.loads(textwrap.dedent(configmap.group(1)))),
                            re.search(r"terminationGracePeriodSeconds: (\d+)", kubernetes))}
    for where, (config, stop) in stops.items():
        assert config.store.backend == "redis" and config.auth.enforced, where
        assert config.http.drain_grace > 2, where
        shutdown = max(s.stdin_close_timeout + s.sigterm_timeout for s in config.servers.values())
        assert stop is not None and int(stop.group(1)) > config.http.drain_grace + config.http.drain_timeout + shutdown
