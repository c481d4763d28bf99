"""Frame dumps: one JSON line per frame at each hop, written off the hot path.

A hook (`Tap.frame` / `Tap.put`, in `dump.tap`) only reads the monotonic clock and appends a
tuple to a bounded list; it never encodes, masks or writes, and never waits. When the list is
full the frame is counted as dropped instead (a `{"dropped": N}` record says so
later): a dump must never slow or block the proxy. One writer task (`Dumper.run`,
in the top-level nursery of serve/stdio) takes one batch per 50 ms window, masks and
encodes it (`dump.encode`) in chunks with a checkpoint after each half millisecond (so the
proxy runs in between), and queues the bytes for a long-lived writing thread, which rotates
and writes them; while it works, the next batch collects. Encoding in a worker thread instead was measured
at about twice the CPU per frame (the GIL makes the two threads take turns anyway), and a
`trio.to_thread` round trip per batch at hundreds of microseconds of CPU.
With dumps off, a hook costs one `is not None`.
"""
from __future__ import annotations

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
import trio.lowlevel

from wire_gateway.dump.encode import BUILT, NATIVE, RecordEncoder, rfc3339
from wire_gateway.dump.mask import FrameMasker
from wire_gateway.dump.tap import Tap, tap_class
from wire_gateway.telemetry.masking import SECRETS
from wire_gateway.telemetry.metrics import METRICS

log = logging.getLogger("wire_gateway.dump")

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
_MAX_OPEN_REQUESTS = 100_000


@dataclass(frozen=True)
class DumpSettings:
    path: str
    max_bytes: int = 100 << 20       # rotate past this size
    backups: int = 3                 # PATH.1 .. PATH.N kept
    queue: int = 10_000              # frames waiting for the writer before new ones are dropped
    mask_patterns: tuple[str, ...] = field(default_factory=tuple)
    secret_values: tuple[str, ...] = field(default_factory=tuple)   # masked wherever they occur


class Dumper(RecordEncoder):
    def __init__(self, settings: DumpSettings) -> None:
        super().__init__(FrameMasker(settings.mask_patterns, settings.secret_values), NATIVE)
        self.settings = settings
        self.path = Path(settings.path)
        self.limit = max(1, settings.queue)
        self.queue: list[tuple] = []
        self.taps: weakref.WeakSet[Tap] = weakref.WeakSet()
        self.dynamic_taps: weakref.WeakSet[Tap] = weakref.WeakSet()   # taps whose era is not fixed
        self.dropped = 0
        self.dropped_total = 0
        if METRICS.on:
            METRICS.dump_dropped.watch(self, _dropped)
        self.written = 0
        self.batches = 0
        self.cpu_seconds = 0.0           # the writer's time masking and encoding (no checkpoint in there)
        self.idle = True
        self.wake = trio.Event()
        self._closing = False
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
        return tap_class(self.native is not None)(self, session, server, transport, era, upstream)

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
                 if BUILT is None else "Python encoder (WIRE_GATEWAY_DUMP_ENCODER=python)")
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


def _dropped(dumper: Dumper) -> list[tuple[tuple[str, ...], float]]:
    return [((), dumper.dropped_total + dumper.dropped)]
