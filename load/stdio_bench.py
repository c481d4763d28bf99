"""``load stdio-bench``: a stdio MCP server directly against through ``wire-gateway stdio``, side by side.

Also the figures of a measured window every bench shares (``metrics``, medians over rounds, the
gateway-against-direct tables): ``http_bench`` reports through them. The driver must cost a few
microseconds per call (the direct echo server does ~100k pipelined calls/s): requests are
pre-serialised bytes, answers are read in 64 KiB chunks, split by hand and parsed once, and one
thread does both sides of the pipe (stdin non-blocking, a full pipe waited on with ``select`` while
answers keep being drained). Why ``--pin`` and ``--spin``: see docs/notes/load-design.md. Over the
usual size because the window's figures live beside the driver that first needed them.
"""
import argparse
import gc
import os
import select
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

from . import BenchError
from .ab import alternate
from .assets import ECHO_SERVER, tool
from .http_client import INITIALIZED_BODY, initialize_message
from .procfs import CLK_TCK, CpuSample, add_pin_argument, cpu_plan, pinned, ticks_to_us, tree_ticks_between
from .report import emit, fmt, signed, table, times
from .stats import Counts, median, percentile, ratio
from .targets import Started, gateway_config

ECHO_FIXTURE = ECHO_SERVER
WARMUP_CALLS = 500
FIRST_CALL_ID = 1
READ_SIZE = 65536


def request_bytes(call_id: int) -> bytes:
    """One ``tools/call`` of ``echo``; the text embeds the id, so an answer to another request fails."""
    return (b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":'
            b'{"name":"echo","arguments":{"text":"t%d"}}}\n' % (call_id, call_id))


def expected_content(call_id: int) -> list:
    """The ``result.content`` of an echo of call ``call_id`` (stdio and HTTP benches alike)."""
    return [{"type": "text", "text": "t%d" % call_id}]


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
    mismatches: Counts
    notifications: int


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
        self.write_all(orjson.dumps(initialize_message("bench")) + b"\n")
        while True:
            msg = self.read_message()
            if isinstance(msg, dict) and msg.get("id") == 0 and "method" not in msg:
                break
        if "result" not in msg:
            raise self.failure(f"initialize failed: {msg}")
        self.write_all(INITIALIZED_BODY + b"\n")
        return msg["result"]

    def drive(self, first_id: int, n: int, k: int) -> DriveResult:
        """Send ``n`` calls keeping ``k`` outstanding; every answer is checked by a ``Checker``.

        Answers are consumed as they arrive; the slots they free are refilled with one batched
        write, so exactly ``k`` requests are outstanding until the tail. With --spin the read side
        is non-blocking and busy-polled (``_spin_read``).
        """
        if self.spin:
            os.set_blocking(self.rfd, False)
        try:
            return self._drive(first_id, n, k)
        finally:
            if self.spin:
                os.set_blocking(self.rfd, True)

    def _drive(self, first_id: int, n: int, k: int) -> DriveResult:
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
        """Busy-poll the answer pipe (--spin); bounded: the watchdog closes the pipe, EOF ends it."""
        rfd = self.rfd
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
        """Until an answer can be read or stdin has room: a full stdin never deadlocks against a
        server blocked on writing answers we are not reading."""
        readable, _, _ = select.select([self.rfd], [self.wfd], [])
        return bool(readable)


# -- the figures of a window, medians over rounds, tables (http_bench reports through these too) --

def scenarios(concurrency: list, many: str = "inflight_%d") -> list:
    """[(name, k)]: sequential first, then each distinct K > 1 in order."""
    out = [("sequential", 1)]
    for k in concurrency:
        if k > 1 and (many % k, k) not in out:
            out.append((many % k, k))
    return out


def in_window(drive, opened, closed):
    """The one measured window of every bench: ``drive()`` between ``opened()`` and ``closed()`` (where CPU
    is sampled), the garbage collector paused in between (a collection would show up as latency)."""
    gc.collect()
    opened()
    gc.disable()
    try:
        result = drive()
    finally:
        gc.enable()
    closed()
    return result


