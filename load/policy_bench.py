"""``load policy-bench``: what the policy chain costs and what its cache saves, over stdio and HTTP.

Over stdio, pairs of ``wire-gateway stdio`` processes timed alternately (A B B A ...), one request at a
time: ``tools/list`` uncached against cached (target: 3x faster), ``ping`` without policy against five
interceptors (target: a ratio under 1.1); with the gateway's own CPU per request from /proc, steadier
than latency on a shared machine. Over HTTP: ``policy_http``.
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

from . import policy_http
from .procfs import read_stat, ticks_to_us
from .stats import percentile
from .stdio_bench import Target

ECHO = [sys.executable, "-m", "wire_gateway.demo.echo"]
FIVE = {"tools": {"deny": ["never_*"]}, "pinning": "enforce", "schema": True,
        "cache": {"tools_list_ttl": 300, "results": True}}
# Guardrails: every local detector on input and output. The small call's answer passes unchanged;
# the 1 MiB result is the labelled corpus repeated (docs/guardrails.md), so what is timed is what
# `guardrails eval` measures, matches and redactions included (input only logged, so that the
# server repeats the corpus as it is).
EVERY = ["pii", "secrets", "injection", "arguments"]
SMALL_TEXT = "Weather for Berlin tomorrow: 14 C, light rain in the afternoon, wind 12 km/h from the west."
MIB = 1 << 20


def guarded(input_action: str) -> dict:
    return {"guardrails": {"input": [{"detectors": EVERY, "action": input_action}],
                           "output": [{"detectors": EVERY, "action": "redact"}]}}


def corpus_text() -> str:
    from wire_gateway.guardrails.quality import load_corpus

    return "\n".join(case["text"] for case in load_corpus())


def start_gateway(folder: Path, label: str, policy: dict, store: dict | None = None) -> Target:
    """One `wire-gateway stdio` process with a one-server config, initialized."""
    doc: dict = {"servers": {"echo": {"command": ECHO[0], "args": ECHO[1:], **policy}}}
    if store:
        doc["store"] = store
    config = folder / f"{label}.json"
    config.write_text(json.dumps(doc))
    gateway = Target([sys.executable, "-m", "wire_gateway", "stdio", "--config", str(config)], timeout=3600)
    gateway.label, gateway.next_id = label, 0
    gateway.handshake()
    return gateway


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


def summary(samples: list[int]) -> dict:
    ordered = sorted(samples)
    return {"median_us": statistics.median(ordered), "p90_us": percentile(ordered, 90),
            "mean_us": round(statistics.fmean(ordered), 1), "n": len(ordered)}


def compare(folder: Path, a: tuple, b: tuple, method: str, n: int, rounds: int, warmup: int = 200,
            params: dict | None = None) -> dict:
    """Start gateways A and B (``(label, policy[, store])``), warm both up, time them alternately, stop them."""
    gateways: list[Target] = []
    try:
        for side in (a, b):
            gateways.append(start_gateway(folder, *side))
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
    out: dict = {label: {**summary(samples[label]), "gateway_cpu_us_per_request": round(cpu[label] / (n * rounds), 1)}
                 for label in samples}
    la, lb = a[0], b[0]
    out["ratio_of_medians"] = round(out[lb]["median_us"] / out[la]["median_us"], 3)
    out["added_median_us"] = round(out[lb]["median_us"] - out[la]["median_us"], 1)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", type=int, default=500, help="round trips per side per round (default 500)")
    parser.add_argument("--rounds", type=int, default=20, help="alternating rounds (default 20)")
    parser.add_argument("--redis-url", help="also measure the cached tools/list with the Redis store")
    parser.add_argument("--transport", default="stdio,http",
                        help="comma-separated: stdio, http (default both)")
    parser.add_argument("--eras", default="modern,legacy", help="HTTP eras (default modern,legacy)")
    parser.add_argument("--pairs", help="pairs to run: over stdio tools_list, ping, guardrails_call, guardrails_1mib; "
                        "over HTTP tools_list, tools_call, aggregate, auth, metrics, tracing (default all)")
    parser.add_argument("--http-rounds", type=int, default=3, help="HTTP rounds per pair (default 3)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds each HTTP round drives (default 5)")
    parser.add_argument("-c", "--concurrency", type=int, default=16, help="HTTP sessions per gateway (default 16)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args: argparse.Namespace) -> int:
    transports = {t.strip() for t in args.transport.split(",") if t.strip()}
    results: dict = {"config": {"n": args.n, "rounds": args.rounds, "cpus": os.cpu_count()}}
    if "stdio" in transports:
        results.update(run_stdio(args))
    http: dict = {}
    if "http" in transports:
        eras = tuple(e.strip() for e in args.eras.split(",") if e.strip())
        only = [p.strip() for p in args.pairs.split(",")] if args.pairs else None
        results["config"].update(http_rounds=args.http_rounds, duration_s=args.duration, concurrency=args.concurrency)
        http = policy_http.run_pairs(eras, args.http_rounds, args.concurrency, args.duration, only)
        results.update(http)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"policy-bench: {os.cpu_count()} CPUs")
        if any(k in results for k in ("tools_list", "ping", "guardrails_call", "guardrails_1mib")):
            print(f"  over stdio: n={args.n} x {args.rounds} rounds per side, sequential")
            for name in ("tools_list", "ping", "tools_list_redis"):
                if name not in results:
                    continue
                figures = results[name]
                sides = [k for k in figures if k not in ("ratio_of_medians", "added_median_us")]
                parts = [f"{side}: median {figures[side]['median_us']:.0f} us, p90 {figures[side]['p90_us']} us, "
                         f"gateway CPU {figures[side]['gateway_cpu_us_per_request']} us/req" for side in sides]
                print(f"  {name:<17} " + " | ".join(parts) + f" | ratio {figures['ratio_of_medians']}")
            if "tools_list" in results and "ping" in results:
                tl = results["tools_list"]
                print(f"  => cached tools/list is {1 / tl['ratio_of_medians']:.1f}x faster than uncached "
                      f"(target >= 3x); ping with five interceptors / without: "
                      f"{results['ping']['ratio_of_medians']} (target < 1.1)")
        for name, target in (("guardrails_call", "200 us"), ("guardrails_1mib", "20,000 us")):
            if name in results:
                r = results[name]
                off, on = (r[k] for k in r if k.endswith(("_off", "_on")))
                print(f"  {name:<17} off: median {off['median_us']:.0f} us | every detector: median "
                      f"{on['median_us']:.0f} us (gateway CPU {off['gateway_cpu_us_per_request']} -> "
                      f"{on['gateway_cpu_us_per_request']} us/req) | added {r['added_median_us']:.0f} us "
                      f"(target < {target})")
        if http:
            print("\n".join(policy_http.render(http, args.concurrency, args.duration)))
    failed = any(r["errors"] or r["mismatches"] for r in http.values())
    return 1 if failed else 0


def run_stdio(args: argparse.Namespace) -> dict:
    """Guardrails on a small tools/call and a 1 MiB result (without, then with every local detector),
    tools/list uncached against cached (and with Redis), ping without policy against five interceptors."""
    results: dict = {}
    only = [p.strip() for p in args.pairs.split(",")] if args.pairs else None
    uncached = ("uncached", {"pinning": "off", "cache": {"tools_list_ttl": 0}})
    cached = {"pinning": "off", "cache": {"tools_list_ttl": 300}}
    with tempfile.TemporaryDirectory(prefix="policy-bench-") as tmp:
        folder = Path(tmp)
        for name, action, fewer in (("guardrails_call", "redact", 1), ("guardrails_1mib", "log", 25)):
            if only and name not in only:
                continue
            params = {"name": "echo", "arguments": {"text": SMALL_TEXT}} if fewer == 1 else \
                {"name": "big", "arguments": {"size": MIB, "text": corpus_text()}}
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
