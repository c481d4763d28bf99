"""Measure an MCP server over Streamable HTTP directly and through the gateway, side by side.

    python -m load http-bench [--direct URL|auto] [--gateway URL|auto] [-n 10000]
                              [--concurrency 1,16] [--rounds 3] [--era modern|legacy]
                              [--workers 1] [--idle-sessions N[,N...]] [--ceiling] [--dump] [--json]

With ``auto`` (the default) the bench starts its targets itself, one fresh
process per target and round: direct = ``fixtures/servers/http_echo.py`` (a
raw trio + h11 MCP server) on a free port; gateway = ``python -m wire_gateway
serve`` proxying the stdio echo fixture, its port read from its log.  A URL
instead measures a server that is already running (its CPU and memory are
found through the process listening on the URL's port, if it is ours to see).

Scenarios, per target and round (same names and conventions as stdio-bench):

* ``sequential``: one virtual client, one call at a time: the latency figure;
* ``clients_K`` (each K > 1 of --concurrency): K virtual clients, each with
  its own keep-alive connection, each doing sequential calls.

Modern era (2026-07-28): every POST carries ``MCP-Protocol-Version``,
``Mcp-Method`` and ``Mcp-Name`` and the body carries the protocol version in
``params._meta``.  Legacy era (2025-11-25): each virtual client first does
``initialize`` + ``notifications/initialized`` and sends its
``Mcp-Session-Id`` on every call; its session is ended with DELETE after the
scenario (through the gateway, each legacy session has its own upstream
process).  Every answer is checked: HTTP status 200, id equal to the
request's, content equal to the echo of the call's unique text, and (modern)
``resultType: complete``; an SSE answer is read until its response event.
Bad answers are counted by kind, never ignored.

Per scenario: calls/s, p50/p90/p99/max latency, CPU per call of the target
process itself (utime+stime from /proc/PID/stat: for the gateway, children
excluded) and of its whole tree, the driver's CPU per call; per run, the
target's VmRSS (and its tree's) at the end.  Targets alternate A B A B;
summaries are medians over rounds.  CPU placement: ``--pin``/``--spin`` as in
stdio-bench (default: driver on one CPU, the targets and their children on
the others).

The driver is built not to be the limit: raw sockets, requests pre-serialized
with their Content-Length before the window, responses parsed by hand (status
line, headers, Content-Length or chunked body), one epoll loop for all the
connections of a process; ``--workers W`` splits the virtual clients over W
forked processes (results merged) for machines with CPUs to spare.
``--ceiling`` drives a minimal in-module HTTP echo (regex, canned answers)
instead of the two targets: what the driver reaches there is its own ceiling.

``--dump``: measure what frame dumps cost instead: both targets are the
gateway (``auto``), A without dumps (shown as "direct"), B with ``--dump`` to a
file in the temporary directory; the ratio is B's throughput over A's.  Each
B run also reports its dump's records, bytes and frames dropped.

``--idle-sessions 200,1000``: after the runs, start a fresh gateway (or use
--gateway URL), record its RSS idle, open legacy sessions (initialize +
initialized, then left idle) up to each count, recording the gateway's own
RSS and its tree's, then DELETE them all and check that their processes are
gone.  Each session has its own upstream process, so free memory is checked
before every batch and the measurement stops early, saying so, when it runs
low.

Exit status: 0 all good, 1 some answers mismatched, 2 some run failed.
"""
from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson

from . import BenchError, procfs, stdio_bench as sb
from .assets import CHECKOUT
from .http_client import (
    MODERN_VERSION,
    READ_SIZE,
    Client,
    ProtocolError,
    Response,
    close_clients,
    open_clients,
    parse_response,
    sse_messages,
)
from .procfs import CpuSample, mem_available_kib, tree_pss_kib, tree_rss_kib
from .report import table
from .stats import median
from .stdio_bench import DriveResult, Mismatches
from .targets import HttpProcess, Url, start_http

ECHO_FIXTURE = sb.ECHO_FIXTURE
ERAS = ("modern", "legacy")
WARMUP_CALLS = 500
FIRST_CALL_ID = 1
STALL_S = 10.0          # no byte from any connection for this long: the run fails
START_TIMEOUT_S = 30.0  # a target must be listening within this
MAX_EXAMPLES = sb.MAX_EXAMPLES


# --------------------------------------------------------------------------
# Wire format: requests
# --------------------------------------------------------------------------

META = (b'"_meta":{"io.modelcontextprotocol/protocolVersion":"' + MODERN_VERSION.encode() +
        b'","io.modelcontextprotocol/clientInfo":{"name":"http-bench","version":"0"},'
        b'"io.modelcontextprotocol/clientCapabilities":{}}')


def call_body(call_id: int, modern: bool) -> bytes:
    """One serialized ``tools/call`` of ``echo``; the text (``t<id>``) is unique per id."""
    if modern:
        return (b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo",'
                b'"arguments":{"text":"t%d"},%s}}' % (call_id, call_id, META))
    return (b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo",'
            b'"arguments":{"text":"t%d"}}}' % (call_id, call_id))


def expected_content(call_id: int) -> list:
    return [{"type": "text", "text": "t%d" % call_id}]


def call_tail(call_id: int, modern: bool) -> bytes:
    """Content-Length, the blank line and the body: what follows a client's head."""
    body = call_body(call_id, modern)
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


# --------------------------------------------------------------------------
# Wire format: responses
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# Answer checking
# --------------------------------------------------------------------------

