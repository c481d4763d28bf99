"""A real Prometheus scrapes `wire-gateway serve` while the official SDK client makes calls.

Debian's `prometheus` package (installed by .ci/run) runs on 127.0.0.1 with a scrape interval of
1 s against the admin port's GET /metrics, its data in the test's temporary directory; the test
asks its HTTP API (`/api/v1/query`) until the request counter and the latency histogram show the
calls with the right labels and counts, then stops it by its PID.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_gateway import HttpGateway
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from test_metrics import admin_port
from test_sdk_e2e import REPO_ROOT, SDK_SERVER

PROMETHEUS = Path("/usr/bin/prometheus")
CALLS = 5

pytestmark = pytest.mark.skipif(not PROMETHEUS.exists() and not os.environ.get("CI"),
                                reason="Debian's prometheus package is not installed (.ci/run installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    def __init__(self, tmp_path: Path, target_port: int) -> None:
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: wire-gateway\n    scrape_timeout: 1s\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n")
        self.port = free_port()
        self.log_path = tmp_path / "prometheus.log"
        self.log_file = open(self.log_path, "wb")   # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT, cwd=tmp_path)
        self.api = f"http://127.0.0.1:{self.port}/api/v1"

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.api}/query", params={"query": expr}, timeout=5)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, expr: str, check: Any, timeout: float = 45.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited ({self.proc.returncode}):\n{self.log()}")
            try:
                result = self.query(expr)
            except httpx.HTTPError:      # not listening yet
                result = []
            if check(result):
                return result
            time.sleep(0.5)
        raise AssertionError(f"{expr}: still {result} after {timeout}s\n{self.targets()}\n{self.log()[-3000:]}")

    def targets(self) -> str:
        try:
            return httpx.get(f"{self.api}/targets", timeout=5).text
        except httpx.HTTPError as exc:
            return f"(targets: {exc})"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 15)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, 9)
                self.proc.wait(5)
        self.log_file.close()


def one_value(result: list[dict[str, Any]]) -> float | None:
    return float(result[0]["value"][1]) if len(result) == 1 else None


@pytest.mark.anyio
async def test_prometheus_scrapes_request_counts_and_latency(tmp_path: Path) -> None:
    gateway = HttpGateway(tmp_path, {"sdk": {"command": sys.executable, "args": [str(SDK_SERVER)],
                                             "cwd": str(REPO_ROOT)}}, extra_args=["--admin-port", "0"])
    prometheus = None
    try:
        prometheus = Prometheus(tmp_path, admin_port(gateway))
        async with Client(streamable_http_client(gateway.url("sdk")), mode="legacy") as client:
            for i in range(CALLS):
                result = await client.call_tool("add", {"a": i, "b": 1})
                assert not result.is_error
            assert (await client.list_tools()).tools

        calls = 'wire_gateway_requests_total{job="wire-gateway",server="sdk",method="tools/call"}'
        got = prometheus.wait_for(calls, lambda r: one_value(r) == CALLS)
        assert got[0]["metric"]["outcome"] == "ok" and "code" not in got[0]["metric"]    # an empty label is no label
        listed = prometheus.wait_for('wire_gateway_requests_total{server="sdk",method="tools/list"}',
                                     lambda r: (one_value(r) or 0) >= 1)   # the SDK lists tools itself too
        assert listed[0]["metric"]["outcome"] == "ok"
        count = 'wire_gateway_upstream_request_duration_seconds_count{server="sdk",method="tools/call"}'
        prometheus.wait_for(count, lambda r: one_value(r) == CALLS)
        buckets = prometheus.query('wire_gateway_upstream_request_duration_seconds_bucket'
                                   '{server="sdk",method="tools/call"}')
        by_le = {b["metric"]["le"]: float(b["value"][1]) for b in buckets}
        assert by_le["+Inf"] == CALLS and len(by_le) > 10
        assert all(by_le[a] <= by_le[b] for a, b in zip(sorted(by_le, key=float), sorted(by_le, key=float)[1:]))
        p50 = prometheus.query('histogram_quantile(0.5, sum by (le) '
                               '(wire_gateway_upstream_request_duration_seconds_bucket{server="sdk"}))')
        assert one_value(p50) is not None and 0 < one_value(p50) < 10     # type: ignore[operator]
        added = prometheus.query('wire_gateway_gateway_duration_seconds_count{server="sdk",method="tools/call"}')
        assert one_value(added) == CALLS
        sessions = prometheus.query('wire_gateway_sessions{front="http",era="legacy"}')
        assert one_value(sessions) is not None
        up = prometheus.query('up{job="wire-gateway"}')
        assert one_value(up) == 1
    except BaseException:
        print(gateway.log())
        raise
    finally:
        if prometheus is not None:
            prometheus.stop()
        assert gateway.stop() == 0
