"""Frame dumps: one JSON line per frame at each hop, written off the hot path.

A hook (`Tap.frame` / `Tap.put`) only reads the monotonic clock and appends a tuple
to a bounded list; it never encodes, masks or writes, and never waits. When the list is
full the frame is counted as dropped instead (a `{"dropped": N}` record says so
later): a dump must never slow or block the proxy. One writer task (`Dumper.run`,
in the top-level nursery of serve/stdio) takes one batch per 50 ms window, masks and
encodes it in chunks with a checkpoint after each half millisecond (so the proxy runs in between),
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import mul, sub
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import orjson
import trio
import trio.lowlevel

from wire_gateway.dump.mask import FrameMasker
from wire_gateway.telemetry.masking import SECRETS
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
CHUNK = 64                   # frames encoded per call of the encoder
# The writer task lets the proxy run (a checkpoint) once it has encoded for this long: the longest
# it holds the event loop. A checkpoint costs about 10 us of the scheduler's time, so one per chunk
# was a measurable part of a dump's cost with the C encoder (about 64 records in 100 us).
CHECKPOINT_CPU = 0.0005
UNWRITTEN_BATCHES = 4        # batches handed to the writing thread and not written yet, at most
CLOSE_TIMEOUT = 10.0         # on close, how long the last frames may take to reach the disk

# A response at one hop is timed from its request at the same hop pair.
_ASKED_AT = {G2C: C2G, C2G: G2C, S2G: G2S, G2S: S2G}
_MAX_OPEN_REQUESTS = 100_000
_REQUEST, _RESPONSE, _ERROR, _NOTIFICATION = Kind.REQUEST, Kind.RESPONSE, Kind.ERROR, Kind.NOTIFICATION
_monotonic = time.monotonic
_KIND_ORDER = (_REQUEST, _NOTIFICATION, _RESPONSE, _ERROR)   # the heads' order (_KINDS), for the C encoder
_native: ModuleType | None
try:
    from wire_gateway.dump import _records as _native  # the C encoder: an optional part of the build
except ImportError:
    _native = None
# WIRE_GATEWAY_DUMP_ENCODER=python: the Python encoder even where the C one is built.
NATIVE = None if os.environ.get("WIRE_GATEWAY_DUMP_ENCODER") == "python" else _native
# One record: after mono, the tap's head (,"session" .. "kind"); after bytes, `,"latency_ms":..` or
# nothing; after "policy":, the policy and the frame's key, then the frame.
_RECORD = b'{"ts":"%s.%06dZ","mono":%.6f%s,"method":%s,"id":%s,"bytes":%d%s,"policy":%s%s}\n'
_RECORD_INT_ID = _RECORD.replace(b'"id":%s', b'"id":%d')   # for a chunk whose ids are all integers
_INT = {int}
_FORMATS: dict[tuple[int, bool], bytes] = {}   # _RECORD (or _RECORD_INT_ID) times n, for a chunk of n records
_KINDS = ("request", "notification", "response", "error", "invalid")   # the heads' order


@dataclass(frozen=True)
class DumpSettings:
    path: str
    max_bytes: int = 100 << 20       # rotate past this size
    backups: int = 3                 # PATH.1 .. PATH.N kept
    queue: int = 10_000              # frames waiting for the writer before new ones are dropped
    mask_patterns: tuple[str, ...] = field(default_factory=tuple)
    secret_values: tuple[str, ...] = field(default_factory=tuple)   # masked wherever they occur


class _Hops(dict[str, list[Any]]):
    """A tap's hops by direction (`Tap.hop`), made on first use for a direction beyond the four."""

    __slots__ = ("tap",)
    tap: Tap

    def __missing__(self, direction: str) -> list[Any]:
        hop = self[direction] = self.tap.hop(direction)
        return hop


