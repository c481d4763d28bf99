"""Frame dumps: one JSON line per frame at each hop, written off the hot path.

A hook (`Tap.frame` / `Tap.put`) only stamps the time and appends a tuple to a
bounded list; it never encodes, masks or writes, and never waits. When the list is
full the frame is counted as dropped instead (a `{"dropped": N}` record says so
later): a dump must never slow or block the proxy. One writer task (`Dumper.run`,
in the top-level nursery of serve/stdio) lets frames collect for 50 ms, masks and
encodes them in chunks with a checkpoint after each (so the proxy runs in between),
and hands the bytes to a worker thread, which rotates and writes them; while it
works, the next batch collects. Encoding in the worker thread instead was measured
at about twice the CPU per frame (the GIL makes the two threads take turns anyway).
With dumps off, a hook costs one `is not None`.
"""
from __future__ import annotations

import base64
import logging
import os
import time
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
CHUNK = 32                   # frames encoded between two checkpoints of the writer task

# A response at one hop is timed from its request at the same hop pair.
_ASKED_AT = {G2C: C2G, C2G: G2C, S2G: G2S, G2S: S2G}
_MAX_OPEN_REQUESTS = 100_000
_REQUEST, _RESPONSE, _ERROR = Kind.REQUEST, Kind.RESPONSE, Kind.ERROR
# Per record: Enum .value is a slow descriptor and an Enum key hashes in Python, so by _value_.
_KIND_NAME = {k._value_: k._value_.encode() for k in Kind}


@dataclass(frozen=True)
class DumpSettings:
    path: str
    max_bytes: int = 100 << 20       # rotate past this size
    backups: int = 3                 # PATH.1 .. PATH.N kept
    queue: int = 10_000              # frames waiting for the writer before new ones are dropped
    mask_patterns: tuple[str, ...] = field(default_factory=tuple)


class Tap:
    """One hook site's context (session, server, transport, era) and its way into the queue."""

    __slots__ = ("dumper", "session", "server", "transport", "era", "upstream")

    def __init__(self, dumper: Dumper, session: str, server: str, transport: str,
                 era: str | None = None, upstream: Any = None) -> None:
        self.dumper = dumper
        self.session = session
        self.server = server
        self.transport = transport
        self.era = era               # fixed era, or None to read `upstream.era` when written
        self.upstream = upstream

    def for_server(self, server: str, upstream: Any) -> "Tap":
        """The same session seen at one of its servers (the aggregate's members): that server's
        name, and its own era, read from its upstream."""
        return Tap(self.dumper, self.session, server, self.transport, None, upstream)

    def frame(self, direction: str, frame: Frame, policy: str | None = None) -> None:
        self.put(direction, frame.raw, frame.kind, frame.method, frame.id, policy or frame.note)

    def put(self, direction: str, raw: bytes, kind: Kind | None = None, method: str | None = None,
            msg_id: Any = None, policy: str | None = None) -> None:
        """kind None: the writer decodes `raw` to find kind, method and id (gateway replies)."""
        d = self.dumper
        if len(d.queue) >= d.limit:
            d.dropped += 1
            return
        d.queue.append((time.time(), time.monotonic(), self, direction, raw, kind, method, msg_id, policy))
        if d.idle:
            d.idle = False
            d.wake.set()

    def gateway(self, direction: str, raw: bytes) -> None:
        """A frame the gateway wrote itself (an error answer, a replayed handshake)."""
        self.put(direction, raw, None, None, None, GATEWAY)


