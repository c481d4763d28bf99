"""Frame dumps of real `mcp` SDK client sessions through the gateway (stdio and HTTP), to
the bundled echo server: every frame at every hop, in order, with secrets masked."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from http_gateway import HttpGateway
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from wire_gateway.dump.fixture import read_fixture
from wire_gateway.dump.tap import C2G, G2C, G2S, S2G
from wire_gateway.dump.tools import iter_records, make_fixture

ROOT = Path(__file__).resolve().parent.parent
ECHO = {"command": sys.executable, "args": ["-m", "wire_gateway.demo.echo"], "cwd": str(ROOT)}
BEARER = "Bearer sEcReT-bearer-0123456789"
API_KEY = "sk-sEcReT-api-key-9876"
TOKEN = "sEcReT-plain-token-5555"
SECRETS = ("sEcReT-bearer", "sEcReT-api-key", "sEcReT-plain-token")
MODES = {"legacy": "legacy", "modern": "2026-07-28"}


async def session(transport: Any, mode: str) -> None:
    async with Client(transport, mode=mode, read_timeout_seconds=15) as client:
        with anyio.fail_after(30):
            await client.list_tools()
            result = await client.call_tool("echo", {
                "text": f"Authorization: {BEARER}", "api_key": API_KEY,
                "auth": {"token": TOKEN, "headers": {"Authorization": BEARER}}})
            assert result.content[0].text == f"Authorization: {BEARER}"   # the client saw it unmasked
            await client.call_tool("add", {"a": 2, "b": 3})


def check_dump(path: Path, transport: str, era: str) -> list[dict[str, Any]]:
    raw = path.read_bytes()
    for secret in SECRETS:
        assert secret.encode() not in raw, f"{secret} reached the dump"
    assert b"\n\n" not in raw and raw.endswith(b"\n")    # whole lines only, none empty
    records = list(iter_records(path))
    assert records and not any("dropped" in r for r in records)
    sessions = {r["session"] for r in records}
    mine = [r for r in records if r["era"] == era]
    assert mine, f"no {era} records in {sessions}"
    assert {r["transport"] for r in mine} == {transport}
    assert {r["server"] for r in mine} == {"echo"}

    # Every client request: seen at all four hops, in order, with latency on the answers.
    client_requests = [r for r in mine if r["dir"] == C2G and r["kind"] == "request"]
    methods = [r["method"] for r in client_requests]
    assert methods.count("tools/call") == 2 and "tools/list" in methods
    for req in client_requests:
        i = mine.index(req)
        up = next(k for k in range(i + 1, len(mine)) if mine[k]["dir"] == G2S and mine[k]["method"] == req["method"]
                  and json.loads(mine[k]["frame"]).get("params") == json.loads(req["frame"]).get("params"))
        up_id = mine[up]["id"]
        back = next(k for k in range(up + 1, len(mine)) if mine[k]["dir"] == S2G and mine[k]["id"] == up_id)
        out = next(k for k in range(back, len(mine)) if mine[k]["dir"] == G2C and mine[k]["id"] == req["id"])
        assert mine[back]["kind"] == mine[out]["kind"] == "response"
        assert mine[back]["latency_ms"] >= 0 and mine[out]["latency_ms"] >= mine[back]["latency_ms"]
        assert mine[i]["mono"] <= mine[up]["mono"] <= mine[back]["mono"] <= mine[out]["mono"]

    # The secrets were masked, not dropped: the frames are still JSON with "***" in their place.
    call = next(r for r in mine if r["dir"] == C2G and r["method"] == "tools/call" and "echo" in r["frame"])
    args = json.loads(call["frame"])["params"]["arguments"]
    assert args == {"text": "Authorization: Bearer ***", "api_key": "***",
                    "auth": {"token": "***", "headers": {"Authorization": "***"}}}
    assert call["bytes"] > len(call["frame"].encode())   # bytes: the frame as it travelled
    answer = next(r for r in mine if r["dir"] == S2G and "Authorization" in r.get("frame", ""))
    assert "Bearer ***" in answer["frame"]
    for r in mine:
        json.loads(r["frame"])
        assert r["ts"].endswith("Z") and "." in r["ts"]
    return mine


def fixture_roundtrip(path: Path, tmp_path: Path, session_id: str, era: str) -> None:
    header, entries = make_fixture(list(iter_records(path)), session_id, "t")
    out = tmp_path / "t.jsonl"
    from wire_gateway.dump.fixture import write_fixture

    write_fixture(out, header, entries)
    header2, entries2 = read_fixture(out)
    assert header2 == header and entries2 == entries and header.era == era
    sends = [m for _, d, m in entries if d == "send"]
    if era == "legacy":
        assert [m.get("method") for m in sends[:2]] == ["initialize", "notifications/initialized"]
        assert header.protocolVersion == "2025-11-25"
    else:
        assert header.protocolVersion == "2026-07-28"
    assert len([1 for _, d, m in entries if d == "recv" and "id" in m]) == len([m for m in sends if "id" in m])


@pytest.mark.anyio
@pytest.mark.parametrize("era", list(MODES))
async def test_stdio_session_dump(era: str, tmp_path: Path) -> None:
    config = tmp_path / "gw.json"
    config.write_text(json.dumps({"servers": {"echo": ECHO}}))
    dump = tmp_path / "dump.jsonl"
    params = StdioServerParameters(command=sys.executable, cwd=str(ROOT), args=[
        "-m", "wire_gateway", "stdio", "--config", str(config), "--dump", str(dump)])
    with open(tmp_path / "stderr.log", "w") as errlog:
        await session(stdio_client(params, errlog=errlog), MODES[era])
    # The gateway has exited: the writer flushed everything before it did.
    mine = check_dump(dump, "stdio", era)
    assert len({r["session"] for r in mine}) == 1
    fixture_roundtrip(dump, tmp_path, mine[0]["session"], era)


@pytest.mark.anyio
@pytest.mark.parametrize("era", list(MODES))
async def test_http_session_dump(era: str, tmp_path: Path) -> None:
    dump = tmp_path / "http-dump.jsonl"
    gateway = HttpGateway(tmp_path, {"echo": ECHO},
                          dump={"path": str(dump), "mask_patterns": ["never-matches-\\d{40}"]})
    try:
        await session(streamable_http_client(gateway.url("echo")), MODES[era])
    finally:
        assert gateway.stop() == 0
    assert "sEcReT" not in gateway.log()
    mine = check_dump(dump, "http", era)
    sid = mine[0]["session"]
    if era == "modern":
        assert sid == "modern:echo"
        # The gateway's own server/discover probe reached the server, never a client.
        probe = [r for r in mine if r["method"] == "server/discover"]
        assert {r["dir"] for r in probe} <= {G2S, C2G}
    else:
        assert len(sid) == 12
    fixture_roundtrip(dump, tmp_path, sid, era)


def test_remote_http_upstream_dump(tmp_path: Path) -> None:
    """A `{"url": ...}` server: the HttpUpstream hops are dumped too (stdio client side)."""
    from gateway import LineClient
    from test_http_upstream import http_echo, remote_config

    upstream = http_echo(tmp_path)
    dump = tmp_path / "remote.jsonl"
    config = remote_config(tmp_path, upstream.url)
    gw = LineClient([sys.executable, "-m", "wire_gateway", "stdio", "--config", str(config), "--dump", str(dump)],
                    log_path=tmp_path / "gw.log")
    try:
        assert gw.initialize()["result"]["protocolVersion"] == "2025-11-25"
        assert gw.call("echo", {"text": "over http", "password": "sEcReT-plain-token-1"})["result"]
        gw.proc.stdin.close()
        assert gw.proc.wait(20) == 0
    finally:
        upstream.stop()
    assert b"sEcReT" not in dump.read_bytes()
    records = list(iter_records(dump))
    hops = [(r["dir"], r["kind"], r["method"]) for r in records]
    for direction in (C2G, G2S):
        assert (direction, "request", "initialize") in hops and (direction, "request", "tools/call") in hops
        assert (direction, "notification", "notifications/initialized") in hops
    answers = [r for r in records if r["kind"] == "response"]
    assert [r["dir"] for r in answers].count(S2G) == 2 and [r["dir"] for r in answers].count(G2C) == 2
    assert all(r["transport"] == "stdio" and r["server"] == "remote" and "latency_ms" in r for r in answers)