class _PyTapCore:
    """The hooks in Python (where the C encoder is not built, or WIRE_GATEWAY_DUMP_ENCODER=python);
    `_records.TapCore` is the same in C. A hook runs on the proxy's hot path: one clock read (the
    monotonic one; the writer derives the wall-clock time from it), one tuple appended to the
    dumper's queue, which the tap holds itself (the writer empties that list in place, it never
    replaces it). The tuple holds the direction's hop (`hop`): what the writer needs of the tap,
    without a lookup per record. When the queue is full the frame is only counted; the frame that
    makes the queue non-empty wakes the writer (`Dumper.wake_up`: it may be idle)."""

    __slots__ = ("queue", "hops", "dumper", "limit")
    queue: list[tuple[Any, ...]]
    hops: _Hops
    dumper: Dumper
    limit: int

    def frame(self, direction: str, frame: Frame, policy: str | None = None) -> None:
        queue = self.queue
        if len(queue) < self.limit:
            queue.append((_monotonic(), self.hops[direction], frame.raw, frame.kind, frame.method, frame.id,
                          policy or frame.note))
            if len(queue) == 1:
                self.dumper.wake_up()
        else:
            self.dumper.dropped += 1

    def put(self, direction: str, raw: bytes, kind: Kind | None = None, method: str | None = None,
            msg_id: Any = None, policy: str | None = None) -> None:
        """kind None: the writer decodes `raw` to find kind, method and id (gateway replies)."""
        queue = self.queue
        if len(queue) < self.limit:
            queue.append((_monotonic(), self.hops[direction], raw, kind, method, msg_id, policy))
            if len(queue) == 1:
                self.dumper.wake_up()
        else:
            self.dumper.dropped += 1


class Tap:
    """One hook site's context (session, server, transport, era) and its way into the queue:
    `frame(direction, frame, policy=None)` and `put(direction, raw, kind, method, msg_id, policy)`
    (from `_records.TapCore` where the C encoder is built, else `_PyTapCore`; `Dumper.tap` picks)."""

    # The slots are the concrete class's (_TAP_SLOTS beside its core's: two bases with slots of
    # their own cannot be combined). A type checker would read `__slots__ = ()` as "no attributes",
    # so it is shown the attributes and the hooks that the core brings instead.
    if not TYPE_CHECKING:
        __slots__ = ()
    else:
        dumper: Dumper
        queue: list[tuple[Any, ...]]
        limit: int
        hops: _Hops

        def frame(self, direction: str, frame: Frame, policy: str | None = None) -> None: ...
        def put(self, direction: str, raw: bytes, kind: Kind | None = None, method: str | None = None,
                msg_id: Any = None, policy: str | None = None) -> None: ...
    _TAP_SLOTS = ("session", "server", "transport", "upstream", "unanswered", "heads_era", "__weakref__")

    def __init__(self, dumper: Dumper, session: str, server: str, transport: str,
                 era: str | None = None, upstream: Any = None) -> None:
        self.dumper = dumper
        self.session = session
        self.server = server
        self.transport = transport
        self.upstream = upstream
        self.queue = dumper.queue
        self.limit = dumper.limit
        self.heads_era = era         # fixed, or (era None) read from `upstream.era` when written
        # Requests seen at each direction and not answered yet: id -> when (for latency_ms).
        self.unanswered: dict[str, dict[Any, float]] = {direction: {} for direction in DIRECTIONS}
        hops = _Hops()
        hops.tap = self
        for direction in DIRECTIONS:
            hops[direction] = self.hop(direction)
        self.hops = hops
        dumper.taps.add(self)
        if era is None:
            dumper.dynamic_taps.add(self)

    def for_server(self, server: str, upstream: Any) -> Tap:
        """The same session seen at one of its servers (the aggregate's members): that server's
        name, and its own era, read from its upstream."""
        return type(self)(self.dumper, self.session, server, self.transport, None, upstream)

    def gateway(self, direction: str, raw: bytes) -> None:
        """A frame the gateway wrote itself (an error answer, a replayed handshake)."""
        self.put(direction, raw, None, None, None, GATEWAY)

    def hop(self, direction: str) -> list:
        """What the writer needs for a frame at this tap and direction: the record's fixed middle
        (from "session" to "kind") for each kind in _KINDS' order, then the open requests seen at
        this direction, then those whose answers pass here (the opposite direction's)."""
        asked = self.unanswered.setdefault(direction, {})
        partner = _ASKED_AT.get(direction)
        answered = self.unanswered.setdefault(partner, {}) if partner else {}
        return [*self._heads_for(direction), asked, answered]

    def sync_era(self) -> None:
        """A tap without a fixed era: the heads follow its upstream's era (once per chunk). The
        hops are changed in place: frames queued already are written with the era of their
        writing, as the docs say."""
        era = getattr(self.upstream, "era", None)
        if era != self.heads_era:
            self.heads_era = era
            for direction, hop in self.hops.items():
                hop[:len(_KINDS)] = self._heads_for(direction)

    def _heads_for(self, direction: str) -> tuple[bytes, ...]:
        head = b',"session":%s,"server":%s,"transport":%s,"era":%s,"dir":%s,"kind":' % (
            _json(self.session), _json(self.server), _json(self.transport), _json(self.heads_era),
            _json(direction))
        return tuple(head + _json(kind) for kind in _KINDS)


