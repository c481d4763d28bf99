"""A legacy-era (2025-03-26 .. 2025-11-25) Streamable HTTP session.

Opened by `initialize`, named by a random `Mcp-Session-Id`, backed by its own
supervised server process (a server may keep per-client state), ended by DELETE
or by idling past the configured timeout.

Where server messages go: an answer goes to the POST that asked; a progress
notification to the POST whose progressToken it carries; anything else (logging,
sampling/elicitation/roots requests) to the most recent POST still streaming,
since over stdio the server cannot say which request it relates to, and else to
the GET stream, buffered (bounded) while none is open.
"""
from __future__ import annotations

import logging
import secrets
from collections import deque
from typing import Any

import trio

from wire_gateway.config import HttpSettings, Limits, ServerSpec
from wire_gateway.proxy.exchange import Backlog, Exchange
from wire_gateway.proxy.http_answer import SSE_HEADERS, answer
from wire_gateway.transport.http_server import ClientGone, Responder
from wire_gateway.upstream.factory import make_upstream
from wire_gateway.wire import errors
from wire_gateway.wire.frame import Batch, Frame, Invalid, Kind
from wire_gateway.wire.sse import encode_event

log = logging.getLogger("wire_gateway.http.legacy")


def new_session_id() -> str:
    return secrets.token_urlsafe(24)   # 192 bits, visible ASCII only


def progress_token(frame: Frame) -> Any:
    params = frame.params
    if isinstance(params, dict):
        meta = params.get("_meta")
        if isinstance(meta, dict):
            return meta.get("progressToken")
    return None


