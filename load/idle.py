"""``http-bench --idle-sessions``: the gateway's memory with many idle legacy sessions.

Sessions are opened in batches (``initialize`` + ``initialized``, then left idle), the gateway's RSS, its
tree's RSS and PSS and ``MemAvailable`` read at each count asked for; then every session is DELETEd
and its process must be gone. The measurement stops before the machine runs short of memory.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from . import BenchError, http_client as hc, procfs
from .report import table
from .targets import start_http


def mib(kib) -> str:
    return "-" if kib is None else f"{kib / 1024:,.1f}"


def measure(gateway: str, counts: list, tmpdir: str, timeout: float, reserve_mib: int = 2048,
            parallel: int = 8, batch: int = 50) -> dict:
    """Open legacy sessions up to each count, recording the gateway's RSS, then DELETE them all and check
    that their processes are gone. Stops early (``stopped_early`` says why) when MemAvailable would drop
    under ``reserve_mib`` for the next batch, at the per-session cost measured so far."""
    out: dict = {"counts": counts, "checkpoints": [], "reserve_mib": reserve_mib}
    target = None
    clients: list = []
    try:
        target = start_http(gateway, "gateway", tmpdir, timeout)
        if target.pid is None:
            raise BenchError(f"cannot find the process listening on {target.url}: no RSS to measure")
        deadline, pid = time.monotonic() + timeout, target.pid
        time.sleep(1.0)   # let start-up settle
        baseline_kids = set(procfs.descendants(procfs.scan_processes(), pid))

        def checkpoint(label):
            own, total, kids = procfs.tree_rss_kib(pid)
            point = {"sessions": len(clients), "label": label, "gateway_rss_kib": own, "tree_rss_kib": total,
                     "tree_pss_kib": procfs.tree_pss_kib(pid), "processes": kids + 1,
                     "mem_available_mib": procfs.mem_available_kib() // 1024}
            if point["sessions"]:
                point["gateway_kib_per_session"] = round(
                    (own - out["checkpoints"][0]["gateway_rss_kib"]) / point["sessions"], 1)
            out["checkpoints"].append(point)
            return point

        def open_one(_):
            try:
                client = hc.Client(target.url, modern=False, timeout=60.0)
                try:
                    client.open_session()
                finally:
                    client.close()   # the session lives on; the connection is not needed
            except BenchError as exc:
                return str(exc)
            return client

        idle = checkpoint("idle")
        per_session_mib = 15.0   # a guess until measured
        opened_at = time.monotonic()
        with ThreadPoolExecutor(parallel) as pool:
            for goal in sorted(counts):
                while len(clients) < goal and "stopped_early" not in out:
                    if time.monotonic() > deadline:
                        raise BenchError(f"time limit reached with {len(clients)} sessions open")
                    step = min(batch, goal - len(clients))
                    avail, need = procfs.mem_available_kib() / 1024, step * per_session_mib
                    if avail - need < reserve_mib:
                        out["stopped_early"] = (
                            f"stopped at {len(clients)} sessions (goal {goal}): {avail:,.0f} MiB available, "
                            f"the next {step} sessions need about {need:,.0f} MiB ({per_session_mib:.1f} MiB each, "
                            f"{'measured so far' if clients else 'a first guess'}) and {reserve_mib} MiB is kept "
                            "in reserve")
                        break
                    opened = list(pool.map(open_one, range(step)))
                    clients += [c for c in opened if not isinstance(c, str)]
                    failures = [c for c in opened if isinstance(c, str)]
                    if failures:
                        raise BenchError(f"{len(failures)} of {step} sessions failed to open "
                                         f"(with {len(clients)} open): {failures[0]}")
                    target.remember_now()
                    # what a session really costs: its share of RAM (Pss), or what MemAvailable lost
                    pss = (procfs.tree_pss_kib(pid) - idle["tree_pss_kib"]) / 1024 / len(clients)
                    lost = (idle["mem_available_mib"] - procfs.mem_available_kib() / 1024) / len(clients)
                    per_session_mib = max(1.0, pss, lost)
                if "stopped_early" in out:
                    break
                time.sleep(1.0)   # let the new processes settle
                checkpoint(f"{goal} idle sessions")
        out["open_seconds"] = round(time.monotonic() - opened_at, 1)
        peak = out["checkpoints"][-1]
        out["peak_sessions"] = peak["sessions"]
        if peak["sessions"]:
            out["gateway_kib_per_session"] = peak["gateway_kib_per_session"]   # its checkpoint's, against idle
            for key, digits in (("rss", 1), ("pss", 2)):
                growth_kib = peak[f"tree_{key}_kib"] - idle[f"tree_{key}_kib"]
                out[f"tree_{key}_mib_per_session"] = round(growth_kib / 1024 / peak["sessions"], digits)
        out["delete_failures"], clients = _delete(clients, parallel), []
        gone_by = time.monotonic() + 30.0   # every session's process must be gone; a shared one stays
        while (left := set(procfs.descendants(procfs.scan_processes(), pid)) - baseline_kids) and \
                time.monotonic() <= gone_by:
            time.sleep(0.2)
        out["session_processes_left"] = sorted(left)
        checkpoint("after DELETE of all sessions")
    except BenchError as exc:
        out["error"] = str(exc)
    finally:
        if clients:
            out["delete_failures"] = _delete(clients, parallel)
        if target is not None:
            out["shutdown"] = target.stop(grace=60.0)
    return out


def _delete(clients: list, parallel: int) -> list:
    def delete(client):
        try:
            client.connect()
            status = client.end_session()
            return None if status == 200 else status
        except BenchError as exc:
            return str(exc)
        finally:
            client.close()

    with ThreadPoolExecutor(parallel) as pool:
        return [r for r in pool.map(delete, clients) if r is not None]


def render(idle: dict) -> list:
    """The report's lines: the checkpoints' table, the cost per session, what was left."""
    lines = ["== idle legacy sessions on the gateway (initialize + initialized, then idle)",
             *table(["", "sessions", "gateway RSS MiB", "tree RSS MiB", "tree PSS MiB", "processes",
                     "MemAvailable MiB", "gw KiB/session"],
                    [[p["label"], p["sessions"], mib(p["gateway_rss_kib"]), mib(p["tree_rss_kib"]),
                      mib(p["tree_pss_kib"]), p["processes"], p["mem_available_mib"],
                      p.get("gateway_kib_per_session")] for p in idle.get("checkpoints", [])], indent=0)]
    if "gateway_kib_per_session" in idle:
        lines.append(f"  per idle session: gateway's own RSS +{idle['gateway_kib_per_session']:.1f} KiB; "
                     f"whole tree +{idle['tree_rss_mib_per_session']:.1f} MiB RSS, "
                     f"+{idle['tree_pss_mib_per_session']:.2f} MiB PSS (mostly the upstream process); "
                     f"{idle['peak_sessions']} sessions opened in {idle.get('open_seconds')}s")
    if "stopped_early" in idle:
        lines.append(f"  {idle['stopped_early']}")
    if "session_processes_left" in idle:
        left = idle["session_processes_left"]
        lines.append(f"  after DELETE: {len(left)} session processes left {left if left else ''}; "
                     f"DELETE failures: {len(idle.get('delete_failures', []))}")
    if "error" in idle:
        lines.append(f"  ERROR {idle['error']}")
    stop = idle.get("shutdown", {})
    if stop.get("stragglers") or stop.get("stopped_by") not in ("SIGTERM", "external (left running)", None):
        lines.append(f"  shutdown {stop}")
    return lines
