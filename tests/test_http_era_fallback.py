"""A dual-era client (the SDK's default `auto` mode probes server/discover first) through
the gateway to a server that only speaks the legacy era: it must work, not hang. Since the era
bridge (proxy/era_bridge.py) it gets the modern era, served through the bridge, where it used to
fall back to initialize; a client that asks for the legacy era still gets it, passed through."""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from http_gateway import HttpGateway
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

LEGACY_ONLY = textwrap.dedent('''
    import json, sys
    for line in sys.stdin:
        msg = json.loads(line)
        if "id" not in msg or "method" not in msg:
            continue
        method, rid = msg["method"], msg["id"]
        if method == "initialize":
            result = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                      "serverInfo": {"name": "legacy-only", "version": "1"}}
        elif method == "tools/list":
            result = {"tools": [{"name": "echo", "inputSchema": {"type": "object",
                      "properties": {"text": {"type": "string"}}}}]}
        elif method == "tools/call":
            result = {"content": [{"type": "text", "text": msg["params"]["arguments"]["text"]}]}
        else:
            out = {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "Method not found"}}
            print(json.dumps(out), flush=True)
            continue
        print(json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}), flush=True)
''')


@pytest.mark.anyio
async def test_auto_client_is_served_through_the_gateway(tmp_path: Path) -> None:
    server = tmp_path / "legacy_only.py"
    server.write_text(LEGACY_ONLY)
    gateway = HttpGateway(tmp_path, {"old": {"command": sys.executable, "args": [str(server)]}})
    try:
        with anyio.fail_after(30):
            for mode, version in (("auto", "2026-07-28"), ("legacy", "2025-11-25")):
                async with Client(streamable_http_client(gateway.url("old")), mode=mode) as client:
                    assert client.protocol_version == version
                    tools = await client.list_tools()
                    assert [t.name for t in tools.tools] == ["echo"]
                    answer = await client.call_tool("echo", {"text": f"as {mode}"})
                    assert answer.content[0].text == f"as {mode}"
    except BaseException:
        print(gateway.log())
        raise
    finally:
        assert gateway.stop() == 0
    assert "speaks the legacy era" in gateway.log()
    assert "modern clients are served through the era bridge" in gateway.log()
