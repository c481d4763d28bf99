"""The control plane (wire_gateway.admin): the ASGI app in-process, then /status end to end."""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import trio

from wire_gateway.admin.app import edge_refusal, serve_admin

ROOT = Path(__file__).resolve().parent.parent
FAKE_STATUS = {"servers": {"x": {"shared": {"state": "running", "pid": 1}}}, "sessions": []}


# ---- the edge check alone -------------------------------------------------------------------

@pytest.mark.parametrize(("host", "origin", "bound", "allowed"), [
    ("127.0.0.1:8081", None, "127.0.0.1", True),
    ("localhost:8081", "http://localhost:3000", "127.0.0.1", True),
    ("LOCALHOST", None, "127.0.0.1", True),
    ("[::1]:8081", "http://[::1]:8081", "::1", True),
    ("10.0.0.5:8081", None, "10.0.0.5", True),          # the bound address itself
    ("10.0.0.5:8081", None, "0.0.0.0", False),         # a wildcard bind does not widen the names
    ("evil.example:8081", None, "127.0.0.1", False),   # DNS rebinding: a hostile name that resolves to us
    ("127.0.0.1.nip.io", None, "127.0.0.1", False),
    ("evil.example@127.0.0.1", None, "127.0.0.1", False),
    ("127.0.0.1:notaport", None, "127.0.0.1", False),
    ("[::1", None, "127.0.0.1", False),
    (None, None, "127.0.0.1", False),                  # no Host at all
    ("127.0.0.1", "http://evil.example", "127.0.0.1", False),
    ("127.0.0.1", "null", "127.0.0.1", False),         # sandboxed frames and file:// pages
    ("127.0.0.1", "//localhost", "127.0.0.1", False),  # not an origin: no scheme (parsed as RFC 6454 says)
    ("127.0.0.1", "http://evil.example@localhost", "127.0.0.1", False),
    ("127.0.0.1#evil.example", None, "127.0.0.1", False),
    ("localhost:99999", None, "127.0.0.1", False),
])
def test_edge_refusal(host, origin, bound, allowed):
    assert (edge_refusal(host, origin, bound) is None) is allowed


# ---- serve_admin in-process -------------------------------------------------------------------

@pytest.mark.anyio
async def test_serve_admin_routes_and_shutdown(capfd):
    calls = []

    def status():
        calls.append(1)
        return FAKE_STATUS

    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_admin, status, "127.0.0.1", 0, shutdown)
        assert isinstance(port, int) and port > 0
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            r = await client.get("/status")
            assert (r.status_code, r.headers["content-type"], r.json()) == (200, "application/json", FAKE_STATUS)
            assert calls == [1]
            r = await client.get("/healthz")
            assert (r.status_code, r.json()) == (200, {"status": "ok"})
            r = await client.get("/nope")
            assert r.status_code == 404 and "error" in r.json()
            for method in ("POST", "PUT", "DELETE", "HEAD"):
                r = await client.request(method, "/status")
                assert r.status_code == 405 and r.headers["allow"] == "GET", method
            r = await client.get("/status", headers={"origin": "http://evil.example"})
            assert r.status_code == 403 and "Origin" in r.json()["error"]
            r = await client.get("/status", headers={"host": f"evil.example:{port}"})
            assert r.status_code == 403 and "Host" in r.json()["error"]
            r = await client.get("/status", headers={"origin": f"http://localhost:{port}"})
            assert r.status_code == 200
            assert calls == [1, 1]                     # refused requests never reach status()
        started = trio.current_time()
        shutdown.set()
    # Leaving the nursery means serve_admin returned.
    assert trio.current_time() - started < 1.0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    out = capfd.readouterr().out
    assert out == "", f"something wrote to stdout: {out!r}"


@pytest.mark.anyio
async def test_shutdown_is_prompt_with_an_idle_keepalive_connection():
    shutdown = trio.Event()
    async with httpx.AsyncClient(timeout=5) as client:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_admin, lambda: {}, "127.0.0.1", 0, shutdown)
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
            started = trio.current_time()
            shutdown.set()                      # the client's connection is still open and idle
        elapsed = trio.current_time() - started
    assert elapsed < 0.5, elapsed


