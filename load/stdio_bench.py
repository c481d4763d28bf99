"""Measure a stdio MCP server directly and through the gateway, side by side.

    python -m load stdio-bench [--direct CMD] [--gateway CMD] [-n 20000]
                               [--concurrency 1,16] [--rounds 3] [--json]

Each CMD is a shell-like command line (split with ``shlex.split``, not run by
a shell) starting an MCP server that speaks newline-delimited JSON-RPC on its
stdin/stdout.  By default the direct slot is the echo fixture and the gateway
slot is ``python -m wire_gateway stdio`` proxying that same fixture, so the
difference between the two columns is what the gateway costs.

Per target and per round, one fresh process is started, initialized, warmed
up (500 calls), then measured in every scenario:

* ``sequential``: one ``tools/call`` at a time, N calls;
* ``inflight_K`` (each K > 1 of --concurrency): exactly K requests
  outstanding, pipelined over the one pipe with distinct ids, N calls.

For each: throughput, latency percentiles, CPU of the target process itself
(utime+stime from /proc/PID/stat, children excluded), CPU of the target's
whole process tree, and the driver's own CPU.  Every answer is checked (its id
must be outstanding, its content must be the echo of what was sent) and
mismatches are counted, never ignored.  Targets alternate A B A B over the
rounds so that drift on a noisy machine hits both alike; the summary is the
median over rounds.

Why the driver looks the way it does: the direct echo server does ~8k
sequential and ~100k pipelined calls/s, so the client must cost a few
microseconds per call.  Requests are pre-serialized bytes, written with
os.write (batched when pipelining), answers are read in 64 KiB chunks and
split by hand, and each answer is parsed once with orjson.  One thread does
both sides: stdin is non-blocking, so a full pipe is waited on with select()
while answers keep being drained (no deadlock, no thread handoff).  Use
``python -m load stdio-ceiling`` to see how fast the driver itself goes.

Where the processes run matters more than anything the driver does: on a
small VM, waking a process that sleeps on a pipe from another CPU costs tens
of microseconds on each side, and the scheduler decides per run whether
driver and target share a CPU.  Hence ``--pin`` (default ``split``: driver
on one CPU, target and its children on the others, for repeatable figures)
and ``--spin`` (the driver polls instead of sleeping, which takes the
client's wake-up cost out of the figures).  The defaults keep a plain
sleeping client, which is what real MCP hosts are.

Exit status: 0 all good, 1 some answers mismatched, 2 some run failed.
"""
import argparse
import gc
import json
import os
import select
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from . import BenchError
from .assets import ECHO_SERVER, tool
from .procfs import CLK_TCK, CpuSample, add_pin_argument, cpu_plan, pinned, ticks_to_us, tree_ticks_between
from .report import fmt, signed, table, times
from .stats import median, percentile, ratio
from .targets import Started

ECHO_FIXTURE = ECHO_SERVER
WARMUP_CALLS = 500
INIT_ID = 0
FIRST_CALL_ID = 1
PROTOCOL_VERSION = "2025-11-25"
MAX_EXAMPLES = 5
READ_SIZE = 65536


# --------------------------------------------------------------------------
# Wire format
# --------------------------------------------------------------------------

def request_bytes(call_id: int) -> bytes:
    """One serialized ``tools/call`` of ``echo``; the text is unique per id.

    The text embeds the id so that an answer that is well-formed but belongs
    to another request (or is stale) fails the content check.
    """
    return (
        b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":'
        b'{"name":"echo","arguments":{"text":"t%d"}}}\n' % (call_id, call_id)
    )


def expected_content(call_id: int) -> list:
    """The ``result.content`` an echo of ``request_bytes(call_id)`` must have."""
    return [{"type": "text", "text": "t%d" % call_id}]


def initialize_bytes() -> bytes:
    params = {
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": {},
        "clientInfo": {"name": "bench", "version": "0"},
    }
    msg = {"jsonrpc": "2.0", "id": INIT_ID, "method": "initialize", "params": params}
    return orjson.dumps(msg) + b"\n"


INITIALIZED_BYTES = b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n'


# --------------------------------------------------------------------------
# /proc accounting
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Answer checking
# --------------------------------------------------------------------------

@dataclass
class Mismatches:
    """Counts of bad answers by kind, with a few examples to show."""

    kinds: dict = field(default_factory=dict)
    examples: list = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.kinds.values())

    def add(self, kind: str, line: bytes) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{kind}: {line[:200].decode('utf-8', 'replace')}")


