"""A virtual session of ``load run``: one client replaying a script over Streamable HTTP or stdio.

Both kinds answer the server's own requests (sampling, elicitation, roots) with the client's recorded
replies as they arrive, count its notifications, and hand each answer back whole (``Answer``) for
``replay.judge``. docs/load.md says what each does with the handshake, cancellations and the end.
"""
from __future__ import annotations

import subprocess
from functools import partial

import orjson
import trio

from wire_gateway.wire.era import META_PROTOCOL_VERSION
from wire_gateway.wire.headers import encode_header_value

from .http_client import Disconnected, HttpConn, HttpStatus, json_or_text, request_head, sse_messages
from .procfs import signal_group
from .replay import ID_STRIDE, Call, Script


class Answer:
    """What came back for one request: the answer message, and what came with it."""
    __slots__ = ("msg", "raw", "notifications", "server_requests")

    def __init__(self, msg, raw: bytes, notifications: int = 0, server_requests: int = 0):
        self.msg, self.raw, self.notifications, self.server_requests = msg, raw, notifications, server_requests


class Session:
    """What both kinds share: the script, and the recorded replies to the server's requests."""

    def __init__(self, script: Script):
        self.script, self.used = script, {}

    async def from_server(self, msg, counts: list, send) -> bool:
        """True if ``msg`` is the server's own message: a notification (counted in ``counts[0]``) or a
        request (``counts[1]``), answered at once through ``send(reply)`` with the recorded reply to the
        recorded request of its method, in order (the last one again if asked more often), else -32601."""
        if not isinstance(msg, dict) or "method" not in msg:
            return False
        if "id" not in msg:
            counts[0] += 1
            return True
        counts[1] += 1
        method = msg["method"]
        recorded = self.script.replies.get(method) or []
        used = self.used[method] = self.used.get(method, -1) + 1
        await send(dict(recorded[min(used, len(recorded) - 1)], id=msg["id"]) if recorded else {
            "jsonrpc": "2.0", "id": msg["id"],
            "error": {"code": -32601, "message": f"load run: no recorded reply to {method}"}})
        return True


class HttpSession(Session):
    """A virtual session over Streamable HTTP: one keep-alive connection (plus one for replies)."""

    def __init__(self, url, script: Script):
        super().__init__(script)
        self.url, self.conn = url, HttpConn(url)
        self.side = None            # a second connection, for replies sent while a stream is open
        self.session_id = None
        self.legacy = script.era == "legacy"
        self.heads: dict = {}

    def frame(self, msg: dict, body: bytes, name: str | None = None, key=None, extra: tuple = ()) -> bytes:
        """The whole POST; heads are cached per step (``key``): only the body changes per round."""
        head = self.heads.get(key) if key is not None else None
        if head is None:
            version = self.script.protocol_version
            if self.legacy:
                headers = [("MCP-Protocol-Version", version)]
                if self.session_id:
                    headers.append(("Mcp-Session-Id", self.session_id))
            else:
                params = msg.get("params") if isinstance(msg.get("params"), dict) else {}
                meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
                headers = [("MCP-Protocol-Version", meta.get(META_PROTOCOL_VERSION, version))]
                if "method" in msg:
                    headers.append(("Mcp-Method", msg["method"]))
                if name is not None:
                    headers.append(("Mcp-Name", encode_header_value(name)))
                headers += extra
            head = request_head(self.url, "POST", headers)
            if key is not None:
                self.heads[key] = head
        return head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)

    async def start(self) -> None:
        await self.conn.connect()

    async def request(self, call: Call, live_id: int, body: bytes, key=None) -> Answer:
        return await self.receive(call, self.frame(call.msg, body, call.name, key, call.param_headers))

    async def receive(self, call: Call, data: bytes | None = None) -> Answer:
        """Send ``data`` and read its answer; without ``data``, the answer to a request already sent (by
        the fast lane). Server requests in an event stream are answered as they arrive."""
        counts, answer = [0, 0], []
        on_event = partial(self._event, counts=counts, answer=answer)
        fast = call.method != "initialize"
        resp = await (self.conn.receive(on_event, fast) if data is None else self.conn.exchange(data, on_event, fast))
        if resp.status != 200:
            raise HttpStatus(resp.status, resp.body)
        if resp.headers.get(b"content-type", b"").startswith(b"text/event-stream"):
            if not answer:   # the stream came whole: its events were not handed over yet
                for event in sse_messages(resp.body):
                    await self._event(event, counts, answer)
            if not answer:
                raise Disconnected(f"{self.url}: event stream ended without an answer")
            msg, raw = answer[0]
        else:
            raw = resp.body
            msg = json_or_text(raw)
        if self.legacy and call.method == "initialize":
            self.session_id = resp.header(b"mcp-session-id")
            self.heads.clear()
        return Answer(msg, raw, counts[0], counts[1])

    async def _event(self, data: bytes, counts: list, answer: list) -> None:
        if not data.strip():
            return   # the legacy era's priming event (empty data) carries no message
        msg = json_or_text(data)
        if not await self.from_server(msg, counts, self._reply) and not answer:
            answer.append((msg, data))

    async def _reply(self, reply: dict) -> None:
        if self.side is None:
            self.side = HttpConn(self.url)
        await self.notify(reply, self.side)

    async def cancelled(self, call: Call, live_id: int, body: bytes, cancel: dict) -> None:
        """A request the client cancelled: POST it on a connection of its own, send the recorded
        cancellation (legacy: notifications/cancelled; modern: closing that connection is the
        cancellation), and drop whatever answer may come."""
        conn = HttpConn(self.url)
        try:
            await conn.connect()
            await conn.send(self.frame(call.msg, body, call.name, None, call.param_headers))
            if self.legacy:
                await self.notify(cancel)
        finally:
            conn.close()

    async def notify(self, msg: dict, conn: HttpConn | None = None) -> None:
        """POST a message that gets no answer (a notification, a reply to the server); 200 or 202."""
        resp = await (conn or self.conn).exchange(self.frame(msg, orjson.dumps(msg)))
        if resp.status not in (200, 202):
            raise HttpStatus(resp.status, resp.body)

    async def reconnect(self) -> None:
        await self.conn.connect()

    async def close(self) -> None:
        try:
            if self.legacy and self.session_id and self.conn.sock is not None:
                head = request_head(self.url, "DELETE", (("Mcp-Session-Id", self.session_id),
                                                         ("MCP-Protocol-Version", self.script.protocol_version)))
                with trio.move_on_after(5):
                    await self.conn.exchange(head + b"\r\n")
        except (Disconnected, OSError):
            pass
        finally:
            self.conn.close()
            if self.side is not None:
                self.side.close()


