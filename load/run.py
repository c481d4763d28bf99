"""``load run``: replay a fixture against a target as C concurrent virtual sessions, every answer checked.

The engine is ``load.engine``; this is the command: targets, worker processes, the progress bar, the
report, the comparison and the plot (docs/load.md). Exit status: 0 every answer right; 1 mismatches
or errors; 2 the run could not be made.
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import re
import shlex
import sys
from array import array
from pathlib import Path

import trio

from . import BenchError, engine, forks, http_client, replay, report
from .ab import compare_medians
from .assets import SESSIONS
from .stats import percentile
from .targets import Url

PERCENTILES = (50, 90, 99)
#: What --compare and `load bench` summarise a run by.
FIGURES = {"calls_per_s": lambda r: r["calls_per_s"],
           **{f"p{p}_ms": (lambda r, p=p: r["latency"]["all"][f"p{p}_ms"]) for p in PERCENTILES}}


class Target:
    """Where a run goes: ``http`` (a URL) or ``stdio`` (a command; one process per session)."""

    def __init__(self, spec: str):
        self.spec, self.kind = spec, "stdio" if spec.startswith("stdio:") else "http"
        self.argv = shlex.split(spec[len("stdio:"):]) if self.kind == "stdio" else None
        self.url = Url(spec) if self.kind == "http" else None
        if self.kind == "stdio" and not self.argv:
            raise BenchError(f"empty stdio command: {spec!r}")

    def __str__(self) -> str:
        return self.spec


def parse_duration(text: str) -> float:
    """``30``, ``30s``, ``2m``, ``500ms`` -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 30s, 2m, 500ms)")
    value = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    if value <= 0:
        raise argparse.ArgumentTypeError(f"duration must be > 0: {text!r}")
    return value


def run_once(target: Target, script: replay.Script, concurrency: int, calls: int | None, duration: float | None,
             rate: float | None, opts: engine.Options, workers: int = 1, progress: bool = False) -> engine.Stats:
    """One run against one target; the merged Stats of all its sessions (``--workers``: forked processes,
    each with its share of the sessions, of ``-n`` and of ``--rate``, numbered so ids stay unique, and
    its progress counted in a shared array the parent's bar reads)."""
    workers = max(1, min(workers, concurrency))
    if workers == 1:
        with report.progress(str(target), calls, duration, lambda: opts.progress[0], progress):
            gc.collect()
            return trio.run(engine.run_sessions, target, script, 0, concurrency, calls, duration, rate, opts)
    counters = [multiprocessing.get_context("fork").RawArray("q", 1) for _ in range(workers)]
    ks = forks.split(concurrency, workers)
    ns = forks.split(calls, workers) if calls is not None else [None] * workers
    procs, pipes = forks.start(_worker, [(target.spec, script, sum(ks[:i]), ks[i], ns[i], duration,
                                          rate / workers if rate else None,
                                          engine.Options(opts.check, opts.pace, opts.timeout, counters[i]))
                                         for i in range(workers)])
    try:
        with report.progress(str(target), calls, duration, lambda: sum(c[0] for c in counters), progress):
            parts = [forks.receive(pipe, "results") for pipe in pipes]
    finally:
        forks.reap(procs, pipes, grace=10.0)
    stats = engine.Stats()
    stats.start = min(p.start for p in parts)
    for part in parts:
        stats.merge(part)
    return stats


def _worker(_pipe, spec, script, first, count, calls, duration, rate, opts) -> engine.Stats:
    """A forked worker: its share of the sessions."""
    return trio.run(engine.run_sessions, Target(spec), script, first, count, calls, duration, rate, opts)


def ms(ns) -> float | None:
    return None if ns is None else round(ns / 1e6, 3)


def latency_figures(values) -> dict:
    ordered = sorted(values)
    return {"count": len(ordered), **{f"p{p}_ms": ms(percentile(ordered, p)) for p in PERCENTILES},
            "max_ms": ms(ordered[-1]) if ordered else None}


