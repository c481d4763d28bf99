"""``load dump-cost``: the gateway without dumps (A) and with them (B), driven at the same time.

Why at the same time: on a machine whose speed changes faster than a round (the 2-CPU dev VM:
single alternating rounds from x0.66 to x1.47 for the same code), alternating A and B cannot settle a
few percent. Here both share one CPU and see the same machine phases, so B's calls/s over A's is the
throughput kept with dumps on. ``--control`` runs B without dumps too (x1.00 expected).
"""
from __future__ import annotations

import argparse
import os
import tempfile

from .ab import apart, ratio_summary, side_by_side
from .assets import SESSIONS
from .figures import positive_int
from .http_bench import dump_figures
from .report import emit, markdown, times
from .targets import HttpProcess

FIXTURE = SESSIONS / "echo-small-modern.jsonl"
WARMUP_CALLS = 1500


def run_rounds(rounds: int, concurrency: int, duration: float, control: bool) -> dict:
    """Per round: start A and B, warm both, drive both for ``duration`` at once, stop both."""
    def one_round(target_cpus) -> dict:
        result, targets = side_by_side([lambda dump=dump: HttpProcess("gateway", tmpdir, duration + 120.0,
                                                                      target_cpus, dump=dump)
                                        for dump in (False, not control)],
                                       [str(FIXTURE)] * 2, concurrency, duration, WARMUP_CALLS)
        if len(targets) == 2 and targets[1].dump_file is not None and targets[1].dump_file.exists():
            result["dump"] = dump_figures(targets[1].dump_file)
        return result

    with tempfile.TemporaryDirectory(prefix="dump-cost-") as tmpdir:
        results, target_cpus, driver_cpus = apart(rounds, one_round)
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
    return emit(run_rounds(args.rounds, args.concurrency, args.duration, args.control), args.json, render)
