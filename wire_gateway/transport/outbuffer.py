"""A coalescing, bounded write buffer drained by one writer task.

Many frames produced between two writes go out in a single `send_all` (measured:
one write per frame was slower than sequential with 16 callers). Producers append
without awaiting, then call `wait_writable()` once per batch: past the high-water
mark they wait for the writer, so a slow reader costs bounded memory, not an
unbounded queue.
"""
from __future__ import annotations

import trio


class OutBuffer:
    __slots__ = ("high_water", "_parts", "_size", "_wake", "_drained", "_closed", "broken")

    def __init__(self, high_water: int = 1 << 20) -> None:
        self.high_water = high_water
        self._parts: list[bytes] = []
        self._size = 0
        self._wake = trio.Event()
        self._drained = trio.Event()
        self._closed = False
        self.broken: BaseException | None = None

    def put_line(self, data: bytes) -> None:
        """Queue one frame followed by a newline. Never blocks."""
        if self._closed:
            return
        self._parts.append(data)
        self._parts.append(b"\n")
        self._size += len(data) + 1
        self._wake.set()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending_bytes(self) -> int:
        return self._size

    async def wait_writable(self) -> None:
        """Wait while the buffer is over its high-water mark."""
        while self._size > self.high_water and not self._closed:
            await self._drained.wait()

    def close(self) -> None:
        """No more frames; the pump finishes writing what it has, then returns."""
        self._closed = True
        self._wake.set()
        self._drained.set()

    async def pump(self, stream: trio.abc.SendStream) -> None:
        """Write everything queued, batch by batch, until closed and empty.

        Raises trio.BrokenResourceError / ClosedResourceError if the peer is gone.
        """
        while True:
            if not self._parts:
                if self._closed:
                    return
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            parts, self._parts = self._parts, []
            data = parts[0] + parts[1] if len(parts) == 2 else b"".join(parts)
            try:
                await stream.send_all(data)
            except BaseException as exc:
                self.broken = exc
                self._closed = True
                self._drained.set()
                raise
            self._size -= len(data)
            if self._size <= self.high_water:
                self._drained.set()
                self._drained = trio.Event()
