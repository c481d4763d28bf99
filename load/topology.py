"""``load topology``: the scale-out topology on 127.0.0.1, measured (docs/scaling.md; what it starts and
reports: docs/load.md).

A redis-server, N ``wire-gateway serve`` instances sharing it, and two HAProxies as in
deploy/haproxy.cfg (one in front of the first instance alone, one in front of all N); rounds of
``load run`` through each path in turn. The balancer's CPU per call is reported beside the gateways':
on a machine with few cores it is taken from the gateway's, which the throughput ratio shows and the
gateways' CPU per call does not. Redis commands are counted less what Redis does with no load
(heartbeats and refreshes, measured for 2 s first).
"""
from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from . import BenchError
from .ab import load_run, read_run
from .procfs import read_stat, ticks_to_us
from .report import emit, fmt, table, times
from .run import parse_duration
from .stats import median
from .targets import HttpProcess, Started, echo_config

ADOPTED = re.compile(rb"session [0-9A-Za-z_-]{8} \(echo\): adopted")
PATHS = ("direct", "haproxy-1", "haproxy-n")
HAPROXY_CFG = """global
    maxconn 2000
    nbthread 1
defaults
    mode http
    timeout connect 3s
    timeout check 3s
    timeout http-request 10s
    timeout client 90s
    timeout server 90s
    retries 3
    option redispatch 1
    retry-on conn-failure
frontend mcp
    bind 127.0.0.1:{port}
    default_backend gateways
backend gateways
    balance roundrobin
    option httpchk GET /readyz
    http-check send hdr Host localhost
    http-check expect status 200
    default-server check inter 500ms fall 2 rise 1
{servers}
"""


def add_arguments(parser) -> None:
    parser.add_argument("--instances", type=int, default=3, help="gateways behind the balancer (default 3)")
    parser.add_argument("--fixture", action="append",
                        help="a fixture to replay (repeatable; default echo-small-modern and echo-small-legacy)")
    parser.add_argument("-c", "--concurrency", type=int, default=16, help="virtual sessions (default 16)")
    parser.add_argument("--duration", default="8s", help="each run's length (default 8s)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three paths (default 2)")
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of tables")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _need(program: str) -> str:
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise BenchError(f"{program} is not installed (Debian: apt-get install {program}); load topology runs it")
    return found


def _until(ready, timeout: float, what: str) -> None:
    """Poll ``ready()`` until it is true; past ``timeout``, say ``what`` did not happen."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise BenchError(f"{what} within {timeout:g}s")
        time.sleep(0.05)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


class Topology:
    """Redis, the instances and both balancers, stopped together."""

    def __init__(self, instances: int, folder: Path, timeout: float) -> None:
        self.started: list = []
        try:
            redis_port = free_port()
            self.redis = self._start([_need("redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"], timeout)
            import redis

            self.client = redis.Redis(port=redis_port, socket_timeout=5)
            _until(self._ping, 10.0, "redis-server did not answer")
            config = {**echo_config(), "store": {"backend": "redis", "url": f"redis://127.0.0.1:{redis_port}/0",
                                                 "prefix": "topology:"}}
            self.gateways = [HttpProcess("gateway", str(folder), timeout, config=config) for _ in range(instances)]
            self.started += self.gateways
            haproxy = _need("haproxy")
            self.urls = {"direct": str(self.gateways[0].url)}
            self.balancers: dict = {}
            for path, members in (("haproxy-1", self.gateways[:1]), ("haproxy-n", self.gateways)):
                port = free_port()
                servers = "\n".join(f"    server gw{i} 127.0.0.1:{g.port}" for i, g in enumerate(members))
                cfg = folder / f"{path}.cfg"
                cfg.write_text(HAPROXY_CFG.format(port=port, servers=servers))
                self.balancers[path] = self._start([haproxy, "-db", "-q", "-f", str(cfg)], timeout)
                _until(lambda port=port: _answers(f"http://127.0.0.1:{port}/readyz"), 30.0,
                       f"HAProxy on port {port} did not answer 200 on /readyz")
                self.urls[path] = f"http://127.0.0.1:{port}/mcp/echo"
            # What Redis does with no load (heartbeats, refreshes), taken out of each run's count.
            before, start = self.redis_commands(), time.monotonic()
            time.sleep(2.0)
            self.background = (self.redis_commands() - before) / (time.monotonic() - start)
        except BaseException:
            self.stop()
            raise

    def _start(self, argv: list, timeout: float) -> Started:
        started = Started(argv, timeout)
        self.started.append(started)
        return started

    def _ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except Exception:
            return False

    def redis_commands(self) -> int:
        return sum(v["calls"] for v in self.client.info("commandstats").values())

    def ticks(self, path: str) -> tuple[int, int]:
        """CPU ticks so far of the gateway processes (their servers excluded) and of the path's balancer."""
        own = [read_stat(g.pid) for g in self.gateways]
        balancer = read_stat(self.balancers[path].pid) if path in self.balancers else None
        return sum(s.ticks for s in own if s is not None), balancer.ticks if balancer is not None else 0

    def adoptions(self) -> int:
        return sum(len(ADOPTED.findall(g.log_file.read_bytes())) for g in self.gateways if g.log_file.exists())

    def stop(self) -> None:
        for started in reversed(self.started):
            started.stop(grace=5.0)


