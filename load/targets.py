"""The one target starter: a server, or the gateway in front of one, started, watched and stopped.

Never one left behind nor waited on forever: a target gets its own session (its group can be
signalled), its stderr goes to a file (its tail explains a failure), a watchdog kills the group at
the run's time limit (every blocked read of the driver then ends), and descendants seen while it ran
are remembered by pid and start time and reaped at ``stop``. ``Started`` is on pipes (``stdio_bench.Target``),
``HttpProcess`` reports its port through a port file, ``ExternalTarget`` runs elsewhere.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from . import BenchError
from .assets import CHECKOUT, ECHO_SERVER, HTTP_ECHO, PACKAGE
from .procfs import descendants, pid_listening_on, reap_stragglers, scan_processes, signal_group

START_TIMEOUT_S = 30.0   # an HTTP target must be listening within this


class Url:
    """The parts of an http:// URL the clients need."""

    def __init__(self, text: str):
        parts = urlsplit(text)
        if parts.scheme != "http" or not parts.hostname:
            raise BenchError(f"not an http:// URL: {text!r}")
        self.text, self.host, self.port, self.netloc = text, parts.hostname, parts.port or 80, parts.netloc
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    def __str__(self) -> str:
        return self.text


class Started:
    """A process we started, in its own session, bounded by a watchdog."""

    def __init__(self, argv: list, timeout: float, cpus=None, pipes: bool = False, log_file: Path | None = None):
        self.argv, self.timeout, self.log_file = argv, timeout, log_file
        self.expired = False
        self.known_descendants: dict = {}
        self.stderr = tempfile.TemporaryFile()   # noqa: SIM115 - lives as long as the target; closed in stop()
        pipe = subprocess.PIPE if pipes else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(argv, stdin=pipe, stdout=pipe, stderr=self.stderr, bufsize=0,
                                         cwd=CHECKOUT, start_new_session=True)
        except OSError as exc:
            self.stderr.close()
            raise BenchError(f"cannot start {shlex.join(argv)}: {exc}") from exc
        self.pid = self.proc.pid
        if cpus:   # right after the fork: the target's children (upstream servers) inherit it
            try:
                os.sched_setaffinity(self.pid, cpus)
            except OSError as exc:
                self._kill_now()
                self.proc.wait()
                self.stderr.close()
                raise BenchError(f"cannot pin target to CPUs {sorted(cpus)}: {exc}") from exc
        self.watchdog = threading.Timer(timeout, self._expire)
        self.watchdog.daemon = True
        self.watchdog.start()

    def _expire(self) -> None:
        self.expired = True
        self._kill_now()

    def _kill_now(self) -> None:
        try:
            self.remember_now()   # before the target dies: its children are then reparented
        except Exception:   # /proc raced with exiting processes: kill what we know of
            pass
        reap_stragglers(dict(self.known_descendants), self.pid, 0.0)   # no patience: SIGKILL them and the group

    def remember(self, tree: dict) -> None:
        """Keep track of descendants seen, to make sure they are gone at ``stop``."""
        self.known_descendants.update((pid, stat.start) for pid, stat in tree.items() if pid != self.pid)

    def remember_now(self) -> None:
        self.remember(descendants(scan_processes(), self.pid))

    def failure(self, what: str) -> BenchError:
        """A BenchError saying why the run broke, with the target's stderr (and log) tail."""
        if self.expired:
            what = f"timed out after {self.timeout:g}s ({what})"
        try:
            what += f"; target exited with {self.proc.wait(0.5)}"   # a dying target: give it time to say how
        except subprocess.TimeoutExpired:
            pass
        tail = ""
        try:
            self.stderr.flush()
            self.stderr.seek(max(0, self.stderr.seek(0, os.SEEK_END) - 2000))
            tail = self.stderr.read().decode("utf-8", "replace")
            if self.log_file is not None:
                tail += self.log_file.read_text(errors="replace")[-2000:]
        except (OSError, ValueError):
            pass
        tail = tail.strip()
        return BenchError(what + (f"\n--- target stderr/log (tail) ---\n{tail}" if tail else ""))

    def stop(self, grace: float = 10.0) -> dict:
        """End it the way its clients would, then harder; reap the descendants seen during the run. On
        pipes: close stdin (the spec's way), then SIGTERM, SIGKILL its group; listening: SIGTERM to it
        alone (the gateway ends its upstreams the spec's way), then SIGKILL to everything."""
        self.remember_now()
        how = "already-exited" if self.proc.poll() is not None else None
        if self.proc.stdin is not None:
            steps = (("stdin-eof", self.proc.stdin.close, grace),
                     ("SIGTERM", lambda: signal_group(self.pid, signal.SIGTERM), 3.0),
                     ("SIGKILL", lambda: signal_group(self.pid), 3.0))
        else:
            steps = (("SIGTERM", lambda: self.proc.send_signal(signal.SIGTERM), grace),
                     ("SIGKILL", self._kill_now, 5.0))
        for name, act, wait in steps if how is None else ():
            try:
                act()
                self.proc.wait(wait)
                how = name
                break
            except OSError:
                continue
            except subprocess.TimeoutExpired:
                how = "unkillable"
        self.watchdog.cancel()
        if self.expired:
            how = "watchdog"   # killed at the deadline before we asked
        stragglers = reap_stragglers(self.known_descendants, self.pid, 3.0)
        for stream in (self.proc.stdout, self.stderr):
            if stream is not None:
                stream.close()
        return {"stopped_by": how, "exit_code": self.proc.returncode, "stragglers": stragglers}