class LegacySession:
    def __init__(self, server: str, spec: ServerSpec, limits: Limits, settings: HttpSettings) -> None:
        self.id = new_session_id()
        self.server = server
        self.settings = settings
        self.upstream = make_upstream(spec, limits, self)
        self.backlog = Backlog()
        self.exchanges: dict[Any, Exchange] = {}
        self.progress: dict[Any, Exchange] = {}
        self.get_buffer: deque[bytes] = deque()
        self.get_event = trio.Event()
        self.get_generation = 0          # a newer GET stream ends the older one
        self.streams_open = 0
        self.last_active = trio.current_time()
        self.closed = False
        self.client_info: Any = None

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("mcp-session-id", self.id)]

    def idle_for(self, now: float) -> float:
        if self.exchanges or self.streams_open:
            return 0.0
        return now - self.last_active

    # ---- HTTP side ----------------------------------------------------------------

    async def post(self, decoded: Frame | Batch, responder: Responder) -> None:
        self.last_active = trio.current_time()
        if isinstance(decoded, Batch):
            await self._post_batch(decoded, responder)
        elif decoded.kind is Kind.REQUEST:
            if decoded.method == "initialize" and isinstance(decoded.params, dict):
                self.client_info = decoded.params.get("clientInfo")
            await self._request(decoded, responder)
        else:
            self._one_way(decoded)
            self.upstream.flush()
            await responder.send(202, self.headers)
        self.last_active = trio.current_time()

    def _one_way(self, frame: Frame) -> None:
        if frame.kind is Kind.NOTIFICATION:
            self.upstream.notify(frame)
        else:
            self.upstream.reply(frame)

    def _open(self, frame: Frame) -> Exchange:
        ex = Exchange(frame.id, self.backlog)
        if frame.id in self.exchanges:
            ex.push(errors.error_frame(frame.id, errors.INVALID_REQUEST,
                                       f"Invalid Request: id {frame.id!r} is already in flight in this session"),
                    final=True)
            return ex
        self.exchanges[frame.id] = ex
        token = progress_token(frame)
        if token is not None:
            self.progress[token] = ex
        refused = self.upstream.request(frame)
        if refused is not None:
            ex.push(refused, final=True)
        return ex

    def _close(self, frame: Frame, ex: Exchange) -> None:
        if self.exchanges.get(frame.id) is ex:
            del self.exchanges[frame.id]
        token = progress_token(frame)
        if token is not None and self.progress.get(token) is ex:
            del self.progress[token]
        if not ex.done:
            log.info("session %s: client left before the answer to %r; it will be dropped "
                     "(legacy HTTP: a disconnect is not a cancellation)", self.id[:8], frame.id)
        ex.discard()

    async def _request(self, frame: Frame, responder: Responder) -> None:
        ex = self._open(frame)
        self.upstream.flush()
        try:
            await answer(ex, responder, self.headers)
        finally:
            self._close(frame, ex)

    async def _post_batch(self, batch: Batch, responder: Responder) -> None:
        opened: list[tuple[Frame, Exchange]] = []
        answers: list[bytes] = []
        for item in batch.items:
            if isinstance(item, Invalid):
                answers.append(item.error_frame())
            elif item.kind is Kind.REQUEST:
                opened.append((item, self._open(item)))
            else:
                self._one_way(item)
        self.upstream.flush()
        try:
            for frame, ex in opened:
                while True:
                    raw, final, _ = await ex.next()
                    if final:
                        answers.append(raw)
                        break
                    self._route_unrelated(raw)   # a batch answers as one JSON array; extras go to GET
        finally:
            for frame, ex in opened:
                self._close(frame, ex)
        if answers:
            await responder.send(200, [("content-type", "application/json"), *self.headers],
                                 b"[" + b",".join(answers) + b"]")
        else:
            await responder.send(202, self.headers)

    async def get_stream(self, responder: Responder) -> None:
        """The stream for messages not tied to a request; a newer GET replaces an older one."""
        self.get_generation += 1
        mine = self.get_generation
        self.get_event.set()             # wake an older stream so it sees it has been replaced
        self.get_event = trio.Event()
        self.streams_open += 1
        try:
            await responder.start_stream(200, [*SSE_HEADERS, *self.headers])
            while mine == self.get_generation and not self.closed:
                while self.get_buffer and mine == self.get_generation:
                    await responder.send_chunk(encode_event(self.get_buffer.popleft()))
                if mine != self.get_generation or self.closed:
                    break
                await self.get_event.wait()
                if self.get_event.is_set():
                    self.get_event = trio.Event()
            await responder.end_stream()
        except ClientGone:
            pass
        finally:
            self.streams_open -= 1
            self.last_active = trio.current_time()

    async def close(self) -> None:
        """End the session: stop its streams, shut its server down the spec's way."""
        if self.closed:
            return
        self.closed = True
        self.get_event.set()
        await self.upstream.shutdown()

    # ---- Sink: server -> client -----------------------------------------------------

    def server_frame(self, frame: Frame) -> None:
        kind = frame.kind
        if kind is Kind.RESPONSE or kind is Kind.ERROR:
            ex = self.exchanges.get(frame.id)
            if ex is not None:
                ex.push(frame.raw, final=True)
            else:
                log.debug("session %s: answer to %r arrived after its client left; dropped", self.id[:8], frame.id)
            return
        if kind is Kind.NOTIFICATION and frame.method == "notifications/progress":
            params = frame.params
            ex = self.progress.get(params.get("progressToken")) if isinstance(params, dict) else None
            if ex is not None:
                ex.push(frame.raw)
                return
        self._route_unrelated(frame.raw)

    def gateway_reply(self, req_id: Any, data: bytes) -> None:
        ex = self.exchanges.get(req_id)
        if ex is not None:
            ex.push(data, final=True)

    def flush(self) -> None:
        """Nothing to do: handlers write as they pull."""

    async def wait_writable(self) -> None:
        await self.backlog.wait_below()

    def _route_unrelated(self, raw: bytes) -> None:
        for ex in reversed(self.exchanges.values()):
            if not ex.done:
                ex.push(raw)
                return
        if len(self.get_buffer) >= self.settings.stream_buffer_frames:
            self.get_buffer.popleft()
            log.warning("session %s: GET stream buffer full (%d messages, http.stream_buffer_frames); "
                        "dropped the oldest", self.id[:8], self.settings.stream_buffer_frames)
        self.get_buffer.append(raw)
        self.get_event.set()