def check_answer(resp: Response, call_id: int, modern: bool):
    """(kind, sample bytes, notifications) of a bad answer, or (None, None, notifications)."""
    body = resp.body
    notes = 0
    if resp.status != 200:
        return "http_%d" % resp.status, body, 0
    ctype = resp.headers.get(b"content-type", b"")
    if ctype.startswith(b"text/event-stream"):
        answer = None
        for data in sse_messages(body):
            try:
                msg = orjson.loads(data)
            except orjson.JSONDecodeError:
                return "unparseable_event", data, notes
            if type(msg) is dict and "method" in msg:
                if "id" in msg:
                    return "server_request", data, notes   # not allowed on a modern stream; unexpected here
                notes += 1
            elif answer is None:
                answer, body = msg, data
            else:
                return "extra_answer", data, notes
        if answer is None:
            return "no_answer_in_stream", body, notes
        msg = answer
    elif ctype.startswith(b"application/json"):
        try:
            msg = orjson.loads(body)
        except orjson.JSONDecodeError:
            return "unparseable", body, 0
    else:
        return "content_type", ctype + b" " + body[:100], 0
    if type(msg) is not dict:
        return "malformed", body, notes
    rid = msg.get("id")
    if type(rid) is not int or rid != call_id:
        return "wrong_id", body, notes
    result = msg.get("result")
    if type(result) is not dict:
        return ("error" if "error" in msg else "malformed"), body, notes
    if result.get("content") != expected_content(call_id) or result.get("isError"):
        return "wrong_content", body, notes
    if modern and result.get("resultType") != "complete":
        return "wrong_result_type", body, notes
    return None, None, notes


# --------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# The measured loop
# --------------------------------------------------------------------------

def drive(clients: list, first_id: int, n: int, spin: bool = False, deadline: float | None = None) -> DriveResult:
    """Send ``n`` calls over the clients, each client one call at a time.

    Each connection has exactly one call outstanding; when its answer is
    complete it is checked and the next call goes out on that connection.
    Call ids are ``first_id .. first_id + n - 1``, handed out in send order.
    """
    modern = clients[0].modern
    tails = [call_tail(first_id + i, modern) for i in range(n)]
    if deadline is None:
        deadline = time.monotonic() + 3600
    if len(clients) == 1 and not spin:
        return _drive_one(clients[0], first_id, tails, deadline)
    return _drive_many(clients, first_id, tails, spin, deadline)


class _Tally:
    """Latencies and mismatches of one window."""

    __slots__ = ("latencies", "bad", "notifications")

    def __init__(self):
        self.latencies = array("q")
        self.bad = Mismatches()
        self.notifications = 0

    def answer(self, resp: Response, call_id: int, modern: bool, latency: int) -> None:
        kind, sample, notes = check_answer(resp, call_id, modern)
        self.notifications += notes
        if kind is None:
            self.latencies.append(latency)
        else:
            self.bad.add(kind, sample if sample is not None else b"")


def _drive_one(client: Client, first_id: int, tails: list, deadline: float) -> DriveResult:
    """One client, blocking socket: the lowest-latency loop for the sequential scenario."""
    clock, tally, n = time.perf_counter_ns, _Tally(), len(tails)
    modern, stall = client.modern, min(STALL_S, max(0.1, deadline - time.monotonic()))
    sock = client.sock
    sock.settimeout(stall)
    recv, parse, answer = sock.recv, parse_response, tally.answer
    start = now = clock()
    i = 0
    try:
        while i < n:
            head = client.head
            sent_at = clock()
            sock.sendall(head + tails[i])
            buf = client.buf
            while True:
                data = recv(READ_SIZE)
                now = clock()
                buf = buf + data if buf else data
                parsed = parse(buf, eof=not data)
                if parsed is not None:
                    break
                if not data:
                    raise BenchError(f"{client.url}: connection closed after {i} answers")
            resp, used = parsed
            client.buf = buf[used:]
            answer(resp, first_id + i, modern, now - sent_at)
            i += 1
            if resp.close:
                client.connect()
                sock = client.sock
                sock.settimeout(stall)
                recv = sock.recv
            if i & 1023 == 0 and time.monotonic() > deadline:
                raise BenchError(f"{client.url}: time limit reached after {i} of {n} answers")
    except ProtocolError as exc:
        raise BenchError(f"{client.url}: {exc} (after {i} answers)") from None
    except OSError as exc:
        raise BenchError(f"{client.url}: {exc or type(exc).__name__} after {i} of {n} answers") from None
    finally:
        client.sock.settimeout(client.timeout)
    return DriveResult(i, now - start, list(tally.latencies), tally.bad, tally.notifications)


