"""``load stdio-bench``: a stdio MCP server directly against through ``wire-gateway stdio``, side by side;
``load stdio-ceiling``: the same driver against ``fast-echo``.

The driver must cost a few microseconds per call (the direct echo server does ~100k pipelined calls/s):
requests are pre-serialised bytes, answers are read in 64 KiB chunks, split by hand and parsed once, and
one thread does both sides of the pipe. Why, and why ``--pin`` and ``--spin``: docs/notes/load-design.md.
"""
import argparse
import os
import select
import shlex
import sys
import tempfile
import time
from pathlib import Path

import orjson

from . import BenchError, figures as fig
from .assets import ECHO_SERVER, tool
from .http_client import INITIALIZED_BODY, initialize_message
from .procfs import CpuSample
from .report import emit
from .stats import Counts
from .targets import Started, write_config

READ_SIZE = 65536


def request_bytes(call_id: int) -> bytes:
    """One ``tools/call`` of ``echo``; the text embeds the id, so an answer to another request fails."""
    return (b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":'
            b'{"name":"echo","arguments":{"text":"t%d"}}}\n' % (call_id, call_id))


class Checker:
    """Matches answers to outstanding requests and checks their content.

    ``feed`` returns how many request slots a line frees (0 or 1). An answer with an unknown id
    still frees one (the oldest outstanding request is retired in its place): a server that mangles
    ids is then reported, not waited on until the timeout.
    """

    def __init__(self):
        self.pending = {}  # id -> send time (ns); dicts keep insertion order
        self.latencies = []  # ns, only of answers that passed the check
        self.bad = Counts()
        self.notifications = 0

    def feed(self, line: bytes, now: int) -> int:
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            return self._retire_oldest("unparseable", line) if line.strip() else 0
        try:
            call_id = msg["id"]
        except (KeyError, TypeError):  # no id, or not even an object
            if type(msg) is dict and "method" in msg:
                self.notifications += 1  # e.g. logging or progress: allowed
                return 0
            return self._retire_oldest("malformed", line)
        if "method" in msg:
            self.bad.add("server_request", line)  # an echo server must not ask us things
            return 0
        sent_at = self.pending.pop(call_id, None) if type(call_id) is int else None
        if sent_at is None:
            return self._retire_oldest("unknown_id", line)
        result = msg.get("result")
        if (type(result) is dict and result.get("content") == fig.expected_content(call_id)
                and not result.get("isError")):
            self.latencies.append(now - sent_at)
        else:
            self.bad.add("error" if "error" in msg else "wrong_content", line)
        return 1

    def _retire_oldest(self, kind: str, line: bytes) -> int:
        self.bad.add(kind, line)
        if not self.pending:
            return 0  # an answer nobody asked for: frees no slot
        del self.pending[next(iter(self.pending))]
        return 1


class Target(Started):
    """One server process on pipes (``targets.Started``: its own session, a watchdog), driven by
    ``drive``: sequential, or pipelined with K requests outstanding on the one pipe."""

    def __init__(self, argv: list, timeout: float, cpus=None, spin: bool = False, grace: float = 5.0):
        super().__init__(argv, timeout, cpus, pipes=True)
        self.spin, self.grace, self.buf = spin, grace, b""
        self.rfd, self.wfd = self.proc.stdout.fileno(), self.proc.stdin.fileno()
        os.set_blocking(self.wfd, False)

    def stop(self, grace: float | None = None) -> dict:
        return super().stop(self.grace if grace is None else grace)

    def write_all(self, data: bytes) -> None:
        """Blocking-style write on the non-blocking pipe (handshake only)."""
        while data:
            data = self._write_some(data)
            if data:
                select.select([], [self.wfd], [])

    def read_message(self) -> dict:
        """Next JSON message (handshake only; the hot loop splits inline)."""
        while True:
            while b"\n" not in self.buf:
                chunk = os.read(self.rfd, READ_SIZE)
                if not chunk:
                    raise self.failure("target closed its stdout")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            if line.strip():
                try:
                    return orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise self.failure(f"unparseable line from target: {line[:200]!r}") from None

    def handshake(self) -> dict:
        """initialize + notifications/initialized; returns the init result."""
        self.write_all(orjson.dumps(initialize_message("bench")) + b"\n")
        msg = self.read_message()
        while not (isinstance(msg, dict) and msg.get("id") == 0 and "method" not in msg):
            msg = self.read_message()
        if "result" not in msg:
            raise self.failure(f"initialize failed: {msg}")
        self.write_all(INITIALIZED_BODY + b"\n")
        return msg["result"]

    def drive(self, first_id: int, n: int, k: int) -> fig.DriveResult:
        """Send ``n`` calls keeping ``k`` outstanding; every answer is checked by a ``Checker``.

        Answers are consumed as they arrive; the slots they free are refilled with one batched
        write, so exactly ``k`` requests are outstanding until the tail. With --spin the read side
        is non-blocking and busy-polled (bounded: the watchdog closes the pipe, EOF ends it).
        """
        if self.spin:
            os.set_blocking(self.rfd, False)
        try:
            return self._drive(first_id, n, k)
        finally:
            if self.spin:
                os.set_blocking(self.rfd, True)

    def _drive(self, first_id: int, n: int, k: int) -> fig.DriveResult:
        requests = [request_bytes(first_id + i) for i in range(n)]
        rfd, clock = self.rfd, time.perf_counter_ns
        check = Checker()
        feed, pending = check.feed, check.pending
        answered, buf = 0, self.buf
        now = start = clock()
        sent = min(k, n)
        for i in range(sent):
            pending[first_id + i] = start
        out = b"".join(requests[:sent])
        while answered < n:
            if out:
                out = self._write_some(out)
                # a full stdin waits until an answer can be read or it has room: never a deadlock against
                # a server blocked on writing answers we are not reading
                if out and not select.select([rfd], [self.wfd], [])[0]:
                    continue  # pipe was full, now has room, nothing to read: write on
            while True:
                try:
                    chunk = os.read(rfd, READ_SIZE)
                    break
                except BlockingIOError:   # --spin: poll again
                    pass
            now = clock()
            if not chunk:
                raise self.failure(f"target closed its stdout after {answered} answers")
            lines = (buf + chunk).split(b"\n") if buf else chunk.split(b"\n")
            buf = lines.pop()
            freed = 0
            for line in lines:
                freed += feed(line, now)
            answered += freed
            if freed and sent < n:
                more = min(freed, n - sent)
                stamp = clock()
                for i in range(sent, sent + more):
                    pending[first_id + i] = stamp
                out += b"".join(requests[sent:sent + more])
                sent += more
        self.buf = buf
        return fig.DriveResult(answered, now - start, check.latencies, check.bad, check.notifications)

    def _write_some(self, out: bytes) -> bytes:
        """Write what the pipe takes now; return the rest."""
        try:
            return out[os.write(self.wfd, out):]
        except BlockingIOError:
            return out
        except BrokenPipeError:
            raise self.failure("target closed its stdin") from None


