"""http_head, the fast request-head parser, judged against h11 itself.

The rule: whatever parse_head accepts, h11 accepts too and reads the same way; what
it declines goes to h11. A fast parser that accepted something h11 refuses (or read
it differently) would open a request-smuggling gap, so this is checked on hand-made
edge cases and on thousands of random mutations of real MCP request heads.
"""
from __future__ import annotations

import random

import h11
import pytest
import trio

from wire_gateway.transport.http_head import find_head_end, parse_head
from wire_gateway.transport.http_server import HttpLimits, HttpServer

MCP_POST = ("POST /mcp/echo HTTP/1.1\r\nhost: 127.0.0.1:8080\r\ncontent-type: application/json\r\n"
            "accept: application/json, text/event-stream\r\nmcp-protocol-version: 2026-07-28\r\n"
            "mcp-method: tools/call\r\nmcp-name: echo\r\ncontent-length: 97")
MCP_GET = "GET /mcp/echo HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\nMcp-Session-Id: abc123"
SDK_DELETE = ("DELETE /mcp HTTP/1.1\r\nHost: 127.0.0.1:9\r\nAccept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
              "Connection: keep-alive\r\nUser-Agent: python-httpx/0.28.1\r\nmcp-session-id: 5f2a\r\n"
              "Content-Length: 0")


def h11_reading(head: str):
    """(method, target, version, headers, length) as h11 reads the head, or None if it refuses it."""
    conn = h11.Connection(h11.SERVER)
    try:
        conn.receive_data(head.encode("latin-1") + b"\r\n\r\n")
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if type(event) is not h11.Request:
        return None
    headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers]
    lengths = [int(v) for n, v in headers if n == "content-length"]
    return (event.method.decode("ascii"), event.target.decode("latin-1"), event.http_version.decode("ascii"),
            headers, lengths[0] if lengths else 0)


def fast_reading(head: str):
    parsed = parse_head(head)
    if parsed is None:
        return None
    return parsed.method, parsed.target, parsed.version, parsed.headers, parsed.length


def check(head: str) -> bool:
    """Asserts the subset rule for one head; True if the fast path took it."""
    fast = fast_reading(head)
    if fast is not None:
        assert h11_reading(head) == fast, f"fast path and h11 disagree on {head!r}"
    return fast is not None


@pytest.mark.parametrize("head", [MCP_POST, MCP_GET, SDK_DELETE,
                                  "GET / HTTP/1.0",                           # 1.0 needs no Host
                                  "get /x HTTP/1.1\r\nhost: a",               # methods are tokens, any case
                                  "POST /x?y=%20z HTTP/1.1\r\nhost: a\r\ncontent-length:  12 ",
                                  "GET /x HTTP/1.1\r\nhost: a\r\nx-empty:\r\nx-tab: a\tb\r\nx-latin: caf\xe9",
                                  "GET /x HTTP/1.1\r\nHOST: a\r\nConnection: Keep-Alive, close"])
def test_usual_heads_take_the_fast_path_and_read_as_h11_reads_them(head):
    assert check(head)


@pytest.mark.parametrize("head", [
    "GET /x HTTP/1.1\r\nhost: a\r\nx-fold: one\r\n two",                # obs-fold
    "GET /x HTTP/1.1\nhost: a",                                          # bare LF
    "GET /x HTTP/1.1\r\nhost: a\r\nx-ctl: a\x01b",                       # control character (h11 allows it)
    "GET /x HTTP/1.1\r\nhost: a\r\nx-nul: a\x00b",
    "POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked",
    "POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 5",
    "POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5, 5",
    "POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: -1",
    "POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 1e3",
    "POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\nexpect: 100-continue",
    "GET /x HTTP/1.1",                                                   # 1.1 without Host
    "GET /x HTTP/1.1\r\nhost: a\r\nhost: b",
    "GET http://a/x HTTP/1.1\r\nhost: a",                                # absolute form
    "OPTIONS * HTTP/1.1\r\nhost: a",
    "GET /x HTTP/2.0\r\nhost: a",
    "GET /x HTTP/1.1 \r\nhost: a",
    "GET  /x HTTP/1.1\r\nhost: a",
    "GET /x HTTP/1.1\r\nhost : a",                                       # space before the colon
    "GET /x HTTP/1.1\r\n: a\r\nhost: a",
    "GET /x HTTP/1.1\r\nhost: a\r\nx(y): z",
    "\r\nGET /x HTTP/1.1\r\nhost: a",
    "GET /\xe9 HTTP/1.1\r\nhost: a",
])
def test_unusual_heads_go_to_h11(head):
    assert not check(head)


