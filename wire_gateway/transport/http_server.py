"""The data-plane HTTP/1.1 server: trio sockets, h11 parsing, nothing else.

Hypercorn's trio worker spends ~550 us of CPU per request; this loop aims at the
~130 us a bare trio + h11 loop costs. Per connection there is one task. While a
handler runs, a watcher task reads the socket: peer EOF or reset sets
`Responder.disconnected` and cancels the handler's scope at once (its `finally`
runs), and bytes of a pipelined next request are kept for the next cycle, up to
one request's worth (max_header_bytes + max_body_bytes), then it stops reading.

Bodies are read whole before the handler runs. Answers leave through the
connection's stream; the kernel's send buffer (trio caps its unsent part at
16 KiB) is the first buffer, and what concurrent senders add while a write is
blocked is queued up to `write_high_water`, past which they wait too.

Refusals (400/408/413/431/503, and 500 once a response was half sent) close the
connection; a 500 from a handler that failed before answering keeps it.
Beyond max_connections a connection is accepted, answered 503 and closed at once,
without a task: the client learns it should go elsewhere instead of waiting in
the listen backlog.
"""
from __future__ import annotations

import errno
import logging
import math
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import h11
import trio

from .http_limits import HttpLimits

__all__ = ["ClientGone", "Handler", "HttpLimits", "HttpServer", "Request", "Responder", "serve_http"]

log = logging.getLogger("wire_gateway.http")

READ_SIZE = 65536
LINGER = 1.0          # seconds a refused client gets to read our answer before we close
LINGER_BYTES = 1 << 20
_ACCEPT_PAUSE = 0.1   # out of file descriptors: wait this long before accepting again
_FRAMING = frozenset(("content-length", "transfer-encoding"))
_REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Payload Too Large",
            431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}
_INF = math.inf

# what a connection is doing; drain closes the idle ones, a timeout in HEAD/BODY answers 408
_IDLE, _HEAD, _BODY, _HANDLER = range(4)


@dataclass(slots=True)
class Request:
    method: str
    target: str                         # raw path + query
    path: str                           # path only, percent-decoded
    headers: list[tuple[str, str]]      # names lowercased, values latin-1 decoded
    body: bytes
    client: tuple[str, int] | None

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [value for key, value in self.headers if key == name]


class ClientGone(Exception):
    """The client disconnected (or the response was cut short): nothing more can be sent."""


Handler = Callable[[Request, "Responder"], Awaitable[None]]

_NEW, _STREAMING, _DONE = range(3)