def run_target(argv: list, n: int, concurrency: list, timeout: float,
               warmup: int = 500, cpus=None, spin: bool = False) -> dict:
    """Start one target, warm it up, measure every scenario with its CPU sampled just around the window,
    stop it. A failure is returned as ``{"error": ...}`` next to what was measured, never raised: one bad
    round loses nothing else."""
    run: dict = {"scenarios": {}, "warmup_mismatches": 0}
    target = None
    try:
        target = Target(argv, timeout, cpus, spin)
        run["init"] = target.handshake()
        warm = target.drive(1, warmup, 1)
        run["warmup_mismatches"] = warm.mismatches.total
        run["warmup_mismatch_examples"] = warm.mismatches.examples
        call_id = 1 + warmup
        for name, k in fig.scenarios(concurrency):
            samples: list = []
            result = fig.in_window(lambda k=k, call_id=call_id: target.drive(call_id, n, k),
                                   lambda s=samples: s.append(CpuSample.take(target.pid, False)),
                                   lambda s=samples: s.append(CpuSample.take(target.pid, True)))
            target.remember(samples[1].tree)
            run["scenarios"][name] = fig.metrics(result, k, *samples)
            call_id += n
    except BenchError as exc:
        run["error"] = str(exc)
    finally:
        if target is not None:
            run["shutdown"] = target.stop()
    return run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--direct", help="command for the direct server (default: the echo fixture)")
    parser.add_argument("--gateway", help="command for the gateway (default: wire_gateway stdio over the echo fixture)")
    fig.add_common(parser, 20000, "1,16", "in-flight counts", warmup_min=1)


def run(args) -> int:
    with tempfile.TemporaryDirectory(prefix="stdio-bench-") as tmpdir:
        config = write_config(Path(tmpdir) / "stdio-bench-gateway.json")
        argv = {"direct": shlex.split(args.direct) if args.direct else [sys.executable, str(ECHO_SERVER)],
                "gateway": shlex.split(args.gateway) if args.gateway else [
                    sys.executable, "-m", "wire_gateway", "stdio", "--server", "echo", "--config", str(config)]}
        result = fig.ab_result(
            {"direct": shlex.join(argv["direct"]), "gateway": shlex.join(argv["gateway"]), "n": args.n,
             "concurrency": args.concurrency, "warmup": args.warmup, "timeout_s": args.timeout},
            {slot: lambda cpus, slot=slot: run_target(argv[slot], args.n, args.concurrency, args.timeout,
                                                      args.warmup, cpus, args.spin) for slot in argv},
            args.rounds, args.pin, args.spin, [name for name, _ in fig.scenarios(args.concurrency)])
    cfg = result["config"]
    return emit(result, args.json, lambda result: "\n".join([
        f"stdio-bench: n={cfg['n']} rounds={cfg['rounds']} warmup={cfg['warmup']} concurrency={cfg['concurrency']} "
        f"pin={cfg['pin']} spin={cfg['spin']} (driver CPUs {cfg['driver_cpus'] or 'any'}, target CPUs "
        f"{cfg['target_cpus'] or 'any'})", f"  direct : {cfg['direct']}", f"  gateway: {cfg['gateway']}", "",
        *fig.render_runs(result, ("stdin-eof",)),
        f"total mismatches: {result['mismatches']}   errors: {result['errors']}"]))


def add_ceiling_arguments(parser: argparse.ArgumentParser) -> None:
    fig.add_common(parser, 100000, "1,16,64", "in-flight counts")


def run_ceiling(args) -> int:
    """The driver against ``fast-echo`` (one regex match per call): the figures are the driver's own
    ceiling; well above the direct echo server's, ``stdio-bench`` measures its targets, not itself."""
    fast_echo = tool("fast-echo")
    summary, errors, mismatches = fig.ceiling_rounds(
        args.rounds, [name for name, _ in fig.scenarios(args.concurrency)], args.pin,
        lambda cpus: run_target(fast_echo, args.n, args.concurrency, args.timeout, cpus=cpus, spin=args.spin))
    title = (f"driver ceiling against {shlex.join(fast_echo)} (n={args.n}, pin={args.pin}, spin={args.spin}, "
             f"median of {args.rounds})")
    return emit({"target": shlex.join(fast_echo), "n": args.n, "pin": args.pin, "spin": args.spin, "summary": summary,
                 "errors": errors, "mismatches": mismatches}, args.json,
                lambda _: fig.render_ceiling(title, [""], [[name, m] for name, m in summary.items()], errors,
                                             mismatches))