def measure(target: Target, first_id: int, n: int, k: int) -> dict:
    """One measured window against a target on pipes, its CPU sampled just around it."""
    samples: list = []
    result = in_window(lambda: target.drive(first_id, n, k), lambda: samples.append(CpuSample.take(target.pid, False)),
                       lambda: samples.append(CpuSample.take(target.pid, True)))
    target.remember(samples[1].tree)
    return metrics(result, k, *samples)


def metrics(result: DriveResult, k: int, before: CpuSample, after: CpuSample) -> dict:
    """Turn raw counters into the figures we report (microseconds)."""
    lat = sorted(result.latencies_ns)
    calls = result.calls or 1

    def us(ns):
        return None if ns is None else round(ns / 1000, 1)

    return {
        "calls": result.calls, "concurrency": k, "seconds": round(result.elapsed_ns / 1e9, 4),
        "calls_per_s": round(result.calls / (result.elapsed_ns / 1e9), 1) if result.elapsed_ns else None,
        "p50_us": us(percentile(lat, 50)), "p90_us": us(percentile(lat, 90)), "p99_us": us(percentile(lat, 99)),
        "max_us": us(lat[-1] if lat else None),
        "target_cpu_us_per_call": round(ticks_to_us(after.own_ticks - before.own_ticks) / calls, 2),
        "tree_cpu_us_per_call": round(ticks_to_us(tree_ticks_between(before.tree, after.tree)) / calls, 2),
        "tree_processes": len(after.tree),
        "driver_cpu_us_per_call": round((after.driver_ns - before.driver_ns) / 1000 / calls, 2),
        "other_load_cpus": other_load(result, before, after),
        "mismatches": result.mismatches.total, "mismatch_kinds": dict(result.mismatches.kinds),
        "mismatch_examples": list(result.mismatches.examples), "notifications": result.notifications,
    }


def other_load(result: DriveResult, before: CpuSample, after: CpuSample):
    """CPUs' worth of work done during the window by processes that are neither the driver nor the
    target (the main noise on a shared machine); tick-grained, a rough indicator."""
    window_ticks = result.elapsed_ns / 1e9 * CLK_TCK
    if window_ticks <= 0:
        return None
    ours = tree_ticks_between(before.tree, after.tree) + after.driver_ticks - before.driver_ticks
    return round(max(after.machine_ticks - before.machine_ticks - ours, 0) / window_ticks, 2)


def run_target(argv: list, n: int, concurrency: list, timeout: float,
               warmup: int = WARMUP_CALLS, cpus=None, spin: bool = False) -> dict:
    """Start one target, warm it up, measure every scenario, stop it. A failure is returned as
    ``{"error": ...}`` next to what was measured, never raised: one bad round loses nothing else."""
    run = {"scenarios": {}, "warmup_mismatches": 0}
    target = None
    try:
        target = Target(argv, timeout, cpus, spin)
        run["init"] = target.handshake()
        warm = target.drive(FIRST_CALL_ID, warmup, 1)
        run["warmup_mismatches"] = warm.mismatches.total
        run["warmup_mismatch_examples"] = warm.mismatches.examples
        call_id = FIRST_CALL_ID + warmup
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
    return run.get("warmup_mismatches", 0) + sum(s["mismatches"] for s in run.get("scenarios", {}).values())


MEDIAN_FIELDS = ("calls_per_s", "p50_us", "p90_us", "p99_us", "max_us", "target_cpu_us_per_call",
                 "tree_cpu_us_per_call", "driver_cpu_us_per_call", "other_load_cpus")


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

    return {"throughput_ratio": ratio(direct.get("calls_per_s"), gateway.get("calls_per_s")),
            "p50_ratio": ratio(direct.get("p50_us"), gateway.get("p50_us")),
            "added_p50_us": added("p50_us"), "added_p99_us": added("p99_us"),
            "gateway_cpu_us_per_call": gateway.get("target_cpu_us_per_call"),
            "added_tree_cpu_us_per_call": added("tree_cpu_us_per_call")}


