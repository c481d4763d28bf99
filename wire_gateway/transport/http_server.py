"""The data-plane HTTP/1.1 server: trio streams, h11 as the parser of record.

Hypercorn's trio worker spends ~550 us of CPU per request, a bare trio + h11 loop
~130 us. On the 2-core box trio's primitives are dear (a task spawn ~40 us,
cancelling a task blocked on a socket ~50 us, a CancelScope ~10 us) and so is h11
(~40 us to write a response, ~60 us to parse a small request), so the hot path
creates no task or scope per request and writes response heads itself. The usual
request head (one shape, checked by one regex: see http_head) is parsed without
h11; every other head, chunked bodies and `Expect: 100-continue` go to a fresh h11
parser, which accepts or refuses them by the RFC.

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
- Timeouts are deadlines stored on the connection; one timekeeper task per server
  checks them a few times a second and cancels the connection's scope; it also
  looks for long-running handlers (above).

Bodies are read whole before the handler runs. Answers leave through the stream;
the kernel's send buffer (trio caps its unsent part at 16 KiB) is the first buffer,
and what concurrent senders add while a write is blocked is queued up to
`write_high_water`, past which they wait too.

Refusals (400/408/413/431/503) close the connection, after a short linger so the
client can read them. A handler that fails before answering gets a 500 and the
connection goes on; one that fails mid-response has its connection closed.
Beyond max_connections a connection is accepted, answered 503 and closed at once,
without a task (TLS ones are just closed): the client learns to go elsewhere instead
of waiting in the listen backlog for a slot.
"""
from __future__ import annotations

import errno
import logging
import math
import os
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import unquote, urlsplit

import h11
import trio

from .http_head import find_head_end, parse_head
from .http_limits import HttpLimits
from .outbuffer import read_some

__all__ = ["ClientGone", "Handler", "HttpLimits", "HttpServer", "Request", "Responder", "serve_http"]

log = logging.getLogger("wire_gateway.http")

READ_SIZE = 65536
_JOIN_MAX = 65536       # bodies below this are joined to their head for one write; above, written after it
WATCH_TICK = 0.05       # seconds: a handler running this long (up to twice) gets a reader watching its client
LINGER = 1.0            # seconds a refused client gets to read our answer before we close
LINGER_BYTES = 1 << 20  # ... and how much of what it still sends we read and drop meanwhile
_ACCEPT_PAUSE = 0.1     # out of file descriptors: wait this long before accepting again
_FRAMING = frozenset(("content-length", "transfer-encoding"))
_INF = math.inf

# What a connection is doing: drain closes IDLE ones; a timeout in HEAD or BODY answers 408.
_IDLE, _HEAD, _BODY, _HANDLER = range(4)
# Where a response is, and how a streamed body is framed.
_NEW, _STREAMING, _DONE = range(3)
_NO_BODY, _CHUNKED, _UNTIL_CLOSE = -1, -2, -3   # negative: never a Content-Length

_STATUS_LINES = {int(s): f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}
_is_token = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch
_bad_value = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]").search   # CR, LF, NUL, ...: header injection


