"""``policy-bench`` over HTTP: the gateway without policy (A) and with it (B), driven at the same time.

As ``load dump-cost`` does: both pinned to one CPU with their servers, each driven by its own ``load
run`` for the same duration, so B's calls/s over A's is what B costs or saves in gateway and server
work, the load tool's own CPU not in it. The pairs and their targets are in docs/load.md.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import bench
from .ab import apart, ratio_summary, side_by_side
from .otlp_sink import OtlpSink
from .targets import HttpProcess

FILTER_SCHEMA = bench.FILTER_SCHEMA
WARMUP_CALLS = 600


@dataclass
class Side:
    config: dict
    path: str = "/mcp/echo"
    calls: list | None = None        # the fixture's calls (default: the pair's)
    auth: bool = False               # API keys on: a key is made in its store and sent by its driver


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
        out.append(Pair("auth", era, echo, Side(bench.echo_server()),
                        Side({**bench.echo_server(), "auth": {"mode": "keys"}}, auth=True), target=0.95))
        # The same gateway with its metrics off (A) and on (B, the default): what counting costs.
        out.append(Pair("metrics", era, echo, Side({**bench.echo_server(), "telemetry": {"metrics": False}}),
                        Side(bench.echo_server()), target=0.97))
        # Observability all off (A) vs metrics and tracing on (B: every tools/call a span, exported
        # to the load tool's OTLP sink, run_pairs).
        out.append(Pair("tracing", era, echo, Side({**bench.echo_server(), "telemetry": {"metrics": False}}),
                        Side({**bench.echo_server(), "telemetry": {"tracing": True}}), target=0.9))
    if "modern" in eras:
        renamed = [("tools/call", {**params, "name": "echo__echo"}, result) for _, params, result in echo]
        out.append(Pair("aggregate", "modern", echo, Side(bench.echo_server()),
                        Side(bench.echo_server(), path="/mcp", calls=renamed), target=0.8))
    return out


def one_round(pair: Pair, tmpdir: str, concurrency: int, duration: float, cpus) -> dict:
    folder = Path(tempfile.mkdtemp(dir=tmpdir))
    fixtures, warmups, starters, extras = [], [], [], []
    for label, side in (("a", pair.a), ("b", pair.b)):
        own = folder / label
        own.mkdir()
        (own / "http-bench-gateway.json").write_text(json.dumps(side.config))
        extras.append(["--header", f"Authorization: Bearer {make_key(own)}"] if side.auth else [])
        fixtures.append(bench.write_fixture(own / "calls.jsonl", pair.era, side.calls or pair.calls))
        warmups.append(fixtures[-1] if pair.warmup is None else
                       bench.write_fixture(own / "warm.jsonl", pair.era, pair.warmup))
        starters.append(lambda own=own, side=side: HttpProcess("gateway", str(own), duration + 120.0, cpus,
                                                               path=side.path))
    return side_by_side(starters, fixtures, concurrency, duration, WARMUP_CALLS, warmups, extras)[0]


def make_key(folder: Path) -> str:
    """A project, a user and a key in the auth store beside the side's config, as the CLI makes them."""
    from wire_gateway.auth.backends import SqliteBackend
    from wire_gateway.auth.tenancy import Tenancy

    tenancy = Tenancy(SqliteBackend(str(folder / "auth.sqlite3")), ["echo"])
    tenancy.create_project("bench", ["*"])
    tenancy.create_user("bench")
    return tenancy.create_key("bench", "bench")[1]


def run_pairs(eras: tuple[str, ...], rounds: int, concurrency: int, duration: float,
              only: list[str] | None = None) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="policy-http-") as tmpdir, _traces_sink() as sink:
        for pair in pairs(eras):
            if only and pair.name not in only:
                continue
            exported = sink.bytes
            results = apart(rounds, lambda cpus, pair=pair: one_round(pair, tmpdir, concurrency, duration, cpus))[0]
            summary = ratio_summary(results)
            out[f"http_{pair.name}_{pair.era}"] = {
                "rounds": results, "target": pair.target, "ratio_median": summary["median"],
                "ratio_min": summary["min"], "ratio_max": summary["max"],
                "mismatches": summary["mismatches"], "errors": summary["errors"]}
            if pair.name == "tracing":
                out[f"http_{pair.name}_{pair.era}"]["otlp_bytes"] = sink.bytes - exported
    return out


@contextlib.contextmanager
def _traces_sink() -> Iterator[OtlpSink]:
    """The OTLP receiver the `tracing` pair's gateways export to (every gateway started meanwhile
    inherits the endpoint; only those with tracing on use it)."""
    sink = OtlpSink()
    before = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
    try:
        yield sink
    finally:
        if before is None:
            os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        else:
            os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = before
        sink.close()


def render(results: dict, concurrency: int, duration: float) -> list[str]:
    lines = [f"  over HTTP: A and B side by side on one CPU, {concurrency} clients each, {duration:g} s per round "
             "(B/A = calls/s of B over A's)"]
    for name, r in results.items():
        rounds = ", ".join(f"x{x['ratio']:.2f} ({x['a']['calls_per_s']:,.0f} / {x['b']['calls_per_s']:,.0f})"
                           if x.get("ratio") else f"failed: {x.get('error', '?')}" for x in r["rounds"])
        median = f"x{r['ratio_median']:.2f}" if r["ratio_median"] is not None else "-"
        exported = f"; OTLP {r['otlp_bytes']:,} bytes received" if "otlp_bytes" in r else ""
        lines.append(f"  {name:<26} B/A {median} (target >= {r['target']:g}); rounds: {rounds}; "
                     f"mismatches {r['mismatches']}, errors {r['errors']}{exported}")
    return lines