def echo_config(*args: str, **policy) -> dict:
    """A gateway config of the bundled echo server (with ``args``) under the name "echo", with ``policy`` keys."""
    return {"servers": {"echo": {"command": sys.executable, "args": [str(ECHO_SERVER), *args], **policy}}}


def write_config(path: Path, config: dict | None = None) -> Path:
    """``config`` (default: the echo server alone) written to ``path``, for ``--config``."""
    path.write_text(json.dumps(echo_config() if config is None else config))
    return path


class HttpProcess(Started):
    """An HTTP target we start: ``direct`` (the HTTP echo server), ``gateway`` (``wire-gateway serve`` with
    ``config``, by default over the stdio echo server), ``fast`` (the canned-answer server). Its files go
    in ``tmpdir``; its URL is known once its port file appears."""

    def __init__(self, kind: str, tmpdir: str, timeout: float, cpus=None, path: str = "/mcp/echo",
                 dump: bool = False, config: dict | None = None):
        self.kind, self.dump_file = kind, None
        tag = f"{kind}-{os.getpid()}-{time.monotonic_ns()}"
        folder = Path(tmpdir)
        port_file, log_file = folder / f"{tag}.port", None
        if kind == "direct":
            argv, path = [sys.executable, str(HTTP_ECHO), "--port", "0", "--port-file", str(port_file)], "/mcp"
        elif kind == "fast":
            argv, path = [sys.executable, "-m", f"{PACKAGE}.http_bench", "--fast-server", str(port_file)], "/mcp"
        else:
            log_file = folder / f"{tag}.log"
            argv = [sys.executable, "-m", "wire_gateway", "serve", "--config",
                    str(write_config(folder / f"{tag}.json", config)), "--port", "0", "--port-file", str(port_file),
                    "--log-file", str(log_file)]
            if dump:
                self.dump_file = folder / f"{tag}.dump.jsonl"
                argv += ["--dump", str(self.dump_file)]
        super().__init__(argv, timeout, cpus, log_file=log_file)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                self.port = int(port_file.read_text())
                break
            except (OSError, ValueError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                failure = self.failure(f"{kind} target " + ("exited before listening" if self.proc.poll() is not None
                                                            else f"not listening after {START_TIMEOUT_S:g}s"))
                self.stop()
                raise failure
            time.sleep(0.02)
        self.url = Url(f"http://127.0.0.1:{self.port}{path}")


class ExternalTarget:
    """A server already running at a URL: measured through the process listening on its port when
    that is ours to see, never started or stopped by us."""

    kind, argv, dump_file = "external", None, None

    def __init__(self, url: str):
        self.url = Url(url)
        self.pid = pid_listening_on(self.url.port) if self.url.host in ("127.0.0.1", "localhost", "::1") else None

    def remember(self, tree: dict | None = None) -> None:
        pass

    remember_now = remember

    def stop(self, grace: float = 0.0) -> dict:
        return {"stopped_by": "external (left running)", "exit_code": None, "stragglers": []}


def start_http(spec: str, kind: str, tmpdir: str, timeout: float, cpus=None, dump: bool = False):
    """``auto``: start the target of that kind; a URL: the server running there."""
    return HttpProcess(kind, tmpdir, timeout, cpus, dump=dump) if spec == "auto" else ExternalTarget(spec)
