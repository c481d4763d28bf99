"""`policy-bench` over HTTP: two gateways side by side, driven at the same time.

A (the gateway without policy) and B (the same server with a policy, or the aggregate) are
started together and pinned, with the servers they spawn, to the same CPU (the last one);
each is driven by its own ``python -m load run`` (16 sessions, answers checked) on the other
CPUs for the same duration, as ``load dump-cost`` does. Both see the same machine phases and
share that CPU, so B's calls/s over A's is what B costs, or saves, in gateway and server
work: the load tool's own CPU is not in it (``load bench`` runs the same pairs one after
the other, client included, with the noise that brings on a shared machine).

Pairs, each in both eras (modern: stateless POSTs; legacy: a session per virtual client,
with its own server process):

- ``tools_list``: tools/list, A without policy, B with ``"cache": {"tools_list_ttl": 60}``
  (pinning and schema at their defaults); the server (echo.py --ttl-ms 60000) lets its lists
  be cached. Target: B/A >= 1.5 at 16 clients.
- ``tools_call``: the echo tool, A without policy, B with the filter and the schema guard
  (``{"tools": {"deny": ["never_*"]}, "pinning": "off", "schema": true}``; the warm-up lists
  the tools, so every call is validated). Target: B/A >= 0.9.
- ``aggregate`` (modern): the echo tool at ``/mcp/echo`` (A) and as ``echo__echo`` through
  the aggregate at ``/mcp`` (B), same config. Target: B/A >= 0.8.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import bench
from . import stdio_bench as sb
from .assets import CHECKOUT, tool
from .http_bench import BenchError, HttpTarget

FILTER_SCHEMA = bench.FILTER_SCHEMA
WARMUP_CALLS = 600


@dataclass
class Side:
    config: dict
    path: str = "/mcp/echo"
    calls: list | None = None        # the fixture's calls (default: the pair's)


@dataclass
class Pair:
    name: str
    era: str
    calls: list
    a: Side
    b: Side
    warmup: list | None = None
    target: float = 0.0              # B/A at least this (0: none)


def pairs(eras: tuple[str, ...]) -> list[Pair]:
    lists = [("tools/list", {}, None)] * 8
    echo = bench.echo_calls()
    out = []
    for era in eras:
        out.append(Pair("tools_list", era, lists, Side(bench.LISTABLE),
                        Side(bench.echo_server("--ttl-ms", "60000", cache={"tools_list_ttl": 60})), target=1.5))
        out.append(Pair("tools_call", era, echo, Side(bench.echo_server()), Side(bench.echo_server(**FILTER_SCHEMA)),
                        warmup=[("tools/list", {}, None), *bench.echo_calls(1)], target=0.9))
    if "modern" in eras:
        renamed = [("tools/call", {**params, "name": "echo__echo"}, result) for _, params, result in echo]
        out.append(Pair("aggregate", "modern", echo, Side(bench.echo_server()),
                        Side(bench.echo_server(), path="/mcp", calls=renamed), target=0.8))
    return out


def _load_run(url: str, fixture: str, concurrency: int, extra: list) -> list:
    return [*tool("run"), "--target", url, "--fixture", fixture, "-c", str(concurrency),
            *extra, "--json"]


def _read(out: str, what: str) -> dict:
    try:
        doc = json.loads(out)
        return {"calls_per_s": doc["runs"][0]["calls_per_s"], "mismatches": doc["mismatches"], "errors": doc["errors"]}
    except (ValueError, KeyError, IndexError) as exc:
        raise BenchError(f"{what}: the load run printed no result ({exc}): {out[-500:]!r}") from None


def one_round(pair: Pair, tmpdir: str, concurrency: int, duration: float, cpus) -> dict:
    timeout = duration + 120.0
    folder = Path(tempfile.mkdtemp(dir=tmpdir))
    fixtures, targets = [], []
    try:
        for label, side in (("a", pair.a), ("b", pair.b)):
            own = folder / label
            own.mkdir()
            (own / "http-bench-gateway.json").write_text(json.dumps(side.config))
            fixtures.append(bench.write_fixture(own / "calls.jsonl", pair.era, side.calls or pair.calls))
            targets.append(HttpTarget("gateway", str(own), timeout, cpus, path=side.path))
        for target, fixture, label in zip(targets, fixtures, "ab"):
            warm = fixture if pair.warmup is None else bench.write_fixture(
                folder / f"warm-{label}.jsonl", pair.era, pair.warmup)
            done = subprocess.run(_load_run(str(target.url), warm, concurrency, ["-n", str(WARMUP_CALLS)]),
                                  capture_output=True, text=True, cwd=CHECKOUT, timeout=timeout)
            _read(done.stdout, f"warm-up {label.upper()}")
        drivers = [subprocess.Popen(_load_run(str(t.url), f, concurrency, ["--duration", f"{duration}s"]),
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=CHECKOUT)
                   for t, f in zip(targets, fixtures)]
        try:
            outs = [d.communicate(timeout=timeout)[0] for d in drivers]
        finally:
            for d in drivers:
                if d.poll() is None:
                    d.kill()
                    d.wait()
        a, b = _read(outs[0], "A"), _read(outs[1], "B")
        return {"a": a, "b": b, "ratio": b["calls_per_s"] / a["calls_per_s"] if a["calls_per_s"] else None}
    except (BenchError, subprocess.SubprocessError, OSError) as exc:
        return {"error": str(exc)}
    finally:
        for target in targets:
            target.stop()


def run_pairs(eras: tuple[str, ...], rounds: int, concurrency: int, duration: float,
              only: list[str] | None = None) -> dict:
    allowed = sorted(os.sched_getaffinity(0))
    target_cpus = {allowed[-1]}
    driver_cpus = set(allowed[:-1]) or None
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="policy-http-") as tmpdir, sb.pinned(driver_cpus):
        for pair in pairs(eras):
            if only and pair.name not in only:
                continue
            results = [one_round(pair, tmpdir, concurrency, duration, target_cpus) for _ in range(rounds)]
            ratios = [r["ratio"] for r in results if r.get("ratio")]
            out[f"http_{pair.name}_{pair.era}"] = {
                "rounds": results, "target": pair.target,
                "ratio_median": statistics.median(ratios) if ratios else None,
                "ratio_min": min(ratios, default=None), "ratio_max": max(ratios, default=None),
                "mismatches": sum(r[s]["mismatches"] for r in results for s in ("a", "b") if s in r),
                "errors": sum(1 for r in results if "error" in r)
                + sum(r[s]["errors"] for r in results for s in ("a", "b") if s in r)}
    return out


def render(results: dict, concurrency: int, duration: float) -> list[str]:
    lines = [f"  over HTTP: A and B side by side on one CPU, {concurrency} clients each, {duration:g} s per round "
             "(B/A = calls/s of B over A's)"]
    for name, r in results.items():
        rounds = ", ".join(f"x{x['ratio']:.2f} ({x['a']['calls_per_s']:,.0f} / {x['b']['calls_per_s']:,.0f})"
                           if x.get("ratio") else f"failed: {x.get('error', '?')}" for x in r["rounds"])
        median = f"x{r['ratio_median']:.2f}" if r["ratio_median"] is not None else "-"
        lines.append(f"  {name:<26} B/A {median} (target >= {r['target']:g}); rounds: {rounds}; "
                     f"mismatches {r['mismatches']}, errors {r['errors']}")
    return lines
