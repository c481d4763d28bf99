"""The replay's fast lane: HTTP sessions' plain request/answer steps driven from one epoll.

A trio task switch per answer is most of what ``load run``'s client costs per call. While a session's
steps are requests answered with plain JSON (200, Content-Length), the lane answers its socket's
readiness itself: it reads, checks the answer and sends the session's next request at once, one
scheduler pass for every ready socket. Anything else goes back to the session's coroutine
(``engine``). Unpaced runs only; docs/notes/load-design.md.
"""
from __future__ import annotations

import select
import time

import outcome
import trio

from .http_client import _CONTENT_LENGTH, _NEEDS_FULL_PARSE, Disconnected, json_or_text
from .replay import Call, Script
from .sessions import Answer

DONE, SLOW = "done", "slow"


class FastLane:
    """The lane of one process's HTTP sessions: one epoll, every session's socket in it while it is driven."""

    def __init__(self, script: Script, budget, stats, opts, t0_ns: int):
        self.ep, self.seats = select.epoll(), {}   # fd -> (session, place, watch, task)
        self.body, self.budget, self.stats, self.opts, self.t0_ns = script.body, budget, stats, opts, t0_ns

    async def run(self) -> None:
        fd, poll, readable = self.ep.fileno(), self.ep.poll, self._readable
        try:
            while True:
                await trio.lowlevel.wait_readable(fd)
                for _ in range(8):   # answers often land while we handle the last batch: no trio pass for them
                    events = poll(0)
                    if not events:
                        break
                    for sock_fd, _ in events:
                        readable(sock_fd)
        finally:
            self.ep.close()

    async def drive(self, session, place, watch):
        """Run the session's steps from ``place`` until something needs its coroutine: DONE (budget
        spent), SLOW (the step at place.pos is not a plain request) or the place, a request in flight."""
        result = self._send_next(session, place, watch)
        if result is not None:
            return result
        fd = session.conn.sock.fileno()
        self.ep.register(fd, select.EPOLLIN)
        self.seats[fd] = (session, place, watch, trio.lowlevel.current_task())

        def abort(_raise_cancel):
            self._detach(fd)
            session.conn.close()   # a request is in flight: the connection is out of step
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def _detach(self, fd: int) -> None:
        self.seats.pop(fd, None)
        try:
            self.ep.unregister(fd)
        except (OSError, ValueError):
            pass

    def _hand_back(self, fd: int, task, result) -> None:
        self._detach(fd)
        trio.lowlevel.reschedule(task, outcome.Value(result))

    def _send_next(self, session, place, watch):
        """Send the step at place.pos if it is a plain request within budget (None: sent whole); else
        what ``drive`` returns."""
        step = place.step(self.body)
        if type(step) is not Call or step.cancel is not None:
            return SLOW
        if not self.budget.take():
            return DONE
        place.live_id, data, place.tagged = place.next_call(step, self.stats)
        place.call, place.tail, place.error = step, b"", None
        frame = session.frame(step.msg, data, step.name, place.pos, step.param_headers)
        watch.since = place.sent = self.stats.sent_at(self.t0_ns)
        try:
            n = session.conn.sock.send(frame)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            session.conn.close()
            place.error = Disconnected(f"{session.url}: {exc}")
            return place
        if n < len(frame):
            place.tail = frame[n:]
            return place
        return None

    def _readable(self, fd: int) -> None:
        seat = self.seats.get(fd)
        if seat is None:
            return
        session, place, watch, task = seat
        conn = session.conn
        try:
            chunk, error = conn.sock.recv(65536), None
        except BlockingIOError:
            return
        except OSError as exc:
            chunk, error = b"", exc
        if not chunk:
            place.error = Disconnected(f"{conn.url}: {error or 'connection closed before the answer'}")
            self._hand_back(fd, task, place)
            conn.close()
            return
        buf = conn.buf = conn.buf + chunk if conn.buf else chunk
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        # the plain answer: 200, Content-Length, JSON, kept alive; anything else goes the full way
        length = _CONTENT_LENGTH.search(buf, 0, end + 2)
        if (length is None or not buf.startswith(b"HTTP/1.1 200 ") or b"application/json" not in buf[:end]
                or _NEEDS_FULL_PARSE.search(buf, 0, end + 2)):
            self._hand_back(fd, task, place)   # the session reads it with the full parser
            return
        stop = end + 4 + int(length.group(1))
        if len(buf) < stop:
            return
        raw, conn.buf = buf[end + 4:stop], buf[stop:]
        now = time.perf_counter_ns()
        watch.since = 0
        self.stats.record(place.call, place.live_id, place.tagged, Answer(json_or_text(raw), raw), place.sent, now,
                          self.opts.check, self.t0_ns)
        self.opts.progress[0] += 1
        place.pos += 1
        result = self._send_next(session, place, watch)
        if result is not None:
            self._hand_back(fd, task, result)
