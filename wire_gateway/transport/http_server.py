"""The data-plane HTTP/1.1 server: listeners, the connection limit, timeouts and graceful drain.

Hypercorn's trio worker spends ~550 us of CPU per request, a bare trio + h11 loop
~130 us; this server is such a loop, made cheaper still. It is split as h11 splits a
connection from its IO: http_cycle is the sans-IO request/response cycle (states,
parsing with http_head or h11, limits, keep-alive), http_connection the trio loop of one
connection (read, feed the cycle, run the handler, cancel), http_responder how a handler
writes its answer, http_response_head the remembered response heads. This module accepts
connections and watches the clock for all of them; the names handlers and the gateway
use (Request, Responder, ClientGone, HttpLimits, serve_http) are importable from here.

- Timeouts are deadlines stored on each connection; one timekeeper task per server
  checks them a few times a second and cancels the connection's scope (a deadline on a
  trio scope, changed twice per request, costs more); it also looks for long-running
  handlers, whose connections then get a reader task (see http_connection).
- Beyond max_connections a connection is accepted, answered 503 and closed at once,
  without a task (TLS ones are just closed): the client learns to go elsewhere instead
  of waiting in the listen backlog for a slot.
"""
from __future__ import annotations

import errno
import logging
import socket
import ssl

import trio

from .http_connection import READ_SIZE, WATCH_TICK, Connection, Handler
from .http_cycle import pipeline_budget
from .http_limits import HttpLimits
from .http_request import Request
from .http_responder import ClientGone, Responder

__all__ = ["ClientGone", "Handler", "HttpLimits", "HttpServer", "Request", "Responder", "serve_http"]

log = logging.getLogger("wire_gateway.http")

_ACCEPT_PAUSE = 0.1     # out of file descriptors: wait this long before accepting again


class HttpServer:
    """Listeners, connection tasks, the connection limit, timeouts and graceful drain."""

    def __init__(self, handler: Handler, *, limits: HttpLimits = HttpLimits(),
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.limits = limits
        self.ssl_context = ssl_context
        self.pipeline_budget = pipeline_budget(limits)   # per connection, read ahead of its handler
        self.draining = False
        self.port: int | None = None
        self._conns: set[Connection] = set()
        self.running: set[Connection] = set()   # unwatched connections whose handler is running
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
            conn = Connection(self, transport, (peer[0], peer[1]))
            self._conns.add(conn)     # counted now, not when its task first runs
            nursery.start_soon(self._serve_connection, conn)

    async def _serve_connection(self, conn: Connection) -> None:
        try:
            await conn.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("connection from %s failed", conn.client)
        finally:
            self._conns.discard(conn)
            await trio.aclose_forcefully(conn.stream)



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
