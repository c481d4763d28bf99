"""A hidden debug hook: where does the gateway's memory go?

Off unless `WIRE_GATEWAY_TRACEMALLOC` names a path prefix. Then `serve` starts
`tracemalloc` before its first request (not before its imports: tracing those cost
seconds of CPU, and what matters is growth while serving; tracing slows every
allocation, so never in production), and each SIGUSR1 collects garbage and writes
`<prefix>.<n>.snap` (for `tracemalloc.Snapshot.load` and `compare_to`) and then
`<prefix>.<n>.json` (traced bytes, gc-tracked objects, RSS, the top allocation
sites), the JSON last, so a reader that sees it can read both.
`WIRE_GATEWAY_TRACEMALLOC_FRAMES=0` leaves tracemalloc off (RSS as in production).

The report also gives RSS after glibc's `malloc_trim(0)`: what that gives back was
free memory the allocator kept (a high-water mark), not memory anything still uses.
tests/test_memory.py uses the hook to tell the two apart.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import json
import os
import signal
import tracemalloc
from typing import Any

ENV = "WIRE_GATEWAY_TRACEMALLOC"
FRAMES_ENV = "WIRE_GATEWAY_TRACEMALLOC_FRAMES"


def prefix() -> str | None:
    return os.environ.get(ENV) or None


def start() -> None:
    """Start tracing (if asked for), before the first request."""
    frames = int(os.environ.get(FRAMES_ENV) or 12)
    if prefix() is not None and frames > 0 and not tracemalloc.is_tracing():
        tracemalloc.start(frames)


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@functools.cache
def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def malloc_trim() -> bool:
    """Hand the C allocator's free memory back to the system (glibc only)."""
    try:
        return bool(_libc().malloc_trim(0))
    except (OSError, AttributeError):
        return False


def write(path_prefix: str, n: int) -> dict[str, Any]:
    gc.collect()
    report: dict[str, Any] = {"n": n, "traced": 0, "objects": len(gc.get_objects()), "top": []}
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot().filter_traces(
            (tracemalloc.Filter(False, tracemalloc.__file__),
             tracemalloc.Filter(False, "<frozen importlib._bootstrap>")))
        snapshot.dump(f"{path_prefix}.{n}.snap")
        stats = snapshot.statistics("lineno")
        report["traced"] = sum(s.size for s in stats)
        report["top"] = [{"where": str(s.traceback), "size": s.size, "count": s.count} for s in stats[:25]]
    report["rss"] = rss_bytes()
    report["trimmed"] = malloc_trim()
    report["rssAfterTrim"] = rss_bytes()
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