def summarize(target: Target, stats: engine.Stats, concurrency: int) -> dict:
    """The machine-readable result of one run (the --json schema's ``runs[]`` entry)."""
    window = stats.window
    every = array("q")
    for values in stats.latency.values():
        every.extend(values)
    return {
        "target": str(target), "transport": target.kind, "concurrency": concurrency,
        "calls": stats.calls, "answered_ok": stats.answered,
        "seconds": round(window, 3), "calls_per_s": round(stats.answered / window, 1) if window else 0.0,
        "latency": {"all": latency_figures(every),
                    **{label: latency_figures(values) for label, values in sorted(stats.latency.items())}},
        "errors": dict(sorted(stats.errors.kinds.items())), "error_examples": stats.errors.examples,
        "mismatches": stats.mismatches.total, "mismatch_kinds": dict(sorted(stats.mismatches.kinds.items())),
        "mismatch_examples": stats.mismatches.examples,
        "notifications": stats.notifications, "server_requests_answered": stats.server_requests,
        "cancelled": stats.cancelled,
        "sessions": stats.sessions, "session_failures": stats.session_failures,
    }


def timeline(stats: engine.Stats) -> dict:
    """Per-second buckets of throughput and latency percentiles, for the plot."""
    buckets: dict = {}
    for t, lat in zip(stats.done_at, stats.done_latency):
        buckets.setdefault(t // 1_000_000_000, []).append(lat)
    seconds = sorted(buckets)
    ordered = [sorted(buckets[second]) for second in seconds]
    return {"t": seconds, "calls_per_s": [len(values) for values in ordered],
            **{f"p{p}_ms": [ms(percentile(values, p)) for values in ordered] for p in PERCENTILES}}


def plot(result: dict, path: str) -> None:
    """Latency percentiles and throughput over time, one line per run (matplotlib, Agg)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib: pip install matplotlib (it is in the 'test' extra)") from None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for i, run in enumerate(result["runs"]):
        line = run["timeline"]
        name = f"{run['target']}" + (f" (round {run['round']})" if "round" in run else "")
        top.plot(line["t"], line["calls_per_s"], marker=".", label=name)
        for p, style in zip(PERCENTILES, ("-", "--", ":")):
            bottom.plot(line["t"], line[f"p{p}_ms"], style, color=f"C{i}", label=f"{name} p{p}")
    top.set_ylabel("calls/s (1 s buckets)")
    top.set_title(f"load run: {result['config']['fixture']}, {result['config']['concurrency']} sessions")
    top.legend(fontsize="small")
    bottom.set_ylabel("latency, ms")
    bottom.set_xlabel("seconds since start")
    bottom.legend(fontsize="x-small", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--target", metavar="URL", help="an MCP endpoint over Streamable HTTP (http://...)")
    where.add_argument("--stdio", metavar="CMD", help="a command speaking MCP on stdio; one process per session")
    parser.add_argument("--fixture", required=True, type=fixture_path,
                        help="the recorded session to replay: a JSONL fixture file, or the name of one in the "
                             f"bundled library ({', '.join(sorted(p.stem for p in SESSIONS.glob('*.jsonl')))})")
    parser.add_argument("-c", "--concurrency", type=int, default=1, help="virtual sessions (default 1)")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("-n", "--calls", type=int, help="requests to send in all (default: one round per session)")
    amount.add_argument("--duration", type=parse_duration, help="run this long (e.g. 30s, 2m)")
    parser.add_argument("--rate", type=float, help="calls/s overall, open-loop (default: as fast as answered)")
    parser.add_argument("--pace", choices=("recorded", "none"), default="none",
                        help="recorded: keep the fixture's gaps between calls; none: back to back (default)")
    parser.add_argument("--check", action="store_true", help="answers must equal the recorded ones (normalized)")
    parser.add_argument("--compare", metavar="TARGET2",
                        help="also run this target (URL or stdio:CMD), alternating A B A B, and print ratios")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per target with --compare (default 3)")
    parser.add_argument("--workers", type=int, default=1, help="processes the sessions are split over (default 1)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for one answer (default 30)")
    parser.add_argument("--header", action="append", default=[], metavar="'NAME: VALUE'",
                        help="send this header with every HTTP request (repeatable), e.g. 'Authorization: Bearer KEY'")
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of tables")
    parser.add_argument("--plot", metavar="FILE.png", help="draw throughput and latency over time")


def fixture_path(text: str) -> str:
    """A fixture file, or a bundled one by name (``echo-small-modern``) when no such file exists."""
    bundled = SESSIONS / f"{text.removesuffix('.jsonl')}.jsonl"
    return str(bundled) if not Path(text).exists() and bundled.is_file() else text


def execute(args) -> dict:
    """Run what the arguments ask; the JSON-able result."""
    if args.concurrency < 1 or args.workers < 1 or (args.calls is not None and args.calls < 1):
        raise BenchError("-c, -n and --workers must be >= 1")
    if args.rate is not None and args.rate <= 0:
        raise BenchError("--rate must be > 0")
    script = replay.load_script(args.fixture)
    targets = [Target(f"stdio:{args.stdio}" if args.stdio else args.target)]
    if args.compare:
        targets.append(Target(args.compare))
    calls = args.calls
    if calls is None and args.duration is None:
        calls = script.calls_per_round * args.concurrency
    rounds = args.rounds if args.compare else 1
    runs = []
    for rnd in range(1, rounds + 1):
        for target in targets:
            stats = run_once(target, script, args.concurrency, calls, args.duration, args.rate,
                             engine.Options(args.check, args.pace, args.timeout), args.workers,
                             sys.stderr.isatty() and not args.json)
            runs.append({**summarize(target, stats, args.concurrency), "timeline": timeline(stats),
                         **({"round": rnd} if args.compare else {})})
    result = {
        "tool": "load run", "schema": 1,
        "config": {"target": str(targets[0]), "compare": args.compare, "fixture": args.fixture, "era": script.era,
                   "concurrency": args.concurrency, "calls": calls, "duration_s": args.duration, "rate": args.rate,
                   "pace": args.pace, "check": args.check, "workers": args.workers, "rounds": rounds,
                   "timeout_s": args.timeout, "calls_per_round": script.calls_per_round},
        "runs": runs,
        "mismatches": sum(r["mismatches"] for r in runs),
        "errors": sum(sum(r["errors"].values()) for r in runs),
    }
    if args.compare:
        result["compare"] = compare_medians([r for r in runs if r["target"] == str(targets[0])],
                                            [r for r in runs if r["target"] == args.compare], FIGURES)
    return result


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c in text for c in "\r\n"):
        raise BenchError(f"--header {text!r}: write 'NAME: VALUE' on one line")
    return name.strip(), value.strip()


def fmt_ms(value) -> str:
    return report.fmt(value, 2 if value is not None and value < 100 else 0)


def render(result: dict) -> str:
    lines = []
    for run in result["runs"]:
        kinds = ", ".join(f"{k} {v:,}" for k, v in run["mismatch_kinds"].items())
        lines += [
            *([f"-- round {run['round']}"] if "round" in run else []),
            f"== {run['target']}  ({run['transport']}, {run['concurrency']} sessions: {run['sessions']} started, "
            f"{run['session_failures']} failed)",
            f"calls {run['calls']:,}  answered right {run['answered_ok']:,}  in {run['seconds']:.2f}s  "
            f"-> {run['calls_per_s']:,.0f} calls/s",
            *report.table(["method", "count", "p50 ms", "p90 ms", "p99 ms", "max ms"],
                          [[label[:40], lat["count"], *(fmt_ms(lat[f"{k}_ms"]) for k in ("p50", "p90", "p99", "max"))]
                           for label, lat in run["latency"].items()]),
            "errors: " + (", ".join(f"{k} {v:,}" for k, v in run["errors"].items()) or "none"),
            f"mismatches: {run['mismatches']:,}" + (f" ({kinds})" if kinds else ""),
            *(f"  mismatch example: {e}" for e in run["mismatch_examples"]),
            *(f"  error example: {e}" for e in run["error_examples"]),
            f"server notifications {run['notifications']:,}, server requests answered "
            f"{run['server_requests_answered']:,}, requests cancelled as recorded {run['cancelled']:,}", ""]
    if "compare" in result:
        cfg = result["config"]
        lines += [f"== comparison over {cfg['rounds']} rounds (A B A B ..., medians)", f"  A = {cfg['target']}",
                  f"  B = {cfg['compare']}",
                  *report.table(["figure", "A", "B", "B / A"], [
                      [name, fmt_ms(row["a"]), fmt_ms(row["b"]), report.times(row["ratio_b_to_a"], 2)]
                      for name, row in result["compare"].items()]), ""]
    lines.append(f"total mismatches: {result['mismatches']:,}   errors: {result['errors']:,}")
    return "\n".join(lines)


def run(args) -> int:
    try:
        http_client.EXTRA_HEADERS = tuple(parse_header(h) for h in args.header)
        result = execute(args)
        if args.plot:
            plot(result, args.plot)
    except (BenchError, replay.ReplayError) as exc:
        print(f"load run: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 1 if result["mismatches"] or result["errors"] else 0
