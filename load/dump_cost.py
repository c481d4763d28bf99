"""What frame dumps cost: the gateway without dumps (A) and with them (B), run at the same time.

    python -m load dump-cost [--rounds 4] [--duration 8] [-c 16] [--control] [--json]

Why at the same time: ``http-bench --dump`` alternates A and B, each run lasting about a
second; on a machine whose speed changes faster than that (the 2-CPU dev VM: single rounds
from x0.66 to x1.47 for the same code), even 25 rounds cannot settle a few percent. Here A and
B are started together, both pinned to the same CPU (the last one; the drivers get the
others), and each is driven by its own ``python -m load run`` (the recorded echo-small-modern
session, modern era, answers checked) for the same ``--duration``. Both see the same machine
phases and they share the CPU they are on, so B's calls/s over A's is what dumps cost:
the throughput kept with dumps on.

``--control``: B without dumps too. The ratio should then be x1.00 give or take a point; it is
how to check the method on a new machine. ``WIRE_GATEWAY_DUMP_ENCODER=python`` in the
environment measures the Python record encoder instead of the C one.

Exit status: 0 all good, 1 some answers mismatched, 2 some run failed.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile

from . import BenchError
from .ab import ratio_summary, side_by_side
from .assets import SESSIONS
from .http_bench import dump_figures
from .procfs import pinned
from .report import markdown, times
from .stdio_bench import positive_int
from .targets import HttpProcess

FIXTURE = SESSIONS / "echo-small-modern.jsonl"
WARMUP_CALLS = 1500


def one_round(tmpdir: str, concurrency: int, duration: float, control: bool, target_cpus) -> dict:
    """Start A and B, warm both, drive both for `duration` at once, stop both."""
    targets = []
    try:
        for dump in (False, not control):
            targets.append(HttpProcess("gateway", tmpdir, duration + 120.0, target_cpus, dump=dump))
        result = side_by_side([str(t.url) for t in targets], [str(FIXTURE)] * 2, concurrency, duration,
                              WARMUP_CALLS)
    except BenchError as exc:
        result = {"error": str(exc)}
    finally:
        for target in targets:
            target.stop()
    if len(targets) == 2 and targets[1].dump_file is not None and targets[1].dump_file.exists():
        result["dump"] = dump_figures(targets[1].dump_file)
    return result


def run_rounds(rounds: int, concurrency: int, duration: float, control: bool) -> dict:
    allowed = sorted(os.sched_getaffinity(0))
    target_cpus, driver_cpus = {allowed[-1]}, set(allowed[:-1]) or None
    with tempfile.TemporaryDirectory(prefix="dump-cost-") as tmpdir, pinned(driver_cpus):
        results = [one_round(tmpdir, concurrency, duration, control, target_cpus) for _ in range(rounds)]
    summary = ratio_summary(results)
    return {
        "config": {"rounds": rounds, "concurrency": concurrency, "duration_s": duration, "control": control,
                   "fixture": FIXTURE.name, "target_cpus": sorted(target_cpus),
                   "driver_cpus": sorted(driver_cpus or ()),
                   "dump_encoder": os.environ.get("WIRE_GATEWAY_DUMP_ENCODER") or "default (C where built)"},
        "rounds": results,
        "throughput_kept": {k: summary[k] for k in ("median", "min", "max")},
        "mismatches": summary["mismatches"], "errors": summary["errors"],
    }


def render(result: dict) -> str:
    config = result["config"]
    rows = [[str(n), f"failed: {r['error']}", "", "", ""] if "error" in r else
            [str(n), r["a"]["calls_per_s"], r["b"]["calls_per_s"], times(r["ratio"]),
             r.get("dump", {}).get("records", "-")]
            for n, r in enumerate(result["rounds"], 1)]
    lines = [f"dump cost: gateway without dumps (A) and {'without' if config['control'] else 'with'} "
             f"--dump (B) at the same time on CPU {config['target_cpus']}, {config['concurrency']} clients "
             f"each, {config['duration_s']:g} s per round", "",
             *markdown(["round", "A calls/s", "B calls/s", "B/A", "dump records"], rows)]
    kept = result["throughput_kept"]
    if kept["median"] is not None:
        what = "B/A, neither dumping (control)" if config["control"] else "throughput kept with dumps on"
        lines += ["", f"{what}: {times(kept['median'])} (median; {times(kept['min'])} .. {times(kept['max'])})"]
    lines.append(f"mismatches {result['mismatches']}, errors {result['errors']}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=positive_int, default=4, help="rounds (default 4)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds each round drives (default 8)")
    parser.add_argument("-c", "--concurrency", type=positive_int, default=16,
                        help="virtual sessions per gateway (default 16)")
    parser.add_argument("--control", action="store_true", help="B without dumps too: checks the method (x1.00)")
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of a table")


def run(args) -> int:
    result = run_rounds(args.rounds, args.concurrency, args.duration, args.control)
    print(json.dumps(result, indent=2) if args.json else render(result))
    if result["errors"]:
        return 2
    return 1 if result["mismatches"] else 0
