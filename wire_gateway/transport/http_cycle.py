"""One HTTP/1.1 connection's request/response cycle, sans-IO: bytes in, events and bytes out.

Following h11's example, what a connection may do next is kept apart from the sockets and
tasks that do it (http_connection): its states are an enum and the moves between them one
table, as h11's `_state.py` and upstream/states.py keep theirs, so a reader sees the whole
life of a connection at a glance and a move the table does not list fails where it happens.
The decisions that are not IO live here too: when a request is whole, which limit it breaks
(431, 413, 400), when a pipelined request follows, whether the connection is kept alive,
which timeout runs. tests/test_http_cycle.py drives them with bytes, without a socket.

    IDLE ──bytes──► HEAD ──head read──► BODY ──body read──► HANDLING ──keep-alive──► IDLE
      └──────────────┴───────────────────┴────────────────────┴──────────────────► CLOSED

A response goes NEW ──► STREAMING ──► DONE, or NEW ──► DONE at once (RESPONSE_TRANSITIONS).

`Cycle.next_event()` says what the IO loop does next: NEED_DATA (read more, after starting
`timer` if it is set), SEND_CONTINUE (write CONTINUE_BYTES, then as NEED_DATA), a Request
(run the handler, then `end_exchange`), a Refusal (write its `data()` and close), or CLOSE
(close without a word: the client left, or nothing was arriving).

The usual request head is parsed by http_head (a few us); any other, and its body, by a
fresh h11 parser (~60 us), which accepts or refuses it by the RFC. Bodies are read whole
before the handler runs.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum

import h11

from .http_head import Head, find_head_end, parse_head
from .http_limits import HttpLimits
from .http_request import Request, make_request
from .http_response_head import STATUS_LINES, head_lines

__all__ = ["CONN_TRANSITIONS", "CONTINUE_BYTES", "RESPONSE_TRANSITIONS", "BadTransition", "ConnState",
           "Cycle", "Refusal", "Request", "ResponseState", "Signal", "check_transition",
           "pipeline_budget"]

CHUNKED = -2            # `response_head` framing: a body of unknown length (a Content-Length is >= 0)
CONTINUE_BYTES = b"HTTP/1.1 100 Continue\r\n\r\n"


class ConnState(StrEnum):
    """What a connection is doing: drain closes IDLE ones; a timeout in HEAD or BODY answers 408."""

    IDLE = "idle"            # between requests: nothing of the next one has arrived
    HEAD = "head"            # part of a request head has arrived
    BODY = "body"            # the head is read; its body is arriving (or is here: a moment)
    HANDLING = "handling"    # the handler has the request and is answering it
    CLOSED = "closed"        # no request will be read again: refused, left, timed out, or not kept alive


CONN_TRANSITIONS: Mapping[ConnState, frozenset[ConnState]] = {
    ConnState.IDLE: frozenset({ConnState.HEAD, ConnState.CLOSED}),
    ConnState.HEAD: frozenset({ConnState.BODY, ConnState.CLOSED}),
    ConnState.BODY: frozenset({ConnState.HANDLING, ConnState.CLOSED}),
    # -> IDLE only when the response is out whole and both sides keep the connection alive.
    ConnState.HANDLING: frozenset({ConnState.IDLE, ConnState.CLOSED}),
    ConnState.CLOSED: frozenset(),
}


class ResponseState(StrEnum):
    """Where one response is."""

    NEW = "new"              # nothing sent: a failing handler can still get a 500
    STREAMING = "streaming"  # the head is out; body chunks follow until the stream ends
    DONE = "done"            # all of it is written (or queued behind a write in progress)


RESPONSE_TRANSITIONS: Mapping[ResponseState, frozenset[ResponseState]] = {
    ResponseState.NEW: frozenset({ResponseState.STREAMING, ResponseState.DONE}),
    ResponseState.STREAMING: frozenset({ResponseState.DONE}),
    ResponseState.DONE: frozenset(),
}

# The hot path reads these as globals, not as enum attributes.
IDLE, HEAD, BODY, HANDLING, CLOSED = ConnState


class BadTransition(RuntimeError):
    """A state change the table does not allow: a bug in the caller (a handler sending two
    responses, a loop reading after close), not in the peer's input."""


def check_transition(table: Mapping, old: StrEnum, new: StrEnum, what: str) -> None:
    if new not in table[old]:
        raise BadTransition(f"{what} is '{old}': it cannot become '{new}'")


class Signal(Enum):
    """What `next_event` asks of the IO loop when it has no Request or Refusal to give."""

    NEED_DATA = "need data"          # read more, then ask again
    SEND_CONTINUE = "send continue"  # the client waits for 100 Continue before sending its body
    CLOSE = "close"                  # close without answering


NEED_DATA, SEND_CONTINUE, CLOSE = Signal