class StdioSession(Session):
    """A virtual session over stdio: its own spawned process, newline-delimited JSON."""

    def __init__(self, argv: list, script: Script):
        super().__init__(script)
        self.argv, self.proc, self.buf = argv, None, b""

    async def start(self) -> None:
        self.proc = await trio.lowlevel.open_process(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                     stderr=subprocess.DEVNULL, start_new_session=True)

    async def _write(self, data: bytes) -> None:
        try:
            await self.proc.stdin.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise Disconnected(f"process {self.proc.pid} stdin closed: {exc}") from None

    async def request(self, call: Call, live_id: int, body: bytes, key=None) -> Answer:
        await self._write(body + b"\n")
        counts = [0, 0]
        while True:
            line = await self._line()
            got = json_or_text(line)
            if await self.from_server(got, counts, self.notify):
                continue
            rid = got.get("id") if isinstance(got, dict) else None
            if type(rid) is int and rid < live_id and rid // ID_STRIDE == live_id // ID_STRIDE:
                continue   # a late answer to an earlier request of ours that timed out
            return Answer(got, line, *counts)

    async def cancelled(self, call: Call, live_id: int, body: bytes, cancel: dict) -> None:
        """Send the request and its recorded cancellation; a late answer is skipped by ``request``."""
        await self._write(body + b"\n" + orjson.dumps(cancel) + b"\n")

    async def _line(self) -> bytes:
        while True:
            line, nl, rest = self.buf.partition(b"\n")
            if nl:
                self.buf = rest
                if line.strip():
                    return line
                continue
            chunk = await self.proc.stdout.receive_some(65536)
            if not chunk:
                raise Disconnected(f"process {self.proc.pid} exited (stdout closed) before the answer")
            self.buf += chunk

    async def notify(self, msg: dict) -> None:
        await self._write(orjson.dumps(msg) + b"\n")

    async def reconnect(self) -> None:
        raise Disconnected("a stdio session cannot reconnect")

    async def close(self) -> None:
        """Close stdin (the spec's way to end), wait a little, then SIGKILL the group."""
        proc = self.proc
        if proc is None:
            return
        with trio.CancelScope(shield=True):
            try:
                await proc.stdin.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            with trio.move_on_after(3):
                await proc.wait()
            if proc.returncode is None:
                if not signal_group(proc.pid):
                    proc.kill()
                await proc.wait()
            signal_group(proc.pid)   # anything it left in its group
            await proc.stdout.aclose()
