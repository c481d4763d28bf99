"""Newline framing (the stdio binding): bytes in, complete lines out.

A line longer than the frame limit is never buffered whole: the framer keeps a
short prefix (enough to recover the request id), discards the rest up to the
next newline, and reports an Oversize event so the caller can answer it.
"""
from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
_PREFIX_KEEP = 4096


@dataclass(slots=True)
class Oversize:
    prefix: bytes   # the first bytes of the line, for id recovery and logs
    size: int       # the line's full length in bytes


class LineFramer:
    """Feed arbitrary chunks; get back lines (without the newline) and Oversize events.

    Blank lines are skipped: they carry no message. Invariant: any split of a byte
    stream into chunks yields the same events (property-tested).
    """

    __slots__ = ("max_frame", "_buf", "_discarding", "_prefix", "_dropped")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._discarding = False
        self._prefix = b""
        self._dropped = 0

    def feed(self, data: bytes) -> list[bytes | Oversize]:
        out: list[bytes | Oversize] = []
        start = 0
        n = len(data)
        while start < n:
            nl = data.find(b"\n", start)
            if self._discarding:
                if nl < 0:
                    self._dropped += n - start
                    return out
                self._dropped += nl - start
                out.append(Oversize(self._prefix, self._dropped))
                self._discarding = False
                self._prefix = b""
                start = nl + 1
                continue
            if nl < 0:
                self._buf += data[start:]
                if len(self._buf) > self.max_frame:
                    self._start_discarding()
                return out
            if self._buf:
                self._buf += data[start:nl]
                line = bytes(self._buf)
                self._buf.clear()
            else:
                line = data[start:nl]
            start = nl + 1
            self._emit(line, out)
        return out

    def close(self) -> list[bytes | Oversize]:
        """End of stream: a last line without a newline still counts as a frame."""
        out: list[bytes | Oversize] = []
        if self._discarding:
            out.append(Oversize(self._prefix, self._dropped))
            self._discarding = False
        elif self._buf:
            line = bytes(self._buf)
            self._buf.clear()
            self._emit(line, out)
        return out

    def _emit(self, line: bytes, out: list[bytes | Oversize]) -> None:
        if len(line) > self.max_frame:
            out.append(Oversize(line[:_PREFIX_KEEP], len(line)))
        elif line and not (line[0] in b" \t\r" and line.isspace()):
            out.append(line)

    def _start_discarding(self) -> None:
        self._prefix = bytes(self._buf[:_PREFIX_KEEP])
        self._dropped = len(self._buf)
        self._buf = bytearray()
        self._discarding = True
