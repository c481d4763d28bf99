"""The official TypeScript MCP SDK v2 (npm @modelcontextprotocol/client, pinned in
tests/ts_client_modern/package.json) in its 2026-07-28 mode (`versionNegotiation: {mode: {pin:
"2026-07-28"}}`) through the era bridge: `/mcp/NAME` in front of a legacy-only stdio server
(fixtures/servers/legacy_echo.py), the SDK never sending `initialize`.

One scenario (tests/ts_client_modern/client.mjs): discover, tools, resources, prompts, completion,
progress, an elicitation and a sampling request during tool calls (the bridge's input-required
results, which the SDK fulfils from its handlers and retries), a call the SDK aborts (the server is
told), and a `subscriptions/listen` stream that hears a
tool-list change and a resource update (`resourceSubscriptions`, carried as `resources/subscribe`).

Needs `node` (>= 20). The first run does `npm ci` in tests/ts_client_modern (network to the npm
registry), under a lock (xdist workers may get here together); .ci/run installs it beforehand.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from gateway import fixture
from http_gateway import HttpGateway

ROOT = Path(__file__).resolve().parent.parent
CLIENT_DIR = ROOT / "tests" / "ts_client_modern"
CLIENT = CLIENT_DIR / "client.mjs"
PACKAGE = "@modelcontextprotocol/client"
NPM_CI_TIMEOUT = 300.0
RUN_TIMEOUT = 45.0         # ours; the client's own watchdog is 30 s


def pinned() -> str:
    return json.loads((CLIENT_DIR / "package.json").read_text())["dependencies"][PACKAGE]


def installed() -> str | None:
    try:
        return json.loads((CLIENT_DIR / "node_modules" / PACKAGE / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture(scope="module")
def node_modern() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the TypeScript SDK client cannot run (install node >= 20)")
    with open(CLIENT_DIR / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if installed() != pinned():
            npm = shutil.which("npm")
            if npm is None:
                pytest.fail(f"npm is not on PATH: cannot install {CLIENT_DIR}/node_modules")
            done = subprocess.run([npm, "ci", "--prefix", str(CLIENT_DIR), "--no-audit", "--no-fund"], cwd=ROOT,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=NPM_CI_TIMEOUT)
            if done.returncode != 0:
                pytest.fail(f"npm ci in {CLIENT_DIR} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    assert installed() == pinned()
    return node


def run_client(node: str, tmp: Path, route: str, prefix: str = "") -> dict[str, Any]:
    """The scenario through a gateway in front of the legacy fixture, on `route` ("old", or "" for
    the aggregate `/mcp`, whose names carry `prefix`); its results and what the server received."""
    gw = HttpGateway(tmp, {"old": fixture("legacy_echo", "--log", str(tmp / "old.jsonl"))})
    try:
        url = gw.url(route) if route else f"{gw.base}/mcp"
        try:
            done = subprocess.run([node, str(CLIENT), url, prefix], cwd=ROOT, stdin=subprocess.DEVNULL,
                                  env={**os.environ, "TS_CLIENT_TIMEOUT_MS": "30000"}, capture_output=True,
                                  text=True, timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"the TypeScript client hung past {RUN_TIMEOUT}s:\n{e.stdout}\n{e.stderr}") from None
        assert done.returncode == 0, f"the TypeScript client exited {done.returncode}:\n{done.stderr}\n{gw.log()}"
        received = [json.loads(line) for line in (tmp / "old.jsonl").read_text().splitlines()]
        return {**json.loads(done.stdout.strip().splitlines()[-1]), "server_received": received}
    finally:
        assert gw.stop() == 0, gw.log()
        assert "Traceback" not in gw.log() and " ERROR " not in gw.log(), gw.log()


@pytest.fixture(scope="module")
def results(node_modern: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_client(node_modern, tmp_path_factory.mktemp("ts-modern"), "old")


def test_the_sdk_speaks_the_modern_era_to_a_legacy_server_through_the_bridge(results):
    r = results
    assert r["sdkVersion"] == pinned()
    assert (r["era"], r["version"]) == ("modern", "2026-07-28")
    assert r["server"] == {"name": "legacy-echo", "version": "1.0.0"}     # the server's own, from its initialize
    assert r["errors"] == []
    methods = [m.get("method") for m in r["server_received"] if isinstance(m, dict)]
    assert methods.count("server/discover") == 1   # the gateway's one probe (era auto); the bridge answers the SDK's
    assert "initialize" in methods and "resources/subscribe" in methods


def test_tools_resources_prompts_and_progress(results):
    r = results
    assert {"echo", "ask", "progress", "touch_tools", "touch_resource"} <= set(r["tools"])
    assert r["echo"] == "hello"
    assert r["resources"] == ["echo://info"] and r["read"].startswith("legacy-echo fixture server")
    assert r["prompts"] == ["greet"] and "Ada" in r["prompt"]
    assert r["progress"] == {"result": "done", "seen": [1, 2, 3]}


def test_an_elicitation_during_a_tool_call(results):
    assert results["asked"] == ["your name?"]
    assert results["elicited"] == 'accept: {"name": "Grace"}'


def test_a_sampling_request_during_a_tool_call_and_completion(results):
    assert results["sampled"] == ["say it"] and results["sampledAnswer"] == "sampled by ts"
    assert results["completion"] == ["Ada", "Alan"]


def test_an_aborted_call_is_cancelled_on_the_server(results):
    assert results["aborted"] == "aborted" and results["afterAbort"] == "after"
    cancelled = [m for m in results["server_received"] if isinstance(m, dict) and "cancelled" in m]
    assert cancelled and str(cancelled[-1]["cancelled"]).startswith("agg-"), results["server_received"]


def test_the_same_scenario_through_the_aggregate(node_modern: str, tmp_path: Path) -> None:
    """/mcp, the legacy server a member of the modern aggregate: its names prefixed, the rest alike."""
    r = run_client(node_modern, tmp_path, "", "old__")
    assert r["errors"] == [] and (r["era"], r["version"]) == ("modern", "2026-07-28")
    assert {"old__echo", "old__ask", "old__sample"} <= set(r["tools"]) and r["prompts"] == ["old__greet"]
    assert (r["echo"], r["elicited"], r["sampledAnswer"]) == ("hello", 'accept: {"name": "Grace"}', "sampled by ts")
    assert r["completion"] == ["Ada", "Alan"] and r["progress"] == {"result": "done", "seen": [1, 2, 3]}
    assert (r["aborted"], r["afterAbort"]) == ("aborted", "after")
    assert r["toolsListChanged"] >= 1 and r["updated"] == ["echo://info"]


def test_list_changes_and_resource_updates_on_a_listen_stream(results):
    r = results
    assert r["subscribe"] is True
    assert r["honored"] == {"toolsListChanged": True, "resourceSubscriptions": ["echo://info"]}
    assert r["toolsListChanged"] >= 1
    assert r["touched"] == "touched" and r["updated"] == ["echo://info"]
