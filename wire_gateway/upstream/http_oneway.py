"""The client's one-way messages to a remote server, in order: notifications, and its answers
to server->client requests (sampling, elicitation, roots).

They are POSTed one at a time, in the order the client sent them, by one task. A request's
POST waits until the one-way messages the client sent before it have been accepted
(`wait_sent`), so `notifications/initialized` and a cancellation cannot overtake what follows
them, as they cannot on a pipe. Past `MAX_ONEWAY_QUEUE` waiting, the session's readers wait
(`wait_writable`).
"""
from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

import trio

from wire_gateway.dump.tap import G2S
from wire_gateway.transport.http_client import HttpClientError, HttpStatus
from wire_gateway.wire.era import LEGACY, MODERN, MODERN_VERSIONS, request_version
from wire_gateway.wire.frame import Frame
from wire_gateway.wire.headers import METHOD_HEADER, PROTOCOL_VERSION_HEADER, header_value_ok

if TYPE_CHECKING:
    from wire_gateway.upstream.http_upstream import HttpUpstream

log = logging.getLogger("wire_gateway.upstream.http")

MAX_ONEWAY_QUEUE = 1024        # client notifications/responses waiting to be POSTed: readers wait beyond


class OnewayQueue:
    """The one-way messages of one `HttpUpstream`, and the task that POSTs them."""

    def __init__(self, up: HttpUpstream) -> None:
        self.up = up
        self.queued = 0                    # messages queued so far (a request waits for as many to be sent)
        self._sent = 0                     # ... and POSTed (accepted or not)
        self._queue: deque[tuple[Frame, str]] = deque()
        self._wake = trio.Event()
        self._progress = trio.Event()
        self._closed = False

    def era_of(self, frame: Frame) -> str:
        """The era a one-way message goes in: its own `_meta` version, else the session's."""
        if request_version(frame.msg) is not None:
            return MODERN
        up = self.up
        if up.session.sid is None and up.session.version is None and up.era == MODERN:
            return MODERN
        return LEGACY

    def put(self, frame: Frame) -> None:
        up = self.up
        if up.closing and up.nursery is None:
            log.info("server %s: dropped a %s sent after shutdown", up.name, frame.method or "response")
            return
        if up.tap is not None:
            up.tap.frame(G2S, frame)
        self._queue.append((frame, self.era_of(frame)))
        self.queued += 1
        self._wake.set()

    @property
    def unsent(self) -> bool:
        return self._sent < self.queued

    async def wait_sent(self, seq: int) -> None:
        """Until the first `seq` messages have been POSTed."""
        while self._sent < seq:
            await self._progress.wait()

    async def wait_writable(self) -> None:
        while len(self._queue) >= MAX_ONEWAY_QUEUE and not self._closed:
            await self._progress.wait()

    def close(self) -> None:
        """The upstream is stopping: nobody waits for room any more."""
        self._closed = True
        self._wake_writers()

    def _wake_writers(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def run(self) -> None:
        """POST the messages in order, for as long as the upstream runs."""
        while True:
            while not self._queue:
                await self._wake.wait()
                self._wake = trio.Event()
            frame, era = self._queue.popleft()
            try:
                await self._post(frame, era)
            finally:
                self._sent += 1
                self._wake_writers()

    async def _post(self, frame: Frame, era: str) -> None:
        up = self.up
        what = frame.method or f"the answer to request {frame.id!r}"
        sid: str | None = None
        if era == MODERN:
            version = request_version(frame.msg) or up.runner.modern_version or MODERN_VERSIONS[0]
            headers = {PROTOCOL_VERSION_HEADER: version}
            if frame.method and header_value_ok(frame.method):
                headers[METHOD_HEADER] = frame.method
        else:
            await up.session.ready.wait()
            sid = up.session.sid
            headers = up.session.headers(sid)
        try:
            async with up.client.post(frame.raw, headers) as resp:
                up.reachable()
                if resp.body is not None:
                    up.deliver(resp.body)
                elif resp.events is not None:
                    async for event in resp.events:
                        up.deliver(event.data)
                up.sink.flush()
        except HttpStatus as exc:
            if exc.status == 404 and sid is not None:
                up.session.lose(sid, f"HTTP 404 for {what}")
            else:
                log.warning("server %s: %s was not accepted: %s", up.name, what, exc)
            return
        except HttpClientError as exc:
            log.warning("server %s: %s was not delivered: the server at %s %s", up.name, what, up.url, exc)
            return
        except Exception:
            log.exception("server %s: unexpected error while sending %s", up.name, what)
            return
        if frame.method == "notifications/initialized" and era == LEGACY:
            up.session.start_listener()