class Dumper:
    def __init__(self, settings: DumpSettings) -> None:
        self.settings = settings
        self.path = Path(settings.path)
        self.limit = max(1, settings.queue)
        self.queue: list[tuple] = []
        self.dropped = 0
        self.dropped_total = 0
        self.written = 0
        self.cpu_seconds = 0.0           # the writer's own CPU (masking, encoding, writing)
        self.idle = True
        self.wake = trio.Event()
        self.masker = FrameMasker(settings.mask_patterns)
        self._closing = False
        self._asked: dict[tuple, float] = {}     # (tap, direction, id) of a request -> when it passed
        self._heads: dict[tuple, bytes] = {}     # (tap, era, direction) -> the record's fixed middle
        self._last_raw: bytes | None = None
        self._sec = -1                   # the whole second whose RFC 3339 text is in _sec_text
        self._sec_text = b""
        self._last_frame = b""
        self._file: Any = None
        self._size = 0
        self.finished = trio.Event()     # set once the writer has written everything and closed
        self._pending: list[tuple] = []  # the batch being encoded/written (written on cancellation)

    def tap(self, session: str, server: str, transport: str, era: str | None = None,
            upstream: Any = None) -> Tap:
        return Tap(self, session, server, transport, era, upstream)

    # ---- the writer task -------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the queue until close(); whatever is queued at the end is written too."""
        self._open()
        task_status.started()
        try:
            while True:
                if not self.queue and not self.dropped:
                    if self._closing:
                        break
                    self.idle = True
                    await self.wake.wait()
                    self.wake = trio.Event()
                    if not self._closing:
                        await trio.sleep(BATCH_WINDOW)
                batch, self.queue = self.queue, []
                dropped, self.dropped = self.dropped, 0
                if not batch and not dropped:
                    continue
                self._pending = batch
                chunks = []
                for start in range(0, len(batch), CHUNK):
                    chunks.append(self._encode(batch[start:start + CHUNK]))
                    await trio.sleep(0)     # let the proxy run between chunks
                chunks.append(self._dropped_record(dropped))
                self._pending = []           # from here on the write happens, cancelled or not
                self.written += len(batch)
                await trio.to_thread.run_sync(self._write, b"".join(chunks))
        finally:
            # Cancelled or closed: write the rest synchronously, then close the file.
            rest, self._pending, self.queue = self._pending + self.queue, [], []
            dropped, self.dropped = self.dropped, 0
            if rest or dropped:
                self._write(self._encode(rest) + self._dropped_record(dropped))
                self.written += len(rest)
            if self._file is not None:
                self._file.close()
                self._file = None
            log.info("dump %s: %d frames written, %d dropped; %.1f us CPU per frame to mask and encode",
                     self.path, self.written, self.dropped_total, 1e6 * self.cpu_seconds / max(1, self.written))
            self.finished.set()

    def close(self) -> None:
        """Ask the writer to finish: it writes what is queued, then returns."""
        self._closing = True
        self.wake.set()

    async def aclose(self, timeout: float = 10.0) -> None:
        """close() and wait (bounded, shielded) until the file is complete."""
        self.close()
        with trio.CancelScope(shield=True), trio.move_on_after(timeout):
            await self.finished.wait()

    # ---- mask and encode (trio thread, in chunks), rotate and write (worker thread) -----------

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab", buffering=0)
        self._size = self._file.tell()

    def _encode(self, batch: list[tuple]) -> bytes:
        """Mask and encode frames (in the trio thread: see docs/dumps.md for why)."""
        if not batch:
            return b""
        started = time.thread_time()
        suspects = self.masker.suspects([item[4] for item in batch])
        data = b"\n".join([self._record(item, n in suspects) for n, item in enumerate(batch)]) + b"\n"
        self.cpu_seconds += time.thread_time() - started
        return data

    def _dropped_record(self, dropped: int) -> bytes:
        if not dropped:
            return b""
        self.dropped_total += dropped
        return orjson.dumps({"ts": rfc3339(time.time()), "mono": round(time.monotonic(), 6),
                             "dropped": dropped, "dropped_total": self.dropped_total}) + b"\n"

    def _write(self, data: bytes) -> None:
        """Rotate if needed and write (in a worker thread: a slow disk must not stall the proxy)."""
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

    def _record(self, item: tuple, suspect: bool = True) -> bytes:
        """One JSON line, assembled from pre-encoded pieces: this runs for every frame, so it
        avoids building a dict per record (key order is fixed: see docs/dumps.md)."""
        wall, mono, tap, direction, raw, kind, method, msg_id, policy = item
        if kind is None:
            decoded = decode(raw)
            if isinstance(decoded, Frame):
                kind, method, msg_id = decoded.kind, decoded.method, decoded.id
        era = tap.era if tap.era is not None else getattr(tap.upstream, "era", None)
        key = (tap, era, direction)
        head = self._heads.get(key)
        if head is None:
            if len(self._heads) > 10_000:
                self._heads.clear()
            head = self._heads[key] = b'"session":%s,"server":%s,"transport":%s,"era":%s,"dir":%s' % (
                _json(tap.session), _json(tap.server), _json(tap.transport), _json(era), _json(direction))
        latency = b""
        if msg_id is None:
            id_json = b"null"
        else:
            try:
                id_json = orjson.dumps(msg_id)
            except (TypeError, orjson.JSONEncodeError):   # an id beyond 64 bits
                id_json = jsonfast.dumps(msg_id)
            if kind is _REQUEST:
                asked = self._asked
                if len(asked) >= _MAX_OPEN_REQUESTS:   # unanswered requests pile up: forget them all
                    asked.clear()
                asked[(tap, direction, msg_id)] = mono
            elif kind is _RESPONSE or kind is _ERROR:
                start = self._asked.pop((tap, _ASKED_AT[direction], msg_id), None)
                if start is not None:
                    latency = b',"latency_ms":%.3f' % ((mono - start) * 1000)
        if raw is self._last_raw:      # the same bytes at the next hop (passthrough): encoded already
            frame = self._last_frame
        else:
            masked = self.masker.mask_raw(raw)[0] if suspect else raw
            try:
                frame = b'"frame":' + orjson.dumps(masked.decode("utf-8"))
            except UnicodeDecodeError:
                frame = b'"frame_b64":"' + base64.b64encode(masked) + b'"'
            self._last_raw, self._last_frame = raw, frame
        method_json = _METHODS.get(method)
        if method_json is None:
            method_json = _json(method)
            if len(_METHODS) < 1000:
                _METHODS[method] = method_json
        sec = int(wall)
        if sec != self._sec:
            self._sec, self._sec_text = sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()
        return b'{"ts":"%s.%06dZ","mono":%.6f,%s,"kind":"%s","method":%s,"id":%s,"bytes":%d%s,"policy":%s,%s}' % (
            self._sec_text, int((wall - sec) * 1e6), mono, head,
            _KIND_NAME[kind._value_] if kind is not None else b"invalid", method_json, id_json, len(raw), latency,
            b"null" if policy is None else _json(policy), frame)


_METHODS: dict[Any, bytes] = {None: b"null"}   # method name -> its JSON (a handful of names recur)


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
