"""Guardrails end to end: the official SDK client, a real gateway, the hostile fixture server
(fixtures/servers/hostile.py). Every attack in the issue's list is blocked, redacted or logged as
configured, on stdio and on HTTP in both eras, and through the aggregate; benign look-alikes pass;
what reached the server is read from the frame dump, never from the answer (which restores)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gateway import LEGACY_INIT, PY, ROOT, fixture, fixture_module, gateway, write_config
from http_gateway import HttpGateway
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from test_sdk_e2e import plain

from wire_gateway.dump.tap import G2C, G2S

hostile = fixture_module("hostile")

STRICT = {
    "input": [{"detectors": ["secrets"], "action": "block"},
              {"detectors": ["arguments"], "action": "block"},
              {"detectors": ["pii"], "action": "redact"}],
    "output": [{"detectors": ["secrets", "pii"], "action": "redact"},
               {"detectors": ["instruction_override", "role_play", "hidden_markup"], "action": "block"},
               {"detectors": ["invisible_unicode"], "action": "redact"}],
    "output_schema": "block",
}
EMAIL = "dana.lee@example.org"
ORDER = "order 4111 1111 1111 1112 shipped"          # 16 digits, fails Luhn: not a card
AWS = "AKIA" + "T5RZ2W6QXK4PLM7N"   # synthetic (AWS ids are base32: no 0, 1, 8 or 9)


def hostile_server(tmp_path: Path, *extra: str) -> dict[str, Any]:
    return {**fixture("hostile", "--log", str(tmp_path / "hostile.log"), "--poison-instructions", *extra),
            "guardrails": "strict"}


def guardrail_meta(result: dict[str, Any]) -> dict[str, Any]:
    return result["_meta"]["dev.wire-gateway/guardrails"]


def text(result: dict[str, Any]) -> str:
    return "".join(c.get("text", "") for c in result.get("content", []))


async def scenario(client: Client, tool: Any = lambda n: n) -> dict[str, Any]:
    """The attacks, through whatever transport `client` speaks; returns what the client saw."""
    seen: dict[str, Any] = {"instructions": client.instructions, "server_info": plain(client.server_info)}
    listed = await client.list_tools()
    seen["names"] = sorted(t.name for t in listed.tools)
    for name, args in (("poisoned", {"a": 1, "b": 2}), ("fetch_page", {"url": "https://example.com"}),
                       ("leak", {}), ("bad_output", {}), ("unicode", {}),
                       ("echo_args", {"to": EMAIL, "body": "hi"}), ("echo_args", {"key": f"use {AWS}"}),
                       ("echo_args", {"path": "../../etc/passwd"}), ("echo_args", {"note": ORDER}),
                       ("big", {"size": 4096, "leak": True}),
                       # over policy.guardrails.OFF_LOOP_BYTES: judged in a worker thread, the same
                       ("big", {"size": 300_000, "leak": True})):
        result = plain(await client.call_tool(tool(name), args))
        seen.setdefault(name, []).append(result)
    return seen


def check(seen: dict[str, Any], prefix: str = "") -> None:
    names = [n.removeprefix(prefix) for n in seen["names"] if n.startswith(prefix)]
    # poisoned descriptions (an <IMPORTANT> block, invisible tag characters) never reach the client
    assert "poisoned" not in names and "sidenote" not in names, names
    assert {"leak", "fetch_page", "echo_args", "unicode", "big", "shifty"} <= set(names), names
    # ... and a call to one is blocked, naming the rule
    [poisoned] = seen["poisoned"]
    assert poisoned.get("isError") is True and guardrail_meta(poisoned)["action"] == "block", poisoned
    # a prompt injection in a result is withheld
    [page] = seen["fetch_page"]
    assert page.get("isError") is True and guardrail_meta(page)["detector"] == "instruction_override", page
    assert "Ignore all previous" not in json.dumps(page) and "Revenue" not in json.dumps(page)
    # secrets and a card in text and structuredContent are masked; the schema still holds (strings)
    [leak] = seen["leak"]
    dumped = json.dumps(leak)
    assert hostile.AWS_KEY_ID not in dumped and hostile.CARD not in dumped and hostile.AWS_SECRET not in dumped, leak
    assert "[REDACTED_AWS_KEY]" in text(leak) and "[REDACTED_CARD]" in text(leak), leak
    assert leak["structuredContent"]["aws_access_key_id"] == "[REDACTED_AWS_KEY]", leak
    assert not leak.get("isError"), leak
    # structuredContent that breaks its own outputSchema: an error result naming the path
    [bad] = seen["bad_output"]
    assert bad.get("isError") is True and "outputSchema" in text(bad) and "structuredContent" in text(bad), bad
    assert guardrail_meta(bad)["detector"] == "output_schema"
    # invisible characters are masked out of the text, the rest stays readable
    [uni] = seen["unicode"]
    assert not uni.get("isError") and "\u202e" not in text(uni) and "\u200b" not in text(uni), uni
    assert "invoice" in text(uni) and "[REDACTED_INVISIBLE_UNICODE]" in text(uni), uni
    # an address is redacted on the way in and restored on the way out; a key never leaves; a
    # traversal is refused; an order number that fails Luhn passes as it is
    mail, key, traversal, order = seen["echo_args"]
    assert mail["structuredContent"] == {"arguments": {"to": EMAIL, "body": "hi"}}, mail
    assert key.get("isError") is True and guardrail_meta(key) == {
        "action": "block", "direction": "input", "policy": "strict", "detector": "aws_key", "tool": "echo_args"}
    assert AWS not in json.dumps(key), key
    assert traversal.get("isError") is True and guardrail_meta(traversal)["detector"] == "path_traversal", traversal
    assert order["structuredContent"] == {"arguments": {"note": ORDER}}, order
    # a key at the very end of a result is still found
    for big, size in zip(seen["big"], (4096, 300_000)):
        assert len(text(big)) == size - len(hostile.AWS_KEY_ID) + len("[REDACTED_AWS_KEY]"), text(big)[-200:]
        assert hostile.AWS_KEY_ID not in text(big) and text(big).endswith("key=[REDACTED_AWS_KEY]")
    # poisoned server instructions are dropped; a poisoned title is masked
    assert not seen["instructions"], seen["instructions"]
    assert "<IMPORTANT>" not in json.dumps(seen["server_info"]), seen["server_info"]


def check_dump(dump: Path) -> None:
    """What reached the server: placeholders, never the address or the key; which rule acted is noted."""
    records = [json.loads(line) for line in dump.read_text().splitlines() if line.strip()]
    to_server = " ".join(r.get("frame") or "" for r in records if r["dir"] == G2S)
    assert EMAIL not in to_server and AWS not in to_server and "../../etc/passwd" not in to_server
    assert "[REDACTED_EMAIL_1]" in to_server and ORDER in to_server
    notes = {r.get("policy") for r in records if r["dir"] == G2C}
    assert "guardrails:block:strict/aws_key" in notes and "guardrails:redact:strict/aws_key" in notes, notes


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_stdio_sdk_client(mode: str, tmp_path: Path) -> None:
    dump = tmp_path / "frames.jsonl"
    config = write_config(tmp_path, {"h": hostile_server(tmp_path)}, guardrails={"strict": STRICT})
    params = StdioServerParameters(command=PY, cwd=str(ROOT), args=["-m", "wire_gateway", "stdio", "--config",
                                                                    str(config), "--dump", str(dump),
                                                                    "--log-file", str(tmp_path / "gw.log")])
    with (tmp_path / "gateway.err").open("w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), mode=mode, read_timeout_seconds=30) as client:
            seen = await scenario(client)
    check(seen)
    check_dump(dump)
    log = (tmp_path / "gw.log").read_text()
    assert "tool 'poisoned': its description or schema matched detector" in log, log
    assert "removed from tools/list" in log, log
    assert "policy strict detector aws_key, action block" in log
    for secret in (AWS, EMAIL, hostile.AWS_KEY_ID, hostile.CARD):
        assert secret not in log, secret


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_http_sdk_client(mode: str, tmp_path: Path) -> None:
    gw = HttpGateway(tmp_path, {"h": hostile_server(tmp_path)}, guardrails={"strict": STRICT})
    try:
        async with Client(streamable_http_client(gw.url("h")), mode=mode, read_timeout_seconds=30) as client:
            seen = await scenario(client)
    finally:
        gw.stop()
    check(seen)


@pytest.mark.anyio
async def test_aggregate_member_with_guardrails(tmp_path: Path) -> None:
    """Through the aggregate each member keeps its own guardrails: names are prefixed, rules are not."""
    gw = HttpGateway(tmp_path, {"h": hostile_server(tmp_path), "e": fixture("echo")},
                     guardrails={"strict": STRICT}, aggregate={"separator": "__"})
    try:
        async with Client(streamable_http_client(f"{gw.base}/mcp"), mode="2026-07-28",
                          read_timeout_seconds=30) as client:
            seen = await scenario(client, lambda n: f"h__{n}")
            echoed = plain(await client.call_tool("e__echo", {"text": f"unguarded {EMAIL}"}))
    finally:
        gw.stop()
    check(seen, "h__")
    assert text(echoed) == f"unguarded {EMAIL}"           # the other member has no guardrails


def test_scan_findings_over_raw_stdio(tmp_path: Path) -> None:
    """The raw answers: initialize without the poisoned instructions, a tools/list without the
    poisoned tools, and log lines that say which detector acted (never the text it matched)."""
    config = write_config(tmp_path, {"h": hostile_server(tmp_path, "--shift-after", "1")},
                          guardrails={"strict": STRICT})
    g = gateway(config, "h", tmp_path)
    try:
        init = g.request("initialize", LEGACY_INIT, timeout=30)
        g.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert "instructions" not in init["result"], init
        assert "IMPORTANT" not in json.dumps(init["result"]["serverInfo"]), init
        tools = g.request("tools/list")["result"]["tools"]
        assert {"poisoned", "sidenote"}.isdisjoint(t["name"] for t in tools)
        assert "shifty" in [t["name"] for t in tools]
        blocked = g.call("sidenote", {"note": "x"})
        assert blocked["result"]["isError"] is True, blocked
        assert g.call("shifty", {"path": "a.txt"})["result"]["content"][0]["text"] == "read a.txt (revision 1)"
    finally:
        assert g.close() == 0, g.log_text()
    log = g.log_text()
    assert "its instructions matched detector" in log and "withheld from clients" in log, log
    assert "tool 'sidenote': its description or schema matched detector invisible_unicode" in log, log
    assert "SYSTEM OVERRIDE" not in log and hostile.HIDDEN_INSTRUCTION not in log


def test_log_action_passes_and_records(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"h": {**fixture("hostile"), "guardrails": {
        "output": [{"detectors": ["secrets"], "action": "log"}], "scan_tools": {"action": "log"},
        "scan_server_info": False}}})
    g = gateway(config, "h", tmp_path)
    try:
        g.request("initialize", LEGACY_INIT, timeout=30)
        g.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert "poisoned" in [t["name"] for t in g.request("tools/list")["result"]["tools"]]
        leak = g.call("leak")
        assert hostile.AWS_KEY_ID in leak["result"]["content"][0]["text"]      # logged, not changed
    finally:
        assert g.close() == 0, g.log_text()
    log = g.log_text()
    assert "detector aws_key, action log" in log and "logged only" in log, log
    assert hostile.AWS_KEY_ID not in log
