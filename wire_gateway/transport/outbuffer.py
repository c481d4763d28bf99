"""A coalescing, bounded write buffer over a non-blocking file descriptor.

Producers append frames without awaiting and call `flush()` once per batch of
input: it writes straight to the fd (one syscall for everything queued, no task
switch), which is what keeps the gateway's added latency low. Only when the pipe
is full does the remainder wait for the `pump()` task. Past the high-water mark
producers wait in `wait_writable()`, so a slow reader costs bounded memory.
"""
from __future__ import annotations

import os

import trio
import trio.lowlevel


class OutBuffer:
    __slots__ = ("fd", "high_water", "_parts", "_size", "_wake", "_drained", "_closed", "_pumping", "_soon", "broken")

    def __init__(self, fd: int, high_water: int = 1 << 20) -> None:
        self.fd = fd
        self.high_water = high_water
        self._parts: list[bytes] = []
        self._size = 0
        self._wake = trio.Event()
        self._drained = trio.Event()
        self._closed = False
        self._pumping = False   # the pump owns the fd while it waits for the pipe to drain
        self._soon = False      # the pump should yield once before writing (see flush_soon)
        self.broken: OSError | None = None

    def put_line(self, data: bytes) -> None:
        """Queue one frame followed by a newline. Never blocks; call flush() after a batch."""
        if self._closed:
            return
        self._parts.append(data)
        self._parts.append(b"\n")
        self._size += len(data) + 1

    @property
    def closed(self) -> bool:
        return self._closed

    def flush(self) -> None:
        """Write what is queued now if the fd takes it; hand any remainder to the pump."""
        if not self._parts or self._pumping or self.broken is not None:
            return
        data = self._take()
        written = self._write_nowait(data)
        if 0 <= written < len(data):
            self._parts.insert(0, data[written:])
            self._size += len(data) - written
            self._pumping = True
            self._wake.set()

    def flush_soon(self) -> None:
        """Write at the next scheduler pass, together with whatever other tasks queue meanwhile.

        For many concurrent producers (HTTP requests sharing one server): one write, and one
        wake-up of the reader, per batch instead of per frame."""
        if self._parts and not self._pumping and self.broken is None:
            self._pumping = True
            self._soon = True
            self._wake.set()

    async def wait_writable(self) -> None:
        """Wait while the buffer is over its high-water mark."""
        while self._size > self.high_water and not self._closed:
            await self._drained.wait()

    def close(self) -> None:
        """No more frames; the pump writes what is left, then returns."""
        self._closed = True
        self._wake.set()
        self._drained.set()

    async def pump(self) -> None:
        """Drain backlogs the fd could not take at once, until closed and empty.

        Raises trio.BrokenResourceError if the reading side has gone.
        """
        while True:
            if self.broken is not None:
                raise trio.BrokenResourceError(f"write failed: {self.broken}") from self.broken
            if not self._parts:
                self._pumping = False
                self._signal_drained()
                if self._closed:
                    return
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            self._pumping = True
            if self._soon:
                self._soon = False
                await trio.lowlevel.checkpoint()   # let the other tasks of this batch add their frames
            data = self._take()
            view = memoryview(data)
            while view:
                n = self._write_nowait(view)
                if n < 0:
                    break
                view = view[n:]
                if view:
                    await trio.lowlevel.wait_writable(self.fd)

    def _write_nowait(self, data: bytes | memoryview) -> int:
        """Bytes written without blocking: 0 if the pipe is full, -1 if the reader is gone."""
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            self._break(exc)
            return -1

    def _take(self) -> bytes:
        parts, self._parts = self._parts, []
        self._size = 0
        return parts[0] + parts[1] if len(parts) == 2 else b"".join(parts)

    def _signal_drained(self) -> None:
        self._drained.set()
        self._drained = trio.Event()

    def _break(self, exc: OSError) -> None:
        self.broken = exc
        self._closed = True
        self._parts = []
        self._size = 0
        self._wake.set()
        self._drained.set()


async def read_some(fd: int, max_bytes: int = 65536) -> bytes:
    """Wait until `fd` is readable, then read once: one scheduler pass per wake-up.

    Returns b"" at end of stream (or if the fd is gone).
    """
    while True:
        await trio.lowlevel.wait_readable(fd)
        try:
            return os.read(fd, max_bytes)
        except BlockingIOError:
            continue
        except OSError:
            return b""
