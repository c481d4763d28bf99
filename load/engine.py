"""The replay engine of ``load run`` (and ``load bench``): many virtual sessions in one trio run.

Each session does its handshake, waits at the start line for the others, then replays the script's
body in rounds until the budget (``-n`` or ``--duration``) is spent, every answer judged and counted in
``Stats``. A timed-out step is counted and skipped (``Watch``); a failed one is counted, and an HTTP
session reconnects and goes on. Unpaced HTTP sessions hand their plain steps to ``FastLane``.
"""
from __future__ import annotations

import time
from array import array
from dataclasses import dataclass, field
from functools import partial

import trio

from .http_client import Disconnected, HttpStatus
from .lane import DONE, SLOW, FastLane
from .replay import ID_STRIDE, Call, ReplayError, Script, judge, show
from .sessions import Answer, HttpSession, StdioSession
from .stats import Counts

RECONNECT_TIMEOUT = 10.0
_FAILURES = (Disconnected, HttpStatus, OSError)


class Stats:
    """Everything a run measures; merged across worker processes with ``merge``."""

    def __init__(self):
        self.latency: dict = {}          # label -> array('q') of ns
        self.done_at = array("q")        # ns since the run's start (t0_ns), per answered call
        self.done_latency = array("q")   # ns, same order
        self.errors = Counts(300)
        self.mismatches = Counts(400)
        self.calls = 0                   # requests sent (body calls)
        self.answered = 0                # with a correct answer
        self.notifications = 0           # server -> client notifications seen
        self.server_requests = 0         # server -> client requests answered
        self.cancelled = 0               # requests sent and cancelled, as recorded
        self.sessions = 0                # sessions that completed their handshake
        self.session_failures = 0
        self.start = 0.0                 # time.time() at the start (t0_ns is the same moment)
        self.first_call = None           # seconds after start when the first call went out
        self.elapsed = 0.0

    def merge(self, part: Stats) -> None:
        """Add a worker's Stats (its clock offset applied to the timeline)."""
        for label, values in part.latency.items():
            self.latency.setdefault(label, array("q")).extend(values)
        offset = part.start - self.start
        shift = int(offset * 1e9)
        self.done_at.extend(t + shift for t in part.done_at)
        self.done_latency.extend(part.done_latency)
        self.errors.merge(part.errors)
        self.mismatches.merge(part.mismatches)
        for name in ("calls", "answered", "notifications", "server_requests", "cancelled", "sessions",
                     "session_failures"):
            setattr(self, name, getattr(self, name) + getattr(part, name))
        self.elapsed = max(self.elapsed, part.elapsed + offset)
        if part.first_call is not None:
            first = part.first_call + offset
            self.first_call = first if self.first_call is None else min(self.first_call, first)

    def sent_at(self, t0_ns: int) -> int:
        """Now, as a request goes out (the first one of the run is remembered)."""
        sent = time.perf_counter_ns()
        if self.first_call is None:
            self.first_call = (sent - t0_ns) / 1e9
        return sent

    @property
    def window(self) -> float:
        """Seconds from the first call sent to the last answer: what throughput is over."""
        if self.first_call is None or not self.done_at:
            return 0.0
        return max(1e-9, max(self.done_at) / 1e9 - self.first_call)

    def record(self, step: Call, live_id: int, tagged, answer: Answer, sent: int, now: int, check: bool,
               t0_ns: int) -> None:
        """Judge one answer and count it (latency only for right answers)."""
        self.notifications += answer.notifications
        self.server_requests += answer.server_requests
        if judge(step, live_id, tagged, answer.msg, check, self, answer.raw):
            self.answered += 1
            took = now - sent
            values = self.latency.get(step.label)
            if values is None:
                values = self.latency[step.label] = array("q")
            values.append(took)
            self.done_at.append(now - t0_ns)
            self.done_latency.append(took)


class Budget:
    """Calls left to send (-n) and/or a deadline (--duration), shared by one process's sessions; and their
    start line: the rounds begin together once every session has done its handshake (or failed it), so
    that spawning 64 processes does not count against the first ones' calls."""

    def __init__(self, calls: int | None, duration: float | None, sessions: int):
        self.left, self.duration, self.waiting = calls, duration, sessions
        self.deadline = None   # trio.current_time() value, from the start line
        self.go = trio.Event()

    def arrive(self) -> None:
        self.waiting -= 1
        if self.waiting <= 0 and not self.go.is_set():
            if self.duration:   # --duration counts from the start line
                self.deadline = trio.current_time() + self.duration
            self.go.set()

    def take(self) -> bool:
        if (self.deadline is not None and trio.current_time() >= self.deadline) or (
                self.left is not None and self.left <= 0):
            return False
        if self.left is not None:
            self.left -= 1
        return True


