"""Guardrails that depend on who is calling (a project adds a policy) and on a remote provider
(a local fake of the Enkrypt API and of our webhook, tests/guardrail_service.py), through a
real gateway with the official SDK client."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway import LEGACY_INIT, fixture, fixture_module, gateway, write_config
from guardrail_service import Service
from http_gateway import HttpGateway
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from test_sdk_e2e import plain

hostile = fixture_module("hostile")
REDACT_LEAKS = {"output": [{"detectors": ["secrets", "pii"], "action": "redact"}]}


def text(result: dict[str, Any]) -> str:
    return "".join(c.get("text", "") for c in result.get("content", []))


def meta(result: dict[str, Any]) -> dict[str, Any]:
    return result["_meta"]["dev.wire-gateway/guardrails"]


@pytest.mark.anyio
async def test_a_project_adds_a_policy_for_its_callers_only(tmp_path: Path) -> None:
    from wire_gateway.auth.backends import SqliteBackend
    from wire_gateway.auth.tenancy import Tenancy, TenancyError

    t = Tenancy(SqliteBackend(str(tmp_path / "auth.sqlite3")), ["h"], guardrails=["no-leaks"])
    with pytest.raises(TenancyError, match="unknown guardrail policy"):
        t.create_project("typo", ["*"], guardrails=["no-leak"])
    t.create_project("tight", ["*"], guardrails=["no-leaks"])
    t.create_project("loose", ["*"])
    t.create_user("u")
    tight, loose = t.create_key("tight", "u")[1], t.create_key("loose", "u")[1]
    gw = HttpGateway(tmp_path, {"h": fixture("hostile")}, auth={"mode": "keys"}, guardrails={"no-leaks": REDACT_LEAKS})
    seen = {}
    try:
        for name, key in (("tight", tight), ("loose", loose)):
            http = httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30)
            async with Client(streamable_http_client(gw.url("h"), http_client=http), mode="2026-07-28",
                              read_timeout_seconds=30) as client:
                seen[name] = plain(await client.call_tool("leak", {}))
    finally:
        gw.stop()
    assert hostile.AWS_KEY_ID not in json.dumps(seen["tight"]) and "[REDACTED_AWS_KEY]" in text(seen["tight"])
    assert hostile.AWS_KEY_ID in text(seen["loose"])          # the server sets no guardrails of its own
    log = gw.log()
    assert "policy no-leaks detector aws_key, action redact" in log and hostile.AWS_KEY_ID not in log
    for key in (tight, loose):
        assert key not in log


def test_a_project_naming_an_unknown_policy_is_refused(tmp_path: Path) -> None:
    """The project meant to tighten; a gateway whose config lacks the policy fails closed."""
    from wire_gateway.auth.backends import SqliteBackend
    from wire_gateway.auth.tenancy import Tenancy

    t = Tenancy(SqliteBackend(str(tmp_path / "auth.sqlite3")), ["h"], guardrails=["gone", "other"])
    t.create_project("p", ["*"], guardrails=["gone"])
    t.create_user("u")
    key = t.create_key("p", "u")[1]
    gw = HttpGateway(tmp_path, {"h": fixture("hostile")}, auth={"mode": "keys"}, guardrails={"other": REDACT_LEAKS})
    try:
        r = httpx.post(gw.url("h"), timeout=30, json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"},
                                                                           "_meta": MODERN}},
            headers={**HEADERS, "authorization": f"Bearer {key}", "mcp-method": "tools/call", "mcp-name": "echo"})
    finally:
        gw.stop()
    result = r.json()["result"]
    assert result["isError"] is True and meta(result)["policy"] == "gone", result
    assert "does not define" in text(result)


MODERN = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
          "io.modelcontextprotocol/clientInfo": {"name": "tests", "version": "0"},
          "io.modelcontextprotocol/clientCapabilities": {}}
HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json",
           "mcp-protocol-version": "2026-07-28"}


# ---- remote providers through the gateway ------------------------------------------------------------------

def remote_gateway(tmp_path: Path, service: Service, *, provider: str = "webhook", timeout: float = 2.0,
                   on_error: str = "block", parallel: bool = False, server: dict[str, Any] | None = None,
                   sides: tuple[str, ...] = ("input", "output")) -> Any:
    remote: dict[str, Any] = {"provider": provider, "url": service.url + ("/webhook" if provider == "webhook" else ""),
                              "timeout": timeout, "on_error": on_error, "parallel": parallel,
                              "api_key": "${GUARD_KEY}"}
    if provider == "enkrypt":
        remote.update(policy="tests", block=["injection_attack", "pii"])
    policy = {side: [{"remote": remote, "action": "block"}] for side in sides}
    config = write_config(tmp_path, {"h": {**(server or fixture("hostile", "--log", str(tmp_path / "h.log"))),
                                           "guardrails": "remote"}}, guardrails={"remote": policy})
    return config


def start(g: Any) -> None:
    g.request("initialize", LEGACY_INIT, timeout=30)
    g.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    g.request("tools/list")


def calls(log: Path, tool: str) -> int:
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines() if json.loads(line).get("tool") == tool)


@pytest.mark.parametrize("provider", ["webhook", "enkrypt"])
def test_remote_provider_blocks_and_passes(provider: str, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("GUARD_KEY", "guard-key-5d1e")
    service = Service(tmp_path, "--api-key", "guard-key-5d1e")
    try:
        config = remote_gateway(tmp_path, service, provider=provider)
        g = gateway(config, "h", tmp_path)
        try:
            start(g)
            ok = g.call("echo_args", {"text": "plain words"})
            assert ok["result"]["structuredContent"] == {"arguments": {"text": "plain words"}}, ok
            bad = g.call("echo_args", {"text": "please INJECT this"})
            assert bad["result"]["isError"] is True and meta(bad["result"])["detector"] == \
                f"remote:{provider}/injection_attack", bad
            out = g.call("fetch_page", {"url": "https://example.com/SECRET-PII"})   # input carries the marker
            assert out["result"]["isError"] is True, out
        finally:
            assert g.close() == 0, g.log_text()
        assert calls(tmp_path / "h.log", "echo_args") == 1          # the blocked call never reached the server
        seen = service.requests()
        assert seen["count"] >= 4
        log = g.log_text()
        assert "guard-key-5d1e" not in log and "INJECT" not in log
    finally:
        service.stop()


@pytest.mark.parametrize("on_error", ["block", "allow"])
def test_remote_timeout_in_both_fail_modes(on_error: str, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("GUARD_KEY", "guard-key-5d1e")
    service = Service(tmp_path, "--api-key", "guard-key-5d1e")
    try:
        config = remote_gateway(tmp_path, service, timeout=0.3, on_error=on_error)
        g = gateway(config, "h", tmp_path)
        try:
            start(g)
            answer = g.call("echo_args", {"text": "slow SLEEP=3"}, timeout=10)
        finally:
            assert g.close() == 0, g.log_text()
        if on_error == "block":
            assert answer["result"]["isError"] is True and "could not judge" in text(answer["result"]), answer
            assert calls(tmp_path / "h.log", "echo_args") == 0
        else:
            assert answer["result"]["structuredContent"] == {"arguments": {"text": "slow SLEEP=3"}}, answer
        assert f"(on_error: {on_error})" in g.log_text()
    finally:
        service.stop()


def test_parallel_check_of_a_read_only_tool(tmp_path: Path, monkeypatch: Any) -> None:
    """The call goes out while the provider judges it; a violation then replaces the result."""
    monkeypatch.setenv("GUARD_KEY", "guard-key-5d1e")
    service = Service(tmp_path, "--api-key", "guard-key-5d1e")
    log = tmp_path / "policy.log"
    try:
        config = remote_gateway(tmp_path, service, parallel=True, server=fixture("policy", "--log", str(log)),
                                sides=("input",))
        g = gateway(config, "h", tmp_path)
        try:
            start(g)
            bad = g.call("counter", {"key": "INJECT SLEEP=0.5"}, timeout=10)
            good = g.call("counter", {"key": "fine"}, timeout=10)
        finally:
            assert g.close() == 0, g.log_text()
        assert bad["result"]["isError"] is True and "injection_attack" in text(bad["result"]), bad
        assert "fine #1" in text(good["result"]), good
        assert calls(log, "counter") == 2              # read-only: it went out at once, both times
    finally:
        service.stop()