def _drive_many(clients: list, first_id: int, tails: list, spin: bool, deadline: float) -> DriveResult:
    """Several clients (or --spin): non-blocking sockets, one epoll for all."""
    clock, tally, n = time.perf_counter_ns, _Tally(), len(tails)
    modern = clients[0].modern
    ep = select.epoll()
    by_fd, call_of, sent_at = {}, {}, {}
    for c in clients:
        c.sock.setblocking(False)
        ep.register(c.fd, select.EPOLLIN)
        by_fd[c.fd] = c
    parse, answer, poll = parse_response, tally.answer, ep.poll
    wait = 0 if spin else min(STALL_S, 1.0)
    sent = answered = 0
    start = now = clock()
    last_progress = time.monotonic()

    def send(c: Client) -> None:
        nonlocal sent
        call_of[c.fd] = sent
        sent_at[c.fd] = clock()
        data = c.head + tails[sent]
        sent += 1
        done = c.sock.send(data)
        if done < len(data):   # never for a few hundred bytes into an idle socket, but be exact
            c.sock.setblocking(True)
            c.sock.settimeout(STALL_S)
            c.sock.sendall(data[done:])
            c.sock.setblocking(False)

    try:
        for c in clients[:min(len(clients), n)]:
            send(c)
        while answered < n:
            events = poll(wait)
            if not events:
                mono = time.monotonic()
                if mono - last_progress > STALL_S or mono > deadline:
                    why = "time limit reached" if mono > deadline else f"no answer for {STALL_S:g}s"
                    raise BenchError(f"{clients[0].url}: {why}; {answered} of {n} answered")
                continue
            now = clock()
            for fd, _ in events:
                c = by_fd[fd]
                try:
                    data = c.sock.recv(READ_SIZE)
                except BlockingIOError:
                    continue
                buf = c.buf + data if c.buf else data
                parsed = parse(buf, eof=not data)
                if parsed is None:
                    if not data:
                        raise BenchError(f"{c.url}: connection closed after {answered} answers")
                    c.buf = buf
                    continue
                resp, used = parsed
                c.buf = buf[used:]
                answer(resp, first_id + call_of.pop(fd), modern, now - sent_at.pop(fd))
                answered += 1
                if resp.close:
                    ep.unregister(fd)
                    del by_fd[fd]
                    c.connect()
                    c.sock.setblocking(False)
                    ep.register(c.fd, select.EPOLLIN)
                    by_fd[c.fd] = c
                if sent < n:
                    send(c)
            last_progress = time.monotonic()
            if last_progress > deadline:
                raise BenchError(f"{clients[0].url}: time limit reached; {answered} of {n} answered")
    except ProtocolError as exc:
        raise BenchError(f"{clients[0].url}: {exc} (after {answered} answers)") from None
    except OSError as exc:
        raise BenchError(f"{clients[0].url}: {exc or type(exc).__name__} after {answered} of {n} answers") from None
    finally:
        ep.close()
        for c in clients:
            if c.sock is not None:
                c.sock.setblocking(True)
                c.sock.settimeout(c.timeout)
    return DriveResult(answered, now - start, list(tally.latencies), tally.bad, tally.notifications)


# --------------------------------------------------------------------------
# Measuring one window, in this process or in worker processes
# --------------------------------------------------------------------------

def window(url: Url, modern: bool, k: int, first_id: int, n: int, warmup: int, spin: bool,
           deadline: float, pid, workers: int) -> dict:
    """Open K clients, warm up, measure N calls (CPU sampled around them), close."""
    workers = max(1, min(workers, k))
    if workers == 1:
        return _window_inline(url, modern, k, first_id, n, warmup, spin, deadline, pid)
    return _window_workers(url, modern, k, first_id, n, warmup, spin, deadline, pid, workers)


def reap_workers(procs: list, pipes: list, grace: float = 5.0) -> None:
    """End worker processes (joined, killed past `grace`) and close their pipes."""
    for proc in procs:
        proc.join(grace)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    for pipe in pipes:
        pipe.close()


def _sample(pid, driver_first: bool) -> CpuSample:
    if pid is None:
        return CpuSample(0, {}, *procfs.driver_clocks())
    return CpuSample.take(pid, driver_first)


def _metrics(result: DriveResult, k: int, before: CpuSample, after: CpuSample, pid) -> dict:
    m = sb.metrics(result, k, before, after)
    if pid is None:
        m["target_cpu_us_per_call"] = m["tree_cpu_us_per_call"] = m["tree_processes"] = None
    return m


def _window_inline(url, modern, k, first_id, n, warmup, spin, deadline, pid) -> dict:
    clients = open_clients(url, k, modern)
    try:
        warm = drive(clients, first_id, warmup, spin, deadline) if warmup else None
        gc.collect()
        before = _sample(pid, driver_first=False)
        gc.disable()
        try:
            result = drive(clients, first_id + warmup, n, spin, deadline)
        finally:
            gc.enable()
        after = _sample(pid, driver_first=True)
    except BaseException:
        close_clients(clients, end_sessions=False)
        raise
    close_failures = close_clients(clients)
    m = _metrics(result, k, before, after, pid)
    m["warmup_mismatches"] = warm.mismatches.total if warm else 0
    m["warmup_mismatch_examples"] = list(warm.mismatches.examples) if warm else []
    m["reconnects"] = sum(c.connects - 1 for c in clients)
    m["session_close_failures"] = close_failures
    m["tree_after"] = after.tree
    return m