def _one_run(topo: Topology, path: str, fixture: str, concurrency: int, duration: float) -> dict:
    before, adopted, start, ticks = topo.redis_commands(), topo.adoptions(), time.monotonic(), topo.ticks(path)
    out = subprocess.run(load_run(topo.urls[path], fixture, concurrency, "--duration", f"{duration}s"),
                         capture_output=True, text=True, timeout=duration + 120)
    run = read_run(out.stdout, path, out.stderr)
    commands = max(0, round(topo.redis_commands() - before - topo.background * (time.monotonic() - start)))
    gateway_ticks, balancer_ticks = (b - a for a, b in zip(ticks, topo.ticks(path)))
    calls = run["calls"] or 1
    return {"calls": run["calls"], "calls_per_s": run["calls_per_s"], "p50_ms": run["latency"]["all"]["p50_ms"],
            "p99_ms": run["latency"]["all"]["p99_ms"], "errors": run["errors"], "mismatches": run["mismatches"],
            "redis_commands": commands, "redis_per_call": commands / run["calls"] if run["calls"] else None,
            "adoptions": topo.adoptions() - adopted, "gateway_cpu_us_per_call": ticks_to_us(gateway_ticks) / calls,
            "balancer_cpu_us_per_call": ticks_to_us(balancer_ticks) / calls}


def execute(args) -> dict:
    if args.instances < 1 or args.concurrency < 1 or args.rounds < 1:
        raise BenchError("--instances, -c and --rounds must be >= 1")
    duration = parse_duration(args.duration)
    fixtures = args.fixture or ["echo-small-modern", "echo-small-legacy"]
    runs: list = []
    with tempfile.TemporaryDirectory(prefix="wg-topology-") as tmp:
        topo = Topology(args.instances, Path(tmp), timeout=(duration + 30) * args.rounds * len(fixtures) * 3 + 120)
        try:
            for fixture in fixtures:
                for rnd in range(1, args.rounds + 1):
                    for path in PATHS:
                        runs.append({"fixture": fixture, "path": path, "round": rnd,
                                     **_one_run(topo, path, fixture, args.concurrency, duration)})
        finally:
            topo.stop()
    return {"tool": "load topology", "schema": 1,
            "config": {"instances": args.instances, "fixtures": fixtures, "concurrency": args.concurrency,
                       "duration_s": duration, "rounds": args.rounds},
            "runs": runs, "summary": summarize(runs, fixtures),
            "errors": sum(r["errors"] for r in runs), "mismatches": sum(r["mismatches"] for r in runs)}


def summarize(runs: list, fixtures: list) -> list:
    """Per fixture and path: medians over rounds, the ratio to direct, Redis per adoption (path N)."""
    out = []
    for fixture in fixtures:
        by_path = {p: [r for r in runs if r["fixture"] == fixture and r["path"] == p] for p in PATHS}
        direct = median(r["calls_per_s"] for r in by_path["direct"])
        for path, rs in by_path.items():
            row = {"fixture": fixture, "path": path, "calls_per_s": median(r["calls_per_s"] for r in rs),
                   "p50_ms": median(r["p50_ms"] for r in rs), "p99_ms": median(r["p99_ms"] for r in rs),
                   "redis_per_call": median(r["redis_per_call"] for r in rs),
                   "gateway_cpu_us": median(r["gateway_cpu_us_per_call"] for r in rs),
                   "balancer_cpu_us": median(r["balancer_cpu_us_per_call"] for r in rs),
                   "adoptions": median(r["adoptions"] for r in rs)}
            row["ratio_to_direct"] = row["calls_per_s"] / direct if direct else None
            if path == "haproxy-n":   # beyond the same round through HAProxy to one instance
                per = [(n["redis_commands"] - one["redis_commands"]) / n["adoptions"]
                       for n, one in zip(rs, by_path["haproxy-1"]) if n["adoptions"]]
                row["redis_per_adoption"] = median(per) if per else None
            out.append(row)
    return out


def render(result: dict) -> str:
    cfg = result["config"]
    lines = [f"load topology: {cfg['instances']} instances, -c {cfg['concurrency']}, {cfg['duration_s']:g}s x "
             f"{cfg['rounds']} rounds per path (medians); errors {result['errors']}, mismatches {result['mismatches']}"]
    rows = [[r["fixture"], r["path"], fmt(r["calls_per_s"]), times(r["ratio_to_direct"]), fmt(r["p50_ms"], 1),
             fmt(r["p99_ms"], 1), fmt(r["gateway_cpu_us"], 0), fmt(r["balancer_cpu_us"], 0),
             fmt(r["redis_per_call"], 4), fmt(r["adoptions"]), fmt(r.get("redis_per_adoption"), 1)]
            for r in result["summary"]]
    lines += table(["fixture", "path", "calls/s", "vs direct", "p50 ms", "p99 ms", "gateways µs/call",
                    "haproxy µs/call", "redis/call", "adoptions", "redis/adoption"], rows)
    return "\n".join(lines)


def run(args) -> int:
    try:
        result = execute(args)
    except BenchError as exc:
        print(f"load topology: {exc}", file=sys.stderr)
        return 2
    return emit(result, args.json, render)