def test_random_mutations_never_break_the_subset_rule():
    rng = random.Random(20261121)
    alphabet = ["\r", "\n", "\r\n", " ", "\t", ":", ",", "\x00", "\x01", "\x7f", "\xe9", "a", "Z", "0", "9",
                "/", "?", "%", "(", "\"", "content-length: 3", "transfer-encoding: chunked", "host: b",
                "\r\n ", "HTTP/1.0", "-"]
    taken = 0
    for _i in range(6000):
        head = rng.choice([MCP_POST, MCP_GET, SDK_DELETE])
        for _ in range(rng.randint(1, 3)):
            pos = rng.randrange(len(head) + 1)
            op = rng.random()
            if op < 0.4:
                head = head[:pos] + rng.choice(alphabet) + head[pos:]
            elif op < 0.7:
                head = head[:pos] + head[pos + rng.randint(1, 4):]
            else:
                head = head[:pos] + rng.choice(alphabet) + head[pos + 1:]
        taken += check(head)
    assert 500 < taken < 6000   # the mutations exercise both sides of the rule


def test_find_head_end():
    assert find_head_end(b"GET / HTTP/1.1\r\nhost: a\r\n") is None
    assert find_head_end(b"GET / HTTP/1.1\r\nhost: a\r\n\r\nBODY") == (23, 27)
    assert find_head_end(b"GET / HTTP/1.1\nhost: a\n\nBODY") == (22, 24)   # bare LF: parse_head declines it


async def _exchange(port: int, data: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        out = b""
        with trio.move_on_after(2):
            while chunk := await stream.receive_some(65536):
                out += chunk
        return out


@pytest.mark.anyio
async def test_the_server_answers_fast_and_h11_heads_alike_on_one_connection():
    """Pipelined: a fast head, a bare-LF head (h11), a chunked body (h11), a fast head
    with a body, then Connection: close. Bodies and order survive the switches."""
    seen = []

    async def handler(req, resp):
        seen.append((req.method, req.path, req.header("x-n"), req.body))
        await resp.send(200, [("content-type", "text/plain")], req.body or b"-")

    data = (b"GET /a HTTP/1.1\r\nhost: t\r\nx-n: 1\r\n\r\n"
            b"POST /b HTTP/1.1\nhost: t\nx-n: 2\ncontent-length: 3\n\nabc"
            b"POST /c HTTP/1.1\r\nhost: t\r\nx-n: 3\r\ntransfer-encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"
            b"POST /d HTTP/1.1\r\nhost: t\r\nx-n: 4\r\ncontent-length: 4\r\nconnection: close\r\n\r\nwxyz")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = HttpServer(handler, limits=HttpLimits())
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            out = await _exchange(port, data)
            nursery.cancel_scope.cancel()
    assert seen == [("GET", "/a", "1", b""), ("POST", "/b", "2", b"abc"), ("POST", "/c", "3", b"de"),
                    ("POST", "/d", "4", b"wxyz")]
    assert out.count(b"HTTP/1.1 200 OK") == 4
    assert out.endswith(b"wxyz")


@pytest.mark.anyio
async def test_a_head_the_fast_path_declines_is_refused_by_h11():
    async def handler(req, resp):
        await resp.send(200, [], b"should not happen")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = HttpServer(handler, limits=HttpLimits())
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            out = await _exchange(port, b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 5, 6\r\n\r\nhello")
            nursery.cancel_scope.cancel()
    assert out.startswith(b"HTTP/1.1 400 "), out


def test_find_head_end_resumes_where_it_stopped():
    head = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"
    for cut in range(1, len(head)):
        looked = cut
        assert find_head_end(head[:cut]) is None or head[:cut].endswith(b"\r\n\r\n")
        assert find_head_end(head, max(0, looked - 2)) == (23, 27)


@pytest.mark.anyio
async def test_a_head_that_arrives_byte_by_byte_is_read_whole():
    """The head-end search resumes between reads; a blank line split across reads is still found."""
    async def handler(req, resp):
        await resp.send(200, [], req.body)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = HttpServer(handler, limits=HttpLimits())
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                for byte in b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nok":
                    await stream.send_all(bytes([byte]))
                    await trio.sleep(0.002)
                out = b""
                while not out.endswith(b"ok"):
                    out += await stream.receive_some(65536)
            nursery.cancel_scope.cancel()
    assert out.startswith(b"HTTP/1.1 200 ")
