"""What the load tool reads from /proc, and where it puts processes: one reader for every command.

CPU in clock ticks (a process itself, its tree, the driver, the whole machine: how much of it was
someone else's), memory as RSS and PSS. Processes are told apart by pid *and* start time, so a
reused pid is never counted, nor killed, as ours.
"""
from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

from . import BenchError

CLK_TCK = os.sysconf("SC_CLK_TCK")


class ProcStat(NamedTuple):
    """The few /proc/PID/stat fields we need (ticks are clock ticks)."""
    ppid: int
    ticks: int  # utime + stime: this process only, children excluded
    start: int  # start time, to tell a pid apart from a reused one


def read_stat(pid: int) -> ProcStat | None:
    """ProcStat of ``pid``, or None if it is gone (proc(5) fields 4, 14, 15, 22, counted after the
    command name's last ')': the name may hold spaces and parentheses)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2:].split()
    return ProcStat(ppid=int(rest[1]), ticks=int(rest[11]) + int(rest[12]), start=int(rest[19]))


def scan_processes() -> dict:
    """{pid: ProcStat} for every process we can see."""
    stats = {int(name): read_stat(int(name)) for name in os.listdir("/proc") if name.isdigit()}
    return {pid: stat for pid, stat in stats.items() if stat is not None}


def descendants(table: dict, root: int) -> dict:
    """{pid: ProcStat} of all descendants of ``root`` (not root itself)."""
    children: dict = {}
    for pid, stat in table.items():
        children.setdefault(stat.ppid, []).append(pid)
    found, todo = {}, list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        found[pid] = table[pid]
        todo.extend(children.get(pid, ()))
    return found


@dataclass
class CpuSample:
    """CPU counters taken at one instant, to be subtracted pairwise."""
    own_ticks: int
    tree: dict  # {pid: ProcStat} of the target and all its descendants
    driver_ns: int
    driver_ticks: int  # the same, in ticks, to compare with the machine's
    machine_ticks: int  # busy ticks of the whole machine, all CPUs (user+nice+system+irq+softirq)

    @classmethod
    def take(cls, pid: int | None, driver_first: bool) -> CpuSample:
        """Sample now; the driver's clock is read on the window's side of the /proc scan (which costs
        a few milliseconds), keeping that out of the driver's per-call figure. No ``pid`` (a target
        whose process is not ours to see): the driver's and the machine's clocks only."""
        def driver() -> tuple:
            with open("/proc/stat", "rb") as f:
                user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
            return time.process_time_ns(), read_stat(os.getpid()).ticks, user + nice + system + irq + softirq

        if pid is None:
            return cls(0, {}, *driver())
        first = driver() if driver_first else None
        table = scan_processes()
        own = table.get(pid) or read_stat(pid)
        tree = descendants(table, pid)
        if own is not None:
            tree[pid] = own
        return cls(own.ticks if own else 0, tree, *(first or driver()))


def tree_ticks_between(before: dict, after: dict) -> int:
    """Ticks spent by the tree between two samples: by difference, or whole for a process that appeared
    in between (one that exited is lost: the targets measured do not churn processes)."""
    total = 0
    for pid, stat in after.items():
        old = before.get(pid)
        total += stat.ticks - (old.ticks if old is not None and old.start == stat.start else 0)
    return total


def ticks_to_us(ticks: int) -> float:
    return ticks * 1e6 / CLK_TCK


def reap_stragglers(known: dict, group: int, patience: float) -> list:
    """Give a target's descendants (``known``: {pid: start time}) ``patience`` seconds to exit, then
    SIGKILL them and its group."""
    deadline = time.monotonic() + patience
    while True:
        alive = [pid for pid, start in known.items() if getattr(read_stat(pid), "start", None) == start]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    signal_group(group)   # anything else left in its group
    return alive


def signal_group(group: int, sig: int = signal.SIGKILL) -> bool:
    """Signal a process group (a target started in its own session); False if it is gone or not ours."""
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def cpu_plan(mode: str) -> tuple:
    """(driver CPUs, target CPUs) for a --pin mode; (None, None) = unpinned (split with one CPU too).
    Unpinned rounds fall into two clusters ~3x apart: see docs/notes/load-design.md."""
    allowed = sorted(os.sched_getaffinity(0))
    if mode == "same":
        return {allowed[0]}, {allowed[0]}
    if mode == "split" and len(allowed) >= 2:
        return {allowed[0]}, set(allowed[1:])
    return None, None


@contextmanager
def pinned(cpus):
    """Run the block with this process on ``cpus``; restore afterwards."""
    saved = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        if cpus:
            os.sched_setaffinity(0, saved)


def read_kib(path: str, key: bytes) -> int | None:
    """A ``key: N kB`` line of a /proc file (VmRSS of ``status``, Pss of ``smaps_rollup``, ...), or None."""
    try:
        with open(path, "rb") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(key)), None)
    except (OSError, ValueError):
        return None


def tree_pss_kib(pid) -> int:
    """Pss summed over pid and its descendants: what the tree really costs in RAM
    (RSS counts the interpreter's shared pages once per process)."""
    return sum(read_kib(f"/proc/{p}/smaps_rollup", b"Pss:") or 0 for p in [pid, *descendants(scan_processes(), pid)])


def tree_rss_kib(pid) -> tuple:
    """(RSS of pid, RSS of pid and all its descendants, number of descendants), KiB."""
    own, kids = read_kib(f"/proc/{pid}/status", b"VmRSS:"), descendants(scan_processes(), pid)
    return own, (own or 0) + sum(read_kib(f"/proc/{p}/status", b"VmRSS:") or 0 for p in kids), len(kids)


def mem_available_kib() -> int:
    kib = read_kib("/proc/meminfo", b"MemAvailable:")
    if kib is None:
        raise BenchError("no MemAvailable in /proc/meminfo")
    return kib


def pid_listening_on(port: int):
    """The pid of one of our processes listening on a TCP port, or None."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = [line.split() for line in f][1:]
        except OSError:
            continue
        inodes |= {f"socket:[{row[9]}]" for row in rows if row[3] == "0A" and int(row[1].rsplit(":", 1)[1], 16) == port}
    for name in os.listdir("/proc") if inodes else ():
        try:
            if name.isdigit() and any(os.readlink(f"/proc/{name}/fd/{fd}") in inodes
                                      for fd in os.listdir(f"/proc/{name}/fd")):
                return int(name)
        except OSError:
            continue
    return None
