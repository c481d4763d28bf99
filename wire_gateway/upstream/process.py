"""One server process: spawn it, pipe its stderr into the log, end it the way the
spec says (close stdin, wait, SIGTERM, wait, SIGKILL; each step bounded).

Each process leads its own process group, so grandchildren (a server started by
`npx` or a shell script) are signalled too and nothing is orphaned.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections import deque

import trio

from wire_gateway.config import ServerSpec

log = logging.getLogger("wire_gateway.upstream")


def describe_status(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


class ServerProcess:
    def __init__(self, spec: ServerSpec, proc: trio.Process, generation: int) -> None:
        self.spec = spec
        self.proc = proc
        self.generation = generation
        self.pid = proc.pid
        self.started = trio.current_time()
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self.stderr_done = trio.Event()
        self.server_log = logging.getLogger(f"wire_gateway.server.{spec.name}")

    @classmethod
    async def spawn(cls, spec: ServerSpec, generation: int) -> ServerProcess:
        """Start the process; raises OSError if it cannot be started at all (its token included)."""
        env = spec.env
        if spec.oauth is not None and spec.oauth.env:   # the gateway's credentials, handed in the environment
            from wire_gateway.auth.upstream_oauth import TokenError, credentials_for

            try:
                token = await credentials_for(spec.oauth, spec.name, None).token()
            except TokenError as exc:
                raise OSError(str(exc)) from None
            env = {**env, spec.oauth.env: token}
        proc = await trio.lowlevel.open_process(
            spec.argv(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=spec.cwd,
            start_new_session=True,
        )
        log.info("server %s: started pid %d (generation %d): %s", spec.name, proc.pid, generation,
                 " ".join(spec.argv()))
        return cls(spec, proc, generation)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    async def read_stderr(self) -> None:
        """Log the server's stderr line by line, tagged with its name, until EOF."""
        buf = b""
        stream = self.proc.stderr
        assert stream is not None
        try:
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    chunk = b""
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    self._log_line(line)
                if len(buf) > 65536:  # a runaway line: log it in pieces rather than hoard it
                    self._log_line(buf)
                    buf = b""
            if buf:
                self._log_line(buf)
        finally:
            self.stderr_done.set()

    def _log_line(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        if text:
            self.stderr_tail.append(text)
            self.server_log.info("[%s stderr] %s", self.spec.name, text)

    def signal_group(self, sig: int) -> bool:
        try:
            os.killpg(self.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    async def terminate(self) -> int:
        """Escalate after stdin was closed: wait, SIGTERM, wait, SIGKILL. Returns the status."""
        with trio.move_on_after(self.spec.stdin_close_timeout):
            return await self._wait_and_reap()
        log.warning("server %s: pid %d did not exit %.1fs after stdin closed; sending SIGTERM",
                    self.spec.name, self.pid, self.spec.stdin_close_timeout)
        self.signal_group(signal.SIGTERM)
        with trio.move_on_after(self.spec.sigterm_timeout):
            return await self._wait_and_reap()
        log.warning("server %s: pid %d ignored SIGTERM for %.1fs; sending SIGKILL",
                    self.spec.name, self.pid, self.spec.sigterm_timeout)
        self.signal_group(signal.SIGKILL)
        return await self._wait_and_reap()

    async def kill(self) -> int:
        self.signal_group(signal.SIGKILL)
        return await self._wait_and_reap()

    async def _wait_and_reap(self) -> int:
        code = await self.proc.wait()
        await self._reap_group()
        return code

    async def _reap_group(self) -> None:
        """The leader is gone; end whatever it left behind in its process group."""
        if not self.signal_group(0):
            return
        self.signal_group(signal.SIGTERM)
        with trio.move_on_after(0.5):
            while self.signal_group(0):  # noqa: ASYNC110 - a process group's end has no event to wait on
                await trio.sleep(0.02)
            return
        self.signal_group(signal.SIGKILL)