class _PyTap(_PyTapCore, Tap):
    __slots__ = Tap._TAP_SLOTS


_CTap: type[Tap] | None = None
if _native is not None:
    from wire_gateway.dump._records import TapCore

    class _NativeTap(TapCore, Tap):
        __slots__ = Tap._TAP_SLOTS
    _CTap = _NativeTap


class Dumper:
    def __init__(self, settings: DumpSettings) -> None:
        self.settings = settings
        self.path = Path(settings.path)
        self.limit = max(1, settings.queue)
        self.queue: list[tuple] = []
        self.taps: weakref.WeakSet[Tap] = weakref.WeakSet()
        self.dynamic_taps: weakref.WeakSet[Tap] = weakref.WeakSet()   # taps whose era is not fixed
        self.unanswered = 0              # requests in the taps' `unanswered`, about (bounded)
        self.dropped = 0
        self.dropped_total = 0
        self.written = 0
        self.batches = 0
        self.cpu_seconds = 0.0           # the writer's time masking and encoding (no checkpoint in there)
        self.idle = True
        self.wake = trio.Event()
        self.masker = FrameMasker(settings.mask_patterns, settings.secret_values)
        self.native = NATIVE             # the C record encoder, or None: the Python one
        if NATIVE is None:               # and the masking pre-check's words in Python too
            self.masker.word_suspects = None
        self._closing = False
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
        """A hook site's tap: its hooks in C with the C encoder, else in Python."""
        cls = _CTap if self.native is not None and _CTap is not None else _PyTap
        return cls(self, session, server, transport, era, upstream)

    def wake_up(self) -> None:
        """A frame made the queue non-empty: wake the writer if it is idle."""
        if self.idle:
            self.idle = False
            self.wake.set()

    # ---- the writer task -------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the queue until close(); whatever is queued at the end is written too."""
        self._open()
        log.info("dump %s: records encoded by the %s", self.path,
                 "C encoder" if self.native else "Python encoder (the C one is not built: no C compiler at install?)"
                 if _native is None else "Python encoder (WIRE_GATEWAY_DUMP_ENCODER=python)")
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
                yielded_at = self.cpu_seconds
                for start in range(0, len(batch), CHUNK):
                    chunks.append(self._encode(batch[start:start + CHUNK]))
                    if self.cpu_seconds - yielded_at >= CHECKPOINT_CPU:
                        await trio.lowlevel.checkpoint()     # let the proxy run
                        yielded_at = self.cpu_seconds
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
            log.info("dump %s: %d frames written in %d batches, %d dropped; %.1f us per frame to mask and "
                     "encode (%s encoder)", self.path, self.written, self.batches, self.dropped_total,
                     1e6 * self.cpu_seconds / max(1, self.written), "C" if self.native else "Python")
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
            while self._write_error is None and not self._room.acquire(blocking=False):  # noqa: ASYNC110 - a threading semaphore has no trio event
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
        self._file = open(self.path, "ab", buffering=0)   # noqa: SIM115 - open until closed or rotated
        self._size = self._file.tell()

    def _encode(self, batch: list[tuple]) -> bytes:
        """Mask and encode frames (in the trio thread: see docs/dumps.md for why).

        This runs for every frame: by the C encoder (`_records`) where it is built, else by
        `_encode_python`; both write the same bytes."""
        if not batch:
            return b""
        started = time.thread_time()   # this thread's CPU time (the wall time would count preemptions)
        if self.dynamic_taps:
            for tap in self.dynamic_taps:
                tap.sync_era()
        if self.unanswered >= _MAX_OPEN_REQUESTS:   # unanswered requests pile up: forget them all
            for tap in self.taps:
                for waiting in tap.unanswered.values():
                    waiting.clear()
            self.unanswered = 0
        native = self.native
        data = self._encode_native(native, batch) if native is not None else self._encode_python(batch)
        self.cpu_seconds += time.thread_time() - started
        return data

    def _encode_native(self, native: ModuleType, batch: list[tuple[Any, ...]]) -> bytes:
        """The C encoder for the usual records; where it stops (a record it leaves to Python, or
        the next second), one record in Python or a new call for the new second.

        Masking: with no configured patterns the C encoder runs the word test itself, in its one
        pass over each frame, and stops at a suspect frame; that frame is masked here and the
        call goes on from it with the masked text. With patterns, all frames are tested first."""
        masker = self.masker
        overrides: list[bytes | None] | None = None
        word_test = not masker.has_patterns
        if not word_test:
            raws = [record[2] for record in batch]
            suspects = masker.suspects(raws)
            if suspects:
                overrides = [None] * len(batch)
                for n in suspects:
                    text, overrides[n] = _frame_json(masker.mask_raw(raws[n], True)[0])
                    if not text:      # masked into something that is not UTF-8: all the careful way
                        return self._encode_python(batch)
        parts = []
        opened = 0
        pos, end = 0, len(batch)
        while pos < end:
            sec_text, second_at = self._second_of(batch[pos][0])
            data, more, stop, suspect = native.encode(batch, pos, sec_text, second_at, overrides, _KIND_ORDER,
                                                           _METHODS, _method_json, _json, _tail, word_test)
            parts.append(data)
            opened += more
            if suspect:
                text, masked = _frame_json(masker.mask_raw(batch[stop][2], True)[0])
                if text:              # go on from it, with its masked text
                    if overrides is None:
                        overrides = [None] * len(batch)
                    overrides[stop] = masked
                    pos = stop
                    continue
            if stop == pos or suspect:
                parts.append(self._encode_python(batch[stop:stop + 1]))
                stop += 1
            pos = stop
        self.unanswered += opened
        return b"".join(parts)

    def _second_of(self, mono: float, offset: float | None = None) -> tuple[bytes, float]:
        """The RFC 3339 text of the wall-clock second holding monotonic time `mono`, and the
        monotonic time at which that second began; the last one is remembered (`_sec`).
        `offset`: wall-clock time minus monotonic time (read now when not given)."""
        if offset is None:
            offset = _clock_offset()
        second_at = self._sec - offset
        if not 0.0 <= mono - second_at < 1.0:
            self._sec = int(mono + offset)
            self._sec_text = _second_text(self._sec)
            second_at = self._sec - offset
        return self._sec_text, second_at

    def _encode_python(self, batch: list[tuple]) -> bytes:
        """The encoder in Python: the work per record that needs no decision (the frame's JSON
        text, the id's, the method's, the size, the time) is done a column at a time by C loops
        (`map` over orjson and bytes methods); one Python loop picks each record's head and
        latency; a single `bytes %` formats the lot (key order is fixed: see docs/dumps.md).
        Whatever is unusual (a frame the gateway wrote, one that is not UTF-8, a large one seen
        at two hops, a chunk across a second's edge) takes a slower way for that column only."""
        kinds: Sequence[Any]          # tuples, or lists where frames the gateway wrote are decoded
        methods: Sequence[Any]
        ids: Sequence[Any]
        monos, hops, raws, kinds, methods, ids, policies = zip(*batch)
        careful: set[int] = set()
        if None in kinds:            # frames the gateway wrote: decode them; mask them the careful way
            kinds, methods, ids = list(kinds), list(methods), list(ids)
            for n, kind in enumerate(kinds):
                if kind is None:
                    careful.add(n)
                    decoded = decode(raws[n])
                    if isinstance(decoded, Frame):
                        kinds[n], methods[n], ids[n] = decoded.kind, decoded.method, decoded.id
        frames, binary = self._frame_texts(raws, careful)
        int_ids = set(map(type, ids)) == _INT   # the usual chunk: `%d` formats them, no JSON call each
        if int_ids:
            id_jsons: Iterable[Any] = ids
        else:
            try:
                id_jsons = list(map(orjson.dumps, ids))
            except (TypeError, orjson.JSONEncodeError):   # an id beyond 64 bits
                id_jsons = list(map(_json, ids))
        method_jsons = list(map(_METHODS.get, methods))
        if None in method_jsons:
            method_jsons = [known or _method_json(method) for known, method in zip(method_jsons, methods)]
        sec_texts, fracs = self._times(monos)
        if binary or policies.count(None) != len(policies):
            tails: Iterable[bytes] = [_tail(policy, n not in binary) for n, policy in enumerate(policies)]
        else:
            tails = repeat(_TEXT_TAIL)
        args: list[Any] = []
        opened = 0
        for mono, hop, kind, msg_id, sec_text, frac, method_json, id_json, size, tail, frame_json in zip(
                monos, hops, kinds, ids, sec_texts, fracs, method_jsons, id_jsons, map(len, raws), tails, frames):
            latency = b""
            if kind is _REQUEST:
                head = hop[0]
                if msg_id is not None:
                    hop[5][msg_id] = mono
                    opened += 1
            elif kind is _RESPONSE or kind is _ERROR:
                head = hop[2] if kind is _RESPONSE else hop[3]
                if msg_id is not None:
                    start = hop[6].pop(msg_id, None)
                    if start is not None:
                        opened -= 1
                        latency = b',"latency_ms":%.3f' % ((mono - start) * 1000)
            elif kind is _NOTIFICATION:
                head = hop[1]
            else:
                head = hop[4]
            args += (sec_text, frac, mono, head, method_json, id_json, size, latency, tail, frame_json)
        self.unanswered += opened
        fmt = _FORMATS.get((len(batch), int_ids))
        if fmt is None:
            fmt = _FORMATS[len(batch), int_ids] = (_RECORD_INT_ID if int_ids else _RECORD) * len(batch)
        return fmt % tuple(args)

    def _frame_texts(self, raws: tuple[bytes, ...], careful: set[int]) -> tuple[list[bytes], set[int]]:
        """Each frame's JSON string (masked where it may hold a secret), and which are base64
        (not UTF-8). `careful`: frames the gateway wrote, masked after the broad test."""
        masker = self.masker
        suspects = masker.suspects(raws)
        if not careful and max(map(len, raws)) <= _LARGE:
            try:
                frames = list(map(orjson.dumps, map(bytes.decode, raws)))
            except UnicodeDecodeError:
                pass
            else:
                for n in suspects:   # a masked JSON text is UTF-8, as the frame was
                    frames[n] = _frame_json(masker.mask_raw(raws[n], True)[0])[1]
                return frames, set()
        return self._frame_texts_one_by_one(raws, suspects, careful)

    def _frame_texts_one_by_one(self, raws: tuple[bytes, ...], suspects: set[int],
                                careful: set[int]) -> tuple[list[bytes], set[int]]:
        """The slower way, a frame at a time: the same bytes at two hops (a passthrough) are
        encoded once, which matters for large frames."""
        masker = self.masker
        frames: list[bytes] = []
        binary: set[int] = set()
        done: dict[tuple[int, bool | None], tuple[bool, bytes]] = {}
        for n, raw in enumerate(raws):
            suspect = True if n in suspects else None if n in careful else False
            key = (id(raw), suspect)
            known = done.get(key)
            if known is None:
                masked = raw if suspect is False else masker.mask_raw(raw, suspect is True)[0]
                known = done[key] = _frame_json(masked)
            if not known[0]:
                binary.add(n)
            frames.append(known[1])
        return frames, binary

    def _times(self, monos: tuple[float, ...]) -> tuple[Iterable[bytes], Iterable[float]]:
        """Each record's RFC 3339 second and its microseconds (as a float: `%06d` truncates it).

        The hooks read only the monotonic clock; the wall-clock time is derived from it, with the
        offset between the two clocks read once per chunk (`_second_of`)."""
        offset = _clock_offset()
        lo, hi = min(monos), max(monos)
        sec_text, second_at = self._second_of(lo, offset)
        if lo - second_at >= 0.0 and hi - second_at < 1.0:   # the usual chunk: all in one second
            return repeat(sec_text), map(mul, map(sub, monos, repeat(second_at)), repeat(1e6))
        sec_texts, fracs = [], []
        for mono in monos:
            frac = mono - second_at
            if frac >= 1.0 or frac < 0.0:
                sec_text, second_at = self._second_of(mono, offset)
                frac = mono - second_at
                if not 0.0 <= frac < 1.0:     # rounding at the very edge of a second
                    frac = 0.0 if frac < 0.0 else 0.999999
            sec_texts.append(sec_text)
            fracs.append(frac * 1e6)
        return sec_texts, fracs

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
        self._file = open(self.path, "wb", buffering=0)   # noqa: SIM115 - open until closed or rotated
        self._size = 0