@dataclass(slots=True)
class Request:
    method: str                         # "GET", "POST", ...
    target: str                         # raw path + query, e.g. "/mcp/echo?x=1"
    path: str                           # path only, percent-decoded
    headers: list[tuple[str, str]]      # names lowercased, values as received (latin-1 decoded)
    body: bytes
    client: tuple[str, int] | None

    def header(self, name: str) -> str | None:
        """First value of a header, name case-insensitive."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]


class ClientGone(Exception):
    """The client has disconnected (or its response was cut short): nothing more can be sent."""


class Responder:
    """Writes one response: `send` for a whole body, or start_stream/send_chunk/end_stream.

    When the peer goes before the response is out, the handler is cancelled: awaits
    in its `finally` raise Cancelled, so cleanup there should not block (queue a
    frame) or shield itself. Concurrent senders are fine: they are written in call order.
    """

    __slots__ = ("_disconnected", "_conn", "_state", "_framing", "_gone", "_queue", "_queued", "_writing",
                 "_progress")

    def __init__(self, conn: _Conn) -> None:
        self._disconnected: trio.Event | None = None   # made when asked for: most responses never are
        self._conn = conn
        self._state = _NEW
        self._framing = _NO_BODY
        self._gone = False
        self._queue: list[bytes | memoryview] = []   # written by whoever holds the write (see _write)
        self._queued = 0
        self._writing = False
        self._progress: trio.Event | None = None

    @property
    def disconnected(self) -> trio.Event:
        """Set as soon as the peer goes away, even mid-stream."""
        if self._disconnected is None:
            self._disconnected = trio.Event()
            if self._gone and self._conn.eof:
                self._disconnected.set()
        return self._disconnected

    @property
    def started(self) -> bool:
        return self._state != _NEW

    @property
    def buffered(self) -> int:
        """Bytes queued here behind a blocked write: at most write_high_water plus one send."""
        return self._queued

    async def send(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        """The whole response. Content-Length is set here; a given one is dropped."""
        conn = self._begin()
        if status in (204, 304):
            if body:
                raise ValueError(f"a {status} response has no body")
            head = conn.response_head(status, headers, None)
        else:
            head = conn.response_head(status, headers, len(body))
        self._state = _DONE
        if not body or conn.method == "HEAD":
            await self._write(head)
        elif len(body) < _JOIN_MAX:
            await self._write(head + body)   # one write for the common small answer
        else:   # a large body is not copied just to put the head in front of it
            await self._write(head)
            await self._write(body)

    def send_now(self, status: int, headers: list[tuple[str, str]], body: bytes) -> bool:
        """The whole response, written at once from whatever task calls (no await), if the
        socket takes it; False if it cannot be (TLS, a write in progress, a full send
        buffer, a bad header, HEAD): then use `send`. What the socket took only in part
        is written by `finish()`, which the handler must await after a True."""
        conn = self._conn
        fd = conn.fd
        if (self._state != _NEW or self._writing or self._gone or fd is None or conn.method == "HEAD"
                or status in (204, 304)):
            return False
        try:
            head = conn.response_head(status, headers, len(body))
            if len(body) < _JOIN_MAX:   # the common small answer: joined, one plain write
                data = head + body
                sent = os.write(fd, data)
            else:   # head and body in one call without joining them: a large answer to a
                # slow reader would otherwise be held twice (the join, then what is left of it)
                sent = os.writev(fd, (head, body))
        except (ValueError, OSError):   # `send` will say what is wrong, or find the client gone
            return False
        self._state = _DONE
        total = len(head) + len(body)
        if sent < total:
            if len(body) < _JOIN_MAX:
                self._queue.append(data[sent:])
            elif sent < len(head):
                self._queue += (head[sent:], body)
            else:   # a view, not a copy, of what the socket did not take
                self._queue.append(memoryview(body)[sent - len(head):])
            self._queued = total - sent
        return True

    async def finish(self) -> None:
        """After `send_now`: write what the socket did not take at once (no copy of it)."""
        if self._queue and not self._writing:
            parts = self._queue[:]
            self._queue.clear()
            self._queued = 0
            for part in parts:
                await self._write(part)

    async def start_stream(self, status: int, headers: list[tuple[str, str]]) -> None:
        """The head of a body of unknown length: chunked (close-delimited to HTTP/1.0 clients)."""
        conn = self._begin()
        if conn.method == "HEAD" or status in (204, 304):
            head = conn.response_head(status, headers, None)
            self._framing = _NO_BODY
        else:
            head = conn.response_head(status, headers, _CHUNKED)
            self._framing = _CHUNKED if conn.version == "1.1" else _UNTIL_CLOSE
        self._state = _STREAMING
        conn.watch()   # a stream may last: notice at once if the client goes
        await self._write(head)

    async def send_chunk(self, data: bytes) -> None:
        """Part of the body. Waits while the client reads slowly; raises ClientGone."""
        if self._gone:
            raise ClientGone("client disconnected")
        if self._state != _STREAMING:
            raise RuntimeError("send_chunk() outside start_stream() ... end_stream()")
        if not data or self._framing == _NO_BODY:
            return
        if self._framing == _CHUNKED:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        await self._write(data)

    async def end_stream(self) -> None:
        if self._gone:
            raise ClientGone("client disconnected")
        if self._state != _STREAMING:
            raise RuntimeError("end_stream() without start_stream()")
        self._state = _DONE
        if self._framing == _CHUNKED:
            await self._write(b"0\r\n\r\n")

    def _begin(self) -> _Conn:
        if self._gone:
            raise ClientGone("client disconnected")
        if self._state != _NEW:
            raise RuntimeError("response already started")
        return self._conn

    async def _write(self, data: bytes | memoryview) -> None:
        """Write through if no write is in progress, else queue behind it (bounded).

        Whoever finds the stream free writes, and keeps writing what others queue
        meanwhile (one send for all of it) before returning.
        """
        if self._writing:
            self._queue.append(data)
            self._queued += len(data)
            high = self._conn.server.limits.write_high_water
            while self._queued > high and not self._gone:
                if self._progress is None:
                    self._progress = trio.Event()
                await self._progress.wait()
            if self._gone:
                raise ClientGone("client disconnected")
            return
        self._writing = True
        conn = self._conn
        try:
            await conn.send_all(data)
            while self._queue:
                data = b"".join(self._queue)
                self._queue.clear()
                self._queued = 0
                self._wake()
                await conn.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._peer_gone()
            raise ClientGone("client disconnected") from exc
        except BaseException:
            # cancelled mid-write: the response is cut at an unknown byte
            self._conn.broken = True
            self._gone = True
            raise
        finally:
            self._writing = False
            self._wake()

    def _wake(self) -> None:
        if self._progress is not None:
            self._progress.set()
            self._progress = None

    def _peer_gone(self) -> None:
        """EOF or reset from the peer: cancel the handler unless its answer is already out."""
        self._conn.eof = True
        self._gone = True
        self._queue.clear()
        self._queued = 0
        if self._disconnected is not None:
            self._disconnected.set()
        if self._state != _DONE or self._writing:
            self._conn.scope.cancel()
        self._wake()


Handler = Callable[[Request, Responder], Awaitable[None]]


class _Refuse(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


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


_HEADS: dict[tuple, tuple[str, bool]] = {}   # (status, *headers) -> (head lines, says close)
_HEADS_MAX = 512     # the same few heads recur; a bound for whatever else comes
# Headers whose value names one session: a head carrying one never recurs once its
# session ends, so keeping it would only hold the session's id after it is gone (and
# fill the cache with heads nobody asks for again). Looked for on a miss only.
_PER_SESSION = frozenset({"mcp-session-id"})


def _head(status: int, headers: list[tuple[str, str]]) -> tuple[str, bool]:
    """`_head_lines`, remembered. A per-session header is not part of what is kept: the
    head is the shared one with that header's line added after it."""
    key = (status, *headers)
    try:
        cached = _HEADS.get(key)
    except TypeError:   # a header given as a list: fine, just not kept
        return _head_lines(status, headers)
    if cached is not None:
        return cached
    for i, (name, value) in enumerate(headers):
        if name.lower() in _PER_SESSION:
            lines, close = _head(status, headers[:i] + headers[i + 1:])
            if _bad_value(value):
                raise ValueError(f"invalid response header {name!r}: {value!r}")
            return f"{lines}{name}: {value}\r\n", close
    cached = _head_lines(status, headers)
    if len(_HEADS) < _HEADS_MAX:
        _HEADS[key] = cached
    return cached