@pytest.mark.anyio
async def test_status_failure_is_a_500_not_a_crash():
    def broken():
        raise RuntimeError("boom")

    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_admin, broken, "127.0.0.1", 0, shutdown)
        async with httpx.AsyncClient(timeout=5) as client:
            r = await client.get(f"http://127.0.0.1:{port}/status")
            assert r.status_code == 500 and "boom" not in r.text
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
        shutdown.set()


@pytest.mark.anyio
async def test_status_with_values_orjson_refuses():
    doc = {"clientInfo": {"name": "\ud800", "big": 2**70}}
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_admin, lambda: doc, "127.0.0.1", 0, shutdown)
        async with httpx.AsyncClient(timeout=5) as client:
            r = await client.get(f"http://127.0.0.1:{port}/status")
            assert r.status_code == 200 and json.loads(r.content)["clientInfo"]["big"] == 2**70
        shutdown.set()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.anyio
@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback")
async def test_ipv6_loopback_bind():
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_admin, lambda: {"v6": True}, "::1", 0, shutdown)
        async with httpx.AsyncClient(timeout=5) as client:
            r = await client.get(f"http://[::1]:{port}/status")
            assert r.json() == {"v6": True}
        shutdown.set()


# ---- end to end: wire-gateway serve --admin-port 0 ---------------------------------------------

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "admin-test", "version": "1"}}}
ACCEPT = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def _wait_for_ports(proc: subprocess.Popen, log_path: Path, timeout: float = 15.0) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        data = re.search(r"serving MCP over HTTP on http://[^:]+:(\d+)/", text)
        admin = re.search(r"serving the control plane on http://[^:]+:(\d+)/status", text)
        if data and admin:
            return int(data.group(1)), int(admin.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited early ({proc.returncode}):\n{text}")
        time.sleep(0.05)
    raise RuntimeError(f"gateway did not announce both ports:\n{text}")


def test_status_end_to_end(tmp_path):
    config = tmp_path / "gateway.json"
    config.write_text(json.dumps({"servers": {"echo": {
        "command": sys.executable, "args": [str(ROOT / "fixtures" / "servers" / "echo.py")]}}}))
    log_path = tmp_path / "gateway.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "wire_gateway", "serve", "--config", str(config), "--port", "0",
         "--admin-port", "0", "--log-file", str(log_path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        port, admin_port = _wait_for_ports(proc, log_path)
        assert port != admin_port
        mcp = f"http://127.0.0.1:{port}/mcp/echo"
        admin = f"http://127.0.0.1:{admin_port}"
        with httpx.Client(timeout=10) as client:
            opened = client.post(mcp, json=INIT, headers=ACCEPT)
            assert opened.status_code == 200, opened.text
            sid = opened.headers["mcp-session-id"]
            headers = {**ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
            note = client.post(mcp, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
            assert note.status_code == 202
            call = client.post(mcp, headers=headers, json={
                "jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "x"}}})
            assert call.json()["result"]["content"][0]["text"] == "x"

            # The shared process starts with the gateway; give it a moment to be up.
            deadline = time.monotonic() + 5
            while True:
                r = client.get(f"{admin}/status")
                assert r.status_code == 200 and r.headers["content-type"] == "application/json"
                status = r.json()
                if status["servers"]["echo"]["shared"]["state"] == "running" or time.monotonic() > deadline:
                    break
                time.sleep(0.05)

            echo = status["servers"]["echo"]
            assert echo["shared"]["state"] == "running" and isinstance(echo["shared"]["pid"], int)
            assert status["listen"]["port"] == port
            [session] = status["sessions"]
            assert session["server"] == "echo" and session["clientInfo"]["name"] == "admin-test"
            assert sid not in r.text                   # the session id is a credential: only a prefix shows
            assert echo["legacySessions"] == 1
            proc_status = session["process"]
            assert proc_status["state"] == "running"
            assert isinstance(proc_status["pid"], int) and proc_status["pid"] != echo["shared"]["pid"]
            assert proc_status["framesIn"] > 0 and proc_status["framesOut"] > 0
            assert proc_status["era"] == "legacy"

            assert client.get(f"{admin}/healthz").json() == {"status": "ok"}
            refused = client.get(f"{admin}/status", headers={"origin": "http://evil.example"})
            assert refused.status_code == 403
            assert client.post(f"{admin}/status").status_code == 405
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err.decode(errors="replace") + log_path.read_text()
        assert out == b""
        log_text = log_path.read_text()
        assert "Traceback" not in log_text, log_text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