_METHODS: dict[Any, bytes] = {None: b"null"}   # method name -> its JSON (a handful of names recur)
_LARGE = 64 << 10                              # frames beyond this are encoded once for two hops


def _frame_json(raw: bytes) -> tuple[bool, bytes]:
    """(True, the frame as a JSON string) or, when it is not UTF-8, (False, its base64 as one)."""
    try:
        return True, orjson.dumps(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return False, b'"' + base64.b64encode(raw) + b'"'


def _tail(policy: str | None, text: bool) -> bytes:
    return (b"null" if policy is None else _json(policy)) + (b',"frame":' if text else b',"frame_b64":')


_TEXT_TAIL = _tail(None, True)   # after "policy": for the usual frame (no policy, UTF-8)


def _clock_offset() -> float:
    """Wall-clock time minus monotonic time, now (the hooks read only the monotonic clock)."""
    return time.time() - _monotonic()


def _second_text(sec: int) -> bytes:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()


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


def rfc3339(wall: float) -> str:
    """UTC, microseconds, 'Z' (for the rare record not made by `_encode`: a drop count)."""
    sec = int(wall)
    return f"{_second_text(sec).decode()}.{int((wall - sec) * 1e6):06d}Z"


def settings_from(doc: dict[str, Any] | None, path: str | None,
                  mask_patterns: Iterable[str] = (), secret_values: Iterable[str] = SECRETS) -> DumpSettings | None:
    """Config `dump` section and/or `--dump PATH` (the flag wins for the path). The secret values
    are the process's registry as it is now: the CLI has registered the config's by then."""
    doc = doc or {}
    chosen = path or doc.get("path")
    if not chosen:
        return None
    return DumpSettings(path=chosen, max_bytes=int(doc.get("max_bytes", DumpSettings.max_bytes)),
                        backups=int(doc.get("backups", DumpSettings.backups)),
                        queue=int(doc.get("queue", DumpSettings.queue)),
                        mask_patterns=tuple(doc.get("mask_patterns", ())) + tuple(mask_patterns),
                        secret_values=tuple(secret_values))
