"""The measured window ``stdio-bench`` and ``http-bench`` share, and its figures: one window with the CPU
sampled just around it, turned into microseconds per call; medians over A/B rounds, the gateway against
direct, the tables; and the options both commands take.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .ab import alternate
from .procfs import CLK_TCK, CpuSample, cpu_plan, pinned, ticks_to_us, tree_ticks_between
from .report import fmt, signed, table, times
from .stats import Counts, median, percentile, ratio

MEDIAN_FIELDS = ("calls_per_s", "p50_us", "p90_us", "p99_us", "max_us", "target_cpu_us_per_call",
                 "tree_cpu_us_per_call", "driver_cpu_us_per_call", "other_load_cpus")
ROWS = (("calls/s", "calls_per_s", "ratio"), ("p50 us", "p50_us", "added"), ("p90 us", "p90_us", "added"),
        ("p99 us", "p99_us", "added"), ("max us", "max_us", "added"),
        ("own CPU us/call", "target_cpu_us_per_call", "added"), ("tree CPU us/call", "tree_cpu_us_per_call", "added"),
        ("driver CPU us/call", "driver_cpu_us_per_call", "added"), ("other load (CPUs)", "other_load_cpus", "added"),
        ("mismatches", "mismatches", None))


def expected_content(call_id: int) -> list:
    """The ``result.content`` of an echo of bench call ``call_id`` (its text embeds the id)."""
    return [{"type": "text", "text": "t%d" % call_id}]


@dataclass
class DriveResult:
    """Raw outcome of one measured window."""

    calls: int
    elapsed_ns: int
    latencies_ns: list  # only of answers that passed the check
    mismatches: Counts
    notifications: int


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


def metrics(result: DriveResult, k: int, before: CpuSample, after: CpuSample) -> dict:
    """Turn raw counters into the figures we report (microseconds). ``other_load_cpus``: CPUs' worth of
    work done during the window by processes that are neither the driver nor the target (the main noise
    on a shared machine); tick-grained, a rough indicator."""
    lat = sorted(result.latencies_ns)
    calls = result.calls or 1
    window_ticks = result.elapsed_ns / 1e9 * CLK_TCK
    tree_ticks = tree_ticks_between(before.tree, after.tree)
    others = after.machine_ticks - before.machine_ticks - tree_ticks - after.driver_ticks + before.driver_ticks

    def us(ns):
        return None if ns is None else round(ns / 1000, 1)

    return {
        "calls": result.calls, "concurrency": k, "seconds": round(result.elapsed_ns / 1e9, 4),
        "calls_per_s": round(result.calls / (result.elapsed_ns / 1e9), 1) if result.elapsed_ns else None,
        "p50_us": us(percentile(lat, 50)), "p90_us": us(percentile(lat, 90)), "p99_us": us(percentile(lat, 99)),
        "max_us": us(lat[-1] if lat else None),
        "target_cpu_us_per_call": round(ticks_to_us(after.own_ticks - before.own_ticks) / calls, 2),
        "tree_cpu_us_per_call": round(ticks_to_us(tree_ticks) / calls, 2),
        "tree_processes": len(after.tree),
        "driver_cpu_us_per_call": round((after.driver_ns - before.driver_ns) / 1000 / calls, 2),
        "other_load_cpus": round(max(others, 0) / window_ticks, 2) if window_ticks > 0 else None,
        "mismatches": result.mismatches.total, "mismatch_kinds": dict(result.mismatches.kinds),
        "mismatch_examples": list(result.mismatches.examples), "notifications": result.notifications,
    }


def run_mismatches(run: dict) -> int:
    return run.get("warmup_mismatches", 0) + sum(s["mismatches"] for s in run.get("scenarios", {}).values())


def median_figures(runs: list, scenario: str) -> dict:
    """Median over rounds of each figure (mismatches are summed instead)."""
    measured = [r["scenarios"][scenario] for r in runs if scenario in r.get("scenarios", {})]
    if not measured:
        return {}
    out = {"rounds": len(measured)}
    for key in MEDIAN_FIELDS:
        value = median(m[key] for m in measured)
        out[key] = None if value is None else round(value, 2)
    return {**out, "mismatches": sum(m["mismatches"] for m in measured)}


def ab_result(config: dict, slots: dict[str, Callable], rounds: int, pin: str, spin: bool, names: list,
              extra: tuple = ()) -> dict:
    """Rounds of direct then gateway (``slots[slot](target_cpus)``), the driver pinned by ``pin``; per
    scenario the medians of each side and the gateway relative to direct (ratios, added microseconds)."""
    driver_cpus, target_cpus = cpu_plan(pin)
    with pinned(driver_cpus):
        all_rounds = alternate(rounds, {slot: lambda run=run: run(target_cpus) for slot, run in slots.items()})
    runs = [r[slot] for r in all_rounds for slot in ("direct", "gateway")]
    config.update(rounds=rounds, python=sys.version.split()[0], cpus=os.cpu_count(), clk_tck=CLK_TCK, pin=pin,
                  spin=spin, driver_cpus=sorted(driver_cpus or ()), target_cpus=sorted(target_cpus or ()))
    summary = {}
    for name in names:
        d, g = ({**median_figures([r[slot] for r in all_rounds], name),
                 **{key: median(r[slot].get(key) for r in all_rounds) for key in extra}}
                for slot in ("direct", "gateway"))

        def added(key, d=d, g=g):
            return round(g[key] - d[key], 1) if d.get(key) is not None and g.get(key) is not None else None

        summary[name] = {"direct": d, "gateway": g, "gateway_vs_direct": {
            "throughput_ratio": ratio(d.get("calls_per_s"), g.get("calls_per_s")),
            "p50_ratio": ratio(d.get("p50_us"), g.get("p50_us")),
            "added_p50_us": added("p50_us"), "added_p99_us": added("p99_us"),
            "gateway_cpu_us_per_call": g.get("target_cpu_us_per_call"),
            "added_tree_cpu_us_per_call": added("tree_cpu_us_per_call")}}
    return {"config": config, "rounds": all_rounds, "summary": summary,
            "mismatches": sum(run_mismatches(r) for r in runs), "errors": sum(1 for r in runs if "error" in r)}


def render_runs(result: dict, normal_stops: tuple) -> list:
    """Per scenario its table (medians, gateway against direct, per round), then what went wrong per
    round: errors, bad answers, odd shutdowns."""
    lines = []
    for name, entry in result["summary"].items():
        direct, gateway, cmp = entry["direct"], entry["gateway"], entry["gateway_vs_direct"]
        rows = []
        for label, key, how in ROWS:
            a, b = direct.get(key), gateway.get(key)
            rows.append([label, a, b, times(ratio(a, b)) if how == "ratio" else
                         signed(b - a) if how == "added" and a is not None and b is not None else ""])
        lines += [f"== {name} (median over {direct.get('rounds', 0)}/{gateway.get('rounds', 0)} rounds)",
                  *table(["", "direct", "gateway", "gw vs direct"], rows, indent=0),
                  f"  gateway: {times(cmp['throughput_ratio'])} throughput, {signed(cmp['added_p50_us'])} us p50, "
                  f"{signed(cmp['added_p99_us'])} us p99, own CPU {fmt(cmp['gateway_cpu_us_per_call'])} us/call "
                  f"(children excluded), {signed(cmp['added_tree_cpu_us_per_call'])} us/call tree CPU"]
        for slot in ("direct", "gateway"):
            per_round = [r[slot].get("scenarios", {}).get(name, {}) for r in result["rounds"]]
            shown = ", ".join(f"{fmt(m.get('calls_per_s'))}/s p50 {fmt(m.get('p50_us'))}" for m in per_round)
            lines.append(f"  rounds {slot:8} {shown}")
        lines.append("")
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


def ceiling_rounds(rounds: int, names: list, pin: str, run_once) -> tuple:
    """``rounds`` runs of the driver (placed by ``pin``) against a ceiling target (``run_once(target CPUs)``):
    (median figures per scenario, errors, mismatches)."""
    driver_cpus, target_cpus = cpu_plan(pin)
    with pinned(driver_cpus):
        runs = [run_once(target_cpus) for _ in range(rounds)]
    return ({name: median_figures(runs, name) for name in names}, [r["error"] for r in runs if "error" in r],
            sum(run_mismatches(r) for r in runs))


def render_ceiling(title: str, labels: list, rows: list, errors: list, mismatches: int) -> str:
    """A ceiling's table: per row its labels, then its median figures (a dict)."""
    keys = ("calls_per_s", "p50_us", "p99_us", "driver_cpu_us_per_call", "target_cpu_us_per_call")
    heads = [*labels, "calls/s", "p50 us", "p99 us", "driver CPU us/call", "server CPU us/call"]
    return "\n".join([title, *table(heads, [[*row[:-1], *(row[-1].get(k) for k in keys)] for row in rows], indent=0),
                      *(f"ERROR {error}" for error in errors), f"mismatches: {mismatches}"])


