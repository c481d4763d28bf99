"""The sans-IO HTTP cycle (transport/http_cycle.py): bytes in, events out, no socket.

The table itself is pinned first, so a change to it is a visible decision; then the
Cycle is driven through the moves it allows (one request, pieces, pipelining, keep-alive,
h11's heads) and those it refuses (oversize heads and bodies, the peer leaving, reading
out of turn), each checked against the state it must be in.
"""
from __future__ import annotations

import pytest

from wire_gateway.transport.http_cycle import (
    CONN_TRANSITIONS,
    CONTINUE_BYTES,
    RESPONSE_TRANSITIONS,
    BadTransition,
    ConnState,
    Cycle,
    Refusal,
    Request,
    ResponseState,
    Signal,
    check_transition,
)
from wire_gateway.transport.http_limits import HttpLimits

IDLE, HEAD, BODY, HANDLING, CLOSED = ConnState
LIMITS = HttpLimits(max_header_bytes=1024, max_body_bytes=100, header_timeout=1.0, body_timeout=2.0,
                    idle_timeout=3.0)
GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"


def post(body: bytes, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return b"POST /p?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (n, body)


def cycle_with(*chunks: bytes) -> Cycle:
    cycle = Cycle(LIMITS, ("127.0.0.1", 5))
    for chunk in chunks:
        cycle.receive_data(chunk)
    return cycle


def test_the_connection_table():
    assert dict(CONN_TRANSITIONS) == {
        IDLE: {HEAD, CLOSED},
        HEAD: {BODY, CLOSED},
        BODY: {HANDLING, CLOSED},
        HANDLING: {IDLE, CLOSED},
        CLOSED: set(),
    }


def test_the_response_table():
    new, streaming, done = ResponseState
    assert dict(RESPONSE_TRANSITIONS) == {new: {streaming, done}, streaming: {done}, done: set()}
    check_transition(RESPONSE_TRANSITIONS, new, streaming, "response")
    with pytest.raises(BadTransition, match="response is 'done': it cannot become 'streaming'"):
        check_transition(RESPONSE_TRANSITIONS, done, streaming, "response")


def test_one_request_then_keep_alive():
    cycle = cycle_with()
    assert cycle.state is IDLE and cycle.timer == 1.0   # a fresh connection: header_timeout
    assert cycle.next_event() is Signal.NEED_DATA
    cycle.timer = None   # taken by the IO loop
    cycle.receive_data(GET)
    request = cycle.next_event()
    assert isinstance(request, Request)
    assert (request.method, request.path, request.header("HOST"), request.client) == ("GET", "/a", "x",
                                                                                      ("127.0.0.1", 5))
    assert cycle.state is HANDLING
    head = cycle.response_head(200, [("content-type", "text/plain")], 2, draining=False)
    assert head == b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\n"
    assert cycle.end_exchange(draining=False)
    assert cycle.state is IDLE and cycle.timer == 3.0   # idle_timeout between requests
    assert cycle.next_event() is Signal.NEED_DATA


def test_a_request_in_pieces_moves_head_then_body():
    cycle = cycle_with(b"POST /p HTTP/1.1\r\nHo")
    assert cycle.next_event() is Signal.NEED_DATA
    assert cycle.state is HEAD and cycle.timer == 1.0
    cycle.timer = None
    cycle.receive_data(b"st: x\r\nContent-Length: 5\r\n\r\nab")
    assert cycle.next_event() is Signal.NEED_DATA
    assert cycle.state is BODY and cycle.timer == 2.0
    cycle.receive_data(b"cde")
    request = cycle.next_event()
    assert isinstance(request, Request) and request.body == b"abcde"
    assert cycle.state is HANDLING and not cycle.buf


def test_a_head_trickling_in_byte_by_byte():
    cycle = cycle_with()
    for byte in GET[:-1]:
        cycle.receive_data(bytes([byte]))
        assert cycle.next_event() is Signal.NEED_DATA
    cycle.receive_data(GET[-1:])
    assert isinstance(cycle.next_event(), Request)


def test_pipelined_requests_come_one_at_a_time():
    cycle = cycle_with(GET + post(b"hello") + GET.replace(b"/a", b"/c"))
    paths = []
    for _ in range(3):
        request = cycle.next_event()
        assert isinstance(request, Request)
        paths.append((request.path, request.body))
        assert cycle.end_exchange(draining=False)
    assert paths == [("/a", b""), ("/p", b"hello"), ("/c", b"")]
    assert cycle.next_event() is Signal.NEED_DATA and cycle.state is IDLE


def test_a_pipelined_request_after_connection_close_is_not_read():
    cycle = cycle_with(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + GET)
    assert isinstance(cycle.next_event(), Request)
    assert b"connection: close" in cycle.response_head(200, [], 0, draining=False)
    assert not cycle.end_exchange(draining=False)
    assert cycle.state is CLOSED


def test_http10_and_draining_close_after_the_response():
    cycle = cycle_with(b"GET / HTTP/1.0\r\n\r\n")
    assert isinstance(cycle.next_event(), Request)
    assert not cycle.end_exchange(draining=False)
    cycle = cycle_with(GET)
    assert isinstance(cycle.next_event(), Request)
    assert cycle.response_head(200, [], 0, draining=True).endswith(b"connection: close\r\n\r\n")
    assert not cycle.keep_alive
    assert not cycle.end_exchange(draining=False)


def test_a_stream_to_an_http10_client_ends_with_the_connection():
    cycle = cycle_with(b"GET / HTTP/1.0\r\n\r\n")
    assert isinstance(cycle.next_event(), Request)
    head = cycle.response_head(200, [], -2, draining=False)   # CHUNKED: an HTTP/1.0 body runs until close
    assert b"transfer-encoding" not in head and b"connection: close" in head


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 2000,                 # no end in sight
    b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 2000 + b"\r\n\r\n",  # whole, but too large
])
def test_an_oversize_head_is_refused_431(data):
    cycle = cycle_with(data)
    refusal = cycle.next_event()
    assert refusal == Refusal(431, "request head too large")
    assert cycle.state is CLOSED
    assert refusal.data().startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert refusal.data().endswith(b"connection: close\r\n\r\nrequest head too large\n")


