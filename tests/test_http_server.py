"""The data-plane HTTP server, driven over real sockets by a small raw client.

Raw bytes rather than an HTTP library: pipelining, malformed requests, half-read
responses and vanishing clients are the point. Every test runs under a fail_after.
The bench at the end runs only with WIRE_HTTP_BENCH=1.
"""
from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from wire_gateway.transport.http_server import ClientGone, HttpLimits, HttpServer, serve_http

pytestmark = pytest.mark.anyio

JSON = [("content-type", "application/json")]


@asynccontextmanager
async def running(handler, **kw):
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(serve_http, handler, "127.0.0.1", 0, **kw))
        yield port
        nursery.cancel_scope.cancel()


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)


class Client:
    """A raw HTTP/1.1 client: write any bytes, parse responses as they come."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = b""

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(self, method: str = "GET", path: str = "/", body: bytes = b"", headers: str = "") -> None:
        head = f"{method} {path} HTTP/1.1\r\nhost: t\r\ncontent-length: {len(body)}\r\n{headers}\r\n"
        await self.send(head.encode() + body)

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError("server closed the connection")
        self.buf += data

    async def _until(self, sep: bytes) -> bytes:
        while sep not in self.buf:
            await self._fill()
        line, self.buf = self.buf.split(sep, 1)
        return line

    async def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            await self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    async def head(self) -> Response:
        lines = (await self._until(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = [(k.lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:])]
        return Response(status, headers, b"")

    async def chunk(self) -> bytes:
        """One chunk of a chunked body (b"" for the last one)."""
        size = int(await self._until(b"\r\n"), 16)
        data = await self._exactly(size + 2)
        if size == 0:
            return b""
        return data[:-2]

    async def response(self) -> Response:
        resp = await self.head()
        if resp.status < 200:
            return resp
        if resp.header("transfer-encoding") == "chunked":
            parts = []
            while part := await self.chunk():
                parts.append(part)
            resp.body = b"".join(parts)
        elif resp.header("content-length") is not None:
            resp.body = await self._exactly(int(resp.header("content-length")))
        else:
            while True:
                try:
                    await self._fill()
                except EOFError:
                    break
            resp.body, self.buf = self.buf, b""
        return resp

    async def closed_by_server(self) -> bool:
        """True if the server closes (or resets) without sending anything more."""
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:
            return True
        return data == b"" and self.buf == b""

    async def aclose(self) -> None:
        await self.stream.aclose()


async def echo(req, resp) -> None:
    await resp.send(200, JSON, b'{"path": "%s", "n": %d}' % (req.path.encode(), len(req.body)))


# --- requests and keep-alive -------------------------------------------------------------

async def test_request_fields_and_keep_alive_reuse():
    seen = []

    async def handler(req, resp):
        seen.append(req)
        await echo(req, resp)

    with trio.fail_after(5):
        async with running(handler) as port:
            c = await Client.connect(port)
            await c.send(b"POST /mcp/a%20b?x=1&y=%20 HTTP/1.1\r\nHost: t\r\nX-Multi: one\r\nx-multi: two\r\n"
                         b"Content-Length: 5\r\n\r\nhello")
            first = await c.response()
            await c.request("GET", "/second")
            second = await c.response()
            assert (first.status, first.body) == (200, b'{"path": "/mcp/a b", "n": 5}')
            assert first.header("content-length") == "28" and first.header("connection") is None
            assert second.status == 200 and b"/second" in second.body
            req = seen[0]
            assert (req.method, req.target, req.path, req.body) == (
                "POST", "/mcp/a%20b?x=1&y=%20", "/mcp/a b", b"hello")
            assert req.header("X-MULTI") == "one" and req.header_all("x-multi") == ["one", "two"]
            assert req.header("absent") is None and ("host", "t") in req.headers
            # same connection: the client address did not change
            local = c.stream.socket.getsockname()
            assert seen[0].client == seen[1].client == (local[0], local[1])
            await c.aclose()


async def test_pipelined_requests_are_answered_in_order_and_none_is_lost():
    order = []

    async def handler(req, resp):
        order.append(req.path)
        if req.path == "/slow":
            await trio.sleep(0.2)   # the next requests arrive while this runs
        await echo(req, resp)

    with trio.fail_after(5):
        async with running(handler) as port:
            c = await Client.connect(port)
            await c.send(b"GET /slow HTTP/1.1\r\nhost: t\r\n\r\nGET /two HTTP/1.1\r\nhost: t\r\n\r\n")
            await trio.sleep(0.05)   # the third comes while the first handler runs, in two pieces
            await c.send(b"POST /three HTTP/1.1\r\nhost: t\r\ncontent-len")
            await c.send(b"gth: 3\r\n\r\nabc")
            bodies = [(await c.response()).body for _ in range(3)]
            assert bodies == [b'{"path": "/slow", "n": 0}', b'{"path": "/two", "n": 0}', b'{"path": "/three", "n": 3}']
            assert order == ["/slow", "/two", "/three"]


async def test_pipelined_bytes_while_a_handler_runs_are_kept_but_bounded():
    gate = trio.Event()
    limits = HttpLimits(max_header_bytes=1024, max_body_bytes=1000)   # keeps at most ~2 KiB + one read
    body = b"p" * 900
    one = b"POST /n HTTP/1.1\r\nhost: t\r\ncontent-length: 900\r\n\r\n" + body

    async def handler(req, resp):
        if req.path == "/first":
            await gate.wait()
        await echo(req, resp)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server = HttpServer(handler, limits=limits)
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            c = await Client.connect(port)
            await c.request("GET", "/first")
            await trio.sleep(0.05)
            (conn,) = server._conns
            assert conn.stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            async with trio.open_nursery() as sending:   # 200 KiB of requests while /first waits
                sending.start_soon(c.send, one * 220)
                await trio.sleep(0.3)
                assert conn.resume is not None, "the reader should have paused"
                assert len(conn.buf) <= server.pipeline_budget + 65536
                gate.set()
                answers = [await c.response() for _ in range(221)]
            assert answers[0].body == b'{"path": "/first", "n": 0}'
            assert all(a.body == b'{"path": "/n", "n": 900}' for a in answers[1:])
            nursery.cancel_scope.cancel()


async def test_http10_and_connection_close_end_the_connection():
    async def handler(req, resp):
        if req.path == "/stream":
            await resp.start_stream(200, [("content-type", "text/plain")])
            await resp.send_chunk(b"abc")
            await resp.send_chunk(b"def")
            await resp.end_stream()
        else:
            await echo(req, resp)

    with trio.fail_after(5):
        async with running(handler) as port:
            c = await Client.connect(port)
            await c.request("GET", "/x", headers="connection: close\r\n")
            r = await c.response()
            assert r.status == 200 and r.header("connection") == "close"
            assert await c.closed_by_server()
            # HTTP/1.0 gets a close-delimited stream, no chunking
            c = await Client.connect(port)
            await c.send(b"GET /stream HTTP/1.0\r\n\r\n")
            r = await c.response()
            assert r.body == b"abcdef" and r.header("transfer-encoding") is None and r.header("connection") == "close"


async def test_head_and_204_carry_no_body():
    async def handler(req, resp):
        if req.path == "/empty":
            await resp.send(204, [])
        else:
            await resp.send(200, JSON, b"0123456789")

    with trio.fail_after(5):
        async with running(handler) as port:
            c = await Client.connect(port)
            await c.request("HEAD", "/")
            head = await c.head()
            assert head.header("content-length") == "10"
            await c.request("GET", "/empty")
            empty = await c.head()   # nothing between the two heads: no body was sent
            assert empty.status == 204 and empty.header("content-length") is None
            await c.request("GET", "/")
            assert (await c.response()).body == b"0123456789"


async def test_expect_100_continue():
    async def handler(req, resp):
        await echo(req, resp)

    with trio.fail_after(5):
        async with running(handler) as port:
            c = await Client.connect(port)
            await c.send(b"POST /up HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n")
            assert (await c.response()).status == 100
            await c.send(b"data")
            assert (await c.response()).body == b'{"path": "/up", "n": 4}'


# --- refusals ------------------------------------------------------------------------------

SMALL = HttpLimits(max_header_bytes=1024, max_body_bytes=1000)


async def test_body_over_the_limit_by_content_length_is_413_without_reading_it():
    calls = []

    async def handler(req, resp):
        calls.append(req)
        await echo(req, resp)

    with trio.fail_after(5):
        async with running(handler, limits=SMALL) as port:
            c = await Client.connect(port)
            await c.send(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 5000\r\nexpect: 100-continue\r\n\r\n")
            r = await c.response()
            assert r.status == 413 and r.header("connection") == "close" and b"1000" in r.body
            assert await c.closed_by_server()
            assert calls == []


async def test_chunked_body_over_the_limit_is_413():
    async def handler(req, resp):
        await echo(req, resp)

    with trio.fail_after(5):
        async with running(handler, limits=SMALL) as port:
            c = await Client.connect(port)
            await c.send(b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n")
            await c.send(b"1f4\r\n" + b"a" * 500 + b"\r\n")   # 500: fine so far
            await c.send(b"1f4\r\n" + b"b" * 500 + b"\r\n")
            await c.send(b"1f4\r\n" + b"c" * 500 + b"\r\n")   # 1500: too much
            r = await c.response()
            assert r.status == 413
            assert await c.closed_by_server()
            # at the limit exactly is fine
            c = await Client.connect(port)
            await c.send(b"POST / HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n"
                         b"3e8\r\n" + b"a" * 1000 + b"\r\n0\r\n\r\n")
            assert (await c.response()).body == b'{"path": "/", "n": 1000}'


@pytest.mark.parametrize("pieces", [1, 2])
async def test_request_head_over_the_limit_is_431(pieces):
    async def handler(req, resp):
        await echo(req, resp)

    head = b"GET / HTTP/1.1\r\nhost: t\r\nx-big: " + b"v" * 2000 + b"\r\n\r\n"
    with trio.fail_after(5):
        async with running(handler, limits=SMALL) as port:
            c = await Client.connect(port)
            if pieces == 1:   # one read: h11 parses it whole, our own count refuses it
                await c.send(head)
            else:             # in pieces: h11's max_incomplete_event_size refuses it
                await c.send(head[:1500])
                await trio.sleep(0.05)
                await c.send(head[1500:])
            r = await c.response()
            assert r.status == 431 and r.header("connection") == "close"
            assert await c.closed_by_server()


@pytest.mark.parametrize("raw", [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
                                 b"GET / HTTP/1.1\r\nhost: t\r\ncontent-length: x\r\n\r\n",
                                 b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 3\r\n"
                                 b"transfer-encoding: chunked\r\n\r\n"
                                 b"3\r\nabc\r\n0\r\n\r\n"])
async def test_malformed_request_is_400_with_a_reason_then_close(raw):
    calls = []

    async def handler(req, resp):
        calls.append(req)
        await echo(req, resp)

    with trio.fail_after(5):
        async with running(handler) as port:
            c = await Client.connect(port)
            await c.send(raw)
            r = await c.response()
            assert r.status == 400 and r.header("content-type").startswith("text/plain")
            assert r.body.strip() and len(r.body) < 200
            assert await c.closed_by_server()
            assert calls == []


async def test_handler_exception_is_500_logged_and_the_connection_goes_on(caplog):
    async def handler(req, resp):
        if req.path == "/boom":
            raise RuntimeError("kaboom")
        if req.path == "/silent":
            return   # no response at all
        if req.path == "/badheader":
            await resp.send(200, [("x-evil", "a\r\nset-cookie: b")], b"")
        await echo(req, resp)

    caplog.set_level(logging.ERROR, logger="wire_gateway.http")
    with trio.fail_after(5):
        async with running(handler) as port:
            c = await Client.connect(port)
            for path in ("/boom", "/silent", "/badheader"):
                await c.request("GET", path)
                r = await c.response()
                assert r.status == 500 and b"kaboom" not in r.body and b"set-cookie" not in r.body
            await c.request("GET", "/fine")
            assert (await c.response()).body == b'{"path": "/fine", "n": 0}'
    boom = [rec for rec in caplog.records if rec.name == "wire_gateway.http" and "/boom" in rec.getMessage()]
    assert boom and boom[0].exc_info[0] is RuntimeError
    assert any("no response" in rec.getMessage() for rec in caplog.records)


async def test_handler_failing_mid_stream_closes_the_connection(caplog):
    async def handler(req, resp):
        await resp.start_stream(200, [])
        await resp.send_chunk(b"part")
        raise RuntimeError("mid-stream")

    with trio.fail_after(5):
        async with running(handler) as port:
            c = await Client.connect(port)
            await c.request()
            assert (await c.head()).status == 200
            assert await c.chunk() == b"part"
            with pytest.raises(EOFError):   # no terminating chunk: the client knows it is cut
                await c.chunk()


# --- streaming, disconnects, backpressure --------------------------------------------------

async def test_stream_chunks_reach_the_client_before_the_handler_finishes():
    gate = trio.Event()
    finished = trio.Event()

    async def handler(req, resp):
        await resp.start_stream(200, [("content-type", "text/event-stream")])
        await resp.send_chunk(b"data: first\n\n")
        await gate.wait()
        await resp.send_chunk(b"data: second\n\n")
        await resp.end_stream()
        finished.set()

    with trio.fail_after(5):
        async with running(handler) as port:
            c = await Client.connect(port)
            await c.request("GET", "/sse")
            head = await c.head()
            assert head.header("transfer-encoding") == "chunked"
            assert await c.chunk() == b"data: first\n\n"
            assert not finished.is_set()
            gate.set()
            assert await c.chunk() == b"data: second\n\n"
            assert await c.chunk() == b""
            await finished.wait()
            await c.request("GET", "/after")   # the connection is reusable after a stream
            assert (await c.response()).status == 200


async def test_client_disconnect_mid_stream_cancels_the_handler_promptly():
    record = {}
    done = trio.Event()

    async def handler(req, resp):
        try:
            await resp.start_stream(200, [("content-type", "text/event-stream")])
            await resp.send_chunk(b"data: 1\n\n")
            await trio.sleep_forever()
        except trio.Cancelled:
            record["cancelled"] = True
            raise
        finally:
            record["at"] = trio.current_time()
            record["disconnected"] = resp.disconnected.is_set()
            done.set()

    with trio.fail_after(5):
        async with running(handler) as port:
            c = await Client.connect(port)
            await c.request("GET", "/sse")
            await c.head()
            assert await c.chunk() == b"data: 1\n\n"
            left = trio.current_time()
            await c.aclose()
            await done.wait()
            assert record["cancelled"] and record["disconnected"]
            assert record["at"] - left < 0.5


async def test_client_disconnect_during_a_slow_json_handler_cancels_it():
    """No stream started: the timekeeper notices the handler is slow and has the
    connection watched, so the client leaving still cancels the handler."""
    record = {}
    done = trio.Event()

    async def handler(req, resp):
        if req.path == "/quick":
            await resp.send(200, [], b"ok")
            return
        try:
            await trio.sleep_forever()
        finally:
            record["at"] = trio.current_time()
            record["disconnected"] = resp.disconnected.is_set()
            done.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server = HttpServer(handler)
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            c = await Client.connect(port)
            for _ in range(3):
                await c.request("GET", "/quick")
                assert (await c.response()).body == b"ok"
            (conn,) = server._conns
            assert not conn.watched, "quick requests need no reader task"
            await c.request("GET", "/slow")
            await trio.sleep(0.3)
            assert conn.watched
            left = trio.current_time()
            await c.aclose()
            await done.wait()
            assert record["disconnected"]
            assert record["at"] - left < 0.5
            nursery.cancel_scope.cancel()


async def test_send_now_writes_from_another_task_and_finish_writes_the_rest():
    """send_now is how an upstream's reader answers a waiting handler at once; a body larger
    than the socket takes is completed by finish() in the handler."""
    big = b"x" * (8 << 20)

    async def handler(req, resp):
        body = big if req.path == "/big" else b"small"
        done = trio.Event()
        outcome = {}

        def other_task():
            outcome["written"] = resp.send_now(200, [("content-type", "text/plain")], body)
            outcome["left"] = resp.buffered
            done.set()
        trio.lowlevel.current_trio_token().run_sync_soon(other_task)
        await done.wait()
        assert outcome["written"]
        assert (outcome["left"] > 0) == (body is big)   # the socket cannot take 8 MiB at once
        assert not resp.send_now(200, [], b"again"), "a response goes out once"
        await resp.finish()

    with trio.fail_after(10):
        async with running(handler) as port:
            c = await Client.connect(port)
            await c.request("GET", "/small")
            assert (await c.response()).body == b"small"
            await c.request("GET", "/big")
            answer = await c.response()
            assert len(answer.body) == len(big)
            await c.request("GET", "/small")   # the connection goes on after a finished remainder
            assert (await c.response()).body == b"small"


async def test_send_after_disconnect_raises_client_gone():
    outcome = {}
    done = trio.Event()

    async def handler(req, resp):
        await resp.start_stream(200, [])
        await resp.disconnected.wait()
        try:
            with trio.CancelScope(shield=True):   # look past the cancellation
                await resp.send_chunk(b"late")
        except ClientGone:
            outcome["gone"] = True
        finally:
            done.set()

    with trio.fail_after(5):
        async with running(handler) as port:
            c = await Client.connect(port)
            await c.request()
            await c.head()
            await c.aclose()
            await done.wait()
            assert outcome == {"gone": True}


async def test_slow_reader_makes_send_chunk_wait_instead_of_buffering():
    chunk = b"x" * 8192
    total = 512 * len(chunk)   # 4 MiB
    progress = {"sent": 0}
    finished = trio.Event()

    async def handler(req, resp):
        await resp.start_stream(200, [("content-type", "application/octet-stream")])
        for _ in range(total // len(chunk)):
            await resp.send_chunk(chunk)
            progress["sent"] += len(chunk)
        await resp.end_stream()
        finished.set()

    with trio.fail_after(10):
        async with running(handler) as port:
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
            await sock.connect(("127.0.0.1", port))
            c = Client(trio.SocketStream(sock))
            await c.request()
            await trio.sleep(0.4)
            stalled_at = progress["sent"]
            await trio.sleep(0.3)
            assert progress["sent"] == stalled_at, "the handler kept going while nobody read"
            assert 0 < stalled_at <= 2 * 1024 * 1024
            assert not finished.is_set()
            r = await c.response()   # now read it all: the handler resumes and finishes
            assert len(r.body) == total and set(r.body) == {ord("x")}
            await finished.wait()


async def test_concurrent_senders_queue_at_most_write_high_water():
    high = 256 * 1024
    chunk = 64 * 1024
    peak = {"buffered": 0}

    async def handler(req, resp):
        await resp.start_stream(200, [])

        async def producer(tag: bytes):
            for _i in range(48):
                await resp.send_chunk(tag * chunk)

        async def watch():
            while True:
                peak["buffered"] = max(peak["buffered"], resp.buffered)
                await trio.sleep(0.005)

        async with trio.open_nursery() as watching:
            watching.start_soon(watch)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(producer, b"a")
                nursery.start_soon(producer, b"b")
            watching.cancel_scope.cancel()
        await resp.end_stream()

    with trio.fail_after(10):
        async with running(handler, limits=HttpLimits(write_high_water=high)) as port:
            sock = trio.socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
            await sock.connect(("127.0.0.1", port))
            c = Client(trio.SocketStream(sock))
            await c.request()
            await trio.sleep(0.4)   # not reading: the producers fill the queue and wait
            r = await c.response()
    assert len(r.body) == 2 * 48 * chunk
    assert r.body.count(b"a") == r.body.count(b"b") == 48 * chunk
    # the queue reached the mark, and never went past it by more than one chunk (plus its framing)
    assert high < peak["buffered"] <= high + chunk + 16


# --- timeouts, connection limit, drain -----------------------------------------------------

async def test_idle_keep_alive_connection_is_closed_silently():
    with trio.fail_after(5):
        async with running(echo, limits=HttpLimits(idle_timeout=0.3)) as port:
            c = await Client.connect(port)
            await c.request()
            assert (await c.response()).status == 200
            quiet_since = trio.current_time()
            assert await c.closed_by_server()
            assert 0.25 < trio.current_time() - quiet_since < 1.5


async def test_slow_request_head_gets_408():
    with trio.fail_after(5):
        async with running(echo, limits=HttpLimits(header_timeout=0.3)) as port:
            c = await Client.connect(port)
            await c.send(b"GET / HTTP/1.1\r\nhost: t\r\n")   # and never the blank line
            r = await c.response()
            assert r.status == 408
            assert await c.closed_by_server()
            quiet = await Client.connect(port)   # a connection that says nothing is just closed
            assert await quiet.closed_by_server()


async def test_slow_body_gets_408():
    with trio.fail_after(5):
        async with running(echo, limits=HttpLimits(body_timeout=0.3)) as port:
            c = await Client.connect(port)
            await c.send(b"POST / HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\nabc")
            assert (await c.response()).status == 408


async def test_connections_beyond_the_limit_get_503():
    with trio.fail_after(5):
        async with running(echo, limits=HttpLimits(max_connections=2)) as port:
            held = [await Client.connect(port) for _ in range(2)]
            for c in held:
                await c.request()
                assert (await c.response()).status == 200
            extra = await Client.connect(port)
            await extra.request()
            r = await extra.response()
            assert r.status == 503 and r.header("connection") == "close"
            await held[0].aclose()
            while True:   # the slot frees once the server has seen the close
                c = await Client.connect(port)
                await c.request()
                r = await c.response()
                if r.status == 200:
                    break
                await trio.sleep(0.02)
            await held[1].request()
            assert (await held[1].response()).status == 200


async def test_drain_finishes_in_flight_requests_closes_idle_ones_and_refuses_new():
    started = trio.Event()
    shutdown = trio.Event()
    stopped = trio.Event()

    async def handler(req, resp):
        if req.path == "/slow":
            started.set()
            await trio.sleep(0.3)
        await echo(req, resp)

    async def server(task_status=trio.TASK_STATUS_IGNORED):
        await serve_http(handler, "127.0.0.1", 0, shutdown=shutdown, drain_timeout=3, task_status=task_status)
        stopped.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server)
            idle = await Client.connect(port)
            await idle.request()
            assert (await idle.response()).status == 200
            busy = await Client.connect(port)
            await busy.request("GET", "/slow")
            await started.wait()
            shutdown.set()
            await trio.sleep(0.05)
            assert await idle.closed_by_server()
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", port)
            r = await busy.response()
            assert r.status == 200 and r.header("connection") == "close"
            await stopped.wait()


async def test_drain_cancels_what_outlives_the_timeout():
    record = {}

    async def handler(req, resp):
        try:
            await resp.start_stream(200, [])
            await trio.sleep_forever()
        finally:
            record["finally"] = trio.current_time()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            server = HttpServer(handler)
            port = await nursery.start(server.serve, "127.0.0.1", 0)
            c = await Client.connect(port)
            await c.request()
            await c.head()
            began = trio.current_time()
            await server.drain(0.3)
            assert 0.25 < record["finally"] - began < 1.0
            assert server.connections == 0


# --- TLS -----------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_tls(tmp_path: Path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    gone = trio.Event()

    async def handler(req, resp):
        if req.path == "/sse":
            try:
                await resp.start_stream(200, [])
                await resp.send_chunk(b"tick")
                await trio.sleep_forever()
            finally:
                gone.set()
        await echo(req, resp)

    with trio.fail_after(5):
        async with running(handler, ssl_context=server_ctx) as port:
            tcp = await trio.open_tcp_stream("127.0.0.1", port)
            c = Client(trio.SSLStream(tcp, client_ctx, server_hostname="127.0.0.1"))
            for path in ("/one", "/two"):
                await c.request("POST", path, b"xyz")
                assert (await c.response()).body == b'{"path": "%s", "n": 3}' % path.encode()
            await c.request("GET", "/sse")
            await c.head()
            assert await c.chunk() == b"tick"
            await tcp.aclose()
            await gone.wait()
