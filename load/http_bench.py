"""``load http-bench``: an MCP server over Streamable HTTP directly against through ``wire-gateway serve``.

Either era, every answer checked; optionally the gateway's memory per idle legacy session (``idle``),
what dumps cost, or the driver's own ceiling against ``fast_echo``'s canned-answer HTTP server
(docs/load.md). The driver must not be the limit: requests pre-serialised before the window, answers
framed by hand, one epoll loop per process (why not ``load run``'s client: docs/notes/load-design.md).
Over 400 lines because the driver and its run (rounds, ceilings, idle sessions) share their
per-process state; split, each half would pass it back and forth.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import select
import sys
import tempfile
import time
from array import array

import orjson

from . import BenchError, fast_echo, figures as fig, forks, http_client as hc, idle, procfs
from .assets import source_state
from .report import emit
from .stats import MAX_EXAMPLES, Counts
from .targets import HttpProcess, Url, start_http

ERAS = ("modern", "legacy")
STALL_S = 10.0          # no byte from any connection for this long: the run fails
META = b'"_meta":' + orjson.dumps(hc.modern_meta("http-bench"))


def call_tail(call_id: int, modern: bool) -> bytes:
    """Content-Length, the blank line and the body of one ``tools/call`` of ``echo`` (text ``t<id>``)."""
    body = (b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo","arguments":{"text":"t%d"}%s}}'
            % (call_id, call_id, b"," + META if modern else b""))
    return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


def check_answer(resp: hc.Response, call_id: int, modern: bool):
    """(kind, sample bytes, notifications) of a bad answer, or (None, None, notifications)."""
    body, notes = resp.body, 0
    ctype = resp.headers.get(b"content-type", b"")
    if resp.status != 200:
        return "http_%d" % resp.status, body, 0
    if ctype.startswith(b"text/event-stream"):
        msg = None
        for data in hc.sse_messages(body):
            try:
                event = orjson.loads(data)
            except orjson.JSONDecodeError:
                return "unparseable_event", data, notes
            if type(event) is dict and "method" in event:
                if "id" in event:
                    return "server_request", data, notes   # not allowed on a modern stream; unexpected here
                notes += 1
            elif msg is None:
                msg, body = event, data
            else:
                return "extra_answer", data, notes
        if msg is None:
            return "no_answer_in_stream", body, notes
    elif ctype.startswith(b"application/json"):
        try:
            msg = orjson.loads(body)
        except orjson.JSONDecodeError:
            return "unparseable", body, 0
    else:
        return "content_type", ctype + b" " + body[:100], 0
    if type(msg) is not dict:
        return "malformed", body, notes
    rid, result = msg.get("id"), msg.get("result")
    if type(rid) is not int or rid != call_id:
        return "wrong_id", body, notes
    if type(result) is not dict:
        return ("error" if "error" in msg else "malformed"), body, notes
    if result.get("content") != fig.expected_content(call_id) or result.get("isError"):
        return "wrong_content", body, notes
    if modern and result.get("resultType") != "complete":
        return "wrong_result_type", body, notes
    return None, None, notes


def drive(clients: list, first_id: int, n: int, spin: bool = False, deadline: float | None = None) -> fig.DriveResult:
    """Send ``n`` calls (ids ``first_id ..``, in send order) over the clients, one outstanding per client.
    One client (without --spin) waits in its blocking socket's ``recv``, the lowest-latency loop for the
    sequential scenario; several (or --spin) are non-blocking sockets under one epoll."""
    modern = clients[0].modern
    tails = [call_tail(first_id + i, modern) for i in range(n)]
    deadline = time.monotonic() + 3600 if deadline is None else deadline
    clock, latencies, bad, notifications = time.perf_counter_ns, array("q"), Counts(), 0
    blocking = len(clients) == 1 and not spin
    stall = min(STALL_S, max(0.1, deadline - time.monotonic()))
    ep = select.epoll()
    by_fd, call_of, sent_at = {}, {}, {}

    def attach(c: hc.Client) -> None:
        by_fd[c.fd] = c
        if blocking:
            c.sock.settimeout(stall)
        else:
            c.sock.setblocking(False)
            ep.register(c.fd, select.EPOLLIN)

    def send(c: hc.Client) -> None:
        nonlocal sent
        call_of[c.fd], sent_at[c.fd] = sent, clock()
        data = c.head + tails[sent]
        sent += 1
        done = c.sock.send(data)
        if done < len(data):   # never for a few hundred bytes into an idle socket, but be exact
            timeout = c.sock.gettimeout()
            c.sock.settimeout(STALL_S)
            c.sock.sendall(data[done:])
            c.sock.settimeout(timeout)

    for c in clients:
        attach(c)
    poll = (lambda _wait: ((clients[0].fd, 0),)) if blocking else ep.poll
    wait = 0 if spin else min(STALL_S, 1.0)
    sent = answered = 0
    start = now = clock()
    last_progress = time.monotonic()
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
                    data = c.sock.recv(hc.READ_SIZE)
                except BlockingIOError:
                    continue
                if blocking:
                    now = clock()
                buf = c.buf + data if c.buf else data
                parsed = hc.parse_response(buf, eof=not data)
                if parsed is None:
                    if not data:
                        raise BenchError(f"{c.url}: connection closed after {answered} answers")
                    c.buf = buf
                    continue
                resp, used = parsed
                c.buf = buf[used:]
                kind, sample, notes = check_answer(resp, first_id + call_of.pop(fd), modern)
                notifications += notes
                took = now - sent_at.pop(fd)
                if kind is None:
                    latencies.append(took)
                else:
                    bad.add(kind, sample if sample is not None else b"")
                answered += 1
                if resp.close:
                    if not blocking:
                        ep.unregister(fd)
                    del by_fd[fd]
                    c.connect()
                    attach(c)
                if sent < n:
                    send(c)
            last_progress = time.monotonic()
            if last_progress > deadline:
                raise BenchError(f"{clients[0].url}: time limit reached; {answered} of {n} answered")
    except hc.ProtocolError as exc:
        raise BenchError(f"{clients[0].url}: {exc} (after {answered} answers)") from None
    except OSError as exc:
        raise BenchError(f"{clients[0].url}: {exc or type(exc).__name__} after {answered} of {n} answers") from None
    finally:
        ep.close()
        for c in clients:
            if c.sock is not None:
                c.sock.settimeout(c.timeout)
    return fig.DriveResult(answered, now - start, list(latencies), bad, notifications)


def _window_part(url: Url, modern: bool, k: int, first_id: int, n: int, warmup: int, spin: bool, deadline: float,
                 opened, closed) -> dict:
    """Open K clients, warm up, then one window of N calls between ``opened()`` and ``closed()``."""
    clients = hc.open_clients(url, k, modern)
    try:
        warm = drive(clients, first_id, warmup, spin, deadline) if warmup else None
        result = fig.in_window(lambda: drive(clients, first_id + warmup, n, spin, deadline), opened, closed)
    except BaseException:
        hc.close_clients(clients, end_sessions=False)
        raise
    return {"result": result, "warmup_mismatches": warm.mismatches.total if warm else 0,
            "warmup_mismatch_examples": list(warm.mismatches.examples) if warm else [],
            "session_close_failures": hc.close_clients(clients), "reconnects": sum(c.connects - 1 for c in clients)}


def _worker(pipe, url_text, modern, k, first_id, n, warmup, spin, deadline) -> dict:
    """A forked driver: its own clients and warm-up, then its share of the window on the parent's 'go'."""
    marks = []

    def opened() -> None:
        pipe.send(("ready", None))
        if not pipe.poll(max(1.0, deadline - time.monotonic())) or pipe.recv() != "go":
            raise BenchError("worker: no 'go' from the driver")
        marks.append((time.process_time_ns(), procfs.read_stat(os.getpid()).ticks, time.perf_counter_ns()))

    part = _window_part(Url(url_text), modern, k, first_id, n, warmup, spin, deadline, opened,
                        lambda: marks.append((time.process_time_ns(), procfs.read_stat(os.getpid()).ticks, 0)))
    (cpu0, ticks0, start), (cpu1, ticks1, _) = marks
    return {**part, "start": start, "cpu_ns": cpu1 - cpu0, "ticks": ticks1 - ticks0}


