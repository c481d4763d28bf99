"""Frame dumps: one JSON line per frame at each hop, written off the hot path.

A hook (`Tap.frame` / `Tap.put`) only reads the monotonic clock and appends a tuple
to a bounded list; it never encodes, masks or writes, and never waits. When the list is
full the frame is counted as dropped instead (a `{"dropped": N}` record says so
later): a dump must never slow or block the proxy. One writer task (`Dumper.run`,
in the top-level nursery of serve/stdio) takes one batch per 50 ms window, masks and
encodes it in chunks with a checkpoint after each (so the proxy runs in between),
and queues the bytes for a long-lived writing thread, which rotates and writes them;
while it works, the next batch collects. Encoding in a worker thread instead was measured
at about twice the CPU per frame (the GIL makes the two threads take turns anyway), and a
`trio.to_thread` round trip per batch at hundreds of microseconds of CPU.
With dumps off, a hook costs one `is not None`.
"""
from __future__ import annotations

import base64
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import trio

from wire_gateway.dump.mask import FrameMasker
from wire_gateway.wire import jsonfast
from wire_gateway.wire.frame import Frame, Kind, decode

log = logging.getLogger("wire_gateway.dump")

C2G = "client->gateway"
G2S = "gateway->server"
S2G = "server->gateway"
G2C = "gateway->client"
DIRECTIONS = (C2G, G2S, S2G, G2C)
GATEWAY = "gateway"          # policy of a frame the gateway wrote itself (an error, a replay)
# After a wake-up the writer lets frames collect this long before it takes them: one thread
# hand-off per batch instead of per frame (a hand-off costs far more than a record).
BATCH_WINDOW = 0.05
CHUNK = 64                   # frames encoded between two checkpoints of the writer task
UNWRITTEN_BATCHES = 4        # batches handed to the writing thread and not written yet, at most
CLOSE_TIMEOUT = 10.0         # on close, how long the last frames may take to reach the disk

# A response at one hop is timed from its request at the same hop pair.
_ASKED_AT = {G2C: C2G, C2G: G2C, S2G: G2S, G2S: S2G}
_MAX_OPEN_REQUESTS = 100_000
_REQUEST, _RESPONSE, _ERROR, _NOTIFICATION = Kind.REQUEST, Kind.RESPONSE, Kind.ERROR, Kind.NOTIFICATION
_monotonic = time.monotonic
# One record: after mono, the tap's head (,"session" .. "kind"); after bytes, `,"latency_ms":..` or
# nothing; after "policy":, the policy and the frame's key, then the frame.
_RECORD = b'{"ts":"%s.%06dZ","mono":%.6f%s,"method":%s,"id":%s,"bytes":%d%s,"policy":%s%s}\n'
_FORMATS: dict[int, bytes] = {}       # _RECORD times n, for a chunk of n records
_KINDS = ("request", "notification", "response", "error", "invalid")   # the heads' order


@dataclass(frozen=True)
class DumpSettings:
    path: str
    max_bytes: int = 100 << 20       # rotate past this size
    backups: int = 3                 # PATH.1 .. PATH.N kept
    queue: int = 10_000              # frames waiting for the writer before new ones are dropped
    mask_patterns: tuple[str, ...] = field(default_factory=tuple)


