"""How fast is the stdio bench's driver?  Drive ``fast-echo`` and see.

    python -m load stdio-ceiling [-n 100000] [--concurrency 1,16,64] [--rounds 3] [--json]

``fast-echo`` answers with one regex match per call, so the figures here are
bounded by the driver (and the pipes and the kernel), not by the server.  If
they are well above what the direct echo fixture reaches, the stdio bench
measures its targets, not itself.
"""
import json
import shlex

from . import stdio_bench
from .assets import tool

FAST_ECHO = tool("fast-echo")


def add_arguments(parser) -> None:
    parser.add_argument("-n", type=stdio_bench.positive_int, default=100000, help="calls per scenario (default 100000)")
    parser.add_argument("--concurrency", type=stdio_bench.parse_concurrency, default=[1, 16, 64],
                        help="comma-separated in-flight counts (default 1,16,64)")
    parser.add_argument("--rounds", type=stdio_bench.positive_int, default=3, help="rounds (default 3)")
    parser.add_argument("--timeout", type=float, default=120.0, help="hard limit per run, seconds")
    stdio_bench.add_pin_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    driver_cpus, target_cpus = stdio_bench.cpu_plan(args.pin)
    with stdio_bench.pinned(driver_cpus):
        runs = [stdio_bench.run_target(FAST_ECHO, args.n, args.concurrency, args.timeout,
                                       cpus=target_cpus, spin=args.spin)
                for _ in range(args.rounds)]
    names = [name for name, _ in stdio_bench.scenarios(args.concurrency)]
    summary = {name: stdio_bench.median_figures(runs, name) for name in names}
    errors = [r["error"] for r in runs if "error" in r]
    mismatches = sum(stdio_bench.run_mismatches(r) for r in runs)
    if args.json:
        print(json.dumps({"target": shlex.join(FAST_ECHO), "n": args.n, "pin": args.pin, "spin": args.spin, "summary": summary,
                          "errors": errors, "mismatches": mismatches}, indent=2))
    else:
        print(f"driver ceiling against {shlex.join(FAST_ECHO)} (n={args.n}, pin={args.pin}, spin={args.spin}, median of {args.rounds})")
        print(f"{'':14}{'calls/s':>12}{'p50 us':>9}{'p99 us':>9}{'driver CPU us/call':>20}{'server CPU us/call':>20}")
        for name, m in summary.items():
            print(f"{name:14}{stdio_bench.fmt(m.get('calls_per_s')):>12}{stdio_bench.fmt(m.get('p50_us')):>9}"
                  f"{stdio_bench.fmt(m.get('p99_us')):>9}{stdio_bench.fmt(m.get('driver_cpu_us_per_call')):>20}"
                  f"{stdio_bench.fmt(m.get('target_cpu_us_per_call')):>20}")
        for error in errors:
            print("ERROR", error)
        print(f"mismatches: {mismatches}")
    return 2 if errors else (1 if mismatches else 0)
