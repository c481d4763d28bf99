"""Metrics (telemetry/metrics.py): the instruments, the Prometheus text they become, the OTLP
push, and the facts a running `wire-gateway serve` counts: requests and their latency, a crashing
server's exits and restarts, a filter's block, auth refusals and rate limits.

The exposition is parsed with prometheus-client's own parser, the OTLP push is decoded with
opentelemetry-proto by a receiver on 127.0.0.1. A real Prometheus scraping the gateway is
tests/test_metrics_prometheus.py.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import trio
from gateway import fixture
from http_gateway import HttpGateway
from prometheus_client.parser import text_string_to_metric_families
from test_http_front import ACCEPT

from wire_gateway.admin.app import serve_admin
from wire_gateway.telemetry import metrics as metrics_module
from wire_gateway.telemetry.metrics import ARRIVED, LATENCY_BUCKETS, METRICS, Metrics, code_label, method_label
from wire_gateway.telemetry.prometheus import exposition, make_registry
from wire_gateway.upstream.answers import Answers
from wire_gateway.upstream.handshake import Handshake
from wire_gateway.wire import errors
from wire_gateway.wire.frame import decode

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
FAST_RESTART = {"initial_delay": 0.05, "max_delay": 0.5, "jitter": 0.1}


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Any], sample_name: str, **labels: str) -> float:
    """The sample named `sample_name` whose labels include `labels` (0 if there is none)."""
    family = next((f for f in fams.values() if any(s.name == sample_name for s in f.samples)), None)
    if family is None:
        return 0.0
    return sum(s.value for s in family.samples
               if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items()))


# ---- the instruments -----------------------------------------------------------------------------

def test_labels_have_bounded_values():
    assert [method_label(m) for m in ("tools/call", "x/y", None)] == ["tools/call", "other", "other"]
    assert [code_label(c) for c in (-32601, -32050, -31001, -32768, 7, "x", None, True)] == \
        ["-32601", "-32050", "-31001", "other", "other", "other", "other", "other"]


def test_collector_output_parses_as_prometheus_text():
    m = Metrics()
    m.requests.inc(("echo", "tools/call", "ok", ""))
    m.requests.inc(("echo", "tools/call", "ok", ""), 2)
    m.requests.inc(("echo", "tools/call", "error", "-32602"))
    for seconds in (0.00005, LATENCY_BUCKETS[3], 0.003, 1000.0):    # below, on, between, above the bounds
        m.upstream_seconds.observe(("echo", "tools/call"), seconds)
    m.received_bytes.cell("http").value += 123

    class Live:
        def __init__(self, n: int) -> None:
            self.n = n

    a, b = Live(2), Live(3)
    m.in_flight.watch(a, lambda o: [(("echo",), o.n)])
    m.in_flight.watch(b, lambda o: [(("echo",), o.n)])
    fams = families(exposition(make_registry(m)).decode())

    assert fams["wire_gateway_requests"].type == "counter"
    assert value(fams, "wire_gateway_requests_total", outcome="ok") == 3
    assert value(fams, "wire_gateway_requests_total", outcome="error", code="-32602") == 1
    hist = fams["wire_gateway_upstream_request_duration_seconds"]
    assert hist.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert buckets["0.0001"] == 1 and buckets["0.001"] == 2 and buckets["0.005"] == 3 and buckets["60.0"] == 3
    assert buckets["+Inf"] == 4 == value(fams, "wire_gateway_upstream_request_duration_seconds_count")
    assert value(fams, "wire_gateway_upstream_request_duration_seconds_sum") == pytest.approx(1000.00405)
    assert value(fams, "wire_gateway_received_bytes_total", front="http") == 123
    assert value(fams, "wire_gateway_in_flight_requests", server="echo") == 5     # added up over objects
    del b
    gc.collect()
    fams = families(exposition(make_registry(m)).decode())
    assert value(fams, "wire_gateway_in_flight_requests", server="echo") == 2     # a gone object drops out
    assert a.n == 2


class _Sink:
    def __init__(self) -> None:
        self.replies: list[tuple[Any, bytes]] = []

    def gateway_reply(self, req_id: Any, data: bytes) -> None:
        self.replies.append((req_id, data))


def _request(req_id: int, method: str = "tools/call") -> Any:
    return decode(json.dumps({"jsonrpc": "2.0", "id": req_id, "method": method, "params": {}}).encode())


def test_the_books_count_every_end_of_a_request():
    """Answers (upstream/answers.py) is where every request an upstream takes on ends."""
    name = "books-test"
    before = {k: c.value for k, c in METRICS.requests.cells.items() if k[0] == name}
    assert not before
    books = Answers(name, _Sink(), Handshake(), lambda method: {}, logging.getLogger("test"), timeout=30.0)
    for i in range(1, 6):
        if i == 1:
            METRICS.arrive()           # a front's stamp: the gateway's time on the requests it serves
        books.owe(_request(i), 1)
        ARRIVED.set(0.0)
    fams = families(exposition(make_registry()).decode())
    assert value(fams, "wire_gateway_in_flight_requests", server=name) == 5
    books.settle(decode(b'{"jsonrpc":"2.0","id":1,"result":{}}'))
    books.settle(decode(b'{"jsonrpc":"2.0","id":2,"error":{"code":-32050,"message":"no"}}'))
    books.cancel(decode(b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":3}}'))
    books.fail_one(4, errors.UPSTREAM_EXITED, "gone")
    entry = books.pop(5)
    books.timed_out(5, entry, "cancelled", time.monotonic())
    books.refused("tools/list")
    fams = families(exposition(make_registry()).decode())
    got = {(s.labels["outcome"], s.labels["code"]): s.value for s in fams["wire_gateway_requests"].samples
           if s.labels.get("server") == name}
    assert got == {("ok", ""): 1, ("error", "-32050"): 1, ("cancelled", ""): 1, ("error", "-31001"): 1,
                   ("timeout", ""): 1, ("refused", ""): 1}
    assert value(fams, "wire_gateway_upstream_request_duration_seconds_count", server=name) == 2
    assert value(fams, "wire_gateway_gateway_duration_seconds_count", server=name) == 1   # one had a stamp
    assert value(fams, "wire_gateway_in_flight_requests", server=name) == 0


def test_metrics_off_binds_nothing():
    metrics_module.configure(False)
    try:
        books = Answers("off-test", _Sink(), Handshake(), lambda method: {}, logging.getLogger("test"))
        books.owe(_request(1), 1)
        books.settle(decode(b'{"jsonrpc":"2.0","id":1,"result":{}}'))
    finally:
        metrics_module.configure(True)
    assert not any(k[0] == "off-test" for k in METRICS.requests.cells)
    assert not any(k == ("off-test",) for k, _ in METRICS.in_flight.samples())


# ---- the admin route ---------------------------------------------------------------------------

@pytest.mark.anyio
async def test_admin_serves_metrics_behind_its_edge_check():
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_admin, lambda: {}, "127.0.0.1", 0, shutdown)
        on = await nursery.start(lambda task_status: serve_admin(lambda: {}, "127.0.0.1", 0, shutdown, metrics=True,
                                                                 task_status=task_status))
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"http://127.0.0.1:{port}/metrics")).status_code == 404   # metrics off
            r = await client.get(f"http://127.0.0.1:{on}/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            assert families(r.text)["wire_gateway_requests"].type == "counter"
            evil = await client.get(f"http://127.0.0.1:{on}/metrics", headers={"host": "evil.example"})
            assert evil.status_code == 403
            assert (await client.post(f"http://127.0.0.1:{on}/metrics")).status_code == 405
        shutdown.set()


# ---- a running gateway -------------------------------------------------------------------------

def admin_port(gw: HttpGateway, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"serving the control plane on http://[^:]+:(\d+)/status", gw.log())
        if found:
            return int(found.group(1))
        time.sleep(0.05)
    raise AssertionError(f"no admin port announced:\n{gw.log()}")


def scrape(port: int) -> dict[str, Any]:
    r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert r.status_code == 200, r.text
    return families(r.text)


def wait_for(port: int, check: Any, timeout: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        fams = scrape(port)
        if check(fams) or time.monotonic() > deadline:
            return fams
        time.sleep(0.1)


def session(base: str) -> tuple[httpx.Client, dict[str, str]]:
    client = httpx.Client(timeout=20)
    r = client.post(base, json=INIT, headers=ACCEPT)
    assert r.status_code == 200, r.text
    headers = {**ACCEPT, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    client.post(base, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    return client, headers


def call(client: httpx.Client, base: str, headers: dict[str, str], req_id: int, tool: str,
         arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    r = client.post(base, headers=headers, json={"jsonrpc": "2.0", "id": req_id, "method": "tools/call",
                                                 "params": {"name": tool, "arguments": arguments or {}}})
    return r.json()


def test_serve_counts_requests_crashes_blocks_and_sessions(tmp_path: Path):
    servers = {
        "echo": {**fixture("echo"), "tools": {"deny": ["add"]}},
        "crashy": {**fixture("crashing"), "restart": FAST_RESTART},
        "dead": {**fixture("crashing", "--crash-on-start"),
                 "restart": {**FAST_RESTART, "crash_loop_exits": 2, "crash_loop_cooldown": 30}},
    }
    gw = HttpGateway(tmp_path, servers, extra_args=["--admin-port", "0"])
    try:
        port = admin_port(gw)
        client, headers = session(gw.url("echo"))
        for i in range(3):
            assert call(client, gw.url("echo"), headers, 10 + i, "echo", {"text": "x"})["result"]
        blocked = call(client, gw.url("echo"), headers, 20, "add", {"a": 1, "b": 2})
        assert blocked["error"]["code"] == errors.INVALID_PARAMS
        crashy, crashy_headers = session(gw.url("crashy"))
        crashed = call(crashy, gw.url("crashy"), crashy_headers, 5, "crash")
        assert crashed["error"]["code"] == errors.UPSTREAM_EXITED

        def settled(fams: dict[str, Any]) -> bool:
            return (value(fams, "wire_gateway_upstream_crash_loops_total", server="dead") >= 1
                    and value(fams, "wire_gateway_upstream_starts_total", server="crashy") >= 3)

        fams = wait_for(port, settled)
        assert value(fams, "wire_gateway_requests_total", server="echo", method="tools/call", outcome="ok") == 3
        assert value(fams, "wire_gateway_requests_total", server="echo", method="tools/call", outcome="refused",
                     code="-32602") == 1
        assert value(fams, "wire_gateway_policy_blocks_total", server="echo", interceptor="filter") == 1
        assert value(fams, "wire_gateway_upstream_request_duration_seconds_count", server="echo",
                     method="tools/call") == 3
        assert value(fams, "wire_gateway_gateway_duration_seconds_count", server="echo", method="tools/call") == 4
        assert value(fams, "wire_gateway_requests_total", server="echo", method="initialize", outcome="ok") == 1
        # the crash: its request, the exit, and the restart (the shared process, the session's, its successor)
        assert value(fams, "wire_gateway_requests_total", server="crashy", outcome="error", code="-31001") == 1
        assert value(fams, "wire_gateway_upstream_exits_total", server="crashy") == 1
        assert value(fams, "wire_gateway_upstream_starts_total", server="crashy") == 3
        assert value(fams, "wire_gateway_upstream_exits_total", server="dead") >= 2
        assert value(fams, "wire_gateway_upstream_crash_loops_total", server="dead") == 1
        assert value(fams, "wire_gateway_sessions", front="http", era="legacy") == 2
        assert value(fams, "wire_gateway_in_flight_requests", server="echo") == 0
        assert value(fams, "wire_gateway_received_bytes_total", front="http") > 0
        assert value(fams, "wire_gateway_sent_bytes_total", front="http") > 0
        client.close()
        crashy.close()
    except BaseException:
        print(gw.log())
        raise
    finally:
        assert gw.stop() == 0


def test_serve_counts_auth_refusals_and_rate_limits(tmp_path: Path):
    from wire_gateway.auth.backends import SqliteBackend
    from wire_gateway.auth.tenancy import Tenancy

    servers = {"echo": fixture("echo")}
    tenancy = Tenancy(SqliteBackend(str(tmp_path / "auth.sqlite3")), servers)
    tenancy.create_project("team", ["echo"])
    tenancy.create_user("alice")
    key = tenancy.create_key("team", "alice")[1]
    gw = HttpGateway(tmp_path, servers, auth={"mode": "keys", "rate_limit": {"rate": 0.001, "burst": 1}},
                     extra_args=["--admin-port", "0"])
    try:
        port = admin_port(gw)
        url = gw.url("echo")
        assert httpx.post(url, json=INIT, headers=ACCEPT, timeout=20).status_code == 401
        bogus = {**ACCEPT, "authorization": "Bearer wg_nosuchkey_0123456789abcdef"}
        assert httpx.post(url, json=INIT, headers=bogus, timeout=20).status_code == 401
        good = {**ACCEPT, "authorization": f"Bearer {key}"}
        assert httpx.post(url, json=INIT, headers=good, timeout=20).status_code == 200
        assert httpx.post(url, json=INIT, headers=good, timeout=20).status_code == 429
        fams = scrape(port)
        assert value(fams, "wire_gateway_auth_failures_total", reason="no_credentials") == 1
        assert value(fams, "wire_gateway_auth_failures_total", reason="invalid_credentials") == 1
        assert value(fams, "wire_gateway_rate_limited_total", project="team") == 1
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert key not in text and "alice" not in text      # no principal, no key: only the project
    except BaseException:
        print(gw.log())
        raise
    finally:
        gw.stop()


# ---- the OTLP push -------------------------------------------------------------------------------

class _Receiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP metrics receiver: each POST body decoded as an ExportMetricsServiceRequest."""

    received: ClassVar[list[Any]] = []

    def do_POST(self) -> None:
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

        body = self.rfile.read(int(self.headers["content-length"]))
        request = ExportMetricsServiceRequest()
        request.ParseFromString(body)
        self.received.append((self.path, request))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_otlp_push_reaches_a_receiver(tmp_path: Path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{server.server_port}/v1/metrics",
           "OTEL_METRIC_EXPORT_INTERVAL": "300"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        gw = HttpGateway(tmp_path, {"echo": fixture("echo")}, telemetry={"otlp_metrics": True})
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        client, headers = session(gw.url("echo"))
        assert call(client, gw.url("echo"), headers, 2, "echo", {"text": "x"})["result"]
        client.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            names = {m.name: m for _, req in list(_Receiver.received) for rm in req.resource_metrics
                     for sm in rm.scope_metrics for m in sm.metrics}
            calls = list(names["wire_gateway_requests_total"].sum.data_points) \
                if "wire_gateway_requests_total" in names else []
            if any({a.key: a.value.string_value for a in p.attributes}.get("method") == "tools/call" for p in calls):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"no tools/call count pushed; got {sorted(names)}")
        assert all(path == "/v1/metrics" for path, _ in _Receiver.received)
        point = next(p for p in calls if {a.key: a.value.string_value for a in p.attributes}["method"] == "tools/call")
        assert point.as_int == 1 or point.as_double == 1
        assert names["wire_gateway_requests_total"].sum.is_monotonic
        assert "wire_gateway_upstream_request_duration_seconds_bucket" in names
        first = _Receiver.received[0][1].resource_metrics[0]
        resource = {a.key: a.value.string_value for a in first.resource.attributes}
        assert resource["service.name"] == "wire-gateway"
    except BaseException:
        print(gw.log())
        raise
    finally:
        assert gw.stop() == 0
        server.shutdown()


# ---- the docs ----------------------------------------------------------------------------------

def test_dashboard_and_catalogue_name_only_metrics_the_gateway_has():
    root = Path(__file__).resolve().parent.parent
    dashboard = json.loads((root / "docs" / "grafana-dashboard.json").read_text())
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in dashboard["templating"]["list"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(total|bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"wire_gateway_\w+", e)}
    have = {inst.name for inst in METRICS.instruments}
    assert used <= have, used - have
    assert {"wire_gateway_requests", "wire_gateway_upstream_request_duration_seconds",
            "wire_gateway_cache_lookups", "wire_gateway_upstream_exits", "wire_gateway_sessions"} <= used
    catalogue = (root / "docs" / "observability.md").read_text()
    for inst in METRICS.instruments:
        shown = inst.name.removeprefix("wire_gateway_") + ("_total" if inst.kind == "counter" else "")
        assert f"`{shown}`" in catalogue or f"`{shown}`," in catalogue, shown