class Checker:
    """Matches answers to outstanding requests and checks their content.

    ``feed`` returns how many request slots a line frees (0 or 1).  An
    answer with an unknown id still frees one (the oldest outstanding
    request is retired in its place): a server that mangles ids is then
    reported, not waited on until the timeout.
    """

    def __init__(self):
        self.pending = {}  # id -> send time (ns); dicts keep insertion order
        self.latencies = []  # ns, only of answers that passed the check
        self.bad = Mismatches()
        self.notifications = 0

    def expect(self, call_id: int, sent_at: int) -> None:
        self.pending[call_id] = sent_at

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
        if (type(result) is dict and result.get("content") == expected_content(call_id)
                and not result.get("isError")):
            self.latencies.append(now - sent_at)
        else:
            self.bad.add("error" if "error" in msg else "wrong_content", line)
        return 1

    def _retire_oldest(self, kind: str, line: bytes) -> int:
        """Count a bad answer; retire the oldest request it presumably answers."""
        self.bad.add(kind, line)
        if not self.pending:
            return 0  # an answer nobody asked for: frees no slot
        del self.pending[next(iter(self.pending))]
        return 1


@dataclass
class DriveResult:
    """Raw outcome of one measured window."""

    calls: int
    elapsed_ns: int
    latencies_ns: list  # only of answers that passed the check
    mismatches: Mismatches
    notifications: int


# --------------------------------------------------------------------------
# The target process
# --------------------------------------------------------------------------