class Tap:
    """One hook site's context (session, server, transport, era) and its way into the queue.

    The hook runs on the proxy's hot path: one clock read (the monotonic one; the writer derives
    the wall-clock time from it), one tuple, one append to the dumper's queue, which the tap
    holds itself (the writer empties that list in place, it never replaces it)."""

    __slots__ = ("dumper", "session", "server", "transport", "era", "upstream", "queue", "limit", "heads",
                 "heads_era", "__weakref__")

    def __init__(self, dumper: Dumper, session: str, server: str, transport: str,
                 era: str | None = None, upstream: Any = None) -> None:
        self.dumper = dumper
        self.session = session
        self.server = server
        self.transport = transport
        self.era = era               # fixed era, or None to read `upstream.era` when written
        self.upstream = upstream
        self.queue = dumper.queue
        self.limit = dumper.limit
        # The record's fixed middle, from "session" to "kind", by direction then kind (_KINDS).
        self.heads: dict[str, tuple[bytes, ...]] = {}
        self.heads_era: str | None = None
        self._make_heads(era)
        if era is None:
            dumper.dynamic_taps.add(self)

    def for_server(self, server: str, upstream: Any) -> "Tap":
        """The same session seen at one of its servers (the aggregate's members): that server's
        name, and its own era, read from its upstream."""
        return Tap(self.dumper, self.session, server, self.transport, None, upstream)

    def frame(self, direction: str, frame: Frame, policy: str | None = None) -> None:
        queue = self.queue
        if len(queue) < self.limit:
            queue.append((_monotonic(), self, direction, frame.raw, frame.kind, frame.method, frame.id,
                          policy or frame.note))
            if self.dumper.idle:
                self.dumper.wake_up()
        else:
            self.dumper.dropped += 1

    def put(self, direction: str, raw: bytes, kind: Kind | None = None, method: str | None = None,
            msg_id: Any = None, policy: str | None = None) -> None:
        """kind None: the writer decodes `raw` to find kind, method and id (gateway replies)."""
        queue = self.queue
        if len(queue) < self.limit:
            queue.append((_monotonic(), self, direction, raw, kind, method, msg_id, policy))
            if self.dumper.idle:
                self.dumper.wake_up()
        else:
            self.dumper.dropped += 1

    def gateway(self, direction: str, raw: bytes) -> None:
        """A frame the gateway wrote itself (an error answer, a replayed handshake)."""
        self.put(direction, raw, None, None, None, GATEWAY)

    def sync_era(self) -> None:
        """A tap without a fixed era: the heads follow its upstream's era (once per chunk)."""
        era = getattr(self.upstream, "era", None)
        if era != self.heads_era:
            self._make_heads(era)

    def _make_heads(self, era: str | None) -> None:
        self.heads_era = era
        self.heads = {direction: self._heads_for(direction) for direction in DIRECTIONS}

    def _heads_for(self, direction: str) -> tuple[bytes, ...]:
        head = b',"session":%s,"server":%s,"transport":%s,"era":%s,"dir":%s,"kind":' % (
            _json(self.session), _json(self.server), _json(self.transport), _json(self.heads_era),
            _json(direction))
        return tuple(head + _json(kind) for kind in _KINDS)