class Responder:
    """Writes one response. `send` for a whole body, or start_stream/send_chunk/end_stream."""

    __slots__ = ("disconnected", "_conn", "_scope", "_state", "_gone", "_queue", "_queued", "_writing", "_progress")

    def __init__(self, conn: _Conn, scope: trio.CancelScope) -> None:
        self.disconnected = trio.Event()
        self._conn = conn
        self._scope = scope        # the handler's: cancelled when the peer goes
        self._state = _NEW
        self._gone = False
        self._queue: list[bytes] = []
        self._queued = 0
        self._writing = False
        self._progress = trio.Event()

    @property
    def started(self) -> bool:
        return self._state != _NEW

    @property
    def buffered(self) -> int:
        """Bytes queued here behind a blocked write (bounded by write_high_water plus one send)."""
        return self._queued

    async def send(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        """The whole response; Content-Length is set here (any given one is dropped)."""
        conn = self._begin()
        h = conn.h11
        hs = [(k, v) for k, v in headers if k.lower() not in _FRAMING]
        if status >= 200 and status not in (204, 304):
            hs.append(("content-length", str(len(body))))
        if conn.server.draining:
            hs.append(("connection", "close"))
        # if h11 refuses the head, nothing was written: the connection answers 500 and closes
        out = h.send(h11.Response(status_code=status, headers=hs))
        if body and conn.method != b"HEAD":
            out += h.send(h11.Data(data=body))
        out += h.send(h11.EndOfMessage())
        self._state = _DONE
        await self._write(out)

    async def start_stream(self, status: int, headers: list[tuple[str, str]]) -> None:
        """Send the head of a body of unknown length (chunked; close-delimited for HTTP/1.0)."""
        conn = self._begin()
        hs = [(k, v) for k, v in headers if k.lower() not in _FRAMING]
        if conn.server.draining:
            hs.append(("connection", "close"))
        head = conn.h11.send(h11.Response(status_code=status, headers=hs))
        self._state = _STREAMING
        await self._write(head)

    async def send_chunk(self, data: bytes) -> None:
        """Send part of the body; waits while the client reads slowly. Raises ClientGone."""
        if self._gone:
            raise ClientGone("client disconnected")
        if self._state != _STREAMING:
            raise RuntimeError("send_chunk() outside start_stream()/end_stream()")
        if not data or self._conn.method == b"HEAD":
            return
        await self._write(b"".join(self._conn.h11.send_with_data_passthrough(h11.Data(data=data))))

    async def end_stream(self) -> None:
        if self._gone:
            raise ClientGone("client disconnected")
        if self._state != _STREAMING:
            raise RuntimeError("end_stream() without start_stream()")
        self._state = _DONE
        await self._write(self._conn.h11.send(h11.EndOfMessage()))

    def _begin(self) -> _Conn:
        if self._gone:
            raise ClientGone("client disconnected")
        if self._state != _NEW:
            raise RuntimeError("response already started")
        return self._conn

    async def _write(self, data: bytes) -> None:
        """Write through if no write is in progress; else queue behind it (bounded)."""
        if self._writing:
            self._queue.append(data)
            self._queued += len(data)
            high = self._conn.server.limits.write_high_water
            while self._queued > high and not self._gone:
                await self._progress.wait()
            if self._gone:
                raise ClientGone("client disconnected")
            return
        self._writing = True
        stream = self._conn.stream
        try:
            await stream.send_all(data)
            while self._queue:
                data = b"".join(self._queue)
                self._queue.clear()
                self._queued = 0
                self._wake()
                await stream.send_all(data)
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
        self._progress.set()
        self._progress = trio.Event()

    def _peer_gone(self) -> None:
        self._conn.eof = True
        self._gone = True
        self._queue.clear()
        self._queued = 0
        self.disconnected.set()
        self._scope.cancel()
        self._wake()


class _Refuse(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Conn:
    """One client connection: its h11 state, its timer and what it is doing."""

    __slots__ = ("server", "stream", "client", "h11", "timer", "phase", "timed_phase", "eof", "broken", "method")

    def __init__(self, server: HttpServer, stream: trio.abc.Stream, client: tuple[str, int] | None) -> None:
        self.server = server
        self.stream = stream
        self.client = client
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=server.limits.max_header_bytes)
        self.timer = trio.CancelScope()   # one deadline for whichever phase we wait in
        self.phase = _IDLE
        self.timed_phase = -1
        self.eof = False       # the peer closed or reset
        self.broken = False    # a response was cut short: the connection cannot go on
        self.method = b""

    def on_drain(self) -> None:
        if self.phase == _IDLE:
            self.timer.cancel()   # silent close, like an idle timeout

    async def run(self) -> None:
        refusal = None
        timer = self.timer
        with timer:
            refusal = await self._cycles()
        if timer.cancelled_caught and self.phase in (_HEAD, _BODY):
            refusal = _Refuse(408, "request not received in time")
        if refusal is not None and not self.eof:
            await self._refuse(refusal)

    async def _cycles(self) -> _Refuse | None:
        limits = self.server.limits
        conn = self.h11
        if isinstance(self.stream, trio.SSLStream):
            self.phase = _HEAD
            self.timer.deadline = trio.current_time() + limits.header_timeout
            await self.stream.do_handshake()
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
            if self.eof or self.broken or self.server.draining:
                return None
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return None   # Connection: close, HTTP/1.0, ...
            conn.start_next_cycle()

    async def _receive(self, timeout: float) -> None:
        if self.timed_phase != self.phase:
            self.timed_phase = self.phase
            self.timer.deadline = trio.current_time() + timeout
        try:
            data = await self.stream.receive_some(READ_SIZE)
        except trio.BrokenResourceError:
            data = b""
        if not data:
            self.eof = True
        self.h11.receive_data(data)

    async def _read_request(self, fresh: bool) -> Request | None:
        limits = self.server.limits
        conn = self.h11
        event = conn.next_event()
        if event is h11.NEED_DATA:
            self.phase = _HEAD if conn.trailing_data[0] else _IDLE
            while event is h11.NEED_DATA:
                if self.phase == _IDLE:
                    # a fresh connection gets header_timeout to say anything at all
                    await self._receive(limits.header_timeout if fresh else limits.idle_timeout)
                    self.phase = _HEAD
                else:
                    await self._receive(limits.header_timeout)
                event = conn.next_event()
        if type(event) is not h11.Request:
            return None   # ConnectionClosed: the client left between requests
        self.phase = _BODY
        self.method = event.method
        size = len(event.target)
        headers = []
        length = None
        for name, value in event.headers:
            size += len(name) + len(value) + 4
            if name == b"content-length":
                length = int(value)
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
        if size > limits.max_header_bytes:
            raise _Refuse(431, "request head too large")
        if length is not None and length > limits.max_body_bytes:
            raise _Refuse(413, f"body larger than {limits.max_body_bytes} bytes")
        body = await self._read_body(length)
        target = event.target.decode("latin-1")
        if target.startswith("/"):
            path = target.partition("?")[0]
        else:   # absolute-form or '*'
            path = urlsplit(target).path if "://" in target else target
        if "%" in path:
            path = unquote(path)
        return Request(event.method.decode("ascii"), target, path, headers, body, self.client)

    async def _read_body(self, length: int | None) -> bytes:
        conn = self.h11
        limit = self.server.limits.max_body_bytes
        parts = []
        total = 0
        while True:
            event = conn.next_event()
            kind = type(event)
            if kind is h11.Data:
                total += len(event.data)
                if total > limit:
                    raise _Refuse(413, f"body larger than {limit} bytes")
                parts.append(event.data)
            elif kind is h11.EndOfMessage:
                break
            elif event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    await self.stream.send_all(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
                await self._receive(self.server.limits.body_timeout)
            else:
                raise h11.RemoteProtocolError(f"unexpected {kind.__name__}")
        if not parts:
            return b""
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    async def _respond(self, request: Request) -> None:
        self.phase = _HANDLER
        self.timed_phase = _HANDLER
        if self.timer.deadline != _INF:
            self.timer.deadline = _INF
        scope = trio.CancelScope()
        responder = Responder(self, scope)
        watch = trio.CancelScope()
        failure = None
        with scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch, watch, responder)
                try:
                    await self.server.handler(request, responder)
                except ClientGone:
                    pass
                except Exception as exc:   # a handler bug must not take the server down
                    if not _only_client_gone(exc):
                        failure = exc
                finally:
                    watch.cancel()
        if failure is not None:
            log.error("handler failed for %s %s", request.method, request.path, exc_info=failure)
        if self.eof or self.broken:
            return
        try:
            if failure is None and responder._state == _STREAMING:
                await responder.end_stream()   # the handler returned with the stream open
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
        elif self.h11.our_state is h11.SEND_RESPONSE:
            await responder.send(500, [("content-type", "text/plain; charset=utf-8")], b"internal error\n")
        else:   # h11 refused the handler's response head
            self.broken = True
            await self._refuse(_Refuse(500, "internal error"))

    async def _watch(self, scope: trio.CancelScope, responder: Responder) -> None:
        """While the handler runs: keep pipelined bytes, notice the peer leaving."""
        budget = self.server.pipeline_budget
        with scope:
            while budget > 0:
                try:
                    data = await self.stream.receive_some(min(READ_SIZE, budget))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    responder._peer_gone()
                    return
                self.h11.receive_data(data)
                budget -= len(data)

    async def _refuse(self, refusal: _Refuse) -> None:
        """Answer with a short reason and close; linger so the client can read it."""
        body = refusal.reason.encode("utf-8", "replace") + b"\n"
        head = (f"HTTP/1.1 {refusal.status} {_REASONS.get(refusal.status, 'Error')}\r\n"
                f"content-type: text/plain; charset=utf-8\r\ncontent-length: {len(body)}\r\n"
                "connection: close\r\n\r\n").encode("ascii")
        stream = self.stream
        with trio.move_on_after(LINGER):
            try:
                await stream.send_all(head + body)
                if isinstance(stream, trio.SocketStream):
                    await stream.send_eof()
                # read what the client still sends, so closing does not reset the
                # connection before it has read the answer
                left = LINGER_BYTES
                while left > 0:
                    data = await stream.receive_some(READ_SIZE)
                    if not data:
                        break
                    left -= len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


class HttpServer:
    """Listeners, connection tasks, the connection limit and graceful drain."""

    def __init__(self, handler: Handler, *, limits: HttpLimits = HttpLimits(),
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.limits = limits
        self.ssl_context = ssl_context
        self.pipeline_budget = limits.max_header_bytes + limits.max_body_bytes
        self.draining = False
        self.port: int | None = None
        self._conns: set[_Conn] = set()
        self._listeners: list[trio.SocketListener] = []
        self._accept_scope: trio.CancelScope | None = None
        self._conns_scope: trio.CancelScope | None = None
        self._stopped = trio.Event()

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def serve(self, host: str | None, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Accept and serve until cancelled, or until drain() has finished."""
        listeners = await trio.open_tcp_listeners(port, host=host)
        self._listeners = listeners
        try:
            async with trio.open_nursery() as conns:
                self._conns_scope = conns.cancel_scope
                async with trio.open_nursery() as acceptors:
                    self._accept_scope = acceptors.cancel_scope
                    for listener in listeners:
                        acceptors.start_soon(self._accept_loop, listener, conns)
                    self.port = listeners[0].socket.getsockname()[1]
                    task_status.started(self.port)
        finally:
            for listener in listeners:
                listener.socket.close()
            self._stopped.set()

    async def drain(self, timeout: float) -> None:
        """Stop accepting, close idle connections, give running requests `timeout`
        seconds, cancel what is left; returns when serve() has returned."""
        if self._conns_scope is None:
            raise RuntimeError("drain() before serve() started")
        if not self.draining:
            self.draining = True
            self._accept_scope.cancel()
            for listener in self._listeners:
                listener.socket.close()    # new connections are refused from now on
            for conn in list(self._conns):
                conn.on_drain()
            self._conns_scope.deadline = min(self._conns_scope.deadline, trio.current_time() + timeout)
        await self._stopped.wait()

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
                _reject(stream)
                continue
            try:
                stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)   # trio does too; we rely on it
                peer = stream.socket.getpeername()
            except OSError:   # already reset
                stream.socket.close()
                continue
            transport: trio.abc.Stream = stream
            if self.ssl_context is not None:
                transport = trio.SSLStream(stream, self.ssl_context, server_side=True, https_compatible=True)
            conn = _Conn(self, transport, (peer[0], peer[1]))
            self._conns.add(conn)     # counted now, not when the task first runs
            nursery.start_soon(self._serve_connection, conn)

    async def _serve_connection(self, conn: _Conn) -> None:
        try:
            await conn.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            pass
        except Exception:
            log.exception("connection from %s failed", conn.client)
        finally:
            self._conns.discard(conn)
            await trio.aclose_forcefully(conn.stream)


def _only_client_gone(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(ClientGone)[1] is None
    return isinstance(exc, ClientGone)


def _reject(stream: trio.SocketStream) -> None:
    """503 to a connection over the limit: written without waiting (a new socket's
    buffer is empty), what the client sent already is read so close() sends FIN, not RST."""
    sock = socket.socket(fileno=stream.socket.detach())
    try:
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
    """Serve `handler` on host:port; task_status.started(bound_port).

    Runs until cancelled, or, once `shutdown` is set, drains (see HttpServer.drain)
    for up to `drain_timeout` seconds and returns.
    """
    server = HttpServer(handler, limits=limits, ssl_context=ssl_context)
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.serve, host, port)
        task_status.started(bound)
        if shutdown is not None:
            await shutdown.wait()
            await server.drain(drain_timeout)