def summarize(rounds: list, scenario_names: list, extra: tuple = ()) -> dict:
    """Per scenario: medians of each side, gateway against direct; ``extra``: run-level figures too."""
    summary = {}
    for name in scenario_names:
        sides = {}
        for slot in ("direct", "gateway"):
            runs = [r[slot] for r in rounds]
            sides[slot] = {**median_figures(runs, name), **{key: median(r.get(key) for r in runs) for key in extra}}
        summary[name] = {**sides, "gateway_vs_direct": compare(sides["direct"], sides["gateway"])}
    return summary


def ab_result(config: dict, run_slot, rounds: int, pin: str, spin: bool, names: list, extra: tuple = ()) -> dict:
    """Rounds of direct then gateway (``run_slot(slot, target_cpus)``), the driver pinned by ``pin``."""
    driver_cpus, target_cpus = cpu_plan(pin)
    with pinned(driver_cpus):
        all_rounds = alternate(rounds, {slot: lambda s=slot: run_slot(s, target_cpus)
                                        for slot in ("direct", "gateway")})
    runs = [r[slot] for r in all_rounds for slot in ("direct", "gateway")]
    config.update(rounds=rounds, python=sys.version.split()[0], cpus=os.cpu_count(), clk_tck=CLK_TCK, pin=pin,
                  spin=spin, driver_cpus=sorted(driver_cpus or ()), target_cpus=sorted(target_cpus or ()))
    return {"config": config, "rounds": all_rounds, "summary": summarize(all_rounds, names, extra),
            "mismatches": sum(run_mismatches(r) for r in runs), "errors": sum(1 for r in runs if "error" in r)}


ROWS = (("calls/s", "calls_per_s", "ratio"), ("p50 us", "p50_us", "added"), ("p90 us", "p90_us", "added"),
        ("p99 us", "p99_us", "added"), ("max us", "max_us", "added"),
        ("own CPU us/call", "target_cpu_us_per_call", "added"), ("tree CPU us/call", "tree_cpu_us_per_call", "added"),
        ("driver CPU us/call", "driver_cpu_us_per_call", "added"), ("other load (CPUs)", "other_load_cpus", "added"),
        ("mismatches", "mismatches", None))


def render_scenario(name: str, entry: dict, rounds: list) -> list:
    """Table lines for one scenario: medians, gateway-vs-direct, per round."""
    direct, gateway = entry["direct"], entry["gateway"]
    rows = []
    for label, key, how in ROWS:
        a, b = direct.get(key), gateway.get(key)
        delta = times(ratio(a, b)) if how == "ratio" else \
            signed(b - a) if how == "added" and a is not None and b is not None else ""
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


def ceiling_rounds(rounds: int, named: list, run_once) -> tuple:
    """``rounds`` runs of the driver against a ceiling target: (median figures per scenario, errors, mismatches)."""
    runs = [run_once() for _ in range(rounds)]
    return ({name: median_figures(runs, name) for name, _ in named}, [r["error"] for r in runs if "error" in r],
            sum(run_mismatches(r) for r in runs))


def render_ceiling(title: str, labels: list, rows: list, errors: list, mismatches: int) -> str:
    """A ceiling's table: per row its labels, then its median figures (a dict)."""
    keys = ("calls_per_s", "p50_us", "p99_us", "driver_cpu_us_per_call", "target_cpu_us_per_call")
    heads = [*labels, "calls/s", "p50 us", "p99 us", "driver CPU us/call", "server CPU us/call"]
    return "\n".join([title, *table(heads,
                                    [[*row[:-1], *(row[-1].get(k) for k in keys)] for row in rows], indent=0),
                      *(f"ERROR {error}" for error in errors), f"mismatches: {mismatches}"])


