"""``load fast-echo``: a stdio echo MCP server that costs (almost) nothing per call, the ceiling's target.

A bench call (serialised as ``stdio_bench.request_bytes`` does) is answered with one regex match and
one bytes format, a whole 64 KiB chunk with one write; anything else is parsed and answered properly.
"""
import os
import re
import sys

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


if __name__ == "__main__":
    sys.exit(run(None))
