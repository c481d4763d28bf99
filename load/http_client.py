"""HTTP/1.1 framed by hand on raw sockets: an HTTP library costs more per call than the gateway does.

``Client`` is blocking (``http-bench``'s epoll loop), ``HttpConn`` waits through trio only when a read
would block (``load run``); both build requests with ``request_head``, read answers with
``parse_response`` (``fast_response`` for the common answer) and event streams with the gateway's own
SSE decoder.
"""
from __future__ import annotations

import os
import re
import socket

import orjson
import trio

from wire_gateway.wire.sse import SSEDecoder

from . import BenchError
from .targets import Url

MODERN_VERSION = "2026-07-28"
LEGACY_VERSION = "2025-11-25"
READ_SIZE = 65536
CONNECT_TIMEOUT_S = 10.0
INITIALIZED_BODY = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)[ \t]*\r\n", re.I)
_CONTENT_TYPE = re.compile(rb"\r\ncontent-type:[ \t]*([^\r]*)\r\n", re.I)
_NEEDS_FULL_PARSE = re.compile(rb"\r\n(?:connection|transfer-encoding):", re.I)

# Headers every request of this process carries (`load run --header`, e.g. an API key).
EXTRA_HEADERS: tuple[tuple[str, str], ...] = ()


def request_head(url: Url, method: str = "POST", headers: tuple | list = ()) -> bytes:
    """Request line and headers, up to (not including) Content-Length."""
    lines = [f"{method} {url.path} HTTP/1.1", f"Host: {url.netloc}"]
    if method == "POST":
        lines += ["Content-Type: application/json", "Accept: application/json, text/event-stream"]
    lines += [f"{k}: {v}" for k, v in (*EXTRA_HEADERS, *headers)]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def initialize_message(client: str) -> dict:
    """A legacy ``initialize`` (id 0) from the client named ``client``: every tool's handshake."""
    return {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": client, "version": "0"}}}


def modern_meta(client: str) -> dict:
    """The ``_meta`` a modern request carries from the client named ``client``."""
    return {"io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
            "io.modelcontextprotocol/clientInfo": {"name": client, "version": "0"},
            "io.modelcontextprotocol/clientCapabilities": {}}


class Response:
    __slots__ = ("status", "headers", "body", "close")

    def __init__(self, status: int, headers: dict, body: bytes, close: bool):
        self.status, self.headers, self.body, self.close = status, headers, body, close

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return None if value is None else value.decode("latin-1")


class ProtocolError(Exception):
    """The bytes are not an HTTP/1.1 response."""


class Disconnected(Exception):
    """The peer closed the connection (or the process exited) before answering."""


class HttpStatus(Exception):
    def __init__(self, status: int, body: bytes):
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status, self.body = status, body


def parse_response(buf: bytes, eof: bool = False):
    """(Response, bytes consumed) if ``buf`` starts with a whole response, else None. Bodies framed by
    Content-Length, chunks or (``eof``) the connection's end; 1xx skipped; header names lowercased, the
    first of repeated ones kept."""
    start, status = 0, 100
    while 100 <= status < 200:
        end = buf.find(b"\r\n\r\n", start)
        if end < 0:
            if eof and buf[start:]:
                raise ProtocolError(f"connection closed inside a response head: {buf[start:start + 200]!r}")
            return None
        line_end = buf.find(b"\r\n", start)
        status_line = buf[start:line_end]
        if not status_line.startswith(b"HTTP/1.") or len(status_line) < 12:
            raise ProtocolError(f"not an HTTP/1.x status line: {status_line[:200]!r}")
        try:
            status = int(status_line[9:12])
        except ValueError:
            raise ProtocolError(f"bad status line: {status_line[:200]!r}") from None
        headers: dict = {}
        for line in buf[line_end + 2:end].split(b"\r\n") if line_end < end else ():
            name, _, value = line.partition(b":")
            headers.setdefault(name.strip().lower(), value.strip())
        start = end + 4
    connection = headers.get(b"connection", b"").lower()
    close = b"close" in connection or (status_line.startswith(b"HTTP/1.0") and b"keep-alive" not in connection)
    length = headers.get(b"content-length")
    if status in (204, 304):
        return Response(status, headers, b"", close), start
    if length is not None:
        try:
            stop = start + int(length)
        except ValueError:
            raise ProtocolError(f"bad Content-Length: {length[:50]!r}") from None
        if len(buf) < stop:
            if eof:
                raise ProtocolError(f"connection closed after {len(buf) - start} of {int(length)} body bytes")
            return None
        return Response(status, headers, buf[start:stop], close), stop
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        parts, _, stop = read_chunks(buf, start)
        if stop is None:
            if eof:
                raise ProtocolError("connection closed inside a chunked body")
            return None
        return Response(status, headers, b"".join(parts), close), stop
    if not eof:
        return None   # delimited by the end of the connection
    return Response(status, headers, buf[start:], True), len(buf)


def read_chunks(buf: bytes, pos: int):
    """(whole chunks from ``pos``, the position after them, the body's end or None if not yet seen)."""
    parts = []
    while True:
        line_end = buf.find(b"\r\n", pos)
        if line_end < 0:
            return parts, pos, None
        try:
            size = int(buf[pos:line_end].split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError(f"bad chunk size line: {buf[pos:line_end][:50]!r}") from None
        if size == 0:   # trailers, then a blank line
            stop = buf.find(b"\r\n\r\n", line_end)
            return parts, pos, stop + 4 if stop >= 0 else None
        if len(buf) < line_end + 2 + size + 2:
            return parts, pos, None
        parts.append(buf[line_end + 2:line_end + 2 + size])
        pos = line_end + 2 + size + 2


def fast_response(buf: bytes):
    """``parse_response`` for the common answer (HTTP/1.1, Content-Length, kept alive), at a
    fraction of its cost: only the headers the replay reads.  Anything else goes the full way."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end + 2]
    length = _CONTENT_LENGTH.search(head)
    if length is None or not head.startswith(b"HTTP/1.1 ") or head[9:10] == b"1" or _NEEDS_FULL_PARSE.search(head):
        return parse_response(buf)
    stop = end + 4 + int(length.group(1))
    if len(buf) < stop:
        return None
    ctype = _CONTENT_TYPE.search(head)
    headers = {b"content-type": ctype.group(1).strip()} if ctype else {}
    return Response(int(head[9:12]), headers, buf[end + 4:stop], False), stop


def json_or_text(raw: bytes):
    """An answer's body parsed, or as text when it is not JSON (then judged malformed, and shown)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")


def sse_messages(body: bytes) -> list:
    """The ``data`` of each event of a whole SSE body (comments and other fields ignored)."""
    return [event.data for event in SSEDecoder().feed(body + b"\n\n") if event.data]


class _Socket:
    """What both connections share: their socket, closed once."""
    sock: socket.socket | None = None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class Client(_Socket):
    """One virtual client of ``http-bench``: one blocking keep-alive connection (and, legacy, one session)."""

    def __init__(self, url: Url, modern: bool, timeout: float = CONNECT_TIMEOUT_S):
        self.url, self.modern, self.timeout = url, modern, timeout
        self.session_id, self.sock, self.buf, self.connects = None, None, b"", 0
        self.connect()
        self.head = request_head(url, "POST", (("MCP-Protocol-Version", MODERN_VERSION), ("Mcp-Method", "tools/call"),
                                               ("Mcp-Name", "echo"))) if modern else b""

    def connect(self) -> None:
        self.close()
        try:
            sock = socket.create_connection((self.url.host, self.url.port), timeout=self.timeout)
        except OSError as exc:
            raise BenchError(f"cannot connect to {self.url}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.fd, self.buf = sock, sock.fileno(), b""
        self.connects += 1

    def exchange(self, data: bytes) -> Response:
        """Send one whole request, read its whole response (blocking, bounded)."""
        self.sock.settimeout(self.timeout)
        try:
            self.sock.sendall(data)
            while (parsed := parse_response(self.buf)) is None:
                chunk = self.sock.recv(READ_SIZE)
                if not chunk:
                    parsed = parse_response(self.buf, eof=True)
                    if parsed is None:
                        raise BenchError(f"{self.url}: connection closed before a response")
                    break
                self.buf += chunk
        except ProtocolError as exc:
            raise BenchError(f"{self.url}: {exc}") from None
        except OSError as exc:   # includes socket.timeout
            raise BenchError(f"{self.url}: {exc or type(exc).__name__}") from None
        resp, used = parsed
        self.buf = self.buf[used:]
        if resp.close:
            self.connect()
        return resp

    def post(self, body: bytes, headers: tuple = ()) -> Response:
        return self.exchange(request_head(self.url, "POST", headers) + b"Content-Length: %d\r\n\r\n%s"
                             % (len(body), body))

    def open_session(self) -> str:
        """Legacy handshake: initialize, then notifications/initialized; returns the session id."""
        resp = self.post(orjson.dumps(initialize_message("http-bench")))
        sid = resp.header(b"mcp-session-id")
        if resp.status != 200 or not sid:
            raise BenchError(f"initialize: HTTP {resp.status}, session id {sid!r}: {resp.body[:300]!r}")
        data = resp.body
        if resp.headers.get(b"content-type", b"").startswith(b"text/event-stream"):
            data = (sse_messages(data) or [b""])[-1]
        try:
            msg = orjson.loads(data)
        except orjson.JSONDecodeError:
            msg = None
        if not isinstance(msg, dict) or msg.get("id") != 0 or "result" not in msg:
            raise BenchError(f"initialize failed: {resp.body[:300]!r}")
        self.session_id = sid
        headers = (("MCP-Protocol-Version", LEGACY_VERSION), ("Mcp-Session-Id", sid))
        resp = self.post(INITIALIZED_BODY, headers)
        if resp.status != 202:
            raise BenchError(f"notifications/initialized: HTTP {resp.status} (expected 202): {resp.body[:300]!r}")
        self.head = request_head(self.url, "POST", headers)
        return sid

    def end_session(self) -> int:
        """DELETE the session; returns the HTTP status."""
        if self.session_id is None:
            return 0
        resp = self.exchange(request_head(self.url, "DELETE", (("Mcp-Session-Id", self.session_id),)) + b"\r\n")
        self.session_id = None
        return resp.status


def open_clients(url: Url, k: int, modern: bool) -> list:
    clients: list = []
    try:
        for _ in range(k):
            clients.append(Client(url, modern))
            if not modern:
                clients[-1].open_session()
    except BaseException:
        close_clients(clients, end_sessions=False)
        raise
    return clients


def close_clients(clients: list, end_sessions: bool = True) -> list:
    """End sessions (legacy, DELETE) and close connections; the failed DELETEs. After one failure the
    rest are left alone: a target that stopped answering would make each DELETE wait its timeout."""
    bad: list = []
    for client in clients:
        if end_sessions:
            try:
                status = client.end_session()
                if status not in (0, 200):
                    bad.append(status)
            except BenchError as exc:
                bad.append(str(exc))
                end_sessions = False
        client.close()
    return bad


class HttpConn(_Socket):
    """One keep-alive connection of ``load run`` on a non-blocking socket; trio's ``wait_readable`` only
    when a read would block: one scheduler pass per answer, where trio's socket wrapper costs two or three."""

    def __init__(self, url: Url):
        self.url, self.sock, self.buf = url, None, b""

    async def connect(self) -> None:
        self.close()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            try:
                sock.connect((self.url.host, self.url.port))
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise OSError(err, f"cannot connect to {self.url}: {os.strerror(err)}") from None
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock, self.buf = sock, b""

    async def exchange(self, data: bytes, on_event=None, fast: bool = False) -> Response:
        """Send a request, return its Response; the events of a chunked event stream are given to
        ``on_event`` as they arrive (a server request inside can be answered before the stream ends)."""
        if self.sock is None:
            await self.connect()
        try:
            await self.send(data)
        except BaseException:
            self.close()
            raise
        return await self.receive(on_event, fast)

    async def receive(self, on_event=None, fast: bool = False) -> Response:
        """Read one response (what is already buffered first); see ``exchange``."""
        try:
            buf = self.buf
            while True:
                if buf:
                    parsed = fast_response(buf) if fast else parse_response(buf)
                    if parsed is not None:
                        resp, used = parsed
                        self.buf = buf[used:]
                        if resp.close:
                            self.close()
                        return resp
                    if on_event is not None and (end := buf.find(b"\r\n\r\n")) >= 0:
                        head = buf[:end].lower()
                        if b"text/event-stream" in head and b"chunked" in head:
                            return await self._stream(buf, on_event)
                buf += await self._recv("before the answer")
        except (ProtocolError, OSError) as exc:
            self.close()
            raise Disconnected(f"{self.url}: {exc}") from None
        except BaseException:   # cancelled (timeout) mid-exchange, or disconnected: the connection is out of step
            self.close()
            raise

    async def _recv(self, where: str) -> bytes:
        await trio.lowlevel.wait_readable(self.sock)
        while True:
            try:
                chunk = self.sock.recv(READ_SIZE)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
        if not chunk:
            raise Disconnected(f"{self.url}: connection closed {where}")
        return chunk

    async def send(self, data) -> None:
        """Send all of ``data``, waiting through trio while the socket is full."""
        view = memoryview(data)
        try:
            while True:
                try:
                    view = view[self.sock.send(view):]
                except BlockingIOError:
                    pass
                if not view:
                    return
                await trio.lowlevel.wait_writable(self.sock)
        except OSError as exc:
            raise Disconnected(f"{self.url}: {exc}") from None

    async def _stream(self, buf: bytes, on_event) -> Response:
        """Read a chunked SSE body to its end, handing each event over as it completes."""
        end = buf.find(b"\r\n\r\n")
        resp = parse_response(buf[:end + 4] + b"0\r\n\r\n")[0]   # the head alone (an empty body)
        pos, decoder, parts = end + 4, SSEDecoder(), []
        while True:
            new, pos, stop = read_chunks(buf, pos)
            for data in new:
                parts.append(data)
                for event in decoder.feed(data):
                    await on_event(event.data)
            if stop is not None:
                self.buf, resp.body = buf[stop:], b"".join(parts)
                if resp.close:
                    self.close()
                return resp
            buf += await self._recv("inside an event stream")