@dataclass(slots=True)
class Refusal:
    """A request refused (400/408/413/431): answered with a short reason, then the connection closes."""

    status: int
    reason: str

    def data(self) -> bytes:
        body = self.reason.encode("utf-8", "replace") + b"\n"
        head = (f"{STATUS_LINES[self.status]}content-type: text/plain; charset=utf-8\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode("ascii")
        return head + body


Event = Request | Refusal | Signal


def pipeline_budget(limits: HttpLimits) -> int:
    """Bytes a pipelining client may send beyond the request being handled (one whole request
    more) before its connection stops reading: enough never to stall a client that waits for
    each answer, bounded for one that does not."""
    return limits.max_header_bytes + limits.max_body_bytes


class Cycle:
    """The state of one connection and the bytes it has received but not yet used.

    The IO loop appends what it reads to `buf` (or calls `receive_data`), sets `eof` when
    the peer has gone, and asks `next_event()` what to do."""

    __slots__ = ("limits", "client", "buf", "state", "eof", "broken", "timer", "method", "version",
                 "keep_alive", "_looked", "_waiting", "_h11", "_h11_head", "_parts", "_size", "_continued")

    def __init__(self, limits: HttpLimits, client: tuple[str, int] | None = None) -> None:
        self.limits = limits
        self.client = client
        self.buf = bytearray()     # read and not yet used: the next request(s), in part or whole
        self.state = IDLE
        self.eof = False           # the peer closed, reset, or could not be written to
        self.broken = False        # a response was cut short: only closing tells the client
        # A timeout for the IO loop to start at its next wait for data (None: keep the running
        # one): header_timeout for a fresh connection and a head arriving, idle_timeout between
        # requests, body_timeout once a body is awaited.
        self.timer: float | None = limits.header_timeout
        self.method = ""
        self.version = "1.1"
        self.keep_alive = True     # this request/response cycle may be followed by another
        self._looked = 0           # how far `buf` was searched for the end of a head
        self._waiting: tuple[Head, int, int] | None = None   # a head whose body is arriving
        self._h11: h11.Connection | None = None   # the parser of a head http_head declined, and its body
        self._h11_head: tuple[str, list[tuple[str, str]]] = ("", [])
        self._parts: list[bytes] = []
        self._size = 0
        self._continued = False

    def receive_data(self, data: bytes) -> None:
        """Bytes read from the peer; b"" for its end."""
        if data:
            self.buf += data
        else:
            self.eof = True

    def next_event(self) -> Event:
        try:
            if self._h11 is not None:
                return self._h11_event()
            if self._waiting is not None:
                return self._body_event()
            return self._head_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            return self._refuse(status, "request head too large" if status == 431 else str(exc))

    def end_exchange(self, draining: bool) -> bool:
        """The handler has returned: True if the connection reads another request (IDLE)."""
        if self.eof or self.broken or not self.keep_alive or draining:
            self._to(CLOSED)
            return False
        self._to(IDLE)
        self.timer = self.limits.idle_timeout
        return True

    def timed_out(self) -> Refusal | None:
        """The running timeout expired: 408 if a request was arriving, else a silent close."""
        refusal = Refusal(408, "request not received in time") if self.state in (HEAD, BODY) else None
        self.close()
        return refusal

    def close(self) -> None:
        """No request will be read again (the IO loop is done with the connection)."""
        if self.state is not CLOSED:
            self._to(CLOSED)
        self._waiting = None
        self._h11 = None

    def response_head(self, status: int, headers: list[tuple[str, str]], framing: int | None,
                      draining: bool) -> bytes:
        """Status line and headers; `framing` is a Content-Length, CHUNKED, or None for no body.
        Decides whether the connection is kept alive after this response, and says so.

        Raises ValueError for a header that could split the response; nothing is sent then.
        """
        lines, said_close = head_lines(status, headers)
        close = said_close or not self.keep_alive or draining
        if framing is None:
            tail = ""
        elif framing == CHUNKED:
            if self.version == "1.1":
                tail = "transfer-encoding: chunked\r\n"
            else:
                tail = ""
                close = True   # an HTTP/1.0 client reads the body until we close
        else:
            tail = f"content-length: {framing}\r\n"
        if close:
            self.keep_alive = False
            if not said_close:
                tail += "connection: close\r\n"
        return (lines + tail + "\r\n").encode("latin-1")

    def _to(self, new: ConnState) -> None:
        # check_transition, inlined: it runs four times a request
        if new not in CONN_TRANSITIONS[self.state]:
            raise BadTransition(f"connection is '{self.state}': it cannot become '{new}'")
        self.state = new

    def _refuse(self, status: int, reason: str) -> Refusal:
        self._to(CLOSED)
        self._h11 = None
        return Refusal(status, reason)

    def _head_event(self) -> Event:
        buf = self.buf
        limits = self.limits
        if self.state is IDLE:
            if not buf:
                if self.eof:   # the client left between requests
                    self._to(CLOSED)
                    return CLOSE
                return NEED_DATA
            self._to(HEAD)
            self.timer = limits.header_timeout
        elif self.state is not HEAD:   # HANDLING before end_exchange, or CLOSED
            raise BadTransition(f"connection is '{self.state}': it reads no request now")
        ends = find_head_end(buf, self._looked)
        if ends is None:
            if len(buf) > limits.max_header_bytes:
                return self._refuse(431, "request head too large")
            if self.eof:   # the client left halfway through a head: h11 says what was wrong
                return self._start_h11()
            self._looked = max(0, len(buf) - 2)   # a head trickling in costs linear time
            return NEED_DATA
        self._looked = 0
        head_stop, body_start = ends
        if head_stop > limits.max_header_bytes:
            return self._refuse(431, "request head too large")
        head = parse_head(buf[:head_stop].decode("latin-1"))
        if head is None:
            return self._start_h11()
        self._to(BODY)
        self.method = head.method
        self.version = head.version
        self.keep_alive = head.version == "1.1" and not head.close
        length = head.length
        if length > limits.max_body_bytes:
            return self._refuse(413, f"body larger than {limits.max_body_bytes} bytes")
        stop = body_start + length
        if len(buf) < stop:
            self._waiting = (head, body_start, stop)
            self.timer = limits.body_timeout
            return self._body_event()
        return self._request(head, body_start, stop)

    def _body_event(self) -> Event:
        assert self._waiting is not None
        head, body_start, stop = self._waiting
        if len(self.buf) < stop:
            if self.eof:   # gone mid-body: nobody to answer
                self._to(CLOSED)
                self._waiting = None
                return CLOSE
            return NEED_DATA
        self._waiting = None
        return self._request(head, body_start, stop)

    def _request(self, head: Head, body_start: int, stop: int) -> Request:
        buf = self.buf
        body = bytes(buf[body_start:stop]) if head.length else b""
        del buf[:stop]   # what follows is the next (pipelined) request
        self._to(HANDLING)
        return make_request(head.method, head.target, head.headers, body, self.client)

    def _start_h11(self) -> Event:
        """h11 parses a head that http_head declined (and reads its body): it accepts what
        the RFC allows and refuses the rest with the right status."""
        self._looked = 0
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        self._parts = []
        self._size = 0
        self._continued = False
        return self._h11_event()

    def _h11_event(self) -> Event:
        conn = self._h11
        assert conn is not None
        buf = self.buf
        if buf:
            conn.receive_data(bytes(buf))
            buf.clear()
        if self.eof:
            conn.receive_data(b"")   # h11 ends with ConnectionClosed or an error, never NEED_DATA
        if self.state is HEAD:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return NEED_DATA
            if type(event) is not h11.Request:   # ConnectionClosed: the client left between requests
                self._h11 = None
                self._to(CLOSED)
                return CLOSE
            refusal = self._h11_head_read(event)
            if refusal is not None:
                return refusal
        limit = self.limits.max_body_bytes
        while True:
            event = conn.next_event()
            kind = type(event)
            if isinstance(event, h11.Data):
                self._size += len(event.data)
                if self._size > limit:
                    return self._refuse(413, f"body larger than {limit} bytes")
                self._parts.append(event.data)
            elif kind is h11.EndOfMessage:
                break
            elif event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue and not self._continued:
                    self._continued = True
                    return SEND_CONTINUE
                return NEED_DATA
            else:
                raise h11.RemoteProtocolError(f"unexpected {kind.__name__} in a request body")
        parts = self._parts
        body = b"" if not parts else bytes(parts[0]) if len(parts) == 1 else b"".join(parts)
        self._parts = []
        data, _ = conn.trailing_data   # what follows (pipelined requests) goes back to `buf`; EOF is in `eof`
        buf[:0] = data
        self._h11 = None
        self._to(HANDLING)
        target, headers = self._h11_head
        return make_request(self.method, target, headers, body, self.client)

    def _h11_head_read(self, event: h11.Request) -> Refusal | None:
        limits = self.limits
        self._to(BODY)
        self.timer = limits.body_timeout
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
            return self._refuse(431, "request head too large")
        if chunked and length is not None:   # h11 would let Transfer-Encoding win; RFC 9112: a smuggling sign
            return self._refuse(400, "both Content-Length and Transfer-Encoding")
        if length is not None and length > limits.max_body_bytes:
            return self._refuse(413, f"body larger than {limits.max_body_bytes} bytes")
        self._h11_head = (event.target.decode("latin-1"), headers)
        return None