def window(url: Url, modern: bool, k: int, first_id: int, n: int, warmup: int, spin: bool,
           deadline: float, pid, workers: int) -> dict:
    """Open K clients, warm up, measure N calls with CPU sampled around them, close; in this process or
    split over ``workers`` forked ones (started together, their figures merged)."""
    workers = max(1, min(workers, k))
    samples: list = []
    if workers == 1:
        parts = [_window_part(url, modern, k, first_id, n, warmup, spin, deadline,
                              lambda: samples.append(procfs.CpuSample.take(pid, False)),
                              lambda: samples.append(procfs.CpuSample.take(pid, True)))]
        result = parts[0]["result"]
    else:
        ks, ns, ws, ids = forks.split(k, workers), forks.split(n, workers), forks.split(warmup, workers), [first_id]
        for i in range(workers - 1):
            ids.append(ids[-1] + ns[i] + ws[i])
        procs, pipes = forks.start(_worker, [(str(url), modern, ks[i], ids[i], ns[i], ws[i], spin, deadline)
                                             for i in range(workers)])
        try:
            for pipe in pipes:
                forks.receive(pipe, "ready", max(0.5, deadline - time.monotonic()))
            gc.collect()
            samples.append(procfs.CpuSample.take(pid, False))
            for pipe in pipes:
                pipe.send("go")
            parts = [forks.receive(pipe, "result", max(0.5, deadline - time.monotonic())) for pipe in pipes]
            samples.append(procfs.CpuSample.take(pid, True))
        finally:
            forks.reap(procs, pipes)
        bad, latencies = Counts(), []
        for part in parts:
            latencies += part["result"].latencies_ns
            bad.merge(part["result"].mismatches)
        elapsed = max(p["start"] + p["result"].elapsed_ns for p in parts) - min(p["start"] for p in parts)
        result = fig.DriveResult(sum(p["result"].calls for p in parts), elapsed, latencies, bad,
                                sum(p["result"].notifications for p in parts))
    m = fig.metrics(result, k, *samples)
    if pid is None:
        m["target_cpu_us_per_call"] = m["tree_cpu_us_per_call"] = m["tree_processes"] = None
    if workers > 1:
        m["driver_cpu_us_per_call"] = round(sum(p["cpu_ns"] for p in parts) / 1000 / (result.calls or 1), 2)
        if m["other_load_cpus"] is not None:
            window_ticks = elapsed / 1e9 * procfs.CLK_TCK
            m["other_load_cpus"] = round(max(0.0, m["other_load_cpus"] - sum(p["ticks"] for p in parts)
                                             / window_ticks), 2)
        m["workers"] = workers
    m["warmup_mismatches"] = sum(p["warmup_mismatches"] for p in parts)
    m["warmup_mismatch_examples"] = [e for p in parts for e in p["warmup_mismatch_examples"]][:MAX_EXAMPLES]
    m["reconnects"] = sum(p["reconnects"] for p in parts)
    m["session_close_failures"] = [f for p in parts for f in p["session_close_failures"]]
    m["tree_after"] = samples[1].tree
    return m


