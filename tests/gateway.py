"""Test helpers: run `wire-gateway stdio` (or any line-based MCP server) as a real subprocess."""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ROOT / "fixtures" / "servers"
PY = sys.executable
LEGACY_INIT = {"protocolVersion": "2025-11-25", "capabilities": {"sampling": {}},
               "clientInfo": {"name": "tests", "version": "0"}}
MODERN_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
               "io.modelcontextprotocol/clientInfo": {"name": "tests", "version": "0"},
               "io.modelcontextprotocol/clientCapabilities": {}}


def fixture_module(name: str) -> Any:
    """Import a fixture server as a module (for its templates and constants)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"fixture_{name}", SERVERS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fixture(name: str, *args: str) -> dict[str, Any]:
    return {"command": PY, "args": [str(SERVERS / f"{name}.py"), *args]}


def write_config(tmp_path: Path, servers: dict[str, Any], **top: Any) -> Path:
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps({"servers": servers, **top}))
    return path


class LineClient:
    """Speaks newline-delimited JSON-RPC to a child process; every read is bounded in time."""

    def __init__(self, argv: list[str], log_path: Path | None = None, env: dict[str, str] | None = None):
        self.log_path = log_path
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL   # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                     env={**os.environ, **(env or {})}, cwd=ROOT)
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._next_id = 1000
        self.other: list[Any] = []      # frames `request` saw while it waited for its answer

    def _read(self) -> None:
        try:
            for line in self.proc.stdout:
                self.lines.put(line[:-1] if line.endswith(b"\n") else line)
        except (OSError, ValueError):
            pass
        self.lines.put(None)

    def send(self, msg: Any) -> None:
        data = msg if isinstance(msg, bytes) else json.dumps(msg).encode()
        self.proc.stdin.write(data + b"\n")
        self.proc.stdin.flush()

    def recv_raw(self, timeout: float = 10.0) -> bytes:
        line = self.lines.get(timeout=timeout)
        if line is None:
            raise EOFError("the gateway closed its stdout")
        return line

    def recv(self, timeout: float = 10.0) -> Any:
        return json.loads(self.recv_raw(timeout))

    def request(self, method: str, params: Any = None, req_id: Any = None, timeout: float = 10.0) -> Any:
        """Send a request and return its answer; other frames seen meanwhile go to self.other."""
        if req_id is None:
            self._next_id += 1
            req_id = self._next_id
        msg = {"jsonrpc": "2.0", "id": req_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv(max(0.01, deadline - time.monotonic()))
            if isinstance(frame, dict) and frame.get("id") == req_id and "method" not in frame:
                return frame
            self.other.append(frame)

    def initialize(self) -> Any:
        answer = self.request("initialize", LEGACY_INIT)
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return answer

    def call(self, tool: str, args: dict | None = None, **kw: Any) -> Any:
        return self.request("tools/call", {"name": tool, "arguments": args or {}}, **kw)

    def close(self, timeout: float = 15.0) -> int:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            if self._log is not subprocess.DEVNULL:
                self._log.close()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""


def gateway(config: Path, server: str, tmp_path: Path, *extra: str) -> LineClient:
    argv = [PY, "-m", "wire_gateway", "stdio", "--config", str(config), "--server", server, *extra]
    client = LineClient(argv, log_path=tmp_path / f"gateway-{server}.log")
    client.other = []
    return client


def alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def kill_if_alive(pid: int) -> None:
    if alive(pid):
        os.kill(pid, signal.SIGKILL)


def text_of(answer: dict) -> str:
    return answer["result"]["content"][0]["text"]
