"""The era bridge answers for a legacy server as the modern (2026-07-28) server it stands for:
-32021 with HTTP 400 for a call whose server asks for a capability the client did not declare,
and no log message for a request that did not set `io.modelcontextprotocol/logLevel` (docs/bridge.md).

A real `wire-gateway serve` in front of the legacy-only echo fixture over stdio, driven with raw
JSON-RPC over httpx (test_bridge_http.py's helpers), so every status and frame is visible.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from gateway import MODERN_META, fixture
from http_gateway import HttpGateway
from test_bridge_http import CAPS_KEY, events, post, result, text

LEVEL_KEY = "io.modelcontextprotocol/logLevel"
SERVER_LOG: list[Path] = []


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory):
    tmp_path = tmp_path_factory.mktemp("bridge-stateless")
    SERVER_LOG.append(tmp_path / "old.jsonl")
    gateway = HttpGateway(tmp_path, {"old": fixture("legacy_echo", "--log", str(SERVER_LOG[0]))})
    try:
        yield gateway
    finally:
        assert gateway.stop() == 0, gateway.log()
        assert "Traceback" not in gateway.log(), gateway.log()


def cancelled_on_server() -> int:
    """How many notifications/cancelled the legacy server got (its --log; none before it started)."""
    path = SERVER_LOG[0]
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(json.loads(line).get("method") == "notifications/cancelled" for line in lines)


def call(gw: HttpGateway, req_id: Any, name: str, arguments: dict[str, Any], meta: dict[str, Any]):
    return post(gw, "old", req_id, "tools/call", {"name": name, "arguments": arguments, "_meta": meta})


@pytest.mark.parametrize("meta", [MODERN_META, {**MODERN_META, "progressToken": "p"}], ids=["fast", "general"])
def test_an_undeclared_capability_is_missing_required_client_capability(gw, meta):
    """The server asks for sampling during the call of a client that declared no capability: the
    client gets -32021 naming it (HTTP 400), the server's call is cancelled, the session serves on."""
    before = cancelled_on_server()
    resp = call(gw, f"s-{len(meta)}", "sample", {"prompt": "hi"}, meta)
    assert resp.status_code == 400, resp.text
    answer = events(resp)[-1]
    assert answer["id"] == f"s-{len(meta)}"
    error = answer["error"]
    assert error["code"] == -32021 and error["data"]["requiredCapabilities"] == {"sampling": {}}, error
    assert "sampling" in error["message"]
    assert not [m for m in events(resp) if m.get("method") == "sampling/createMessage"]
    deadline = time.monotonic() + 5
    while cancelled_on_server() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled_on_server() == before + 1
    assert text(result(call(gw, "after", "echo", {"text": "still"}, MODERN_META))) == "still"


def test_a_client_that_declared_another_capability_leaves_the_server_to_do_without(gw):
    """A client that can be asked something (elicitation) is not failed for what it cannot answer
    (sampling): the server's request is refused and the server's own answer comes back."""
    res = result(call(gw, "e1", "sample", {"prompt": "hi"}, {**MODERN_META, CAPS_KEY: {"elicitation": {}}}))
    assert res["resultType"] == "complete" and res["isError"]
    assert "did not declare the sampling capability" in text(res)


def logs(resp) -> list[dict[str, Any]]:
    return [m for m in events(resp) if m.get("method") == "notifications/message"]


def test_no_log_message_without_a_log_level(gw):
    resp = call(gw, "l1", "log", {"level": "error"}, MODERN_META)
    assert text(result(resp)) == "logged"
    assert logs(resp) == []


@pytest.mark.parametrize(("wanted", "level", "passed"), [
    ("debug", "info", True), ("info", "info", True), ("warning", "error", True),
    ("error", "info", False), ("emergency", "alert", False)])
def test_log_messages_at_or_above_the_requests_log_level(gw, wanted, level, passed):
    resp = call(gw, f"l-{wanted}-{level}", "log", {"level": level}, {**MODERN_META, LEVEL_KEY: wanted})
    assert text(result(resp)) == "logged"
    assert [m["params"]["level"] for m in logs(resp)] == ([level] if passed else [])