def run_target(spec: str, kind: str, tmpdir: str, n: int, concurrency: list, modern: bool, warmup: int,
               timeout: float, cpus=None, spin: bool = False, workers: int = 1, dump: bool = False) -> dict:
    """Start (or attach to) one target, measure every scenario, stop it; never raises BenchError."""
    run: dict = {"scenarios": {}, "warmup_mismatches": 0}
    target = None
    try:
        target = start_http(spec, kind, tmpdir, timeout, cpus, dump)
        run["url"], run["pid"] = str(target.url), target.pid
        deadline = time.monotonic() + timeout
        call_id = 1
        for name, k in fig.scenarios(concurrency, "clients_%d"):
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
            own, total, kids = procfs.tree_rss_kib(target.pid)
            run["rss_kib"], run["tree_rss_kib"], run["tree_processes_end"] = own, total, kids + 1
    except BenchError as exc:
        run["error"] = str(exc)
    finally:
        if target is not None:
            run["shutdown"] = target.stop()
            if target.dump_file is not None and target.dump_file.exists():
                run["dump"] = dump_figures(target.dump_file)
    return run


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


def render(result: dict) -> str:
    cfg = result["config"]
    if "eras" in result:   # --ceiling
        return fig.render_ceiling(
            f"http-bench driver ceiling against the in-module fast echo (n={cfg['n']}, pin={cfg['pin']}, "
            f"spin={cfg['spin']}, workers={cfg['workers']}, median of {cfg['rounds']})", ["era", "scenario"],
            [[era, name, m] for era, scenarios in result["eras"].items() for name, m in scenarios.items()],
            result["errors"], result["mismatches"])
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
              *fig.render_runs(result, ("SIGTERM", "external (left running)"))]
    first = next(iter(result["summary"].values()), None)
    if first is not None and not cfg.get("dump"):
        d, g = first["direct"], first["gateway"]
        lines.append(f"RSS at the end of a run (median), MiB: direct {idle.mib(d.get('rss_kib'))}; gateway "
                     f"{idle.mib(g.get('rss_kib'))} itself, {idle.mib(g.get('tree_rss_kib'))} with its children")
    lines += [f"round {i} dump: {rnd['gateway']['dump']}" for i, rnd in enumerate(result["rounds"], 1)
              if "dump" in rnd["gateway"]]
    if "idle_sessions" in result:
        lines += ["", *idle.render(result["idle_sessions"])]
    lines.append(f"total mismatches: {result['mismatches']}   errors: {result['errors']}")
    return "\n".join(lines)


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
    parser.add_argument("--era", choices=ERAS, default="modern", help="protocol era of the calls (default modern)")
    parser.add_argument("--workers", type=fig.positive_int, default=1,
                        help="driver processes the clients are split over (default 1)")
    parser.add_argument("--idle-sessions", type=lambda text: sorted(set(fig.parse_concurrency(text))),
                        metavar="N[,N...]",
                        help="after the runs, open this many idle legacy sessions on the gateway and report its RSS")
    parser.add_argument("--idle-timeout", type=float, default=900.0,
                        help="hard limit for the idle-session measurement, seconds (default 900)")
    parser.add_argument("--mem-reserve", type=int, default=2048, metavar="MIB",
                        help="idle sessions: stop when less than this would stay available (default 2048)")
    parser.add_argument("--dump", action="store_true",
                        help="measure frame dumps: the gateway without (A) and with --dump (B), same invocation")
    parser.add_argument("--ceiling", action="store_true",
                        help="measure the driver itself against a minimal in-module echo, both eras, instead")
    fig.add_common(parser, 10000, "1,16", "client counts", warmup_min=0)


