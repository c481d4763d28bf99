"""``load fast-echo``: an echo MCP server that costs (almost) nothing per call, the ceilings' target.

A bench call (serialised as ``stdio_bench.request_bytes`` does) is answered with one regex match and
one bytes format, a whole 64 KiB chunk with one write; anything else is parsed and answered properly.
Over stdio (``serve``, ``stdio-ceiling``'s target) or, with just enough Streamable HTTP around the same
answers, over HTTP (``serve_http``, ``http-bench --ceiling``'s).
"""
import os
import re
import select
import signal
import socket
import sys
from pathlib import Path

import orjson

#: The benches' request shape (stdio, or HTTP with a modern ``_meta``): the id, the text, the ``_meta``.
FAST_CALL = re.compile(rb'\{"jsonrpc":"2\.0","id":(\d+),"method":"tools/call","params":\{"name":"echo",'
                       rb'"arguments":\{"text":"([A-Za-z0-9_]*)"\}(,"_meta":\{.*\})?\}\}')
FAST_ANSWER = b'{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"%s"}],"isError":false%s}}\n'
COMPLETE = b',"resultType":"complete"'   # a modern answer's
INIT_RESULT = {
    "protocolVersion": "2025-11-25",
    "capabilities": {"tools": {}},
    "serverInfo": {"name": "fast-echo", "version": "0"},
}


def add_arguments(parser) -> None:
    """No options: the server is configured by what it is sent."""


def run(args) -> int:
    serve(0, 1)
    return 0


def serve(rfd: int, wfd: int) -> None:
    """Answer newline-delimited JSON-RPC from ``rfd`` on ``wfd`` until EOF."""
    pending = b""
    while True:
        chunk = os.read(rfd, 65536)
        if not chunk:
            return
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        out = b"".join(answer(line) for line in lines)
        if out:
            write_all(wfd, out)


def answer(line: bytes) -> bytes:
    """The response bytes for one request line (empty for notifications)."""
    match = FAST_CALL.fullmatch(line.rstrip(b"\r"))
    if match:
        call_id, text, meta = match.groups()
        return FAST_ANSWER % (call_id, text, COMPLETE if meta else b"")
    if not line.strip():
        return b""
    return slow_answer(line)


def slow_answer(line: bytes) -> bytes:
    """Fully parsed handling for everything the fast path does not cover."""
    try:
        msg = orjson.loads(line)
    except orjson.JSONDecodeError:
        return reply(None, error={"code": -32700, "message": "parse error"})
    if not isinstance(msg, dict) or "id" not in msg:
        return b""  # notification (or garbage we may not answer)
    method = msg.get("method")
    if method == "initialize":
        return reply(msg["id"], result=INIT_RESULT)
    if method == "tools/list":
        tool = {"name": "echo", "inputSchema": {"type": "object"}}
        return reply(msg["id"], result={"tools": [tool]})
    if method == "tools/call":
        try:
            text = msg["params"]["arguments"]["text"]
        except (KeyError, TypeError):
            return reply(msg["id"], error={"code": -32602, "message": "bad params"})
        content = [{"type": "text", "text": text}]
        return reply(msg["id"], result={"content": content, "isError": False})
    if method == "ping":
        return reply(msg["id"], result={})
    return reply(msg["id"], error={"code": -32601, "message": "method not found"})


def reply(msg_id, **body) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": msg_id, **body}) + b"\n"


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


_FAST_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.I)
_FAST_SESSION = re.compile(rb"\r\nmcp-session-id:[ \t]*([!-~]+)", re.I)


def serve_http(port_file: str) -> None:
    """Just enough Streamable HTTP to show how fast the driver goes: ``answer`` (one regex match for a
    bench call), a fresh session for ``initialize``, 202 for a notification, 200 for DELETE;
    one epoll loop. Not a real server; ``python -m load.http_bench --fast-server PORTFILE``."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    listener.setblocking(False)
    Path(port_file + ".tmp").write_text(f"{listener.getsockname()[1]}\n")
    os.replace(port_file + ".tmp", port_file)
    ep = select.epoll()
    ep.register(listener.fileno(), select.EPOLLIN)
    conns, bufs, sessions = {}, {}, 0
    while True:
        for fd, _ in ep.poll():
            if fd == listener.fileno():
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    continue
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conns[sock.fileno()], bufs[sock.fileno()] = sock, b""
                ep.register(sock.fileno(), select.EPOLLIN)
                continue
            sock = conns[fd]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                ep.unregister(fd)
                del conns[fd], bufs[fd]
                sock.close()
                continue
            buf, out = bufs[fd] + data if bufs[fd] else data, []
            while (end := buf.find(b"\r\n\r\n")) >= 0:
                m = _FAST_LENGTH.search(buf, 0, end + 2)
                stop = end + 4 + (int(m.group(1)) if m else 0)
                if len(buf) < stop:
                    break
                head, body, buf = buf[:end + 2], buf[end + 4:stop], buf[stop:]
                sm = _FAST_SESSION.search(head)
                sid = b"\r\nmcp-session-id: " + sm.group(1) if sm else b""
                delete = head.startswith(b"DELETE ")
                payload = b"" if delete else answer(body).rstrip(b"\n")
                if b'"method":"initialize"' in body:
                    sessions += 1
                    sid = b"\r\nmcp-session-id: fast-%d" % sessions
                out.append(b"HTTP/1.1 %s\r\ncontent-type: application/json%s\r\ncontent-length: %d\r\n\r\n%s"
                           % (b"200 OK" if payload or delete else b"202 Accepted", sid, len(payload), payload))
            bufs[fd] = buf
            if out:
                try:
                    sock.sendall(b"".join(out))   # small: fits the empty send buffer
                except OSError:
                    pass


if __name__ == "__main__":
    sys.exit(run(None))