class Target(Started):
    """One server process on pipes (``targets.Started``: its own session, a watchdog), driven by
    ``drive``: sequential, or pipelined with K requests outstanding on the one pipe."""

    def __init__(self, argv: list, timeout: float, cpus=None, spin: bool = False, grace: float = 5.0):
        super().__init__(argv, timeout, cpus, pipes=True)
        self.spin, self.grace, self.buf = spin, grace, b""
        self.rfd = self.proc.stdout.fileno()
        self.wfd = self.proc.stdin.fileno()
        os.set_blocking(self.wfd, False)

    def stop(self, grace: float | None = None) -> dict:
        return super().stop(self.grace if grace is None else grace)

    # -- raw I/O ----------------------------------------------------------

    def write_all(self, data: bytes) -> None:
        """Blocking-style write on the non-blocking pipe (handshake only)."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.wfd, view):]
            except BlockingIOError:
                select.select([], [self.wfd], [])
            except BrokenPipeError:
                raise self.failure("target closed its stdin") from None

    def read_message(self) -> dict:
        """Next JSON message (handshake only; the hot loop splits inline)."""
        while b"\n" not in self.buf:
            chunk = os.read(self.rfd, READ_SIZE)
            if not chunk:
                raise self.failure("target closed its stdout")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        if not line.strip():
            return self.read_message()
        try:
            return orjson.loads(line)
        except orjson.JSONDecodeError:
            raise self.failure(f"unparseable line from target: {line[:200]!r}") from None

    def handshake(self) -> dict:
        """initialize + notifications/initialized; returns the init result."""
        self.write_all(initialize_bytes())
        while True:
            msg = self.read_message()
            if isinstance(msg, dict) and msg.get("id") == INIT_ID and "method" not in msg:
                break
        if "result" not in msg:
            raise self.failure(f"initialize failed: {msg}")
        self.write_all(INITIALIZED_BYTES)
        return msg["result"]

    # -- the measured loop ------------------------------------------------

    def drive(self, first_id: int, n: int, k: int) -> DriveResult:
        """Run one window (see ``_drive``), with the read side set up for --spin."""
        if not self.spin:
            return self._drive(first_id, n, k)
        os.set_blocking(self.rfd, False)
        try:
            return self._drive(first_id, n, k)
        finally:
            os.set_blocking(self.rfd, True)

    def _drive(self, first_id: int, n: int, k: int) -> DriveResult:
        """Send ``n`` calls keeping ``k`` outstanding; every answer is checked.

        I/O only: the ``Checker`` judges each line.  Answers are consumed as
        they arrive; the slots they free are refilled with one batched
        write, so exactly ``k`` requests are outstanding until the tail.
        """
        requests = [request_bytes(first_id + i) for i in range(n)]
        rfd, clock, spin = self.rfd, time.perf_counter_ns, self.spin
        check = Checker()
        feed, expect = check.feed, check.expect
        answered, buf = 0, self.buf

        now = start = clock()
        sent = min(k, n)
        for i in range(sent):
            expect(first_id + i, start)
        out = b"".join(requests[:sent])
        while answered < n:
            if out:
                out = self._write_some(out)
                if out and not self._wait_readable():
                    continue  # pipe was full, now has room, nothing to read: write on
            chunk = self._spin_read() if spin else os.read(rfd, READ_SIZE)
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
                    expect(first_id + i, stamp)
                out += b"".join(requests[sent:sent + more])
                sent += more
        self.buf = buf
        return DriveResult(answered, now - start, check.latencies, check.bad, check.notifications)

    def _spin_read(self) -> bytes:
        """Busy-poll the answer pipe instead of sleeping on it (--spin).

        Why: a reader asleep on a pipe must be woken by the writer, and on a
        VM a cross-CPU wake-up (an IPI, i.e. a VM exit) costs tens of
        microseconds on each side, which caps a sleeping client at roughly
        one round trip per ~100 us whatever the server does.  Spinning
        removes the client's half of that cost, at the price of a CPU: only
        use it with ``--pin split``.  Bounded like everything else: the
        watchdog closes the pipe, and EOF ends the loop.
        """
        rfd = self.rfd  # made non-blocking by drive()
        while True:
            try:
                return os.read(rfd, READ_SIZE)
            except BlockingIOError:
                pass

    def _write_some(self, out: bytes) -> bytes:
        """Write what the pipe takes now; return the rest."""
        try:
            return out[os.write(self.wfd, out):]
        except BlockingIOError:
            return out
        except BrokenPipeError:
            raise self.failure("target closed its stdin") from None

    def _wait_readable(self) -> bool:
        """Block until an answer can be read or the stdin pipe has room.

        Both are watched so that a full stdin pipe never deadlocks against
        a server blocked on writing answers we are not reading.
        """
        readable, _, _ = select.select([self.rfd], [self.wfd], [])
        return bool(readable)



# --------------------------------------------------------------------------
# CPU placement
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Scenarios and runs
# --------------------------------------------------------------------------

def scenarios(concurrency: list) -> list:
    """[(name, k)]: sequential first, then each distinct K > 1 in order."""
    out = [("sequential", 1)]
    for k in concurrency:
        if k > 1 and ("inflight_%d" % k, k) not in out:
            out.append(("inflight_%d" % k, k))
    return out



def measure(target: Target, first_id: int, n: int, k: int) -> dict:
    """One measured window: drive, with CPU sampled just around it.

    The garbage collector is paused inside the window: the driver allocates
    one dict per answer and a collection pause would show up as latency.
    """
    gc.collect()
    before = CpuSample.take(target.pid, driver_first=False)
    gc.disable()
    try:
        result = target.drive(first_id, n, k)
    finally:
        gc.enable()
    after = CpuSample.take(target.pid, driver_first=True)
    target.remember(after.tree)
    return metrics(result, k, before, after)


def metrics(result: DriveResult, k: int, before: CpuSample, after: CpuSample) -> dict:
    """Turn raw counters into the figures we report (microseconds)."""
    lat = sorted(result.latencies_ns)
    calls = result.calls or 1

    def us(ns):
        return None if ns is None else round(ns / 1000, 1)

    return {
        "calls": result.calls,
        "concurrency": k,
        "seconds": round(result.elapsed_ns / 1e9, 4),
        "calls_per_s": round(result.calls / (result.elapsed_ns / 1e9), 1) if result.elapsed_ns else None,
        "p50_us": us(percentile(lat, 50)),
        "p90_us": us(percentile(lat, 90)),
        "p99_us": us(percentile(lat, 99)),
        "max_us": us(lat[-1] if lat else None),
        "target_cpu_us_per_call": round(ticks_to_us(after.own_ticks - before.own_ticks) / calls, 2),
        "tree_cpu_us_per_call": round(ticks_to_us(tree_ticks_between(before.tree, after.tree)) / calls, 2),
        "tree_processes": len(after.tree),
        "driver_cpu_us_per_call": round((after.driver_ns - before.driver_ns) / 1000 / calls, 2),
        "other_load_cpus": other_load(result, before, after),
        "mismatches": result.mismatches.total,
        "mismatch_kinds": dict(result.mismatches.kinds),
        "mismatch_examples": list(result.mismatches.examples),
        "notifications": result.notifications,
    }


def other_load(result: DriveResult, before: CpuSample, after: CpuSample):
    """CPUs' worth of work done by the rest of the machine during the window.

    Why: on a small shared machine the main source of noise is someone
    else's work; 0.5 means half a CPU was busy with processes that are
    neither the driver nor the target.  Tick-grained: a rough indicator.
    """
    window_ticks = result.elapsed_ns / 1e9 * CLK_TCK
    if window_ticks <= 0:
        return None
    ours = tree_ticks_between(before.tree, after.tree) + after.driver_ticks - before.driver_ticks
    other = after.machine_ticks - before.machine_ticks - ours
    return round(max(other, 0) / window_ticks, 2)


def run_target(argv: list, n: int, concurrency: list, timeout: float,
               warmup: int = WARMUP_CALLS, cpus=None, spin: bool = False) -> dict:
    """Start one target, warm it up, measure every scenario, stop it.

    Never raises for a target's misbehaviour: failures are returned as
    ``{"error": ...}`` next to whatever was measured before, so one bad
    round does not lose the others.
    """
    run = {"scenarios": {}, "warmup_mismatches": 0}
    target = None
    try:
        target = Target(argv, timeout, cpus, spin)
        run["init"] = target.handshake()
        call_id = FIRST_CALL_ID
        warm = target.drive(call_id, warmup, 1)
        run["warmup_mismatches"] = warm.mismatches.total
        run["warmup_mismatch_examples"] = warm.mismatches.examples
        call_id += warmup
        for name, k in scenarios(concurrency):
            run["scenarios"][name] = measure(target, call_id, n, k)
            call_id += n
    except BenchError as exc:
        run["error"] = str(exc)
    finally:
        if target is not None:
            run["shutdown"] = target.stop()
    return run


def run_mismatches(run: dict) -> int:
    return run.get("warmup_mismatches", 0) + sum(
        s["mismatches"] for s in run.get("scenarios", {}).values()
    )


# --------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------

MEDIAN_FIELDS = (
    "calls_per_s", "p50_us", "p90_us", "p99_us", "max_us",
    "target_cpu_us_per_call", "tree_cpu_us_per_call", "driver_cpu_us_per_call", "other_load_cpus",
)


def median_figures(runs: list, scenario: str) -> dict:
    """Median over rounds of each figure (mismatches are summed instead)."""
    measured = [r["scenarios"][scenario] for r in runs if scenario in r.get("scenarios", {})]
    if not measured:
        return {}
    out = {"rounds": len(measured)}
    for key in MEDIAN_FIELDS:
        value = median(m[key] for m in measured)
        out[key] = None if value is None else round(value, 2)
    out["mismatches"] = sum(m["mismatches"] for m in measured)
    return out


def compare(direct: dict, gateway: dict) -> dict:
    """Gateway relative to direct: ratios and added microseconds."""

    def added(key):
        a, b = direct.get(key), gateway.get(key)
        return round(b - a, 1) if a is not None and b is not None else None

    return {
        "throughput_ratio": ratio(direct.get("calls_per_s"), gateway.get("calls_per_s")),
        "p50_ratio": ratio(direct.get("p50_us"), gateway.get("p50_us")),
        "added_p50_us": added("p50_us"),
        "added_p99_us": added("p99_us"),
        "gateway_cpu_us_per_call": gateway.get("target_cpu_us_per_call"),
        "added_tree_cpu_us_per_call": added("tree_cpu_us_per_call"),
    }


def summarize(rounds: list, scenario_names: list) -> dict:
    summary = {}
    for name in scenario_names:
        direct = median_figures([r["direct"] for r in rounds], name)
        gateway = median_figures([r["gateway"] for r in rounds], name)
        summary[name] = {"direct": direct, "gateway": gateway, "gateway_vs_direct": compare(direct, gateway)}
    return summary


# --------------------------------------------------------------------------
# Text output
# --------------------------------------------------------------------------

ROWS = (
    ("calls/s", "calls_per_s", "ratio"),
    ("p50 us", "p50_us", "added"),
    ("p90 us", "p90_us", "added"),
    ("p99 us", "p99_us", "added"),
    ("max us", "max_us", "added"),
    ("own CPU us/call", "target_cpu_us_per_call", "added"),
    ("tree CPU us/call", "tree_cpu_us_per_call", "added"),
    ("driver CPU us/call", "driver_cpu_us_per_call", "added"),
    ("other load (CPUs)", "other_load_cpus", "added"),
    ("mismatches", "mismatches", None),
)


def render_scenario(name: str, entry: dict, rounds: list) -> list:
    """Table lines for one scenario: medians, gateway-vs-direct, per round."""
    direct, gateway = entry["direct"], entry["gateway"]
    rows = []
    for label, key, how in ROWS:
        a, b = direct.get(key), gateway.get(key)
        delta = ""
        if how == "ratio":
            delta = times(ratio(a, b))
        elif how == "added" and a is not None and b is not None:
            delta = signed(b - a)
        rows.append([label, a, b, delta])
    cmp = entry["gateway_vs_direct"]
    lines = [f"== {name} (median over {direct.get('rounds', 0)}/{gateway.get('rounds', 0)} rounds)",
             *table(["", "direct", "gateway", "gw vs direct"], rows, indent=0),
             f"  gateway: {times(cmp['throughput_ratio'])} throughput, {signed(cmp['added_p50_us'])} us p50, "
             f"{signed(cmp['added_p99_us'])} us p99, own CPU {fmt(cmp['gateway_cpu_us_per_call'])} us/call "
             f"(children excluded), {signed(cmp['added_tree_cpu_us_per_call'])} us/call tree CPU"]
    for slot in ("direct", "gateway"):
        per_round = [r[slot].get("scenarios", {}).get(name, {}) for r in rounds]
        shown = ", ".join(f"{fmt(m.get('calls_per_s'))}/s p50 {fmt(m.get('p50_us'))}" for m in per_round)
        lines.append(f"  rounds {slot:8} {shown}")
    return lines


def render_runs(result: dict, normal_stops: tuple) -> list:
    """The scenarios' tables, then what went wrong per round: errors, bad answers, odd shutdowns."""
    lines = []
    for name, entry in result["summary"].items():
        lines += [*render_scenario(name, entry, result["rounds"]), ""]
    for i, rnd in enumerate(result["rounds"], 1):
        for slot in ("direct", "gateway"):
            run = rnd[slot]
            if "error" in run:
                lines.append(f"round {i} {slot}: ERROR {run['error']}")
            for s_name, s in run.get("scenarios", {}).items():
                for example in s.get("warmup_mismatch_examples", []) + s["mismatch_examples"]:
                    lines.append(f"round {i} {slot} {s_name}: {example}")
                if s.get("session_close_failures"):
                    lines.append(f"round {i} {slot} {s_name}: DELETE failures {s['session_close_failures']}")
            stop = run.get("shutdown", {})
            if stop.get("stragglers") or stop.get("stopped_by", normal_stops[0]) not in normal_stops:
                lines.append(f"round {i} {slot}: shutdown {stop}")
    return lines