def test_an_oversize_head_h11_reads_is_refused_431():
    cycle = cycle_with(b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n Y" + b"y" * 1010 + b"\r\n\r\n")   # obs-fold: h11's
    refusal = cycle.next_event()
    assert isinstance(refusal, Refusal) and refusal.status == 431 and cycle.state is CLOSED


def test_an_oversize_body_is_refused_413_from_its_length():
    cycle = cycle_with(post(b"", length=101))
    assert cycle.next_event() == Refusal(413, "body larger than 100 bytes")
    assert cycle.state is CLOSED


def test_an_oversize_chunked_body_is_refused_413_while_read():
    cycle = cycle_with(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert cycle.next_event() is Signal.NEED_DATA and cycle.state is BODY
    cycle.receive_data(b"64\r\n" + b"x" * 100 + b"\r\n")
    assert cycle.next_event() is Signal.NEED_DATA
    cycle.receive_data(b"1\r\nx\r\n")
    assert cycle.next_event() == Refusal(413, "body larger than 100 bytes")


def test_both_length_and_chunked_is_refused_400():
    cycle = cycle_with(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert cycle.next_event() == Refusal(400, "both Content-Length and Transfer-Encoding")


def test_a_malformed_head_is_refused_400_by_h11():
    refusal = cycle_with(b"GET / HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n").next_event()
    assert isinstance(refusal, Refusal) and refusal.status == 400


def test_a_chunked_body_in_pieces_then_a_pipelined_request():
    cycle = cycle_with(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    assert cycle.next_event() is Signal.NEED_DATA
    assert cycle.state is BODY and cycle.timer == 2.0
    cycle.receive_data(b"0\r\n\r\n" + GET)
    request = cycle.next_event()
    assert isinstance(request, Request) and (request.path, request.body) == ("/c", b"abc")
    assert cycle.buf == GET   # h11's trailing data goes back for the next request
    assert cycle.end_exchange(draining=False)
    assert isinstance(cycle.next_event(), Request)


def test_expect_100_continue_is_asked_for_once():
    cycle = cycle_with(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    assert cycle.next_event() is Signal.SEND_CONTINUE
    assert CONTINUE_BYTES == b"HTTP/1.1 100 Continue\r\n\r\n"
    cycle.receive_data(b"o")
    assert cycle.next_event() is Signal.NEED_DATA
    cycle.receive_data(b"k")
    request = cycle.next_event()
    assert isinstance(request, Request) and request.body == b"ok"


def test_closed_mid_body_closes_without_an_answer():
    cycle = cycle_with(post(b"abc", length=10))
    assert cycle.next_event() is Signal.NEED_DATA and cycle.state is BODY
    cycle.receive_data(b"")
    assert cycle.next_event() is Signal.CLOSE
    assert cycle.state is CLOSED


def test_closed_mid_chunked_body_closes():
    cycle = cycle_with(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab")
    assert cycle.next_event() is Signal.NEED_DATA
    cycle.receive_data(b"")
    assert isinstance(cycle.next_event(), Refusal)   # h11's word; the IO loop sends nothing to a peer gone
    assert cycle.state is CLOSED


def test_closed_mid_head_is_judged_by_h11():
    cycle = cycle_with(b"GET / HTTP/1.1\r\nHo")
    assert cycle.next_event() is Signal.NEED_DATA
    cycle.receive_data(b"")
    refusal = cycle.next_event()
    assert isinstance(refusal, Refusal) and refusal.status == 400 and cycle.state is CLOSED


def test_closed_between_requests():
    cycle = cycle_with(GET, b"")
    assert isinstance(cycle.next_event(), Request)
    cycle.end_exchange(draining=False)   # eof already seen: not kept alive
    assert cycle.state is CLOSED
    cycle = cycle_with(b"")
    assert cycle.next_event() is Signal.CLOSE and cycle.state is CLOSED


@pytest.mark.parametrize(("data", "status"), [(b"", None), (b"GET / HT", 408), (post(b"a", length=5), 408)])
def test_a_timeout_answers_408_only_while_a_request_arrives(data, status):
    cycle = cycle_with(data) if data else cycle_with()   # (b"" would be the peer's end)
    assert cycle.next_event() is Signal.NEED_DATA
    refusal = cycle.timed_out()
    assert (refusal.status if refusal else None) == status
    assert cycle.state is CLOSED


def test_reading_out_of_turn_is_refused():
    cycle = cycle_with(GET + GET)
    assert isinstance(cycle.next_event(), Request)
    with pytest.raises(BadTransition, match="'handling'"):   # the next request before end_exchange
        cycle.next_event()
    cycle.close()
    with pytest.raises(BadTransition, match="'closed'"):
        cycle.next_event()
    with pytest.raises(BadTransition, match="connection is 'closed': it cannot become 'idle'"):
        cycle.end_exchange(draining=False)
    cycle = cycle_with()
    with pytest.raises(BadTransition, match="connection is 'idle': it cannot become 'idle'"):
        cycle.end_exchange(draining=False)   # nothing was handled


def test_a_bad_response_header_changes_nothing():
    cycle = cycle_with(GET)
    assert isinstance(cycle.next_event(), Request)
    with pytest.raises(ValueError, match="invalid response header"):
        cycle.response_head(200, [("x", "a\r\nset-cookie: b")], 0, draining=False)
    assert cycle.keep_alive and cycle.state is HANDLING
