"""How a handler answers: one response, whole or streamed (SSE), written through the socket.

The handler writes from its own task, at once: a response that fits the socket's send
buffer (nearly all) costs one write and no scheduler pass (`send_now` not even an await).
The kernel's send buffer (trio caps its unsent part at 16 KiB) is the first buffer; what
concurrent senders add while a write is blocked is queued up to `write_high_water`, past
which they wait too, so a slow reader costs bounded memory.

Where the response is (NEW, STREAMING, DONE) follows http_cycle's RESPONSE_TRANSITIONS; how
it is framed (Content-Length, chunked, until close) and whether the connection is kept alive
after it is `Cycle.response_head`'s decision.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import trio

from wire_gateway.telemetry.metrics import METRICS

from .http_cycle import CHUNKED, RESPONSE_TRANSITIONS, Cycle, ResponseState, check_transition

if TYPE_CHECKING:
    from .http_connection import Connection

__all__ = ["ClientGone", "Responder"]

_JOIN_MAX = 65536       # bodies below this are joined to their head for one write; above, written after it
# How a streamed body is framed.
_NO_BODY, _UNTIL_CLOSE = -1, -3   # negative: never a Content-Length (CHUNKED is -2)
NEW, STREAMING, DONE = ResponseState
_SENT = METRICS.sent_bytes.cell("http")     # the same cell as the connection's writes (telemetry/metrics.py)


class ClientGone(Exception):
    """The client has disconnected (or its response was cut short): nothing more can be sent."""


class Responder:
    """Writes one response: `send` for a whole body, or start_stream/send_chunk/end_stream.

    When the peer goes before the response is out, the handler is cancelled: awaits
    in its `finally` raise Cancelled, so cleanup there should not block (queue a
    frame) or shield itself. Concurrent senders are fine: they are written in call order.
    """

    __slots__ = ("_disconnected", "_conn", "_cycle", "_state", "_framing", "_gone", "_queue", "_queued",
                 "_writing", "_progress")

    def __init__(self, conn: Connection) -> None:
        self._disconnected: trio.Event | None = None   # made when asked for: most responses never are
        self._conn = conn
        self._cycle = conn.cycle
        self._state = NEW
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
            if self._gone and self._cycle.eof:
                self._disconnected.set()
        return self._disconnected

    @property
    def started(self) -> bool:
        return self._state is not NEW

    @property
    def buffered(self) -> int:
        """Bytes queued here behind a blocked write: at most write_high_water plus one send."""
        return self._queued

    async def send(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        """The whole response. Content-Length is set here; a given one is dropped."""
        cycle = self._begin(DONE)
        draining = self._conn.server.draining
        if status in (204, 304):
            if body:
                raise ValueError(f"a {status} response has no body")
            head = cycle.response_head(status, headers, None, draining)
        else:
            head = cycle.response_head(status, headers, len(body), draining)
        self._state = DONE
        if not body or cycle.method == "HEAD":
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
        cycle = self._cycle
        fd = conn.fd
        if (self._state is not NEW or self._writing or self._gone or fd is None or cycle.method == "HEAD"
                or status in (204, 304)):
            return False
        try:
            head = cycle.response_head(status, headers, len(body), conn.server.draining)
            if len(body) < _JOIN_MAX:   # the common small answer: joined, one plain write
                data = head + body
                sent = os.write(fd, data)
            else:   # head and body in one call without joining them: a large answer to a
                # slow reader would otherwise be held twice (the join, then what is left of it)
                sent = os.writev(fd, (head, body))
        except (ValueError, OSError):   # `send` will say what is wrong, or find the client gone
            return False
        self._state = DONE
        total = len(head) + len(body)
        if METRICS.on:
            _SENT.value += sent        # what the socket did not take is counted when `finish` writes it
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
        cycle = self._begin(STREAMING)
        draining = self._conn.server.draining
        if cycle.method == "HEAD" or status in (204, 304):
            head = cycle.response_head(status, headers, None, draining)
            self._framing = _NO_BODY
        else:
            head = cycle.response_head(status, headers, CHUNKED, draining)
            self._framing = CHUNKED if cycle.version == "1.1" else _UNTIL_CLOSE
        self._state = STREAMING
        self._conn.watch()   # a stream may last: notice at once if the client goes
        await self._write(head)

    async def send_chunk(self, data: bytes) -> None:
        """Part of the body. Waits while the client reads slowly; raises ClientGone."""
        if self._gone:
            raise ClientGone("client disconnected")
        if self._state is not STREAMING:
            raise RuntimeError("send_chunk() outside start_stream() ... end_stream()")
        if not data or self._framing == _NO_BODY:
            return
        if self._framing == CHUNKED:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        await self._write(data)

    async def end_stream(self) -> None:
        if self._gone:
            raise ClientGone("client disconnected")
        if self._state is not STREAMING:
            raise RuntimeError("end_stream() without start_stream()")
        self._state = DONE
        if self._framing == CHUNKED:
            await self._write(b"0\r\n\r\n")

    def _begin(self, new: ResponseState) -> Cycle:
        """Checked before the head is built, which may still fail (a bad header): the
        state changes only once the head is ready to go."""
        if self._gone:
            raise ClientGone("client disconnected")
        check_transition(RESPONSE_TRANSITIONS, self._state, new, "response")
        return self._cycle

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
            self._cycle.broken = True
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
        self._cycle.eof = True
        self._gone = True
        self._queue.clear()
        self._queued = 0
        if self._disconnected is not None:
            self._disconnected.set()
        if self._state is not DONE or self._writing:
            self._conn.scope.cancel()
        self._wake()