class Pacer:
    """Open-loop pacing (--rate): call k is due at start + k / rate, its latency measured from then
    (no coordinated omission)."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self.next = None

    async def slot(self) -> float:
        now = trio.current_time()
        due = self.next = now if self.next is None else self.next
        self.next += self.interval
        if due > now:
            await trio.sleep_until(due)
        return due


@dataclass
class Options:
    check: bool = False
    pace: str = "none"               # "recorded" | "none"
    timeout: float = 30.0            # per answer
    progress: list = field(default_factory=lambda: [0])   # [calls answered], read by the progress bar


class Watch:
    """A session's timeout without a cancel scope per call: a watchdog task checks, a few times a
    second, how long the current exchange has been going, and cancels the session's scope past
    ``timeout``; the session counts a timeout and carries on with its next step."""

    def __init__(self, timeout: float):
        self.timeout_ns = int(timeout * 1e9)
        self.since = 0             # perf_counter_ns when the current exchange began, 0 when idle
        self.scope = None

    async def run(self) -> None:
        while True:
            await trio.sleep(min(0.25, self.timeout_ns / 4e9))
            since = self.since
            if since and time.perf_counter_ns() - since > self.timeout_ns and self.scope is not None:
                self.since = 0
                self.scope.cancel()


class Place:
    """Where a session is in its replay, kept across a timeout's cancellation; and, while the fast lane
    drives it, the request in flight (``call``, ``live_id``, ``tagged``, ``sent``, an unsent ``tail``
    of it, or the ``error`` that stopped it)."""
    __slots__ = ("index", "pos", "seq", "round_start", "label", "call", "live_id", "tagged", "sent", "tail", "error")

    def __init__(self, index: int, seq: int):
        self.index, self.pos, self.seq, self.round_start, self.label = index, 0, seq, None, "?"
        self.tail, self.error = b"", None

    def step(self, body: list):
        """The step at ``pos``; past the body's end (or at the start) a new round begins."""
        if self.pos >= len(body) or self.round_start is None:
            self.pos = 0
            self.round_start = trio.current_time()
        return body[self.pos]

    def next_call(self, step: Call, stats: Stats) -> tuple:
        """Number the next live request of this session and count it: (live id, body, tagged string)."""
        self.seq = seq = self.seq + 1
        self.label = step.label
        live_id = self.index * ID_STRIDE + seq
        data, tagged = step.render(live_id, self.index, seq)
        stats.calls += 1
        return live_id, data, tagged


async def run_sessions(target, script: Script, first_session: int, count: int, calls: int | None,
                       duration: float | None, rate: float | None, opts: Options) -> Stats:
    """Run ``count`` sessions (numbered from ``first_session``) in this process; their Stats."""
    stats = Stats()
    stats.start = time.time()
    t0 = time.perf_counter_ns()
    budget, pacer = Budget(calls, duration, count), Pacer(rate)
    make = partial(HttpSession, target.url, script) if target.kind == "http" else \
        partial(StdioSession, target.argv, script)
    lane = FastLane(script, budget, stats, opts, t0) if (
        target.kind == "http" and not rate and opts.pace == "none") else None
    async with trio.open_nursery() as outer:
        if lane is not None:
            outer.start_soon(lane.run)
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(run_session, first_session + i, make(), script, budget, pacer, opts, stats, t0,
                                   lane)
        outer.cancel_scope.cancel()
    stats.elapsed = (time.perf_counter_ns() - t0) / 1e9
    return stats


async def run_session(index: int, session, script: Script, budget: Budget, pacer: Pacer, opts: Options,
                      stats: Stats, t0_ns: int, lane: FastLane | None) -> None:
    """One virtual session with its watchdog; never raises (counts instead)."""
    watch = Watch(opts.timeout)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch.run)
            ready = await _handshake(index, session, script, opts, stats)
            budget.arrive()
            await budget.go.wait()
            if ready:
                stats.sessions += 1
                place = Place(index, len(script.handshake) + 1)
                while True:   # rounds of the body until the budget is spent; a timed-out step is skipped
                    finished = False
                    with trio.CancelScope() as watch.scope:
                        finished = await _steps(session, script, budget, pacer, opts, stats, t0_ns, watch, place,
                                                lane)
                    if not watch.scope.cancelled_caught:
                        break
                    watch.since = 0
                    opts.progress[0] += 1
                    place.pos += 1
                    if finished or not await _count_failure(session, trio.TooSlowError(), place.label, stats):
                        break
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(10):
            await session.close()