class Dumper:
    def __init__(self, settings: DumpSettings) -> None:
        self.settings = settings
        self.path = Path(settings.path)
        self.limit = max(1, settings.queue)
        self.queue: list[tuple] = []
        self.dynamic_taps: weakref.WeakSet[Tap] = weakref.WeakSet()   # taps whose era is not fixed
        self.dropped = 0
        self.dropped_total = 0
        self.written = 0
        self.batches = 0
        self.cpu_seconds = 0.0           # the writer's time masking and encoding (no checkpoint in there)
        self.idle = True
        self.wake = trio.Event()
        self.masker = FrameMasker(settings.mask_patterns)
        self._closing = False
        self._asked: dict[tuple, float] = {}     # (tap, direction, id) of a request -> when it passed
        self._last_raw: bytes | None = None
        self._last_frame: tuple[bool, bytes] = (True, b"")
        self._sec = -1                   # the whole second whose RFC 3339 text is in _sec_text
        self._sec_text = b""
        self._file: Any = None
        self._size = 0
        # The writing thread: batches in `_outbox` (None: close the file and stop); `_room` counts
        # the batches it may still be handed before the writer task waits for it (a slow disk).
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._room = threading.Semaphore(UNWRITTEN_BATCHES)
        self._thread: threading.Thread | None = None
        self._write_error: BaseException | None = None
        self.finished = trio.Event()     # set once the writer has written everything and closed
        self._pending: list[tuple] = []  # the batch being encoded/written (written on cancellation)

    def tap(self, session: str, server: str, transport: str, era: str | None = None,
            upstream: Any = None) -> Tap:
        return Tap(self, session, server, transport, era, upstream)

    def wake_up(self) -> None:
        """The first frame after the writer went idle."""
        self.idle = False
        self.wake.set()

    # ---- the writer task -------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the queue until close(); whatever is queued at the end is written too."""
        self._open()
        self._thread = threading.Thread(target=self._write_loop, name="wire-gateway dump writer", daemon=True)
        self._thread.start()
        task_status.started()
        taken = trio.current_time()      # when the last batch was taken
        try:
            while True:
                if not self.queue and not self.dropped:
                    if self._closing:
                        break
                    self.idle = True
                    await self.wake.wait()
                    self.wake = trio.Event()
                    taken = trio.current_time()   # a full window from the first frame
                # One batch per window, under steady traffic too: taking what piled up while the
                # last one was written (a few calls' worth) made a thread hand-off every few ms.
                if not self._closing:
                    await trio.sleep_until(taken + BATCH_WINDOW)
                taken = trio.current_time()
                batch = self.queue.copy()   # emptied in place: the taps hold this list
                self.queue.clear()
                dropped, self.dropped = self.dropped, 0
                if not batch and not dropped:
                    continue
                self._pending = batch
                self.batches += 1
                chunks = []
                for start in range(0, len(batch), CHUNK):
                    chunks.append(self._encode(batch[start:start + CHUNK]))
                    await trio.sleep(0)     # let the proxy run between chunks
                chunks.append(self._dropped_record(dropped))
                self._pending = []           # from here on the write happens, cancelled or not
                self.written += len(batch)
                await self._hand_over(b"".join(chunks))
        finally:
            # Cancelled or closed: hand over the rest, then wait (bounded) for the thread to write
            # everything and close the file.
            rest, self._pending = self._pending + self.queue, []
            self.queue.clear()
            dropped, self.dropped = self.dropped, 0
            if rest or dropped:
                self._outbox.put(self._encode(rest) + self._dropped_record(dropped))
                self.written += len(rest)
            self._outbox.put(None)
            self._thread.join(CLOSE_TIMEOUT)
            if self._thread.is_alive():
                log.warning("dump %s: the disk has not taken the last frames in %.0f s; giving up on them",
                            self.path, CLOSE_TIMEOUT)
            log.info("dump %s: %d frames written in %d batches, %d dropped; %.1f us per frame to mask and encode",
                     self.path, self.written, self.batches, self.dropped_total,
                     1e6 * self.cpu_seconds / max(1, self.written))
            self.finished.set()

    def close(self) -> None:
        """Ask the writer to finish: it writes what is queued, then returns."""
        self._closing = True
        self.wake.set()

    async def aclose(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """close() and wait (bounded, shielded) until the file is complete."""
        self.close()
        with trio.CancelScope(shield=True), trio.move_on_after(timeout):
            await self.finished.wait()

    # ---- mask and encode (trio thread, in chunks), rotate and write (writing thread) ----------

    async def _hand_over(self, data: bytes) -> None:
        """Queue a batch's bytes for the writing thread. No thread hand-off round trip (a
        `trio.to_thread` call per batch cost hundreds of us of CPU): the thread just takes it.
        Only when the disk is so slow that UNWRITTEN_BATCHES batches wait does the writer task
        wait too (meanwhile frames collect in the queue, then are dropped and counted)."""
        try:
            while self._write_error is None and not self._room.acquire(blocking=False):
                await trio.sleep(BATCH_WINDOW / 5)
        finally:
            self._outbox.put(data)     # cancelled or not: written before the file is closed
        if self._write_error is not None:
            raise self._write_error

    def _write_loop(self) -> None:
        """The writing thread: write (rotating as needed) until told to stop, then close the file."""
        try:
            while True:
                data = self._outbox.get()
                if data is None:
                    break
                try:
                    if self._write_error is None:
                        self._write(data)
                except BaseException as exc:   # the writer task raises it at its next batch
                    self._write_error = exc
                finally:
                    self._room.release()
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab", buffering=0)
        self._size = self._file.tell()

    def _encode(self, batch: list[tuple]) -> bytes:
        """Mask and encode frames (in the trio thread: see docs/dumps.md for why).

        This runs for every frame, so it is one loop with everything in locals; it builds no
        dict and formats no record on its own: each record adds its ten values to one list, and a
        single `bytes %` formats the lot (key order is fixed: see docs/dumps.md)."""
        if not batch:
            return b""
        started = time.thread_time()   # this thread's CPU time (the wall time would count preemptions)
        masker = self.masker
        suspects = masker.suspects([item[3] for item in batch])
        for tap in self.dynamic_taps:
            tap.sync_era()
        # The hooks read only the monotonic clock; the wall-clock time is derived from it, with the
        # offset between the two clocks read once per chunk. `second_at` is the monotonic time at
        # which the wall-clock second `sec` (RFC 3339 text in `sec_text`) began.
        offset = time.time() - _monotonic()
        sec, sec_text = self._sec, self._sec_text
        second_at = sec - offset
        asked = self._asked
        if len(asked) >= _MAX_OPEN_REQUESTS:   # unanswered requests pile up: forget them all
            asked.clear()
        last_raw, last_frame = self._last_raw, self._last_frame
        args: list[Any] = []
        for n, (mono, tap, direction, raw, kind, method, msg_id, policy) in enumerate(batch):
            suspect = n in suspects   # True: the pre-check fired; None (below): use the broad check
            if kind is None:          # a frame the gateway wrote: decode it; mask it the careful way
                suspect = None
                decoded = decode(raw)
                if isinstance(decoded, Frame):
                    kind, method, msg_id = decoded.kind, decoded.method, decoded.id
            frac = mono - second_at
            if frac >= 1.0 or frac < 0.0:
                sec = int(mono + offset)
                sec_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()
                second_at = sec - offset
                frac = mono - second_at
                if not 0.0 <= frac < 1.0:     # rounding at the very edge of a second
                    frac = 0.0 if frac < 0.0 else 0.999999
            try:
                heads = tap.heads[direction]
            except KeyError:          # not one of the four hops: made once, kept
                heads = tap.heads[direction] = tap._heads_for(direction)
            if msg_id is None:
                id_json = b"null"
            else:
                try:
                    id_json = orjson.dumps(msg_id)
                except (TypeError, orjson.JSONEncodeError):   # an id beyond 64 bits
                    id_json = jsonfast.dumps(msg_id)
            latency = b""
            if kind is _REQUEST:
                head = heads[0]
                if msg_id is not None:
                    asked[(tap, direction, msg_id)] = mono
            elif kind is _RESPONSE or kind is _ERROR:
                head = heads[2] if kind is _RESPONSE else heads[3]
                if msg_id is not None:
                    start = asked.pop((tap, _ASKED_AT[direction], msg_id), None)
                    if start is not None:
                        latency = b',"latency_ms":%.3f' % ((mono - start) * 1000)
            elif kind is _NOTIFICATION:
                head = heads[1]
            else:
                head = heads[4]
            if raw is last_raw:      # the same bytes at the next hop (passthrough): encoded already
                text, frame_json = last_frame
            else:
                masked = raw if suspect is False else masker.mask_raw(raw, suspect is True)[0]
                try:
                    text, frame_json = True, orjson.dumps(masked.decode("utf-8"))
                except UnicodeDecodeError:
                    text, frame_json = False, b'"' + base64.b64encode(masked) + b'"'
                last_raw, last_frame = raw, (text, frame_json)
            if policy is None and text:
                tail = b'null,"frame":'
            else:
                tail = (b"null" if policy is None else _json(policy)) + (b',"frame":' if text else b',"frame_b64":')
            method_json = _METHODS.get(method)
            if method_json is None:
                method_json = _method_json(method)
            args += (sec_text, frac * 1e6, mono, head, method_json, id_json, len(raw), latency, tail, frame_json)
        self._last_raw, self._last_frame = last_raw, last_frame
        self._sec, self._sec_text = sec, sec_text
        fmt = _FORMATS.get(len(batch))
        if fmt is None:
            fmt = _FORMATS[len(batch)] = _RECORD * len(batch)
        data = fmt % tuple(args)
        self.cpu_seconds += time.thread_time() - started
        return data

    def _dropped_record(self, dropped: int) -> bytes:
        if not dropped:
            return b""
        self.dropped_total += dropped
        return orjson.dumps({"ts": rfc3339(time.time()), "mono": round(time.monotonic(), 6),
                             "dropped": dropped, "dropped_total": self.dropped_total}) + b"\n"

    def _write(self, data: bytes) -> None:
        """Rotate if needed and write (in the writing thread: a slow disk must not stall the proxy)."""
        if self._size and self._size + len(data) > self.settings.max_bytes:
            self._rotate()
        self._file.write(data)
        self._size += len(data)

    def _rotate(self) -> None:
        self._file.close()
        backups = self.settings.backups
        if backups > 0:
            for n in range(backups - 1, 0, -1):
                older = Path(f"{self.path}.{n}")
                if older.exists():
                    os.replace(older, f"{self.path}.{n + 1}")
            os.replace(self.path, f"{self.path}.1")
        self._file = open(self.path, "wb", buffering=0)
        self._size = 0


_METHODS: dict[Any, bytes] = {None: b"null"}   # method name -> its JSON (a handful of names recur)


def _method_json(method: Any) -> bytes:
    encoded = _json(method)
    if len(_METHODS) < 1000:
        _METHODS[method] = encoded
    return encoded


def _json(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):   # an id beyond 64 bits
        return jsonfast.dumps(value)


_second: list = [None, ""]    # the last whole second formatted, reused within that second


def rfc3339(wall: float) -> str:
    """UTC, microseconds, 'Z' (formatting the date part once per second: this runs per record)."""
    sec = int(wall)
    if _second[0] != sec:
        _second[0], _second[1] = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{_second[1]}.{int((wall - sec) * 1e6):06d}Z"


def settings_from(doc: dict[str, Any] | None, path: str | None,
                  mask_patterns: Iterable[str] = ()) -> DumpSettings | None:
    """Config `dump` section and/or `--dump PATH` (the flag wins for the path)."""
    doc = doc or {}
    chosen = path or doc.get("path")
    if not chosen:
        return None
    return DumpSettings(path=chosen, max_bytes=int(doc.get("max_bytes", DumpSettings.max_bytes)),
                        backups=int(doc.get("backups", DumpSettings.backups)),
                        queue=int(doc.get("queue", DumpSettings.queue)),
                        mask_patterns=tuple(doc.get("mask_patterns", ())) + tuple(mask_patterns))
