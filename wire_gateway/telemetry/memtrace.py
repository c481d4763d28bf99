"""A hidden debug hook: where does the gateway's memory go?

Off unless `WIRE_GATEWAY_TRACEMALLOC` names a path prefix. Then `tracemalloc` runs
from start-up (it slows allocation down, so never in production), and each SIGUSR1
collects garbage, takes a snapshot and writes `<prefix>.<n>.snap` (for
`tracemalloc.Snapshot.load` and `compare_to`) and `<prefix>.<n>.json` (traced bytes,
live objects, RSS and the top allocation sites), the JSON last, so a reader that
sees it can read both. The memory tests (tests/test_memory.py) use it to tell Python
objects that stay (true retention) from RSS the allocator keeps (a high-water mark).
"""
from __future__ import annotations

import gc
import json
import os
import signal
import tracemalloc
from typing import Any

ENV = "WIRE_GATEWAY_TRACEMALLOC"
FRAMES = 12


def prefix() -> str | None:
    return os.environ.get(ENV) or None


def start() -> None:
    """Start tracing as early as possible, so start-up allocations are accounted for."""
    if prefix() is not None and not tracemalloc.is_tracing():
        tracemalloc.start(FRAMES)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def write(path_prefix: str, n: int) -> dict[str, Any]:
    gc.collect()
    snapshot = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>")))
    snapshot.dump(f"{path_prefix}.{n}.snap")
    current, peak = tracemalloc.get_traced_memory()
    stats = snapshot.statistics("lineno")
    report = {
        "n": n, "traced": sum(s.size for s in stats), "tracedPeak": peak, "tracedCurrent": current,
        "objects": len(gc.get_objects()), "rss": rss_bytes(),
        "top": [{"where": str(s.traceback), "size": s.size, "count": s.count} for s in stats[:25]],
    }
    tmp = f"{path_prefix}.{n}.json.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, f"{path_prefix}.{n}.json")
    return report


async def serve_snapshots(path_prefix: str) -> None:
    """Write one snapshot per SIGUSR1 until cancelled."""
    import trio

    n = 0
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            n += 1
            write(path_prefix, n)