def _worker(pipe, url_text, modern, k, first_id, n, warmup, spin, deadline) -> None:
    """A forked driver process: its own clients, warm-up, then one window on 'go'."""
    clients = []
    try:
        url = Url(url_text)
        clients = open_clients(url, k, modern)
        warm = drive(clients, first_id, warmup, spin, deadline) if warmup else None
        gc.collect()
        pipe.send(("ready", None))
        if not pipe.poll(max(1.0, deadline - time.monotonic())) or pipe.recv() != "go":
            raise BenchError("worker: no 'go' from the driver")
        gc.disable()
        cpu0, ticks0 = time.process_time_ns(), procfs.read_stat(os.getpid()).ticks
        start = time.perf_counter_ns()
        result = drive(clients, first_id + warmup, n, spin, deadline)
        end = start + result.elapsed_ns
        cpu1, ticks1 = time.process_time_ns(), procfs.read_stat(os.getpid()).ticks
        gc.enable()
        close_failures = close_clients(clients)
        pipe.send(("result", {
            "calls": result.calls, "start": start, "end": end, "latencies": array("q", result.latencies_ns).tobytes(),
            "kinds": result.mismatches.kinds, "examples": result.mismatches.examples,
            "notifications": result.notifications, "cpu_ns": cpu1 - cpu0, "ticks": ticks1 - ticks0,
            "warmup_mismatches": warm.mismatches.total if warm else 0,
            "warmup_examples": warm.mismatches.examples if warm else [],
            "reconnects": sum(c.connects - 1 for c in clients), "close_failures": close_failures}))
    except BaseException as exc:   # report, never hang the driver
        close_clients(clients, end_sessions=False)
        try:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        pipe.close()


def _split(total: int, parts: int) -> list:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _window_workers(url, modern, k, first_id, n, warmup, spin, deadline, pid, workers) -> dict:
    ctx = multiprocessing.get_context("fork")
    ks, ns, ws = _split(k, workers), _split(n, workers), _split(warmup, workers)
    procs, pipes = [], []
    next_id = first_id
    for i in range(workers):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker, args=(child, str(url), modern, ks[i], next_id, ns[i], ws[i], spin, deadline),
                           daemon=True)
        next_id += ns[i] + ws[i]
        proc.start()
        child.close()
        procs.append(proc)
        pipes.append(parent)

    def receive(pipe, what):
        left = max(0.5, deadline - time.monotonic())
        if not pipe.poll(left):
            raise BenchError(f"a driver worker sent no {what} in {left:.0f}s")
        try:
            tag, payload = pipe.recv()
        except EOFError:
            raise BenchError(f"a driver worker died before its {what}") from None
        if tag == "error":
            raise BenchError(f"driver worker: {payload}")
        return payload

    try:
        for pipe in pipes:
            receive(pipe, "ready")
        gc.collect()
        before = _sample(pid, driver_first=False)
        for pipe in pipes:
            pipe.send("go")
        parts = [receive(pipe, "result") for pipe in pipes]
        after = _sample(pid, driver_first=True)
    finally:
        reap_workers(procs, pipes)
    bad = Mismatches()
    latencies = array("q")
    for part in parts:
        latencies.frombytes(part["latencies"])
        for kind, count in part["kinds"].items():
            bad.kinds[kind] = bad.kinds.get(kind, 0) + count
        bad.examples.extend(part["examples"][:MAX_EXAMPLES - len(bad.examples)])
    calls = sum(p["calls"] for p in parts)
    elapsed = max(p["end"] for p in parts) - min(p["start"] for p in parts)
    result = DriveResult(calls, elapsed, list(latencies), bad, sum(p["notifications"] for p in parts))
    m = _metrics(result, k, before, after, pid)
    worker_ns = sum(p["cpu_ns"] for p in parts)
    m["driver_cpu_us_per_call"] = round(worker_ns / 1000 / (calls or 1), 2)
    if m["other_load_cpus"] is not None:
        window_ticks = elapsed / 1e9 * procfs.CLK_TCK
        workers_ticks = sum(p["ticks"] for p in parts)
        m["other_load_cpus"] = round(max(0.0, m["other_load_cpus"] - workers_ticks / window_ticks), 2)
    m["workers"] = workers
    m["warmup_mismatches"] = sum(p["warmup_mismatches"] for p in parts)
    m["warmup_mismatch_examples"] = [e for p in parts for e in p["warmup_examples"]][:MAX_EXAMPLES]
    m["reconnects"] = sum(p["reconnects"] for p in parts)
    m["session_close_failures"] = [f for p in parts for f in p["close_failures"]]
    m["tree_after"] = after.tree
    return m


# --------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------


def dump_figures(path) -> dict:
    """What a --dump run wrote: records (frames), bytes, frames the dump dropped."""
    records = dropped = 0
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b'{"ts"') and b'"dropped":' in line[:80]:
                dropped += json.loads(line)["dropped"]
            else:
                records += 1
    return {"records": records, "bytes": os.path.getsize(path), "dropped": dropped}


# --------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------

def scenarios(concurrency: list) -> list:
    """[(name, k)]: sequential first, then each distinct K > 1 in order."""
    out = [("sequential", 1)]
    for k in concurrency:
        if k > 1 and ("clients_%d" % k, k) not in out:
            out.append(("clients_%d" % k, k))
    return out


