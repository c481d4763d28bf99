"""One client request in flight over HTTP, and the byte budget all of them share.

The upstream reader pushes frames without awaiting (it must never block on one
slow client); the HTTP handler pulls them. Memory is bounded by `Backlog`: the
upstream reader waits in `Backlog.wait_below()` once too much is queued for
clients that read slowly. A legacy request answered by a stream keeps what it wrote
(`Replay`, `Resumable`) for a client that resumes it with Last-Event-ID.
"""
from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from wire_gateway.wire.frame import Frame

log = logging.getLogger("wire_gateway.http")


class _Written(bytes):
    """The type of WRITTEN."""


# What `Exchange.next` returns in place of a final answer that `direct` has written already.
WRITTEN = _Written()


class Backlog:
    __slots__ = ("bytes", "high_water", "_drained")

    def __init__(self, high_water: int = 8 << 20) -> None:
        self.bytes = 0
        self.high_water = high_water
        self._drained: trio.Event | None = None   # made only when someone waits

    def add(self, n: int) -> None:
        self.bytes += n

    def sub(self, n: int) -> None:
        self.bytes -= n
        if self._drained is not None and self.bytes <= self.high_water:
            self._drained.set()
            self._drained = None

    async def wait_below(self) -> None:
        while self.bytes > self.high_water:
            if self._drained is None:
                self._drained = trio.Event()
            await self._drained.wait()


class Exchange:
    """Frames for one request's client, pushed synchronously, taken by the handler.

    Waiters park on trio's lowest-level primitive: an exchange is made, waited on and
    woken once per request, where a trio.Event (made, waited on, set, made again)
    cost several times as much."""

    __slots__ = ("client_id", "backlog", "_frames", "_waiting", "done", "streamed", "queued", "attached", "direct")

    def __init__(self, client_id: object, backlog: Backlog) -> None:
        self.client_id = client_id
        self.backlog = backlog
        self._frames: deque[tuple[bytes, bool, int]] = deque()
        self._waiting: list[trio.lowlevel.Task] = []
        self.done = False            # the final answer has been pushed
        self.streamed = False        # the handler has started an SSE response
        self.queued = 0              # bytes pushed and not yet taken
        self.attached = True         # False while a resumable stream has lost its client
        # Set by a handler waiting for its answer: writes a final answer to the client at once,
        # from the pushing task (the upstream's reader), one scheduler pass sooner; False if it
        # cannot (then the answer is queued as usual).
        self.direct: Callable[[bytes, int], bool] | None = None

    def push(self, raw: bytes, final: bool = False, status: int = 200) -> None:
        """Add a frame; `final` marks the answer itself; `status` is the HTTP status it implies."""
        if self.done:
            return
        if final and self.direct is not None and not self._frames:
            try:
                if self.direct(raw, status):
                    raw = WRITTEN
            except Exception:   # never let one client's write take the upstream's reader down
                log.exception("writing an answer at once failed; it goes the usual way")
        self._frames.append((raw, final, status))
        self.queued += len(raw)
        self.backlog.add(len(raw))
        self.done = final
        if self._waiting:
            waiting, self._waiting = self._waiting, []
            for task in waiting:
                trio.lowlevel.reschedule(task)

    async def next(self) -> tuple[bytes, bool, int]:
        while not self._frames:
            task = trio.lowlevel.current_task()
            self._waiting.append(task)

            def abort(_raise_cancel, task=task):
                self._waiting.remove(task)
                return trio.lowlevel.Abort.SUCCEEDED
            await trio.lowlevel.wait_task_rescheduled(abort)
        raw, final, status = self._frames.popleft()
        self.queued -= len(raw)
        self.backlog.sub(len(raw))
        return raw, final, status

    def take_final(self) -> tuple[bytes, int] | None:
        """The final answer and its status when it is all there is and already here (an upstream
        answered from `request()` itself: a cache hit, a refusal), so the handler can write it
        without the waiting machinery; else None."""
        if not self.done or len(self._frames) != 1:
            return None
        raw, _, status = self._frames.popleft()
        self.queued -= len(raw)
        self.backlog.sub(len(raw))
        return raw, status

    def discard(self) -> None:
        """The client is gone: release what was queued for it."""
        while self._frames:
            self.backlog.sub(len(self._frames.popleft()[0]))
        self.queued = 0
        self.done = True


class Replay:
    """The events already written on one SSE stream, kept (bounded) so a client whose
    connection broke can resume with Last-Event-ID (legacy era). An event is recorded
    before it is written, so whatever the client may have missed is here."""

    __slots__ = ("stream_id", "seq", "sent", "log")

    def __init__(self, stream_id: str, max_events: int,
                 log: Callable[[int, bytes, bool], None] | None = None) -> None:
        self.stream_id = stream_id
        self.seq = 0
        self.sent: deque[tuple[int, bytes]] = deque(maxlen=max_events)
        self.log = log        # also told each event (seq, data, final): shared_streams' Recorder

    def event_id(self, seq: int) -> str:
        return f"{self.stream_id}-{seq}"

    def record(self, raw: bytes, final: bool = False) -> str:
        self.seq += 1
        self.sent.append((self.seq, raw))
        if self.log is not None:
            self.log(self.seq, raw, final)
        return self.event_id(self.seq)

    def after(self, seq: int) -> list[tuple[str, bytes]]:
        return [(self.event_id(n), raw) for n, raw in self.sent if n > seq]


class Resumable:
    """A legacy request's SSE stream, kept (with its Replay) while its client may come back."""

    __slots__ = ("frame", "ex", "replay", "finished", "_recording", "_recorded")

    def __init__(self, frame: Frame, ex: Exchange, replay: Replay) -> None:
        self.frame = frame
        self.ex = ex
        self.replay = replay
        self.finished = False     # the answer has been recorded (and written, if the client was there)
        self._recording: trio.CancelScope | None = None
        self._recorded = trio.Event()

    def keep_recording(self, spawn: Callable[..., Any]) -> None:
        """The client left: record the events as they come (in a task `spawn` starts), so they are
        there (also in Redis, the Replay's log) for a client resuming on any instance."""
        if not self.finished:
            self._recording = trio.CancelScope()
            self._recorded = trio.Event()
            spawn(self._record, self._recording)

    async def _record(self, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await trio.lowlevel.checkpoint()      # stopped before it started: takes nothing
                while not self.finished:
                    raw, final, _ = await self.ex.next()
                    if self.finished:         # abandoned while this task was being woken with `raw`
                        break
                    self.replay.record(raw, final)
                    self.finished = final
        finally:
            self._recording = None
            self._recorded.set()

    def abandon(self, error: bytes) -> None:
        """No answer will be recorded: `error` (for the request) is the stream's last event."""
        self.stop_recording()
        if not self.finished:
            self.finished = True
            self.replay.record(error, True)

    def stop_recording(self) -> None:
        if self._recording is not None:
            self._recording.cancel()

    async def recorded(self) -> None:
        """Stop recording, and return once whatever the recording took from the exchange is in
        the replay: a client resuming here is served from the replay, then from the exchange."""
        if self._recording is not None:
            self._recording.cancel()
            await self._recorded.wait()


def parse_event_id(value: str) -> tuple[str, int] | None:
    """'p7-12' -> ('p7', 12); None for anything we did not mint."""
    stream_id, _, seq = value.strip().rpartition("-")
    if not stream_id or not seq.isdigit():
        return None
    return stream_id, int(seq)