def render(result: dict) -> str:
    cfg = result["config"]
    return "\n".join([f"stdio-bench: n={cfg['n']} rounds={cfg['rounds']} warmup={cfg['warmup']} "
                      f"concurrency={cfg['concurrency']} pin={cfg['pin']} spin={cfg['spin']} "
                      f"(driver CPUs {cfg['driver_cpus'] or 'any'}, target CPUs {cfg['target_cpus'] or 'any'})",
                      f"  direct : {cfg['direct']}", f"  gateway: {cfg['gateway']}", "",
                      *render_runs(result, ("stdin-eof",)),
                      f"total mismatches: {result['mismatches']}   errors: {result['errors']}"])


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


def add_common(parser: argparse.ArgumentParser, n: int, concurrency: str, what: str) -> None:
    """-n, --concurrency, --rounds, --timeout, --pin/--spin and --json, as every bench has them."""
    parser.add_argument("-n", type=positive_int, default=n, help=f"calls per scenario (default {n})")
    parser.add_argument("--concurrency", type=parse_concurrency, default=[int(c) for c in concurrency.split(",")],
                        help=f"comma-separated {what}; sequential always runs (default {concurrency})")
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds (default 3)")
    parser.add_argument("--timeout", type=float, default=120.0, help="hard limit per target run, seconds (default 120)")
    add_pin_argument(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of tables")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--direct", help="command for the direct server (default: the echo fixture)")
    parser.add_argument("--gateway", help="command for the gateway (default: wire_gateway stdio over the echo fixture)")
    parser.add_argument("--warmup", type=positive_int, default=WARMUP_CALLS,
                        help="warm-up calls per process (default 500)")
    add_common(parser, 20000, "1,16", "in-flight counts")


def run_bench(direct: list, gateway: list, n: int, concurrency: list, rounds: int,
              warmup: int = WARMUP_CALLS, timeout: float = 120.0, pin: str = "split", spin: bool = False) -> dict:
    """All rounds, alternating direct and gateway; returns the full result."""
    argv = {"direct": direct, "gateway": gateway}
    config = {"direct": shlex.join(direct), "gateway": shlex.join(gateway), "n": n, "concurrency": concurrency,
              "warmup": warmup, "timeout_s": timeout}
    return ab_result(config, lambda slot, cpus: run_target(argv[slot], n, concurrency, timeout, warmup, cpus, spin),
                     rounds, pin, spin, [name for name, _ in scenarios(concurrency)])


def run(args) -> int:
    with tempfile.TemporaryDirectory(prefix="stdio-bench-") as tmpdir:
        config = gateway_config(Path(tmpdir), "stdio-bench-gateway.json")
        direct = shlex.split(args.direct) if args.direct else [sys.executable, str(ECHO_FIXTURE)]
        gateway = shlex.split(args.gateway) if args.gateway else [
            sys.executable, "-m", "wire_gateway", "stdio", "--server", "echo", "--config", str(config)]
        result = run_bench(direct, gateway, args.n, args.concurrency, args.rounds,
                           args.warmup, args.timeout, args.pin, args.spin)
    return emit(result, args.json, render)


def add_ceiling_arguments(parser: argparse.ArgumentParser) -> None:
    add_common(parser, 100000, "1,16,64", "in-flight counts")


def run_ceiling(args) -> int:
    """The driver against ``fast-echo`` (one regex match per call): the figures are the driver's own
    ceiling; well above the direct echo server's, ``stdio-bench`` measures its targets, not itself."""
    fast_echo = tool("fast-echo")
    driver_cpus, target_cpus = cpu_plan(args.pin)
    with pinned(driver_cpus):
        summary, errors, mismatches = ceiling_rounds(args.rounds, scenarios(args.concurrency), lambda: run_target(
            fast_echo, args.n, args.concurrency, args.timeout, cpus=target_cpus, spin=args.spin))
    title = (f"driver ceiling against {shlex.join(fast_echo)} (n={args.n}, pin={args.pin}, spin={args.spin}, "
             f"median of {args.rounds})")
    return emit({"target": shlex.join(fast_echo), "n": args.n, "pin": args.pin, "spin": args.spin, "summary": summary,
                 "errors": errors, "mismatches": mismatches}, args.json,
                lambda _: render_ceiling(title, [""], [[name, m] for name, m in summary.items()], errors, mismatches))
