"""`python -m load topology`: the scale-out topology started on 127.0.0.1 and measured, for real
(redis-server, three `wire-gateway serve` instances, two HAProxies). Nothing here asserts speed:
only that every path answers every call right and that Redis is counted where the design says
(docs/scaling.md): nothing per modern call, and each legacy session adopted once by every other
instance it reaches through the round-robin balancer.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_topology_measures_every_path(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "load", "topology", "--instances", "3", "-c", "4", "--duration",
                           "1.5s", "--rounds", "1", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    assert doc["errors"] == 0 and doc["mismatches"] == 0
    rows = {(r["fixture"], r["path"]): r for r in doc["summary"]}
    assert set(rows) == {(f, p) for f in ("echo-small-modern", "echo-small-legacy")
                         for p in ("direct", "haproxy-1", "haproxy-n")}
    for row in rows.values():
        assert row["calls_per_s"] > 0 and row["ratio_to_direct"] is not None
    for path in ("direct", "haproxy-1", "haproxy-n"):
        assert rows[("echo-small-modern", path)]["redis_per_call"] < 0.01      # none on the modern hot path
        assert rows[("echo-small-modern", path)]["adoptions"] == 0
    assert rows[("echo-small-legacy", "direct")]["adoptions"] == 0
    assert rows[("echo-small-legacy", "haproxy-1")]["adoptions"] == 0
    assert rows[("echo-small-legacy", "haproxy-n")]["adoptions"] == 4 * 2      # each session, by the two others
    text = subprocess.run([sys.executable, "-m", "load", "topology", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60).stdout
    assert "--instances" in text