def parse_concurrency(text: str) -> list:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("concurrency values must be >= 1")
    return values


def at_least(low: int):
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        if int(text) < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}: {text}")
        return int(text)
    return parse


positive_int = at_least(1)


def add_common(parser: argparse.ArgumentParser, n: int, concurrency: str, what: str,
               warmup_min: int | None = None) -> None:
    """-n, --concurrency, --rounds, --timeout, --pin, --spin and --json, as every bench has them; --warmup
    (at least ``warmup_min``) where the bench warms its target up."""
    parser.add_argument("-n", type=positive_int, default=n, help=f"calls per scenario (default {n})")
    parser.add_argument("--concurrency", type=parse_concurrency, default=[int(c) for c in concurrency.split(",")],
                        help=f"comma-separated {what}; sequential always runs (default {concurrency})")
    parser.add_argument("--rounds", type=positive_int, default=3, help="rounds (default 3)")
    if warmup_min is not None:
        parser.add_argument("--warmup", type=at_least(warmup_min), default=500,
                            help="warm-up calls per process and scenario (default 500)")
    parser.add_argument("--timeout", type=float, default=120.0, help="hard limit per target run, seconds (default 120)")
    parser.add_argument("--pin", choices=("split", "same", "none"), default="split",
                        help="CPU placement: split = driver on one CPU, target tree on the others (default; stable "
                             "figures); same = everything on one CPU; none = let the scheduler decide (bimodal on "
                             "small machines)")
    parser.add_argument("--spin", action="store_true",
                        help="busy-poll answers instead of sleeping on the pipe: removes the client's wake-up cost "
                             "(burns the driver's CPU; use with --pin split)")
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of tables")
