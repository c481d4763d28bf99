"""``load bench``: the standard scenarios, gateway against direct, alternating; writes docs/benchmarks.md.

Each scenario is data (``SCENARIOS``): a fixture made on the fly, its concurrency levels, and how to
start its direct (A) and gateway (B) targets; each run is ``load run``'s engine, every answer checked.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path

from . import BenchError, assets, engine, http_client, replay, run as load_run
from .ab import alternate, compare_medians
from .assets import CHECKOUT, ECHO_SERVER
from .report import fmt, markdown
from .targets import HttpProcess, echo_config, write_config

PY = sys.executable
ECHO = str(ECHO_SERVER)
MODERN = http_client.MODERN_VERSION
LEGACY = http_client.LEGACY_VERSION
META = http_client.modern_meta("load-bench")
BEGIN, END = "<!-- load-bench:begin -->", "<!-- load-bench:end -->"
ONE_MIB = 1 << 20


def write_fixture(path: Path, era: str, calls: list) -> str:
    """A fixture of ``calls`` [(method, params, recorded result or None)], legacy with its handshake."""
    header = {"wire_gateway_fixture": 1, "name": path.stem, "era": era,
              "protocolVersion": MODERN if era == "modern" else LEGACY, "transport": "http", "server": "echo",
              "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "description": "load bench scenario"}
    frames, t = [], 0.0
    if era == "legacy":
        frames += [{"t": 0.0, "dir": "send", "msg": http_client.initialize_message("load-bench")},
            {"t": 0.0, "dir": "recv", "msg": {"jsonrpc": "2.0", "id": 0, "result": {"protocolVersion": LEGACY}}},
            {"t": 0.0, "dir": "send", "msg": {"jsonrpc": "2.0", "method": "notifications/initialized"}}]
    for i, (method, params, result) in enumerate(calls, start=1):
        params = dict(params)
        if era == "modern":
            params["_meta"] = META
        t += 0.001
        frames.append({"t": t, "dir": "send", "msg": {"jsonrpc": "2.0", "id": i, "method": method, "params": params}})
        if result is not None:
            frames.append({"t": t, "dir": "recv", "msg": {"jsonrpc": "2.0", "id": i, "result": result}})
    path.write_text("\n".join(json.dumps(x, separators=(",", ":")) for x in [header, *frames]) + "\n")
    return str(path)


def echo_calls(k: int = 8) -> list:
    return [("tools/call", {"name": "echo", "arguments": {"text": f"t{i}"}},
             {"content": [{"type": "text", "text": f"t{i}"}], "isError": False}) for i in range(k)]


@dataclass(frozen=True)
class Side:
    """One side of an A/B scenario: the server itself (``direct``: the echo server, over stdio or HTTP), or
    the gateway with ``config`` (default: over the echo server) at ``path``."""
    kind: str = "gateway"
    config: dict | None = None
    path: str = "/mcp/echo"
    calls: list | None = None        # its own fixture's calls when it names things differently (the aggregate)
    dump: bool = False               # serve --dump PATH
    auth: bool = False               # API keys on: a key is made in its store and sent by its driver


DIRECT = Side("direct")


@dataclass
class Scenario:
    """An A/B comparison as data: the fixture's calls (see ``write_fixture``), the "direct" (A) and
    "gateway" (B) sides; ``load bench`` runs it at its concurrency ``levels``, ``policy-bench`` side by
    side against its ``target`` ratio."""
    name: str
    transport: str                  # "stdio" | "http"
    era: str
    calls: list
    levels: tuple = ()
    a: Side = DIRECT
    b: Side = Side()
    note: str = ""
    quick_levels: tuple = (1, 2)
    calls_factor: float = 1.0       # scales -n (big answers: fewer calls)
    warmup_calls: list | None = None    # the warm-up's fixture (default: the scenario's own)
    target: float = 0.0             # B/A at least this (0: none)


# The echo server says its lists may be cached for a minute (a modern result's ttlMs; it says 0 by
# default, and a gateway honours that by not caching): both tools/list scenarios run it so.
LISTABLE = echo_config("--ttl-ms", "60000")
CACHED = echo_config("--ttl-ms", "60000", cache={"tools_list_ttl": 60})
FILTER_SCHEMA = {"tools": {"deny": ["never_*"]}, "pinning": "off", "schema": True}
LISTS = [("tools/list", {}, None)] * 8
LIST_FIRST = [("tools/list", {}, None), *echo_calls(1)]
RENAMED = [("tools/call", {**params, "name": "echo__echo"}, result) for _, params, result in echo_calls()]
SCENARIOS = [
    Scenario("stdio echo", "stdio", "legacy", echo_calls(), (1, 16, 64),
             note="legacy; each session is its own process (direct: echo.py; gateway: wire-gateway stdio over it)"),
    Scenario("http echo", "http", "modern", echo_calls(), (1, 16, 64),
             note="modern; direct: fixtures/servers/http_echo.py; gateway: serve over the stdio echo server"),
    Scenario("http echo legacy sessions", "http", "legacy", echo_calls(), (1, 16),
             note="each legacy session: initialize, its own upstream process behind the gateway, DELETE"),
    Scenario("tools/list", "http", "modern", LISTS, (1, 16), b=Side(config=LISTABLE),
             note="modern; the gateway without a cache: every call goes to the server (echo.py --ttl-ms 60000)"),
    Scenario("tools/list cached", "http", "modern", LISTS, (1, 16), a=Side(config=LISTABLE), b=Side(config=CACHED),
             note='A/B of the gateway itself: the "direct" columns are the gateway without policy, the "gateway" '
                  'columns config "cache": {"tools_list_ttl": 60} (with the default pinning and schema); the '
                  'server is echo.py --ttl-ms 60000 in both, so only the first tools/list reaches it; '
                  'ratio = what the cache gains over HTTP'),
    Scenario("tools/call filter+schema", "http", "modern", echo_calls(), (1, 16),
             a=Side(), b=Side(config=echo_config(**FILTER_SCHEMA)),
             warmup_calls=LIST_FIRST,
             note='A/B of the gateway itself: the "direct" columns are the gateway without policy, the "gateway" '
                  f'columns the same server with {json.dumps(FILTER_SCHEMA)} (the warm-up lists the tools, so '
                  'every call is checked against the filter and validated against echo\'s inputSchema); '
                  'ratio = the throughput kept with the policy on'),
    Scenario("aggregate echo", "http", "modern", echo_calls(), (1, 16), a=Side(), b=Side(path="/mcp", calls=RENAMED),
             note='A/B on the same gateway config: the "direct" columns call tool echo at /mcp/echo, the "gateway" '
                  'columns tool echo__echo through the aggregate at /mcp; ratio = the throughput kept through '
                  'the aggregate'),
    Scenario("1 MiB result", "stdio", "legacy", [("tools/call", {"name": "big", "arguments": {"size": ONE_MIB}}, None)],
             (1, 4), calls_factor=0.02, note="tools/call big {size: 1048576}; stdio (http_echo.py has no big tool)"),
    Scenario("http echo dump on", "http", "modern", echo_calls(), (1, 16), a=Side(), b=Side(dump=True),
             note="A/B of the gateway itself: the \"direct\" columns are the gateway with dumps off, the "
                  "\"gateway\" columns serve --dump PATH (every frame at every hop recorded); ratio = the "
                  "throughput kept with dumps on"),
]


def start(scenario: Scenario, slot: str, tmpdir: str, timeout: float) -> tuple:
    """(the load_run.Target of a scenario's direct or gateway slot, what to stop after the run or None);
    stdio: only a command (each session spawns its own process)."""
    side = scenario.a if slot == "direct" else scenario.b
    if scenario.transport == "http":
        target = HttpProcess(side.kind, tmpdir, timeout, path=side.path, dump=side.dump, config=side.config)
        return load_run.Target(str(target.url)), target
    if side.kind == "direct":
        return load_run.Target("stdio:" + shlex.join([PY, ECHO])), None
    path = write_config(Path(tmpdir) / f"{slot}-stdio.json", side.config)
    return load_run.Target("stdio:" + shlex.join([PY, "-m", "wire_gateway", "stdio", "--config", str(path),
                                                  "--log-level", "warning"])), None


def run_scenario(scenario: Scenario, levels: tuple, n: int, rounds: int, tmpdir: str, timeout: float) -> dict:
    """Every level, ``rounds`` times direct then gateway; medians and ratios."""
    stem = scenario.name.replace(" ", "_").replace("/", "_").replace(",", "").replace("+", "_")

    def script(suffix: str, calls: list):
        return replay.load_script(write_fixture(Path(tmpdir) / f"{stem}{suffix}.jsonl", scenario.era, calls))

    scripts = {"direct": script("", scenario.a.calls or scenario.calls)}
    scripts["gateway"] = script("-gateway", scenario.b.calls) if scenario.b.calls else scripts["direct"]
    warmup = script("-warmup", scenario.warmup_calls) if scenario.warmup_calls else None
    out = {"name": scenario.name, "note": scenario.note, "levels": {}}

    def one(slot: str, level: int, calls: int) -> dict:
        target, process = start(scenario, slot, tmpdir, timeout)
        try:
            if scenario.transport == "http":   # the first requests pay for connections and probes
                load_run.run_once(target, warmup or scripts[slot], level, max(level, calls // 10),
                                  None, None, engine.Options(timeout=min(timeout, 60.0)))
            stats = load_run.run_once(target, scripts[slot], level, calls, None, None,
                                      engine.Options(timeout=min(timeout, 60.0)))
        finally:
            if process is not None:
                process.stop()
        return load_run.summarize(target, stats, level)

    for level in levels:
        calls = max(level, int(n * scenario.calls_factor))
        per_round = alternate(rounds, {slot: partial(one, slot, level, calls) for slot in ("direct", "gateway")})
        runs = {slot: [r[slot] for r in per_round] for slot in ("direct", "gateway")}
        picks = {k: load_run.FIGURES[k] for k in ("calls_per_s", "p50_ms", "p99_ms")}
        cmp = compare_medians(runs["direct"], runs["gateway"], picks, digits=2)
        out["levels"][level] = {
            "runs": runs, **{slot: {k: row[side] for k, row in cmp.items()} for slot, side in (("direct", "a"),
                                                                                              ("gateway", "b"))},
            "ratio": cmp["calls_per_s"]["ratio_b_to_a"],
            "mismatches": sum(r["mismatches"] for slot in runs for r in runs[slot]),
            "errors": sum(sum(r["errors"].values()) + r["session_failures"] for slot in runs for r in runs[slot])}
    return out


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 "unknown")
    versions = {}
    for name in ("trio", "orjson", "h11", "wire-gateway"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"cpus": os.cpu_count(), "cpu_model": model,
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1),
            "python": platform.python_version(), "kernel": platform.release(), "versions": versions,
            "gateway_source": assets.source_state(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average_before": os.getloadavg()[0]}


def bench(quick: bool, rounds: int, n: int, only: list | None, timeout: float) -> dict:
    result = {"machine": machine(), "quick": quick, "rounds": rounds, "n": n, "scenarios": []}
    with tempfile.TemporaryDirectory(prefix="load-bench-") as tmpdir:
        for scenario in SCENARIOS:
            if only and scenario.name not in only:
                continue
            levels = scenario.quick_levels if quick else scenario.levels
            try:
                result["scenarios"].append(run_scenario(scenario, levels, n, rounds, tmpdir, timeout))
            except (BenchError, replay.ReplayError) as exc:
                result["scenarios"].append({"name": scenario.name, "note": scenario.note, "error": str(exc)})
    result["mismatches"] = sum(lv["mismatches"] for s in result["scenarios"] for lv in s.get("levels", {}).values())
    result["errors"] = (sum(lv["errors"] for s in result["scenarios"] for lv in s.get("levels", {}).values())
                        + sum(1 for s in result["scenarios"] if "error" in s))
    return result


def render_markdown(result: dict, command: str) -> str:
    m = result["machine"]
    v = m["versions"]
    lines = [
        BEGIN,
        "## Standard scenarios (`python -m load bench`)",
        "",
        "Made by (the exact command):",
        "",
        "```sh",
        command,
        "```",
        "",
        f"Machine: {m['cpus']} cores ({m['cpu_model']}), {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, trio {v['trio']}, orjson {v['orjson']}, h11 {v['h11']}; gateway at "
        f"{m['gateway_source']}; {m['date']}; load average {m['load_average_before']:.2f} at the start "
        "(other work on the machine shows in the figures).",
        "",
        f"Each cell is the median of {result['rounds']} rounds; direct and gateway alternate (A B A B), each on a "
        "fresh target process; the load tool (`load run`'s engine, one connection or process per session, "
        "one call at a time per session, every answer checked) runs in the same invocation. "
        "Ratio = gateway calls/s / direct calls/s. "
        "HTTP targets get a warm-up of a tenth of the calls first (not counted).",
        "",
    ]
    rows = []
    for s in result["scenarios"]:
        if "error" in s:
            rows.append([s["name"], "", f"failed: {s['error'][:200]}", *[""] * 6])
        for level, f in s.get("levels", {}).items():
            d, g = f["direct"], f["gateway"]
            rows.append([s["name"], str(level), fmt(d["calls_per_s"], 0), fmt(g["calls_per_s"], 0),
                         ("x%.2f" % f["ratio"]) if f["ratio"] else "-",
                         f"{fmt(d['p50_ms'], 2)} / {fmt(d['p99_ms'], 2)}",
                         f"{fmt(g['p50_ms'], 2)} / {fmt(g['p99_ms'], 2)}", str(f["mismatches"]), str(f["errors"])])
    lines += markdown(["scenario", "sessions", "direct calls/s", "gateway calls/s", "ratio", "direct p50 / p99 ms",
                       "gateway p50 / p99 ms", "mismatches", "errors"], rows)
    lines += ["", "Scenarios:", "", *(f"- **{s['name']}**: {s['note']}" for s in result["scenarios"]), "", END]
    return "\n".join(lines)


def write_report(path: Path, section: str) -> None:
    """Put the section between the markers (replacing an older one), else after the first paragraph."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        marker = "\n## "
        at = text.find(marker)
        text = (text[:at] + "\n" + section + "\n" + text[at:]) if at >= 0 else (text.rstrip() + "\n\n" + section + "\n")
    path.write_text(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="one round, few calls, concurrency 1 and 2 (tests)")
    parser.add_argument("--rounds", type=int, help="A/B rounds (default 3; --quick: 1)")
    parser.add_argument("-n", type=int, help="calls per run (default 2000; --quick: 30)")
    parser.add_argument("--only", type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                        help="comma-separated scenario names")
    parser.add_argument("--out", default=str((CHECKOUT or Path()) / "docs" / "benchmarks.md"),
                        help="the report file (default docs/benchmarks.md)")
    parser.add_argument("--no-write", action="store_true", help="print only, do not write --out")
    parser.add_argument("--timeout", type=float, default=300.0, help="hard limit per target process, s")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args) -> int:
    rounds = args.rounds or (1 if args.quick else 3)
    n = args.n or (30 if args.quick else 2000)
    if rounds < 1 or n < 1:
        print("load bench: --rounds and -n must be >= 1", file=sys.stderr)
        return 2
    result = bench(args.quick, rounds, n, args.only, args.timeout)
    command = "python -m load bench " + shlex.join(a for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"] \
        else "python -m load bench"
    section = render_markdown(result, command.strip())
    if not args.no_write:
        write_report(Path(args.out), section)
    print(json.dumps(result, indent=2, default=str) if args.json else section)
    return 1 if result["mismatches"] or result["errors"] else 0
