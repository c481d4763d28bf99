"""Server-Sent Events (text/event-stream): bytes in, events out, and back.

Streamable HTTP answers a request with an SSE stream of JSON-RPC frames, one per
event. The decoder follows the WHATWG "event stream interpretation" rules, since
servers differ in line endings, spacing and comments. It works on whole lines with
bytes.split/partition (no per-byte loop) and bounds what it buffers, so a peer that
never ends an event costs bounded memory.

Event data stays bytes: the frames are forwarded as received, never re-encoded.
"""
from __future__ import annotations

from dataclasses import dataclass

from wire_gateway.wire.framing import DEFAULT_MAX_FRAME_BYTES

DEFAULT_MAX_EVENT_BYTES = DEFAULT_MAX_FRAME_BYTES
_BOM = b"\xef\xbb\xbf"
_MAX_RETRY_DIGITS = 18  # about 30 million years of milliseconds


class SSEError(ValueError):
    """The stream broke a limit; it cannot be trusted further and should be closed."""


@dataclass(slots=True)
class Event:
    data: bytes               # the data lines joined with b"\n"
    id: str | None = None     # the last event ID in force at dispatch (ids persist across events)
    event: str | None = None  # the event type; None means the default, "message"
    retry: int | None = None  # a valid `retry:` field seen in this event's block, if any


def encode_event(data: bytes, event_id: str | None = None, event: str | None = None) -> bytes:
    """One event, terminated by a blank line. Data with line breaks becomes several `data:` lines."""
    parts = []
    if event is not None:
        parts.append(b"event: " + _field_value("event", event) + b"\n")
    if event_id is not None:
        if "\0" in event_id:
            raise ValueError("an SSE id must not contain NUL (receivers ignore it)")
        parts.append(b"id: " + _field_value("id", event_id) + b"\n")
    if b"\n" in data or b"\r" in data:
        for line in data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
            parts.append(b"data: " + line + b"\n")
        parts.append(b"\n")
    else:
        parts.append(b"data: " + data + b"\n\n")
    return b"".join(parts)


def encode_comment(text: str = "") -> bytes:
    """Comment lines (ignored by receivers): the keep-alive for quiet long-lived streams."""
    if not text:
        return b":\n"
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return b"".join(b": " + line.encode() + b"\n" if line else b":\n" for line in lines)


def encode_retry(ms: object) -> bytes:
    """A `retry:` field. It takes effect when read, so it needs no blank line of its own."""
    if not isinstance(ms, int) or isinstance(ms, bool) or ms < 0:
        raise ValueError(f"retry must be a non-negative integer of milliseconds, not {ms!r}")
    return b"retry: %d\n" % ms


def _field_value(name: str, value: str) -> bytes:
    if "\n" in value or "\r" in value:
        raise ValueError(f"an SSE {name} must not contain a line break")
    return value.encode()


class SSEDecoder:
    """Feed arbitrary chunks; get back the events they complete.

    WHATWG rules: CRLF, LF and CR all end a line; a leading BOM is dropped; `:` lines
    are comments; one space after the colon is stripped; a line without a colon is a
    field with an empty value; a blank line dispatches the event, unless it had no
    `data` field at all. An empty `data:` field does dispatch, with b"" (the legacy
    era's "priming" event is exactly that; callers skip it). `id` persists until
    changed and is ignored if it contains NUL; the last event ID is updated even
    when no event is dispatched. `retry` takes effect at once (see `.retry`). An
    event left incomplete at end of stream is simply never returned.

    Limit: an event's data plus any one line (without its line ending) must fit in
    `max_event_bytes`, else SSEError; a partial line counts as it arrives.

    Invariant: any split of a byte stream into chunks yields the same events
    (property-tested).
    """

    __slots__ = ("max_event", "last_event_id", "retry", "_buf", "_at_start", "_skip_lf",
                 "_data", "_data_len", "_event", "_id", "_event_retry")

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self.max_event = max_event_bytes
        self.last_event_id: str | None = None  # for Last-Event-ID; None if never set or reset by `id:`
        self.retry: int | None = None          # the reconnection time the server asked for, in ms
        self._buf = bytearray()                # a partial line
        self._at_start = True                  # a BOM may still be coming
        self._skip_lf = False                  # the last chunk ended in CR: a LF now is its CRLF
        self._data: list[bytes] = []
        self._data_len = 0
        self._event: bytes | None = None
        self._id: str | None = None            # the last event ID buffer
        self._event_retry: int | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
                if not chunk:
                    return []
        if self._at_start:
            self._buf += chunk
            if len(self._buf) < 3 and _BOM.startswith(self._buf):
                return []
            self._at_start = False
            chunk = bytes(self._buf[3:] if self._buf.startswith(_BOM) else self._buf)
            self._buf.clear()
        if self._buf:
            if b"\n" not in chunk and b"\r" not in chunk:  # a long line arriving in pieces
                self._buf += chunk
                self._check_size()
                return []
            data = bytes(self._buf) + chunk
            self._buf.clear()
        else:
            data = chunk
        if b"\r" in data:
            self._skip_lf = data[-1:] == b"\r"
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = data.split(b"\n")
        self._buf += lines.pop()
        out: list[Event] = []
        limit = self.max_event
        for line in lines:
            if line:
                if len(line) + self._data_len > limit:
                    self._too_big(len(line))
                self._field(line)
            else:
                self._dispatch(out)
        self._check_size()
        return out

    def _field(self, line: bytes) -> None:
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._data_len += len(value) + 1
        elif name == b"id":
            if b"\0" not in value:
                self._id = value.decode("utf-8", "replace") or None
        elif name == b"event":
            self._event = value
        elif name == b"retry" and value.isdigit() and len(value) <= _MAX_RETRY_DIGITS:
            # ASCII digits only, not empty; absurd lengths are ignored (int() refuses > 4300 digits)
            self.retry = self._event_retry = int(value)
        # an empty name is a comment; unknown fields are ignored

    def _dispatch(self, out: list[Event]) -> None:
        self.last_event_id = self._id
        if self._data:
            event = self._event.decode("utf-8", "replace") if self._event else None
            out.append(Event(b"\n".join(self._data), self._id, event, self._event_retry))
            self._data = []
            self._data_len = 0
        self._event = None
        self._event_retry = None

    def _check_size(self) -> None:
        if len(self._buf) + self._data_len > self.max_event:
            self._too_big(len(self._buf))

    def _too_big(self, line: int) -> None:
        # The rule is per line (the event's data so far plus the line, complete or not),
        # so where the chunks split never changes whether a stream is refused.
        raise SSEError(f"SSE event exceeds {self.max_event} bytes ({self._data_len} bytes of data "
                       f"and a line of {line}+ bytes); closing the stream")