def _head_lines(status: int, headers: list[tuple[str, str]]) -> tuple[str, bool]:
    """The status line and the caller's headers (framing ones dropped), checked; and
    whether they say Connection: close."""
    if not 200 <= status <= 999:
        raise ValueError(f"status {status} is not a final status")
    said_close = False
    out = [_STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n"]
    for name, value in headers:
        low = name.lower()
        if low in _FRAMING:
            continue
        if not _is_token(name) or _bad_value(value):
            raise ValueError(f"invalid response header {name!r}: {value!r}")
        if low == "connection" and "close" in [t.strip() for t in value.lower().split(",")]:
            said_close = True
        out.append(f"{name}: {value}\r\n")
    return "".join(out), said_close


class _Conn:
    """One client connection: what it has read, its scope, its deadline, what it is doing."""

    __slots__ = ("server", "stream", "fd", "client", "buf", "scope", "phase", "deadline", "timed_out", "eof",
                 "broken", "method", "version", "keep_alive", "responder", "arrived", "resume", "nursery",
                 "watched", "seq", "seen_seq")

    def __init__(self, server: HttpServer, stream: trio.abc.Stream, client: tuple[str, int] | None) -> None:
        self.server = server
        self.stream = stream
        # Plain TCP is read and written on its fd directly (TLS goes through the stream).
        self.fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else None
        self.client = client
        self.buf = bytearray()     # read and not yet parsed: the next request(s), in part or whole
        self.scope = trio.CancelScope()   # cancelled by: timeout, drain while idle, peer gone mid-response
        self.phase = _IDLE
        self.deadline = trio.current_time() + server.limits.header_timeout
        self.timed_out = False
        self.eof = False           # the peer closed or reset
        self.broken = False        # a response was cut short: the connection cannot go on
        self.method = ""
        self.version = "1.1"
        self.keep_alive = True     # this request/response cycle may be followed by another
        self.responder: Responder | None = None   # while a handler runs
        self.arrived = _Wakeup()   # the reader added to `buf` or saw the end
        self.resume: trio.Event | None = None     # the reader waits here while `buf` is too full
        self.nursery: trio.Nursery | None = None  # where the reader task runs, once there is one
        self.watched = False       # a reader task owns the socket (else the cycle task reads it)
        self.seq = 0               # requests handled: the timekeeper spots a handler that lasts
        self.seen_seq = -1

    def response_head(self, status: int, headers: list[tuple[str, str]], framing: int | None) -> bytes:
        """Status line and headers; `framing` is a Content-Length, _CHUNKED, or None for no body.

        Raises ValueError for a header that could split the response; nothing is sent then.
        """
        lines, close = cached = _head(status, headers)
        close = close or not self.keep_alive or self.server.draining
        if framing is None:
            tail = ""
        elif framing == _CHUNKED:
            if self.version == "1.1":
                tail = "transfer-encoding: chunked\r\n"
            else:
                tail = ""
                close = True   # an HTTP/1.0 client reads the body until we close
        else:
            tail = f"content-length: {framing}\r\n"
        if close:
            self.keep_alive = False
            if not cached[1]:
                tail += "connection: close\r\n"
        return (lines + tail + "\r\n").encode("latin-1")

    def expire(self) -> None:
        self.deadline = _INF
        self.timed_out = True
        self.scope.cancel()

    def on_drain(self) -> None:
        if self.phase == _IDLE:
            self.scope.cancel()   # silent close, as for an idle timeout

    async def run(self) -> None:
        refusal = None
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            try:
                with self.scope:
                    if isinstance(self.stream, trio.SSLStream):
                        await self.stream.do_handshake()   # under header_timeout, silent if it expires
                    refusal = await self._cycles()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.eof = True
            finally:
                nursery.cancel_scope.cancel()
        if self.timed_out and self.phase in (_HEAD, _BODY):
            refusal = _Refuse(408, "request not received in time")
        if refusal is not None and not self.eof:
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
                self.eof = True
                if self.responder is not None:
                    self.responder._peer_gone()
                self.arrived.notify()
                return
            buf += data
            self.arrived.notify()

    async def send_all(self, data: bytes | memoryview) -> None:
        """Write all of `data`. On plain TCP straight to the socket: a response that fits the
        send buffer (nearly all) costs one write and no scheduler pass, where
        SocketStream.send_all always yields once (~15 us a response here)."""
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
        """Wait until `buf` has grown (or the end was seen: check `eof` first).

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
        else:
            self.eof = True

    async def _cycles(self) -> _Refuse | None:
        fresh = True
        while True:
            if self.server.draining:
                return None
            try:
                request = await self._read_request(fresh)
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                return _Refuse(status, "request head too large" if status == 431 else str(exc))
            except _Refuse as exc:
                return exc
            if request is None:
                return None
            fresh = False
            await self._respond(request)
            if self.eof or self.broken or not self.keep_alive or self.server.draining:
                return None

    async def _read_request(self, fresh: bool) -> Request | None:
        """The next request, whole; None if the client left between requests.

        The usual head is parsed by http_head (a few us); any other goes to h11 (~60 us).
        """
        limits = self.server.limits
        buf = self.buf
        ends = find_head_end(buf)
        if ends is None:
            if buf:   # part of a pipelined request is here already
                self.phase = _HEAD
                self.deadline = trio.current_time() + limits.header_timeout
            else:   # a fresh connection gets header_timeout to say anything at all
                self.phase = _IDLE
                self.deadline = trio.current_time() + (limits.header_timeout if fresh else limits.idle_timeout)
            while ends is None:
                if len(buf) > limits.max_header_bytes:
                    raise _Refuse(431, "request head too large")
                if self.eof:
                    if buf:   # the client left halfway through a head: h11 says what was wrong
                        return await self._read_request_h11()
                    return None
                looked = len(buf)
                await self._more()
                if self.phase == _IDLE and buf:
                    self.phase = _HEAD
                    self.deadline = trio.current_time() + limits.header_timeout
                ends = find_head_end(buf, max(0, looked - 2))
        head_stop, body_start = ends
        if head_stop > limits.max_header_bytes:
            raise _Refuse(431, "request head too large")
        head = parse_head(buf[:head_stop].decode("latin-1"))
        if head is None:
            return await self._read_request_h11()
        self.phase = _BODY
        self.method = head.method
        self.version = head.version
        self.keep_alive = head.version == "1.1" and not head.close
        length = head.length
        if length > limits.max_body_bytes:
            raise _Refuse(413, f"body larger than {limits.max_body_bytes} bytes")
        stop = body_start + length
        if len(buf) < stop:
            self.deadline = trio.current_time() + limits.body_timeout
            while len(buf) < stop:
                if self.eof:
                    return None   # gone mid-body: nobody to answer
                await self._more()
        body = bytes(buf[body_start:stop]) if length else b""
        del buf[:stop]
        return _request(head.method, head.target, head.headers, body, self.client)

    async def _read_request_h11(self) -> Request | None:
        """h11 parses a head that http_head declined (and reads its body): it accepts
        what the RFC allows and refuses the rest with the right status."""
        limits = self.server.limits
        buf = self.buf
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        await self._feed(conn, wait=False)
        event = conn.next_event()
        while event is h11.NEED_DATA:
            await self._feed(conn)
            event = conn.next_event()
        if type(event) is not h11.Request:
            return None   # ConnectionClosed: the client left between requests
        self.phase = _BODY
        self.method = event.method.decode("ascii")
        self.version = event.http_version.decode("ascii")
        self.keep_alive = event.http_version == b"1.1"   # as h11: no keep-alive for HTTP/1.0
        size = len(event.target)
        headers = []
        length = None
        chunked = False
        for name, value in event.headers:
            size += len(name) + len(value) + 4
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"connection" and b"close" in [t.strip() for t in value.lower().split(b",")]:
                self.keep_alive = False
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
        # h11 only limits heads that arrive in pieces; this catches one read's worth
        if size > limits.max_header_bytes:
            raise _Refuse(431, "request head too large")
        if chunked and length is not None:   # h11 would let Transfer-Encoding win; RFC 9112: a smuggling sign
            raise _Refuse(400, "both Content-Length and Transfer-Encoding")
        if length is not None and length > limits.max_body_bytes:
            raise _Refuse(413, f"body larger than {limits.max_body_bytes} bytes")
        body = await self._read_body_h11(conn)
        data, _ = conn.trailing_data   # what follows (pipelined requests) goes back to `buf`; EOF is in `eof`
        buf[:0] = data
        return _request(self.method, event.target.decode("latin-1"), headers, body, self.client)

    async def _feed(self, conn: h11.Connection, wait: bool = True) -> None:
        """Give h11 what the reader has read, waiting for more first if `wait`."""
        buf = self.buf
        if wait and not buf and not self.eof:
            await self._more()
        if buf:
            conn.receive_data(bytes(buf))
            buf.clear()
        if self.eof:
            conn.receive_data(b"")   # h11 ends with ConnectionClosed or an error, never NEED_DATA

    async def _read_body_h11(self, conn: h11.Connection) -> bytes:
        limits = self.server.limits
        limit = limits.max_body_bytes
        parts = []
        total = 0
        timed = continued = False
        while True:
            event = conn.next_event()
            kind = type(event)
            if isinstance(event, h11.Data):
                total += len(event.data)
                if total > limit:
                    raise _Refuse(413, f"body larger than {limit} bytes")
                parts.append(event.data)
            elif kind is h11.EndOfMessage:
                break
            elif event is h11.NEED_DATA:
                if not timed:
                    self.deadline = trio.current_time() + limits.body_timeout
                    timed = True
                if conn.they_are_waiting_for_100_continue and not continued:
                    continued = True
                    await self.stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                await self._feed(conn)
            else:
                raise h11.RemoteProtocolError(f"unexpected {kind.__name__} in a request body")
        if not parts:
            return b""
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    async def _respond(self, request: Request) -> None:
        self.phase = _HANDLER
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
        if responder._queue and not responder._writing:   # send_now's remainder was never finished
            self.broken = True
            responder._queue.clear()   # and will never be: release it now, not with the connection
        if self.eof or self.broken:
            return
        try:
            if failure is None and responder._state == _STREAMING:
                await responder.end_stream()   # the handler returned with its stream open
            elif failure is not None or responder._state == _NEW:
                if failure is None:
                    log.error("handler returned no response for %s %s", request.method, request.path)
                await self._fail(responder)
        except ClientGone:
            pass

    async def _fail(self, responder: Responder) -> None:
        """500 after a handler failure: keep-alive if nothing was sent yet, else cut."""
        if responder._state != _NEW:
            self.broken = True    # half a response went out: only closing tells the client
        else:
            await responder.send(500, [("content-type", "text/plain; charset=utf-8")], b"internal error\n")

    async def _refuse(self, refusal: _Refuse) -> None:
        """Answer with a short reason and close; linger so the client can read it."""
        body = refusal.reason.encode("utf-8", "replace") + b"\n"
        head = (f"{_STATUS_LINES[refusal.status]}content-type: text/plain; charset=utf-8\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode("ascii")
        stream = self.stream
        with trio.move_on_after(LINGER):
            try:
                await stream.send_all(head + body)
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


class HttpServer:
    """Listeners, connection tasks, the connection limit, timeouts and graceful drain."""

    def __init__(self, handler: Handler, *, limits: HttpLimits = HttpLimits(),
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.limits = limits
        self.ssl_context = ssl_context
        self.pipeline_budget = limits.max_header_bytes + limits.max_body_bytes
        self.draining = False
        self.port: int | None = None
        self._conns: set[_Conn] = set()
        self.running: set[_Conn] = set()   # unwatched connections whose handler is running
        self._listeners: list[trio.SocketListener] = []
        self._accept_scope: trio.CancelScope | None = None
        self._conns_scope: trio.CancelScope | None = None
        self._stopped = trio.Event()
        smallest = min(limits.header_timeout, limits.body_timeout, limits.idle_timeout)
        self._tick = min(max(smallest / 8, 0.01), 0.5)   # timeouts fire up to one tick late

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def serve(self, host: str | None, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Accept and serve until cancelled, or until drain() has finished. Starts with the bound port."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        self._listeners = listeners
        try:
            async with trio.open_nursery() as keeper:
                keeper.start_soon(self._keep_time)
                async with trio.open_nursery() as conns:
                    self._conns_scope = conns.cancel_scope
                    async with trio.open_nursery() as acceptors:
                        self._accept_scope = acceptors.cancel_scope
                        for listener in listeners:
                            acceptors.start_soon(self._accept_loop, listener, conns)
                        self.port = listeners[0].socket.getsockname()[1]
                        task_status.started(self.port)
                keeper.cancel_scope.cancel()
        finally:
            for listener in listeners:
                listener.socket.close()
            self._stopped.set()

    async def drain(self, timeout: float) -> None:
        """Stop accepting (new connections are refused), close idle keep-alive
        connections, let running requests finish for up to `timeout` seconds
        (answered with Connection: close), cancel what is left. Returns when
        serve() has returned, so a handler must not await it (use serve_http's
        `shutdown` event)."""
        if self._conns_scope is None or self._accept_scope is None:   # (both are set together)
            raise RuntimeError("drain() before serve() has started")
        if not self.draining:
            self.draining = True
            self._accept_scope.cancel()
            for listener in self._listeners:
                listener.socket.close()
            for conn in list(self._conns):
                conn.on_drain()
            self._conns_scope.deadline = min(self._conns_scope.deadline, trio.current_time() + timeout)
        await self._stopped.wait()

    async def _keep_time(self) -> None:
        """Every connection's deadline, checked a few times a second, costs less than
        a deadline on a trio scope changed twice per request. More often, a handler
        found running at two checks in a row gets its connection watched."""
        next_scan = trio.current_time() + self._tick
        nap = min(WATCH_TICK, self._tick)
        while True:
            await trio.sleep(nap)
            for conn in list(self.running):
                if conn.seen_seq == conn.seq:
                    conn.watch()
                else:
                    conn.seen_seq = conn.seq
            now = trio.current_time()
            if now >= next_scan:
                next_scan = now + self._tick
                for conn in self._conns:
                    if conn.deadline <= now:
                        conn.expire()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        limit = self.limits.max_connections
        while True:
            try:
                stream = await listener.accept()
            except trio.ClosedResourceError:
                return
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                log.warning("accept failed (%s); pausing %.1fs", exc, _ACCEPT_PAUSE)
                await trio.sleep(_ACCEPT_PAUSE)
                continue
            if len(self._conns) >= limit:
                _reject(stream, plain=self.ssl_context is None)
                continue
            try:
                stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)   # trio's default too
                peer = stream.socket.getpeername()
            except OSError:   # reset already
                stream.socket.close()
                continue
            transport: trio.abc.Stream = stream
            if self.ssl_context is not None:
                transport = trio.SSLStream(stream, self.ssl_context, server_side=True, https_compatible=True)
            conn = _Conn(self, transport, (peer[0], peer[1]))
            self._conns.add(conn)     # counted now, not when its task first runs
            nursery.start_soon(self._serve_connection, conn)

    async def _serve_connection(self, conn: _Conn) -> None:
        try:
            await conn.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("connection from %s failed", conn.client)
        finally:
            self._conns.discard(conn)
            await trio.aclose_forcefully(conn.stream)


def _request(method: str, target: str, headers: list[tuple[str, str]], body: bytes,
             client: tuple[str, int] | None) -> Request:
    if target.startswith("/"):
        path = target.partition("?")[0]
    else:   # absolute-form, or "*"
        path = urlsplit(target).path if "://" in target else target
    if "%" in path:
        path = unquote(path)
    return Request(method, target, path, headers, body, client)


def _only_client_gone(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(ClientGone)[1] is None
    return isinstance(exc, ClientGone)


def _reject(stream: trio.SocketStream, plain: bool) -> None:
    """503 to a connection over the limit, without a task: a new socket's send buffer
    is empty, so the write does not block; what the client sent already is read so
    that close() sends FIN rather than RST. A TLS client is just closed on: answering
    it would need a handshake, which is the work we are refusing."""
    sock = socket.socket(fileno=stream.socket.detach())
    try:
        if not plain:
            return
        sock.setblocking(False)
        body = b"too many connections\n"
        sock.send(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
                  b"content-length: %d\r\nconnection: close\r\nretry-after: 1\r\n\r\n%s" % (len(body), body))
        sock.shutdown(socket.SHUT_WR)
        for _ in range(16):
            if not sock.recv(READ_SIZE):
                break
    except OSError:
        pass
    finally:
        sock.close()


async def serve_http(handler: Handler, host: str, port: int, *, limits: HttpLimits = HttpLimits(),
                     ssl_context: ssl.SSLContext | None = None, shutdown: trio.Event | None = None,
                     drain_timeout: float = 10.0, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve `handler` on host:port; task_status.started(bound_port), so port=0 works.

    Runs until cancelled; or, once `shutdown` is set, drains (HttpServer.drain) for
    up to `drain_timeout` seconds and returns.
    """
    server = HttpServer(handler, limits=limits, ssl_context=ssl_context)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.serve, host, port)
        task_status.started(bound)
        if shutdown is not None:
            await shutdown.wait()
            await server.drain(drain_timeout)