def render(result: dict) -> str:
    cfg = result["config"]
    lines = [
        f"stdio-bench: n={cfg['n']} rounds={cfg['rounds']} warmup={cfg['warmup']} "
        f"concurrency={cfg['concurrency']} pin={cfg['pin']} spin={cfg['spin']} "
        f"(driver CPUs {cfg['driver_cpus'] or 'any'}, target CPUs {cfg['target_cpus'] or 'any'})",
        f"  direct : {cfg['direct']}",
        f"  gateway: {cfg['gateway']}",
        "",
        *render_runs(result, ("stdin-eof",)),
        f"total mismatches: {result['mismatches']}   errors: {result['errors']}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def parse_concurrency(text: str) -> list:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency values must be >= 1")
    return values


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1: {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--direct", help="command for the direct server (default: the echo fixture)")
    parser.add_argument("--gateway", help="command for the gateway (default: wire_gateway stdio over the echo fixture)")
    parser.add_argument("-n", type=positive_int, default=20000, help="calls per scenario (default 20000)")
    parser.add_argument("--concurrency", type=parse_concurrency, default=[1, 16],
                        help="comma-separated in-flight counts; sequential always runs (default 1,16)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="A/B rounds (default 3)")
    parser.add_argument("--warmup", type=positive_int, default=WARMUP_CALLS,
                        help="warm-up calls per process (default 500)")
    parser.add_argument("--timeout", type=float, default=120.0, help="hard limit per target run, seconds (default 120)")
    add_pin_argument(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of tables")


def default_commands(tmpdir: str) -> tuple:
    """(direct argv, gateway argv): the echo fixture, and the gateway over it.

    The gateway's config is written to ``tmpdir`` so that the default run
    needs nothing but the repository.
    """
    config = {"servers": {"echo": {"command": sys.executable, "args": [str(ECHO_FIXTURE)]}}}
    config_path = Path(tmpdir) / "stdio-bench-gateway.json"
    config_path.write_text(json.dumps(config))
    direct = [sys.executable, str(ECHO_FIXTURE)]
    gateway = [sys.executable, "-m", "wire_gateway", "stdio", "--server", "echo", "--config", str(config_path)]
    return direct, gateway


def run_bench(direct: list, gateway: list, n: int, concurrency: list, rounds: int,
              warmup: int = WARMUP_CALLS, timeout: float = 120.0, pin: str = "split",
              spin: bool = False) -> dict:
    """All rounds, alternating direct and gateway; returns the full result."""
    all_rounds = []
    driver_cpus, target_cpus = cpu_plan(pin)
    with pinned(driver_cpus):
        for _ in range(rounds):
            all_rounds.append({
                "direct": run_target(direct, n, concurrency, timeout, warmup, target_cpus, spin),
                "gateway": run_target(gateway, n, concurrency, timeout, warmup, target_cpus, spin),
            })
    names = [name for name, _ in scenarios(concurrency)]
    runs = [r[slot] for r in all_rounds for slot in ("direct", "gateway")]
    return {
        "config": {
            "direct": shlex.join(direct), "gateway": shlex.join(gateway), "n": n,
            "concurrency": concurrency, "rounds": rounds, "warmup": warmup, "timeout_s": timeout,
            "python": sys.version.split()[0], "cpus": os.cpu_count(), "clk_tck": CLK_TCK,
            "pin": pin, "spin": spin, "driver_cpus": sorted(driver_cpus or ()),
            "target_cpus": sorted(target_cpus or ()),
        },
        "rounds": all_rounds,
        "summary": summarize(all_rounds, names),
        "mismatches": sum(run_mismatches(r) for r in runs),
        "errors": sum(1 for r in runs if "error" in r),
    }


def exit_status(result: dict) -> int:
    if result["errors"]:
        return 2
    return 1 if result["mismatches"] else 0


def run(args) -> int:
    with tempfile.TemporaryDirectory(prefix="stdio-bench-") as tmpdir:
        default_direct, default_gateway = default_commands(tmpdir)
        direct = shlex.split(args.direct) if args.direct else default_direct
        gateway = shlex.split(args.gateway) if args.gateway else default_gateway
        result = run_bench(direct, gateway, args.n, args.concurrency, args.rounds,
                           args.warmup, args.timeout, args.pin, args.spin)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return exit_status(result)


# --------------------------------------------------------------------------
# stdio-ceiling: the driver against fast-echo
# --------------------------------------------------------------------------

def add_ceiling_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", type=positive_int, default=100000, help="calls per scenario (default 100000)")
    parser.add_argument("--concurrency", type=parse_concurrency, default=[1, 16, 64],
                        help="comma-separated in-flight counts (default 1,16,64)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds (default 3)")
    parser.add_argument("--timeout", type=float, default=120.0, help="hard limit per run, seconds")
    add_pin_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run_ceiling(args) -> int:
    """How fast is this driver? ``fast-echo`` answers a call with one regex match, so the figures are
    bounded by the driver (and the pipes and the kernel), not by the server: if they are well above
    what the direct echo server reaches, ``stdio-bench`` measures its targets, not itself."""
    fast_echo = tool("fast-echo")
    driver_cpus, target_cpus = cpu_plan(args.pin)
    with pinned(driver_cpus):
        runs = [run_target(fast_echo, args.n, args.concurrency, args.timeout, cpus=target_cpus, spin=args.spin)
                for _ in range(args.rounds)]
    summary = {name: median_figures(runs, name) for name, _ in scenarios(args.concurrency)}
    errors = [r["error"] for r in runs if "error" in r]
    mismatches = sum(run_mismatches(r) for r in runs)
    if args.json:
        print(json.dumps({"target": shlex.join(fast_echo), "n": args.n, "pin": args.pin, "spin": args.spin,
                          "summary": summary, "errors": errors, "mismatches": mismatches}, indent=2))
    else:
        print(f"driver ceiling against {shlex.join(fast_echo)} (n={args.n}, pin={args.pin}, spin={args.spin}, "
              f"median of {args.rounds})")
        print("\n".join(table(["", "calls/s", "p50 us", "p99 us", "driver CPU us/call", "server CPU us/call"], [
            [name, m.get("calls_per_s"), m.get("p50_us"), m.get("p99_us"), m.get("driver_cpu_us_per_call"),
             m.get("target_cpu_us_per_call")] for name, m in summary.items()], indent=0)))
        for error in errors:
            print("ERROR", error)
        print(f"mismatches: {mismatches}")
    return 2 if errors else (1 if mismatches else 0)
