"""100 concurrent legacy sessions, 20 tool calls each, through one gateway: every answer
reaches the client that asked (each session has its own upstream process)."""
from __future__ import annotations

import json

import anyio
import httpx
import pytest
from gateway import fixture
from http_gateway import HttpGateway

SESSIONS = 100
CALLS = 20
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@pytest.mark.anyio
async def test_hundred_sessions_get_their_own_answers(tmp_path):
    gateway = HttpGateway(tmp_path, {"echo": fixture("echo")})
    mismatches: list[str] = []
    pids: set[str] = set()
    try:
        limits = httpx.Limits(max_connections=SESSIONS, max_keepalive_connections=SESSIONS)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def session(n: int) -> None:
                init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
                        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                   "clientInfo": {"name": f"c{n}", "version": "0"}}}
                resp = await client.post(gateway.url("echo"), content=json.dumps(init), headers=ACCEPT)
                headers = {**ACCEPT, "mcp-session-id": resp.headers["mcp-session-id"]}
                await client.post(gateway.url("echo"), headers=headers,
                                  content=json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
                for i in range(1, CALLS + 1):
                    text = f"session {n} call {i}"
                    body = {"jsonrpc": "2.0", "id": i, "method": "tools/call",
                            "params": {"name": "echo", "arguments": {"text": text}}}
                    answer = (await client.post(gateway.url("echo"), content=json.dumps(body), headers=headers)).json()
                    got = answer.get("result", {}).get("content", [{}])[0].get("text")
                    if answer.get("id") != i or got != text:
                        mismatches.append(f"session {n} call {i}: {answer}")
                pid = (await client.post(gateway.url("echo"), headers=headers, content=json.dumps(
                    {"jsonrpc": "2.0", "id": 99, "method": "tools/call",
                     "params": {"name": "pid", "arguments": {}}}))).json()
                pids.add(pid["result"]["content"][0]["text"])
                assert (await client.delete(gateway.url("echo"), headers=headers)).status_code == 200

            with anyio.fail_after(240):
                async with anyio.create_task_group() as tg:
                    for n in range(SESSIONS):
                        tg.start_soon(session, n)
    finally:
        assert gateway.stop() == 0, gateway.log()
    assert mismatches == []
    assert len(pids) == SESSIONS   # one upstream process per legacy session