def run_target(spec: str, kind: str, tmpdir: str, n: int, concurrency: list, modern: bool, warmup: int,
               timeout: float, cpus=None, spin: bool = False, workers: int = 1, dump: bool = False) -> dict:
    """Start (or attach to) one target, measure every scenario, stop it; never raises BenchError."""
    run = {"scenarios": {}, "warmup_mismatches": 0}
    target = None
    try:
        target = start_http(spec, kind, tmpdir, timeout, cpus, dump)
        run["url"] = str(target.url)
        run["pid"] = target.pid
        deadline = time.monotonic() + timeout
        call_id = FIRST_CALL_ID
        for name, k in scenarios(concurrency):
            try:
                m = window(target.url, modern, k, call_id, n, warmup, spin, deadline, target.pid, workers)
            except BenchError as exc:
                if isinstance(target, HttpProcess) and (target.expired or target.proc.poll() is not None):
                    raise target.failure(str(exc)) from None
                raise
            call_id += n + warmup
            target.remember(m.pop("tree_after"))
            run["warmup_mismatches"] += m["warmup_mismatches"]
            run["scenarios"][name] = m
        if target.pid is not None:
            time.sleep(0.2)   # let sessions' processes finish exiting before the RSS reading
            own, total, kids = tree_rss_kib(target.pid)
            run["rss_kib"], run["tree_rss_kib"], run["tree_processes_end"] = own, total, kids + 1
    except BenchError as exc:
        run["error"] = str(exc)
    finally:
        if target is not None:
            run["shutdown"] = target.stop()
            if getattr(target, "dump_file", None) is not None and target.dump_file.exists():
                run["dump"] = dump_figures(target.dump_file)
    return run


EXTRA_FIELDS = ("rss_kib", "tree_rss_kib")


def summarize(rounds: list, names: list) -> dict:
    summary = sb.summarize(rounds, names)
    for entry_slot in ("direct", "gateway"):
        runs = [r[entry_slot] for r in rounds]
        for key in EXTRA_FIELDS:
            for name in names:
                summary[name][entry_slot][key] = median(r.get(key) for r in runs)
    return summary