async def _handshake(index: int, session, script: Script, opts: Options, stats: Stats) -> bool:
    base = index * ID_STRIDE
    try:
        with trio.fail_after(opts.timeout):
            await session.start()
            for seq, step in enumerate(script.handshake, start=1):
                if isinstance(step, Call):
                    body, _ = step.render(base + seq, index, seq)
                    answer = await session.request(step, base + seq, body)
                    if not judge(step, base + seq, None, answer.msg, opts.check, stats):
                        raise ReplayError(f"{step.method} failed: {show(answer.msg)}")
                else:
                    await session.notify(step)
        return True
    except (ReplayError, trio.TooSlowError, *_FAILURES) as exc:
        stats.session_failures += 1
        stats.errors.add("handshake" if isinstance(exc, ReplayError) else _kind(exc),
                         f"session {index} handshake: {exc or type(exc).__name__}")
        return False


def _kind(exc) -> str:
    """What a failed exchange is counted as."""
    return "timeout" if isinstance(exc, trio.TooSlowError) else \
        f"http_{exc.status}" if isinstance(exc, HttpStatus) else "disconnect"


async def _steps(session, script: Script, budget: Budget, pacer: Pacer, opts: Options, stats: Stats, t0_ns: int,
                 watch: Watch, place: Place, lane: FastLane | None) -> bool:
    """The hot loop: one step after another from ``place``; returns when the budget is spent."""
    clock, recorded, paced, body = time.perf_counter_ns, opts.pace == "recorded", bool(pacer.interval), script.body
    body_t0 = next(step.t for step in body if isinstance(step, Call))
    while True:
        step = place.step(body)
        answer = failure = None
        try:
            if type(step) is not Call:   # a notification
                if budget.deadline is not None and trio.current_time() >= budget.deadline:
                    return True
                place.label = step.get("method", "?")
                watch.since = clock()
                await session.notify(step)
            elif step.cancel is not None:   # sent, then its recorded cancellation; no answer awaited
                if not budget.take():
                    return True
                live_id, data, _ = place.next_call(step, stats)
                cancel = dict(step.cancel, params=dict(step.cancel.get("params") or {}, requestId=live_id))
                watch.since = clock()
                await session.cancelled(step, live_id, data, cancel)
                stats.cancelled += 1
            elif lane is not None and session.conn.sock is not None:
                handed = await lane.drive(session, place, watch)
                if handed is DONE:
                    return True
                if handed is SLOW:
                    continue
                step, live_id, tagged, sent = place.call, place.live_id, place.tagged, place.sent
                if place.error is not None:
                    raise place.error
                if place.tail:
                    await session.conn.send(place.tail)
                answer = await session.receive(step)
            else:
                if recorded:
                    await trio.sleep_until(place.round_start + max(0.0, step.t - body_t0))
                if not budget.take():
                    return True
                due = await pacer.slot() if paced else None
                live_id, data, tagged = place.next_call(step, stats)
                sent = stats.sent_at(t0_ns)
                if due is not None:   # charge the wait for a late slot to the latency
                    sent -= int(max(0.0, trio.current_time() - due) * 1e9)
                watch.since = sent or 1
                answer = await session.request(step, live_id, data, place.pos)
        except _FAILURES as exc:
            failure = exc
        now = clock()
        watch.since = 0
        place.pos += 1
        if type(step) is Call:
            opts.progress[0] += 1
        if failure is not None:
            if not await _count_failure(session, failure, place.label, stats):
                return True
        elif answer is not None:
            stats.record(step, live_id, tagged, answer, sent, now, opts.check, t0_ns)


async def _count_failure(session, exc, label: str, stats: Stats) -> bool:
    """Count a failed exchange by kind; True if the session can go on (after a reconnect)."""
    kind = _kind(exc)
    stats.errors.add(kind, f"{label}: {'no answer in time' if kind == 'timeout' else exc or type(exc).__name__}")
    if isinstance(exc, HttpStatus):
        return True   # the connection is fine
    try:
        with trio.fail_after(RECONNECT_TIMEOUT):
            await session.reconnect()
        return True
    except (Disconnected, OSError, trio.TooSlowError):
        return False
