"""A second, independent client: the official TypeScript MCP SDK (npm
@modelcontextprotocol/sdk, pinned in tests/ts_client/package.json) runs one scenario
against the bundled echo server through both of the gateway's fronts -- Streamable
HTTP (`wire-gateway serve`) and stdio (`wire-gateway stdio`, launched by the SDK's
StdioClientTransport) -- and the two runs must agree apart from pids.

Needs `node` (>= 20). The first run does `npm ci` in tests/ts_client (network to the
npm registry); without node/npm on PATH the tests fail: CI must have node >= 20.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from http_gateway import HttpGateway

ROOT = Path(__file__).resolve().parent.parent
CLIENT_DIR = ROOT / "tests" / "ts_client"
CLIENT = CLIENT_DIR / "client.mjs"
ECHO = ROOT / "fixtures" / "servers" / "echo.py"
SERVERS = {"echo": {"command": sys.executable, "args": [str(ECHO)]}}

NPM_CI_TIMEOUT = 300.0
CLIENT_TIMEOUT_MS = 30_000  # the client's own watchdog
RUN_TIMEOUT = 45.0  # ours, in case the watchdog itself is stuck
SAMPLING_ANSWER = "sampled by the TypeScript SDK client"  # fixed in client.mjs
LEGACY_VERSIONS = {"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"}
TRANSPORT_SPECIFIC = {"transport", "sessionIdAssigned", "closeMs"}


def _pinned_sdk_version() -> str:
    return json.loads((CLIENT_DIR / "package.json").read_text())["dependencies"]["@modelcontextprotocol/sdk"]


def _installed_sdk_version() -> str | None:
    manifest = CLIENT_DIR / "node_modules" / "@modelcontextprotocol" / "sdk" / "package.json"
    try:
        return json.loads(manifest.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def find_node() -> str:
    """The `node` binary, with tests/ts_client/node_modules installed (npm ci if needed): the
    session-wide `node` fixture (conftest.py), which the auth tests use too."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the TypeScript SDK client cannot run (install node >= 20)")
    if _installed_sdk_version() != _pinned_sdk_version():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("npm is not on PATH: cannot install tests/ts_client/node_modules")
        try:
            done = subprocess.run(
                [npm, "ci", "--prefix", str(CLIENT_DIR), "--no-audit", "--no-fund"],
                cwd=ROOT, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=NPM_CI_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"npm ci in {CLIENT_DIR} took more than {NPM_CI_TIMEOUT:.0f}s")
        if done.returncode != 0:
            pytest.fail(f"npm ci in {CLIENT_DIR} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        installed = _installed_sdk_version()
        assert installed == _pinned_sdk_version(), f"npm ci installed SDK {installed!r}"
    return node


def run_client(node: str, kind: str, target: str, headers: dict[str, str] | None = None,
               prefix: str = "") -> dict[str, Any]:
    """The scenario's results; `prefix`: the aggregate's prefix of the server's tool and prompt names."""
    env = {**os.environ, "TS_CLIENT_TIMEOUT_MS": str(CLIENT_TIMEOUT_MS), "TS_CLIENT_HEADERS": json.dumps(headers or {}),
           "TS_CLIENT_PREFIX": prefix}
    try:
        done = subprocess.run([node, str(CLIENT), kind, target], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"TypeScript client ({kind}) hung past {RUN_TIMEOUT}s:\n{e.stdout}\n{e.stderr}") from None
    assert done.returncode == 0, f"TypeScript client ({kind}) exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    lines = done.stdout.strip().splitlines()
    assert lines, f"TypeScript client ({kind}) printed nothing:\n{done.stderr}"
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def http_results(node: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    gateway = HttpGateway(tmp_path_factory.mktemp("ts-http"), SERVERS)
    try:
        results = run_client(node, "http", gateway.url("echo"))
    except BaseException:
        print(gateway.log())
        raise
    finally:
        status = gateway.stop()
    assert status == 0, f"gateway exited {status}:\n{gateway.log()}"
    return results


@pytest.fixture(scope="module")
def stdio_results(node: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("ts-stdio")
    config = tmp / "stdio-gateway.json"
    config.write_text(json.dumps({"servers": SERVERS}))
    log = tmp / "stdio-gateway.log"
    spec = {
        "command": sys.executable,
        "args": ["-m", "wire_gateway", "stdio", "--config", str(config), "--server", "echo", "--log-file", str(log)],
        "cwd": str(ROOT),
    }
    try:
        return run_client(node, "stdio", json.dumps(spec))
    except BaseException:
        print(log.read_text(errors="replace") if log.exists() else "(no gateway log)")
        raise


def check_results(r: dict[str, Any]) -> None:
    assert r["sdkVersion"] == _pinned_sdk_version()
    assert r["errors"] == [], "the SDK reported protocol errors"
    assert r["serverInfo"] == {"name": "echo", "version": "1.0.0"}
    assert {"tools", "resources", "prompts"} <= set(r["serverCapabilities"])
    assert {"echo", "add", "pid", "progress", "sample"} <= set(r["tools"])
    assert r["echo"] == "hello from TypeScript"
    assert r["add"] == "5"
    assert r["pid"].isdigit()
    assert r["resources"] == ["echo://info"]
    # the resource is read in the same session as the pid call: same upstream process
    assert r["resourceText"] == f"echo fixture server, pid {r['pid']}"
    assert r["prompts"] == ["greet"]
    assert r["promptText"] == "Hello, TypeScript!"
    assert r["progressResult"] == "done"
    assert r["progressCount"] >= 2
    assert [p["progress"] for p in r["progress"]] == list(range(1, r["progressCount"] + 1))
    assert all(p["total"] == 3 for p in r["progress"])
    if r["era"] == "legacy":
        assert r["protocolVersion"] in LEGACY_VERSIONS
        assert r["sample"] == SAMPLING_ANSWER
        assert r["samplingRequests"] == [["Say hi to the gateway"]]
    else:
        assert r["sample"] is None
    assert r["ping"] == {}


def test_ts_sdk_through_http_front(http_results: dict[str, Any]) -> None:
    check_results(http_results)
    assert http_results["sessionIdAssigned"] is True


def test_ts_sdk_through_stdio_front(stdio_results: dict[str, Any]) -> None:
    check_results(stdio_results)
    # StdioClientTransport.close() ends the gateway's stdin, waits 2 s for it to exit,
    # then SIGTERMs it: the gateway should exit on EOF well before that.
    assert stdio_results["closeMs"] < 1900, "the stdio gateway did not exit promptly on stdin EOF"


def _without_pids(r: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in r.items() if k not in TRANSPORT_SPECIFIC}
    out["pid"] = "PID"
    out["resourceText"] = re.sub(r"pid \d+", "pid PID", r["resourceText"])
    return out


def test_ts_sdk_http_and_stdio_fronts_agree(http_results: dict[str, Any], stdio_results: dict[str, Any]) -> None:
    http, stdio = _without_pids(http_results), _without_pids(stdio_results)
    for key in sorted(http.keys() | stdio.keys()):
        assert http.get(key) == stdio.get(key), f"{key!r} differs between the HTTP and stdio fronts"
