"""``load policy-bench``: what the policy chain costs and what its cache saves, over stdio and HTTP.

Over stdio, pairs of ``wire-gateway stdio`` processes timed alternately (A B B A ...), one request at a
time, with the gateway's own CPU per request from /proc, steadier than latency on a shared machine.
Over HTTP, as ``load dump-cost`` does: the gateway without policy (A) and with it (B) pinned to one
CPU with their servers, each driven by its own ``load run`` for the same duration, so B's calls/s over
A's is what B costs or saves in gateway and server work. The pairs and their targets: docs/load.md.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from . import bench
from .ab import apart, ratio_summary, side_by_side
from .bench import Scenario, Side
from .otlp_sink import OtlpSink
from .procfs import read_stat, ticks_to_us
from .stats import percentile
from .stdio_bench import Target
from .targets import HttpProcess, echo_config, write_config

FIVE = {"tools": {"deny": ["never_*"]}, "pinning": "enforce", "schema": True,
        "cache": {"tools_list_ttl": 300, "results": True}}
# Guardrails: every local detector on input and output. The small call's answer passes unchanged;
# the 1 MiB result is the labelled corpus repeated (docs/guardrails.md), so what is timed is what
# `guardrails eval` measures, matches and redactions included (input only logged, so that the
# server repeats the corpus as it is).
EVERY = ["pii", "secrets", "injection", "arguments"]
SMALL_TEXT = "Weather for Berlin tomorrow: 14 C, light rain in the afternoon, wind 12 km/h from the west."
HTTP_WARMUP_CALLS = 600
STDIO_PAIRS = ("tools_list", "ping", "guardrails_call", "guardrails_1mib")


def guarded(input_action: str) -> dict:
    return {"guardrails": {"input": [{"detectors": EVERY, "action": input_action}],
                           "output": [{"detectors": EVERY, "action": "redact"}]}}


def timed(gateway: Target, method: str, n: int, params: dict | None = None) -> list[int]:
    """n sequential round trips of `method`, in microseconds."""
    tail = b'"}\n' if params is None else b'","params":' + json.dumps(params).replace("%", "%%").encode() + b'}\n'
    template = b'{"jsonrpc":"2.0","id":%d,"method":"' + method.encode() + tail
    out = []
    for _ in range(n):
        gateway.next_id += 1
        start = time.perf_counter_ns()
        gateway.write_all(template % gateway.next_id)
        answer = gateway.read_message()
        out.append((time.perf_counter_ns() - start) // 1000)
        if not isinstance(answer, dict) or answer.get("id") != gateway.next_id or "result" not in answer:
            raise gateway.failure(f"{gateway.label}: unexpected answer to {method}: {str(answer)[:200]}")
    return out


def compare(folder: Path, a: tuple, b: tuple, method: str, n: int, rounds: int, warmup: int = 200,
            params: dict | None = None) -> dict:
    """Start gateways A and B (``(label, policy[, store])``: a `wire-gateway stdio` each, with the echo
    server and that policy), warm both up, time them alternately, stop them."""
    gateways: list[Target] = []
    try:
        for label, policy, *store in (a, b):
            doc = {**echo_config(**policy), **({"store": store[0]} if store else {})}
            gateways.append(Target([sys.executable, "-m", "wire_gateway", "stdio", "--config",
                                    str(write_config(folder / f"{label}.json", doc))], timeout=3600))
            gateways[-1].label, gateways[-1].next_id = label, 0
            gateways[-1].handshake()
        for g in gateways:
            timed(g, method, warmup, params)
        samples: dict[str, list[int]] = {g.label: [] for g in gateways}
        cpu = {g.label: 0.0 for g in gateways}
        for i in range(rounds):       # A B, then B A: neither side always runs first
            for g in (gateways if i % 2 == 0 else gateways[::-1]):
                before = read_stat(g.pid).ticks
                samples[g.label] += timed(g, method, n, params)
                cpu[g.label] += ticks_to_us(read_stat(g.pid).ticks - before)
    finally:
        for gateway in gateways:
            gateway.stop()
    out: dict = {}
    for label, values in samples.items():
        ordered = sorted(values)
        out[label] = {"median_us": statistics.median(ordered), "p90_us": percentile(ordered, 90),
                      "mean_us": round(statistics.fmean(ordered), 1), "n": len(ordered),
                      "gateway_cpu_us_per_request": round(cpu[label] / (n * rounds), 1)}
    la, lb = a[0], b[0]
    out["ratio_of_medians"] = round(out[lb]["median_us"] / out[la]["median_us"], 3)
    out["added_median_us"] = round(out[lb]["median_us"] - out[la]["median_us"], 1)
    return out


def run_stdio(args: argparse.Namespace, only: list | None) -> dict:
    """Guardrails on a small tools/call and a 1 MiB result (without, then with every local detector),
    tools/list uncached against cached (and with Redis), ping without policy against five interceptors."""
    from wire_gateway.guardrails.quality import load_corpus

    results: dict = {}
    uncached = ("uncached", {"pinning": "off", "cache": {"tools_list_ttl": 0}})
    cached = {"pinning": "off", "cache": {"tools_list_ttl": 300}}
    with tempfile.TemporaryDirectory(prefix="policy-bench-") as tmp:
        folder = Path(tmp)
        for name, action, fewer in (("guardrails_call", "redact", 1), ("guardrails_1mib", "log", 25)):
            if only and name not in only:
                continue
            params = {"name": "echo", "arguments": {"text": SMALL_TEXT}} if fewer == 1 else {
                "name": "big", "arguments": {"size": 1 << 20, "text": "\n".join(c["text"] for c in load_corpus())}}
            results[name] = compare(folder, (f"{name}_off", {}), (f"{name}_on", guarded(action)), "tools/call",
                                    max(10, args.n // fewer), max(4, args.rounds // 2), max(5, 200 // fewer), params)
        pairs = [("tools_list", "tools/list", uncached, ("cached", cached)),
                 ("ping", "ping", ("no_policy", {}), ("five_interceptors", FIVE))]
        pairs = [p for p in pairs if not only or p[0] in only]
        if args.redis_url:
            pairs.append(("tools_list_redis", "tools/list", uncached, ("cached_redis", cached, {
                "backend": "redis", "url": args.redis_url, "prefix": f"policy-bench-{os.getpid()}:"})))
        for name, method, a, b in pairs:
            results[name] = compare(folder, a, b, method, args.n, args.rounds)
    return results


def http_pairs(eras: list[str]) -> list[Scenario]:
    """The HTTP pairs as ``load bench`` scenarios, both sides the gateway; each with the B/A it should reach."""
    echo, plain, gateway = bench.echo_calls(), echo_config(), Side()
    out = []
    for era in eras:
        out += [Scenario("tools_list", "http", era, bench.LISTS, a=Side(config=bench.LISTABLE),
                         b=Side(config=bench.CACHED), target=1.5),
                Scenario("tools_call", "http", era, echo, a=gateway, b=Side(config=echo_config(**bench.FILTER_SCHEMA)),
                         warmup_calls=bench.LIST_FIRST, target=0.9),
                Scenario("auth", "http", era, echo, a=gateway, b=Side(config={**plain, "auth": {"mode": "keys"}},
                                                                    auth=True), target=0.95),
                # The same gateway with its metrics off (A) and on (B, the default): what counting costs.
                Scenario("metrics", "http", era, echo, a=Side(config={**plain, "telemetry": {"metrics": False}}),
                         b=gateway, target=0.97),
                # Observability all off (A) vs metrics and tracing on (B: every tools/call a span, exported
                # to the load tool's OTLP sink, run_http).
                Scenario("tracing", "http", era, echo, a=Side(config={**plain, "telemetry": {"metrics": False}}),
                         b=Side(config={**plain, "telemetry": {"tracing": True}}), target=0.9)]
    if "modern" in eras:
        out.append(Scenario("aggregate", "http", "modern", echo, a=gateway, b=Side(path="/mcp", calls=bench.RENAMED),
                            target=0.8))
    return out


def http_round(pair: Scenario, tmpdir: str, concurrency: int, duration: float, cpus) -> dict:
    from wire_gateway.auth.backends import SqliteBackend
    from wire_gateway.auth.tenancy import Tenancy

    folder = Path(tempfile.mkdtemp(dir=tmpdir))
    fixtures, warmups, starters, extras = [], [], [], []
    for label, side in (("a", pair.a), ("b", pair.b)):
        own = folder / label
        own.mkdir()
        if side.auth:   # a project, a user and a key in the auth store beside the config, as the CLI makes them
            tenancy = Tenancy(SqliteBackend(str(own / "auth.sqlite3")), ["echo"])
            tenancy.create_project("bench", ["*"])
            tenancy.create_user("bench")
            extras.append(["--header", f"Authorization: Bearer {tenancy.create_key('bench', 'bench')[1]}"])
        else:
            extras.append([])
        fixtures.append(bench.write_fixture(own / "calls.jsonl", pair.era, side.calls or pair.calls))
        warmups.append(fixtures[-1] if pair.warmup_calls is None else
                       bench.write_fixture(own / "warm.jsonl", pair.era, pair.warmup_calls))
        starters.append(lambda own=own, side=side: HttpProcess(side.kind, str(own), duration + 120.0, cpus,
                                                               path=side.path, config=side.config))
    return side_by_side(starters, fixtures, concurrency, duration, HTTP_WARMUP_CALLS, warmups, extras)[0]


def run_http(eras: list[str], rounds: int, concurrency: int, duration: float, only: list[str] | None) -> dict:
    """Each pair, ``rounds`` times side by side; with the OTLP receiver the `tracing` pair's gateways export
    to (every gateway started meanwhile inherits the endpoint; only those with tracing on use it)."""
    out: dict = {}
    sink, before = OtlpSink(), os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
    try:
        with tempfile.TemporaryDirectory(prefix="policy-http-") as tmpdir:
            for pair in http_pairs(eras):
                if only and pair.name not in only:
                    continue
                exported = sink.bytes
                results = apart(rounds, lambda cpus, pair=pair: http_round(pair, tmpdir, concurrency, duration,
                                                                           cpus))[0]
                summary = ratio_summary(results)
                out[f"http_{pair.name}_{pair.era}"] = {
                    "rounds": results, "target": pair.target, "ratio_median": summary["median"],
                    "ratio_min": summary["min"], "ratio_max": summary["max"],
                    "mismatches": summary["mismatches"], "errors": summary["errors"],
                    **({"otlp_bytes": sink.bytes - exported} if pair.name == "tracing" else {})}
    finally:
        if before is None:
            os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        else:
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = before
        sink.close()
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", type=int, default=500, help="round trips per side per round (default 500)")
    parser.add_argument("--rounds", type=int, default=20, help="alternating rounds (default 20)")
    parser.add_argument("--redis-url", help="also measure the cached tools/list with the Redis store")
    parser.add_argument("--transport", default="stdio,http", type=comma_list,
                        help="comma-separated: stdio, http (default both)")
    parser.add_argument("--eras", default="modern,legacy", type=comma_list, help="HTTP eras (default modern,legacy)")
    parser.add_argument("--pairs", type=comma_list,
                        help="pairs to run: over stdio tools_list, ping, guardrails_call, guardrails_1mib; "
                        "over HTTP tools_list, tools_call, aggregate, auth, metrics, tracing (default all)")
    parser.add_argument("--http-rounds", type=int, default=3, help="HTTP rounds per pair (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds each HTTP round drives (default 5)")
    parser.add_argument("-c", "--concurrency", type=int, default=16, help="HTTP sessions per gateway (default 16)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def run(args: argparse.Namespace) -> int:
    results: dict = {"config": {"n": args.n, "rounds": args.rounds, "cpus": os.cpu_count()}}
    if "stdio" in args.transport:
        results.update(run_stdio(args, args.pairs))
    http: dict = {}
    if "http" in args.transport:
        results["config"].update(http_rounds=args.http_rounds, duration_s=args.duration, concurrency=args.concurrency)
        http = run_http(args.eras, args.http_rounds, args.concurrency, args.duration, args.pairs)
        results.update(http)
    lines = [f"policy-bench: {os.cpu_count()} CPUs"]
    if any(k in results for k in STDIO_PAIRS):
        lines.append(f"  over stdio: n={args.n} x {args.rounds} rounds per side, sequential")
    for name in (k for k in ("tools_list", "ping", "tools_list_redis") if k in results):
        figures = results[name]
        sides = [k for k in figures if k not in ("ratio_of_medians", "added_median_us")]
        lines.append(f"  {name:<17} " + " | ".join(
            f"{side}: median {figures[side]['median_us']:.0f} us, p90 {figures[side]['p90_us']} us, "
            f"gateway CPU {figures[side]['gateway_cpu_us_per_request']} us/req" for side in sides)
            + f" | ratio {figures['ratio_of_medians']}")
    if "tools_list" in results and "ping" in results:
        lines.append(f"  => cached tools/list is {1 / results['tools_list']['ratio_of_medians']:.1f}x faster than "
                     f"uncached (target >= 3x); ping with five interceptors / without: "
                     f"{results['ping']['ratio_of_medians']} (target < 1.1)")
    for name, target in (("guardrails_call", "200 us"), ("guardrails_1mib", "20,000 us")):
        if name in results:
            r = results[name]
            off, on = r[f"{name}_off"], r[f"{name}_on"]
            lines.append(f"  {name:<17} off: median {off['median_us']:.0f} us | every detector: median "
                         f"{on['median_us']:.0f} us (gateway CPU {off['gateway_cpu_us_per_request']} -> "
                         f"{on['gateway_cpu_us_per_request']} us/req) | added {r['added_median_us']:.0f} us "
                         f"(target < {target})")
    if http:
        lines.append(f"  over HTTP: A and B side by side on one CPU, {args.concurrency} clients each, "
                     f"{args.duration:g} s per round (B/A = calls/s of B over A's)")
    for name, r in http.items():
        rounds = ", ".join(f"x{x['ratio']:.2f} ({x['a']['calls_per_s']:,.0f} / {x['b']['calls_per_s']:,.0f})"
                           if x.get("ratio") else f"failed: {x.get('error', '?')}" for x in r["rounds"])
        median = f"x{r['ratio_median']:.2f}" if r["ratio_median"] is not None else "-"
        exported = f"; OTLP {r['otlp_bytes']:,} bytes received" if "otlp_bytes" in r else ""
        lines.append(f"  {name:<26} B/A {median} (target >= {r['target']:g}); rounds: {rounds}; "
                     f"mismatches {r['mismatches']}, errors {r['errors']}{exported}")
    print(json.dumps(results, indent=2) if args.json else "\n".join(lines))
    return 1 if any(r["errors"] or r["mismatches"] for r in http.values()) else 0