def source_state() -> str:
    """The commit the gateway runs from, and whether wire_gateway/ differs from it."""
    if CHECKOUT is None:
        from wire_gateway import __version__
        return f"installed wire-gateway {__version__}"
    try:
        head = subprocess.run(["git", "-C", str(CHECKOUT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(CHECKOUT), "status", "--porcelain", "--", "wire_gateway"],
                               capture_output=True, text=True, timeout=5).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    changed = [line[3:] for line in dirty if line.strip()]
    return head + (f" + uncommitted changes in {', '.join(changed)}" if changed else "") if head else "unknown"


def run_bench(direct: str, gateway: str, n: int, concurrency: list, rounds: int, era: str = "modern",
              warmup: int = WARMUP_CALLS, timeout: float = 120.0, pin: str = "split", spin: bool = False,
              workers: int = 1, dump: bool = False) -> dict:
    """All rounds, alternating direct and gateway; returns the full result."""
    modern = era == "modern"
    driver_cpus, target_cpus = procfs.cpu_plan(pin)
    all_rounds = []
    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmpdir, procfs.pinned(driver_cpus):
        for _ in range(rounds):
            # --dump: A is the gateway without dumps (in the "direct" slot), B the gateway with them.
            plan = ((("direct", gateway, "gateway", False), ("gateway", gateway, "gateway", True)) if dump else
                    (("direct", direct, "direct", False), ("gateway", gateway, "gateway", False)))
            all_rounds.append({
                slot: run_target(spec, kind, tmpdir, n, concurrency, modern, warmup, timeout,
                                 target_cpus, spin, workers, with_dump)
                for slot, spec, kind, with_dump in plan
            })
    names = [name for name, _ in scenarios(concurrency)]
    runs = [r[slot] for r in all_rounds for slot in ("direct", "gateway")]
    return {
        "config": {
            "direct": direct, "gateway": gateway, "dump": dump, "gateway_source": source_state(), "era": era,
            "n": n, "concurrency": concurrency,
            "rounds": rounds, "warmup": warmup, "timeout_s": timeout, "workers": workers,
            "python": sys.version.split()[0], "cpus": os.cpu_count(), "clk_tck": procfs.CLK_TCK,
            "pin": pin, "spin": spin, "driver_cpus": sorted(driver_cpus or ()),
            "target_cpus": sorted(target_cpus or ()),
        },
        "rounds": all_rounds,
        "summary": summarize(all_rounds, names),
        "mismatches": sum(sb.run_mismatches(r) for r in runs),
        "errors": sum(1 for r in runs if "error" in r),
    }


# --------------------------------------------------------------------------
# Idle legacy sessions: the gateway's memory per session
# --------------------------------------------------------------------------

def idle_sessions(gateway: str, counts: list, tmpdir: str, timeout: float, reserve_mib: int = 2048,
                  parallel: int = 8, batch: int = 50) -> dict:
    """Open legacy sessions up to each count in ``counts``; record the gateway's RSS.

    Stops early (``stopped_early`` says why) when MemAvailable would drop under
    ``reserve_mib`` for the next batch, at the per-session cost measured so far.
    Ends every session with DELETE and checks that their processes are gone.
    """
    out = {"counts": counts, "checkpoints": [], "reserve_mib": reserve_mib}
    target = None
    clients: list = []
    try:
        target = start_http(gateway, "gateway", tmpdir, timeout)
        if target.pid is None:
            raise BenchError(f"cannot find the process listening on {target.url}: no RSS to measure")
        deadline = time.monotonic() + timeout
        pid, url = target.pid, target.url
        time.sleep(1.0)   # let start-up settle
        baseline_kids = set(procfs.descendants(procfs.scan_processes(), pid))

        def checkpoint(label):
            own, total, kids = tree_rss_kib(pid)
            point = {"sessions": len(clients), "label": label, "gateway_rss_kib": own, "tree_rss_kib": total,
                     "tree_pss_kib": tree_pss_kib(pid), "processes": kids + 1,
                     "mem_available_mib": mem_available_kib() // 1024}
            if point["sessions"]:
                point["gateway_kib_per_session"] = round(
                    (own - out["checkpoints"][0]["gateway_rss_kib"]) / point["sessions"], 1)
            out["checkpoints"].append(point)
            return point

        idle = checkpoint("idle")
        per_session_mib = 15.0   # a guess until measured
        opened_at = time.monotonic()
        pool = ThreadPoolExecutor(parallel)

        def open_one(_):
            client = Client(url, modern=False, timeout=60.0)
            try:
                client.open_session()
            finally:
                client.close()   # the session lives on; the connection is not needed
            return client

        try:
            for goal in sorted(counts):
                while len(clients) < goal:
                    if time.monotonic() > deadline:
                        raise BenchError(f"time limit reached with {len(clients)} sessions open")
                    step = min(batch, goal - len(clients))
                    avail = mem_available_kib() / 1024
                    need = step * per_session_mib
                    if avail - need < reserve_mib:
                        out["stopped_early"] = (
                            f"stopped at {len(clients)} sessions (goal {goal}): {avail:,.0f} MiB available, "
                            f"the next {step} sessions need about {need:,.0f} MiB "
                            f"({per_session_mib:.1f} MiB each, {'measured so far' if clients else 'a first guess'}) "
                            f"and {reserve_mib} MiB is kept in reserve")
                        break
                    futures = [pool.submit(open_one, i) for i in range(step)]
                    failures = []
                    for future in futures:
                        try:
                            clients.append(future.result())
                        except BenchError as exc:
                            failures.append(str(exc))
                    if failures:
                        raise BenchError(f"{len(failures)} of {step} sessions failed to open "
                                         f"(with {len(clients)} open): {failures[0]}")
                    target.remember_now()
                    # what a session really costs: its share of RAM (Pss), or what MemAvailable lost
                    pss = (tree_pss_kib(pid) - idle["tree_pss_kib"]) / 1024 / len(clients)
                    lost = (idle["mem_available_mib"] - mem_available_kib() / 1024) / len(clients)
                    per_session_mib = max(1.0, pss, lost)
                if "stopped_early" in out:
                    break
                time.sleep(1.0)   # let the new processes settle
                checkpoint(f"{goal} idle sessions")
        finally:
            pool.shutdown(wait=True)
        out["open_seconds"] = round(time.monotonic() - opened_at, 1)
        peak = out["checkpoints"][-1]
        out["peak_sessions"] = peak["sessions"]
        if peak["sessions"]:
            growth = peak["gateway_rss_kib"] - idle["gateway_rss_kib"]
            out["gateway_kib_per_session"] = round(growth / peak["sessions"], 1)
            for key, digits in (("rss", 1), ("pss", 2)):
                growth_kib = peak[f"tree_{key}_kib"] - idle[f"tree_{key}_kib"]
                out[f"tree_{key}_mib_per_session"] = round(growth_kib / 1024 / peak["sessions"], digits)
        out["delete_failures"] = _delete_sessions(clients, parallel)
        clients = []
        # every session's process must be gone; the shared (modern) process stays
        gone_by = time.monotonic() + 30.0
        while True:
            left = set(procfs.descendants(procfs.scan_processes(), pid)) - baseline_kids
            if not left or time.monotonic() > gone_by:
                break
            time.sleep(0.2)
        out["session_processes_left"] = sorted(left)
        checkpoint("after DELETE of all sessions")
    except BenchError as exc:
        out["error"] = str(exc)
    finally:
        if clients:
            out["delete_failures"] = _delete_sessions(clients, parallel)
        if target is not None:
            out["shutdown"] = target.stop(grace=60.0)
    return out


def _delete_sessions(clients: list, parallel: int) -> list:
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


# --------------------------------------------------------------------------
# The driver's ceiling: a minimal HTTP echo, and a run against it
# --------------------------------------------------------------------------

_FAST_HEAD_END = b"\r\n\r\n"
_FAST_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)
_FAST_SESSION = re.compile(rb"\r\nmcp-session-id:[ \t]*([!-~]+)", re.I)
_FAST_CALL = re.compile(rb'"id":(\d+),"method":"tools/call","params":\{"name":"echo",'
                        rb'"arguments":\{"text":"([A-Za-z0-9_]*)"\}')
_FAST_ANSWER = (b'{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"%s"}],"isError":false%s}}')


def fast_server(port_file: str) -> None:
    """Just enough Streamable HTTP for the driver: canned answers, one epoll loop.

    Answers the bench's echo calls with one regex match (no JSON parse),
    ``initialize`` with a fresh session, notifications with 202, DELETE with
    200.  Not a real server: it exists to show how fast the driver goes.
    """
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    listener.setblocking(False)
    tmp = port_file + ".tmp"
    Path(tmp).write_text(f"{listener.getsockname()[1]}\n")
    os.replace(tmp, port_file)
    ep = select.epoll()
    ep.register(listener.fileno(), select.EPOLLIN)
    conns, bufs, sessions = {}, {}, 0
    while True:
        for fd, _ in ep.poll():
            if fd == listener.fileno():
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    continue
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conns[sock.fileno()] = sock
                bufs[sock.fileno()] = b""
                ep.register(sock.fileno(), select.EPOLLIN)
                continue
            sock = conns[fd]
            try:
                data = sock.recv(READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                ep.unregister(fd)
                del conns[fd], bufs[fd]
                sock.close()
                continue
            buf = bufs[fd] + data if bufs[fd] else data
            out = []
            while True:
                end = buf.find(_FAST_HEAD_END)
                if end < 0:
                    break
                m = _FAST_LENGTH.search(buf, 0, end + 2)
                length = int(m.group(1)) if m else 0
                stop = end + 4 + length
                if len(buf) < stop:
                    break
                head, body = buf[:end + 2], buf[end + 4:stop]
                buf = buf[stop:]
                sm = _FAST_SESSION.search(head)
                sid = b"\r\nmcp-session-id: " + sm.group(1) if sm else b""
                call = _FAST_CALL.search(body)
                if head.startswith(b"DELETE "):
                    status, payload = b"200 OK", b""
                elif call is not None:
                    extra = b',"resultType":"complete"' if b'"_meta"' in body else b""
                    status, payload = b"200 OK", _FAST_ANSWER % (call.group(1), call.group(2), extra)
                elif b'"method":"initialize"' in body:
                    sessions += 1
                    sid = b"\r\nmcp-session-id: fast-%d" % sessions
                    status = b"200 OK"
                    payload = (b'{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-11-25",'
                               b'"capabilities":{"tools":{}},"serverInfo":{"name":"fast","version":"0"}}}')
                elif b'"id"' not in body:
                    status, payload = b"202 Accepted", b""
                else:
                    status, payload = b"400 Bad Request", (b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,'
                                                           b'"message":"fast server: unsupported"}}')
                out.append(b"HTTP/1.1 %s\r\ncontent-type: application/json%s\r\ncontent-length: %d\r\n\r\n%s"
                           % (status, sid, len(payload), payload))
            bufs[fd] = buf
            if out:
                try:
                    sock.sendall(b"".join(out))   # small: fits the empty send buffer
                except OSError:
                    pass


def run_ceiling(n: int, concurrency: list, rounds: int, warmup: int, timeout: float, pin: str, spin: bool,
                workers: int) -> dict:
    """The driver against the fast server, both eras; medians over rounds."""
    driver_cpus, target_cpus = procfs.cpu_plan(pin)
    names = [name for name, _ in scenarios(concurrency)]
    out = {"config": {"n": n, "concurrency": concurrency, "rounds": rounds, "pin": pin, "spin": spin,
                      "workers": workers}, "eras": {}, "errors": [], "mismatches": 0}
    with tempfile.TemporaryDirectory(prefix="http-ceiling-") as tmpdir, procfs.pinned(driver_cpus):
        for era in ERAS:
            runs = []
            for _ in range(rounds):
                runs.append(run_target("auto", "fast", tmpdir, n, concurrency, era == "modern", warmup,
                                       timeout, target_cpus, spin, workers))
            out["eras"][era] = {name: sb.median_figures(runs, name) for name in names}
            out["errors"] += [r["error"] for r in runs if "error" in r]
            out["mismatches"] += sum(sb.run_mismatches(r) for r in runs)
    return out


def render_ceiling(result: dict) -> str:
    cfg = result["config"]
    rows = [[era, name, m.get("calls_per_s"), m.get("p50_us"), m.get("p99_us"), m.get("driver_cpu_us_per_call"),
             m.get("target_cpu_us_per_call")] for era, scenarios in result["eras"].items()
            for name, m in scenarios.items()]
    return "\n".join([f"http-bench driver ceiling against the in-module fast echo (n={cfg['n']}, pin={cfg['pin']}, "
                      f"spin={cfg['spin']}, workers={cfg['workers']}, median of {cfg['rounds']})",
                      *table(["era", "scenario", "calls/s", "p50 us", "p99 us", "driver CPU us/call",
                              "server CPU us/call"], rows, indent=0),
                      *(f"ERROR {error}" for error in result["errors"]), f"mismatches: {result['mismatches']}"])


def mib(kib) -> str:
    return "-" if kib is None else f"{kib / 1024:,.1f}"


def render(result: dict) -> str:
    cfg = result["config"]
    if cfg.get("dump"):
        lines = [f"http-bench --dump: era={cfg['era']} n={cfg['n']} rounds={cfg['rounds']} warmup={cfg['warmup']} "
                 f"concurrency={cfg['concurrency']}",
                 '  "direct" below = the gateway WITHOUT dumps; "gateway" = the gateway WITH --dump']
    else:
        lines = [f"http-bench: era={cfg['era']} n={cfg['n']} rounds={cfg['rounds']} warmup={cfg['warmup']} "
                 f"concurrency={cfg['concurrency']} workers={cfg['workers']} pin={cfg['pin']} spin={cfg['spin']} "
                 f"(driver CPUs {cfg['driver_cpus'] or 'any'}, target CPUs {cfg['target_cpus'] or 'any'})",
                 f"  direct : {cfg['direct']}" + ("  (the bundled http_echo.py)" if cfg["direct"] == "auto" else ""),
                 f"  gateway: {cfg['gateway']}" + ("  (wire_gateway serve over the stdio echo fixture)"
                                                   if cfg["gateway"] == "auto" else "")]
    lines += [f"  gateway source: {cfg['gateway_source']}", "",
              *sb.render_runs(result, ("SIGTERM", "external (left running)"))]
    first = next(iter(result["summary"].values()), None)
    if first is not None and not cfg.get("dump"):
        d, g = first["direct"], first["gateway"]
        lines.append(f"RSS at the end of a run (median), MiB: direct {mib(d.get('rss_kib'))}; gateway "
                     f"{mib(g.get('rss_kib'))} itself, {mib(g.get('tree_rss_kib'))} with its children")
    lines += [f"round {i} dump: {rnd['gateway']['dump']}" for i, rnd in enumerate(result["rounds"], 1)
              if "dump" in rnd["gateway"]]
    if "idle_sessions" in result:
        lines += ["", *render_idle(result["idle_sessions"])]
    lines.append(f"total mismatches: {result['mismatches']}   errors: {result['errors']}")
    return "\n".join(lines)


def render_idle(idle: dict) -> list:
    rows = [[p["label"], p["sessions"], mib(p["gateway_rss_kib"]), mib(p["tree_rss_kib"]), mib(p["tree_pss_kib"]),
             p["processes"], p["mem_available_mib"], p.get("gateway_kib_per_session")]
            for p in idle.get("checkpoints", [])]
    lines = ["== idle legacy sessions on the gateway (initialize + initialized, then idle)",
             *table(["", "sessions", "gateway RSS MiB", "tree RSS MiB", "tree PSS MiB", "processes",
                     "MemAvailable MiB", "gw KiB/session"], rows, indent=0)]
    if "gateway_kib_per_session" in idle:
        lines.append(f"  per idle session: gateway's own RSS +{idle['gateway_kib_per_session']:.1f} KiB; whole tree "
                     f"+{idle['tree_rss_mib_per_session']:.1f} MiB RSS, +{idle['tree_pss_mib_per_session']:.2f} MiB "
                     f"PSS (mostly the upstream process); {idle['peak_sessions']} sessions opened in "
                     f"{idle.get('open_seconds')}s")
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


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------

def parse_counts(text: str) -> list:
    values = sb.parse_concurrency(text)
    return sorted(set(values))


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    return value


def target_spec(text: str) -> str:
    if text != "auto":
        try:
            Url(text)
        except BenchError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--direct", type=target_spec, default="auto",
                        help="URL of the direct server, or auto (default: start fixtures/servers/http_echo.py)")
    parser.add_argument("--gateway", type=target_spec, default="auto",
                        help="URL of the gateway's MCP endpoint, or auto (default: start wire_gateway serve "
                             "over the stdio echo fixture)")
    parser.add_argument("-n", type=sb.positive_int, default=10000, help="calls per scenario (default 10000)")
    parser.add_argument("--concurrency", type=sb.parse_concurrency, default=[1, 16],
                        help="comma-separated client counts; sequential always runs (default 1,16)")
    parser.add_argument("--rounds", type=sb.positive_int, default=3, help="A/B rounds (default 3)")
    parser.add_argument("--era", choices=ERAS, default="modern", help="protocol era of the calls (default modern)")
    parser.add_argument("--warmup", type=non_negative_int, default=WARMUP_CALLS,
                        help="warm-up calls per scenario, same clients (default 500)")
    parser.add_argument("--workers", type=sb.positive_int, default=1,
                        help="driver processes the clients are split over (default 1)")
    parser.add_argument("--timeout", type=float, default=120.0, help="hard limit per target run, seconds (default 120)")
    parser.add_argument("--idle-sessions", type=parse_counts, metavar="N[,N...]",
                        help="after the runs, open this many idle legacy sessions on the gateway and report its RSS")
    parser.add_argument("--idle-timeout", type=float, default=900.0,
                        help="hard limit for the idle-session measurement, seconds (default 900)")
    parser.add_argument("--mem-reserve", type=int, default=2048, metavar="MIB",
                        help="idle sessions: stop when less than this would stay available (default 2048)")
    parser.add_argument("--dump", action="store_true",
                        help="measure frame dumps: the gateway without (A) and with --dump (B), same invocation")
    parser.add_argument("--ceiling", action="store_true",
                        help="measure the driver itself against a minimal in-module echo, both eras, instead")
    procfs.add_pin_argument(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON document instead of tables")


def exit_status(result: dict) -> int:
    errors = result["errors"] if isinstance(result["errors"], int) else len(result["errors"])
    idle = result.get("idle_sessions") or {}
    if errors or "error" in idle or idle.get("session_processes_left") or idle.get("delete_failures"):
        return 2
    return 1 if result["mismatches"] else 0


def run(args) -> int:
    if args.ceiling:
        result = run_ceiling(args.n, args.concurrency, args.rounds, args.warmup, args.timeout, args.pin,
                             args.spin, args.workers)
        print(json.dumps(result, indent=2) if args.json else render_ceiling(result))
        return exit_status(result)
    if args.dump and args.gateway != "auto":
        print("http-bench --dump starts its own gateways: leave --gateway at auto", file=sys.stderr)
        return 2
    result = run_bench(args.direct, args.gateway, args.n, args.concurrency, args.rounds, args.era, args.warmup,
                       args.timeout, args.pin, args.spin, args.workers, args.dump)
    if args.idle_sessions:
        with tempfile.TemporaryDirectory(prefix="http-bench-idle-") as tmpdir:
            result["idle_sessions"] = idle_sessions(args.gateway, args.idle_sessions, tmpdir, args.idle_timeout,
                                                    args.mem_reserve)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return exit_status(result)


if __name__ == "__main__":   # `python -m load.http_bench --fast-server PORTFILE`: the canned-answer server
    if sys.argv[1:2] != ["--fast-server"] or len(sys.argv) != 3:
        sys.exit("usage: python -m load.http_bench --fast-server PORTFILE")
    fast_server(sys.argv[2])