def run(args) -> int:
    def slot(spec: str, kind: str, era: str = args.era, dump: bool = False):
        return lambda cpus: run_target(spec, kind, tmpdir, args.n, args.concurrency, era == "modern", args.warmup,
                                       args.timeout, cpus, args.spin, args.workers, dump)

    names = [name for name, _ in fig.scenarios(args.concurrency, "clients_%d")]
    config = {"n": args.n, "concurrency": args.concurrency, "rounds": args.rounds, "pin": args.pin,
              "spin": args.spin, "workers": args.workers}
    with tempfile.TemporaryDirectory(prefix="http-bench-") as tmpdir:
        if args.ceiling:   # the driver against the fast server, both eras; medians over rounds
            result: dict = {"config": config, "eras": {}, "errors": [], "mismatches": 0}
            for era in ERAS:
                result["eras"][era], errors, mismatches = fig.ceiling_rounds(args.rounds, names, args.pin,
                                                                             slot("auto", "fast", era))
                result["errors"] += errors
                result["mismatches"] += mismatches
            return emit(result, args.json, render)
        if args.dump and args.gateway != "auto":
            print("http-bench --dump starts its own gateways: leave --gateway at auto", file=sys.stderr)
            return 2
        config.update(direct=args.direct, gateway=args.gateway, dump=args.dump, gateway_source=source_state(),
                      era=args.era, warmup=args.warmup, timeout_s=args.timeout)
        if args.dump:   # A: the gateway without dumps, B: with them
            plan = {"direct": slot(args.gateway, "gateway"), "gateway": slot(args.gateway, "gateway", dump=True)}
        else:
            plan = {"direct": slot(args.direct, "direct"), "gateway": slot(args.gateway, "gateway")}
        result = fig.ab_result(config, plan, args.rounds, args.pin, args.spin, names, ("rss_kib", "tree_rss_kib"))
        if args.idle_sessions:
            result["idle_sessions"] = idle.measure(args.gateway, args.idle_sessions, tmpdir, args.idle_timeout,
                                                   args.mem_reserve)
    idled = result.get("idle_sessions") or {}
    return emit(result, args.json, render, "error" in idled or bool(idled.get("session_processes_left")
                                                                   or idled.get("delete_failures")))


if __name__ == "__main__":   # `python -m load.http_bench --fast-server PORTFILE`: fast_echo's HTTP server
    if sys.argv[1:2] != ["--fast-server"] or len(sys.argv) != 3:
        sys.exit("usage: python -m load.http_bench --fast-server PORTFILE")
    fast_echo.serve_http(sys.argv[2])
