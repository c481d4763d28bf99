"""`POST /mcp` at the HTTP level: a legacy session and modern requests to the aggregate, its
routing errors with their HTTP statuses, and how /status shows it."""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from gateway import fixture
from test_http_front import ACCEPT, modern

ROOT = Path(__file__).resolve().parent.parent
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "agg-http", "version": "1"}}}


def body_of(response: httpx.Response) -> dict:
    """A JSON body, or the last data event of an SSE stream."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in response.text.splitlines()
                if line.startswith("data:") and line[5:].strip()]
        return json.loads(data[-1])
    return response.json()


def test_post_mcp_legacy_and_modern_and_status(tmp_path: Path) -> None:
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({"servers": {"echo": fixture("echo"), "slow": fixture("slow")},
                                  "aggregate": {"separator": "."}}))
    log_path = tmp_path / "gateway.log"
    proc = subprocess.Popen([sys.executable, "-m", "wire_gateway", "serve", "--config", str(config), "--port", "0",
                             "--admin-port", "0", "--log-file", str(log_path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while True:
            text = log_path.read_text() if log_path.exists() else ""
            ports = re.search(r"MCP over HTTP on http://[^:]+:(\d+)/", text), \
                re.search(r"control plane on http://[^:]+:(\d+)/status", text)
            if all(ports):
                break
            assert time.monotonic() < deadline and proc.poll() is None, text
            time.sleep(0.05)
        base, admin = (f"http://127.0.0.1:{m.group(1)}" for m in ports)
        mcp = f"{base}/mcp"
        with httpx.Client(timeout=15) as client:
            opened = client.post(mcp, json=INIT, headers=ACCEPT)
            assert opened.status_code == 200, opened.text
            assert body_of(opened)["result"]["serverInfo"]["name"] == "wire-gateway-aggregate"
            sid = opened.headers["mcp-session-id"]
            headers = {**ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
            assert client.post(mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                               headers=headers).status_code == 202
            listed = body_of(client.post(mcp, headers=headers,
                                         json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}))
            names = [t["name"] for t in listed["result"]["tools"]]
            assert "echo.echo" in names and not [n for n in names if not n.startswith("echo.")]
            assert listed["result"]["nextCursor"]
            called = body_of(client.post(mcp, headers=headers, json={
                "jsonrpc": "2.0", "id": 3, "method": "tools/call",
                "params": {"name": "slow.echo", "arguments": {"text": "via slow"}}}))
            assert called["result"]["content"][0]["text"] == "via slow"
            unknown = body_of(client.post(mcp, headers=headers, json={
                "jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "nope.echo"}}))
            assert unknown["error"]["code"] == -32602 and "nope.echo" in unknown["error"]["message"]
            assert client.get(mcp).status_code == 400                # GET needs a legacy session

            # modern: stateless requests to the shared aggregate
            body, mh = modern("m1", "tools/call", {"name": "echo.echo", "arguments": {"text": "modern"}}, "echo.echo")
            answer = client.post(mcp, json=body, headers=mh)
            assert answer.status_code == 200, answer.text
            result = body_of(answer)
            assert result["id"] == "m1" and result["result"]["content"][0]["text"] == "modern"
            assert result["result"]["resultType"] == "complete"
            body, mh = modern("m2", "no/such/method")
            assert client.post(mcp, json=body, headers=mh).status_code == 404

            status = client.get(f"{admin}/status").json()
            agg = status["aggregate"]
            assert agg["route"] == "/mcp" and agg["separator"] == "." and agg["legacySessions"] == 1
            assert set(agg["members"]) == {"echo", "slow"} and all(m["ok"] for m in agg["members"].values())
            [session] = status["sessions"]
            assert session["server"] == "*" and set(session["process"]["members"]) == {"echo", "slow"}
            assert client.delete(mcp, headers=headers).status_code == 200
            ping = {"jsonrpc": "2.0", "id": 9, "method": "ping"}
            assert client.post(mcp, headers=headers, json=ping).status_code == 404
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err.decode(errors="replace")
        assert "Traceback" not in log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
