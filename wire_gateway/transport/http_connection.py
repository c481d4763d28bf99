"""One client connection's IO loop on trio: read, feed the Cycle, run the handler, write.

What to do with the bytes (parse, limits, keep-alive, which timeout) is http_cycle's; this
module does the reading, the waiting and the cancelling, cheaply. On the 2-core box trio's
primitives are dear (a task spawn ~40 us, cancelling a task blocked on a socket ~50 us, a
CancelScope ~10 us), so the hot path creates no task or scope per request.

- A connection starts with one task, the cycle task: read, parse, run the handler,
  answer, next request. Most requests are answered within a millisecond and cost no
  hand-off between tasks. A connection whose response starts streaming, or whose
  handler is still running after WATCH_TICK (at most twice that), gets a second task
  for the rest of its life: a reader, then the only one to read the socket. From then
  on peer EOF or reset is noticed at once while a handler runs: `Responder.disconnected`
  is set and the connection's scope, which the handler runs in, is cancelled (its
  `finally` runs). A half-close counts as leaving. Bytes of pipelined requests are
  kept, up to max_header_bytes + max_body_bytes beyond what the cycle task has
  consumed; then the reader pauses (and watches for nothing) until that is used up.
  A watcher task per request instead cost ~110 us a request, a reader task from the
  start ~10 us a request (the hand-off).
- Timeouts are deadlines stored on the connection (the Cycle says which timeout starts
  when); the server's timekeeper checks them and cancels the connection's scope.

Refusals (400/408/413/431) close the connection, after a short linger so the client can
read them. A handler that fails before answering gets a 500 and the connection goes on;
one that fails mid-response has its connection closed.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from wire_gateway.telemetry.metrics import METRICS

from .http_cycle import (
    CONTINUE_BYTES,
    IDLE,
    NEED_DATA,
    SEND_CONTINUE,
    Cycle,
    Refusal,
    Request,
    ResponseState,
)
from .http_responder import ClientGone, Responder
from .outbuffer import read_some

if TYPE_CHECKING:
    from .http_server import HttpServer

__all__ = ["Connection", "Handler"]

log = logging.getLogger("wire_gateway.http")

Handler = Callable[[Request, Responder], Awaitable[None]]

READ_SIZE = 65536
WATCH_TICK = 0.05       # seconds: a handler running this long (up to twice) gets a reader watching its client
LINGER = 1.0            # seconds a refused client gets to read our answer before we close
LINGER_BYTES = 1 << 20  # ... and how much of what it still sends we read and drop meanwhile
_INF = math.inf


# The data plane's bytes on the wire (telemetry/metrics.py): heads and bodies, both ways.
_RECEIVED = METRICS.received_bytes.cell("http")
_SENT = METRICS.sent_bytes.cell("http")

class _Wakeup:
    """Where the cycle task parks until the reader has read more (a trio.Event costs more)."""

    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None

    async def wait(self) -> None:
        self.task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def _abort(self, _raise_cancel) -> trio.lowlevel.Abort:
        self.task = None
        return trio.lowlevel.Abort.SUCCEEDED

    def notify(self) -> None:
        task = self.task
        if task is not None:
            self.task = None
            trio.lowlevel.reschedule(task)


class Connection:
    """One client connection: its Cycle, its scope, its deadline, its reader if it has one."""

    __slots__ = ("server", "stream", "fd", "client", "cycle", "buf", "scope", "deadline", "timed_out",
                 "responder", "arrived", "resume", "nursery", "watched", "seq", "seen_seq")

    def __init__(self, server: HttpServer, stream: trio.abc.Stream, client: tuple[str, int] | None) -> None:
        self.server = server
        self.stream = stream
        # Plain TCP is read and written on its fd directly (TLS goes through the stream).
        self.fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None
        self.client = client
        self.cycle = Cycle(server.limits, client)
        self.buf = self.cycle.buf  # the reader appends here itself
        self.scope = trio.CancelScope()   # cancelled by: timeout, drain while idle, peer gone mid-response
        self.deadline = trio.current_time() + server.limits.header_timeout
        self.timed_out = False
        self.responder: Responder | None = None   # while a handler runs
        self.arrived = _Wakeup()   # the reader added to `buf` or saw the end
        self.resume: trio.Event | None = None     # the reader waits here while `buf` is too full
        self.nursery: trio.Nursery | None = None  # where the reader task runs, once there is one
        self.watched = False       # a reader task owns the socket (else the cycle task reads it)
        self.seq = 0               # requests handled: the timekeeper spots a handler that lasts
        self.seen_seq = -1

    def expire(self) -> None:
        self.deadline = _INF
        self.timed_out = True
        self.scope.cancel()

    def on_drain(self) -> None:
        if self.cycle.state is IDLE:
            self.scope.cancel()   # silent close, as for an idle timeout

    async def run(self) -> None:
        refusal = None
        cycle = self.cycle
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            try:
                with self.scope:
                    if isinstance(self.stream, trio.SSLStream):
                        await self.stream.do_handshake()   # under header_timeout, silent if it expires
                    refusal = await self._cycles()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                cycle.eof = True
            finally:
                nursery.cancel_scope.cancel()
        if self.timed_out:   # (after a refusal the Cycle is closed already: that one stands)
            refusal = cycle.timed_out() or refusal
        cycle.close()
        if refusal is not None and not cycle.eof:
            await self._refuse(refusal)

    def watch(self) -> None:
        """From now on a reader task owns the socket, so that the peer leaving while a handler
        runs is noticed at once (the handler is cancelled). Called when a response starts
        streaming, or by the timekeeper when a handler has run for a while."""
        if not self.watched and self.nursery is not None:
            self.watched = True
            self.server.running.discard(self)
            self.nursery.start_soon(self._reader)

    async def _reader(self) -> None:
        """The only reader of the socket once watched: fills `buf`, wakes the cycle task,
        spots the peer leaving."""
        stream = self.stream
        buf = self.buf
        budget = self.server.pipeline_budget
        # Plain TCP: wait for readability, then read once (one scheduler pass and no failed
        # recv per request, unlike receive_some).
        fd = self.fd
        while True:
            if len(buf) >= budget:   # a pipelining client is far ahead: wait for the cycle task
                self.resume = trio.Event()
                await self.resume.wait()
                continue
            try:
                data = await (read_some(fd, READ_SIZE) if fd is not None else stream.receive_some(READ_SIZE))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.cycle.eof = True
                if self.responder is not None:
                    self.responder._peer_gone()
                self.arrived.notify()
                return
            buf += data
            if METRICS.on:
                _RECEIVED.value += len(data)
            self.arrived.notify()

    async def send_all(self, data: bytes | memoryview) -> None:
        """Write all of `data`. On plain TCP straight to the socket: a response that fits the
        send buffer (nearly all) costs one write and no scheduler pass, where
        SocketStream.send_all always yields once (~15 us a response here)."""
        if METRICS.on:
            _SENT.value += len(data)
        fd = self.fd
        if fd is None:
            await self.stream.send_all(data)
            return
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:   # reset, broken pipe, closed
            raise trio.BrokenResourceError(f"send failed: {exc}") from exc
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        while view:
            await trio.lowlevel.wait_writable(fd)
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"send failed: {exc}") from exc

    async def _more(self) -> None:
        """Wait until `buf` has grown (or the end was seen: the cycle's `eof`).

        Until a connection is watched the cycle task reads the socket itself: a request
        answered quickly then costs no hand-off between two tasks (~10 us)."""
        if self.watched:
            if self.resume is not None:
                self.resume.set()
                self.resume = None
            await self.arrived.wait()
            return
        try:
            data = await (read_some(self.fd, READ_SIZE) if self.fd is not None
                          else self.stream.receive_some(READ_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if data:
            self.buf += data
            if METRICS.on:
                _RECEIVED.value += len(data)
        else:
            self.cycle.eof = True

    async def _cycles(self) -> Refusal | None:
        """Requests, one after the other, until the Cycle says close (or refuses one)."""
        cycle = self.cycle
        server = self.server
        while not server.draining:
            event = cycle.next_event()
            while event is NEED_DATA or event is SEND_CONTINUE:
                timer = cycle.timer
                if timer is not None:
                    self.deadline = trio.current_time() + timer
                    cycle.timer = None
                if event is SEND_CONTINUE:
                    await self.stream.send_all(CONTINUE_BYTES)
                await self._more()
                event = cycle.next_event()
            if type(event) is Refusal:
                return event
            if type(event) is not Request:   # CLOSE
                return None
            await self._respond(event)
            if not cycle.end_exchange(server.draining):
                return None
        return None

    async def _respond(self, request: Request) -> None:
        self.deadline = _INF
        responder = self.responder = Responder(self)
        failure = None
        running = self.server.running
        if not self.watched:
            self.seq += 1
            running.add(self)
        try:
            await self.server.handler(request, responder)
        except ClientGone:
            pass
        except Exception as exc:   # a handler bug must not take the server down
            if not _only_client_gone(exc):
                failure = exc
        finally:
            self.responder = None
            running.discard(self)
        if failure is not None:
            log.error("handler failed for %s %s", request.method, request.path, exc_info=failure)
        cycle = self.cycle
        if responder._queue and not responder._writing:   # send_now's remainder was never finished
            cycle.broken = True
            responder._queue.clear()   # and will never be: release it now, not with the connection
        if cycle.eof or cycle.broken:
            return
        state = responder._state
        try:
            if failure is None and state is ResponseState.STREAMING:
                await responder.end_stream()   # the handler returned with its stream open
            elif failure is not None or state is ResponseState.NEW:
                if failure is None:
                    log.error("handler returned no response for %s %s", request.method, request.path)
                if state is not ResponseState.NEW:
                    cycle.broken = True    # half a response went out: only closing tells the client
                else:   # a 500, and the connection goes on if nothing was sent yet
                    await responder.send(500, [("content-type", "text/plain; charset=utf-8")],
                                         b"internal error\n")
        except ClientGone:
            pass

    async def _refuse(self, refusal: Refusal) -> None:
        """Answer with a short reason and close; linger so the client can read it."""
        stream = self.stream
        with trio.move_on_after(LINGER):
            try:
                await stream.send_all(refusal.data())
                if isinstance(stream, trio.SocketStream):
                    await stream.send_eof()
                # read what the client still sends, so that our close does not reset
                # the connection before it has read the answer
                left = LINGER_BYTES
                while left > 0:
                    data = await stream.receive_some(READ_SIZE)
                    if not data:
                        break
                    left -= len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                pass


def _only_client_gone(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(ClientGone)[1] is None
    return isinstance(exc, ClientGone)
