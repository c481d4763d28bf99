"""Test helper: run `wire-gateway serve` as a real subprocess on a free port (or the one given)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class HttpGateway:
    def __init__(self, tmp_path: Path, servers: dict[str, Any], *, extra_args: tuple[str, ...] | list[str] = (),
                 port: int = 0, **top: Any) -> None:
        self.config = tmp_path / "http-gateway.json"
        self.config.write_text(json.dumps({"servers": servers, **top}))
        self.log_path = tmp_path / "http-gateway.log"
        self.port_file = tmp_path / "http-gateway.port"
        self.port_file.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "wire_gateway", "serve", "--config", str(self.config), "--port", str(port),
             "--port-file", str(self.port_file), "--log-file", str(self.log_path), *extra_args],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        self.port = self._wait_for_port()
        self.base = f"http://127.0.0.1:{self.port}"

    def _wait_for_port(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early: {self.proc.stderr.read().decode()}\n{self.log()}")
            if self.port_file.exists():   # written once listening, atomically (serve --port-file)
                return int(self.port_file.read_text())
            time.sleep(0.05)
        raise RuntimeError(f"gateway did not start listening:\n{self.log()}")

    def url(self, server: str) -> str:
        return f"{self.base}/mcp/{server}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
