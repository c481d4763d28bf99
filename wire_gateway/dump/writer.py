"""Frame dumps: one JSON line per frame at each hop, written off the hot path.

A hook (`Tap.frame` / `Tap.put`) only stamps the time and appends a tuple to a
bounded list; it never encodes, masks or writes, and never waits. When the list is
full the frame is counted as dropped instead (a `{"dropped": N}` record says so
later): a dump must never slow or block the proxy. One writer task (`Dumper.run`,
in the top-level nursery of serve/stdio) swaps the list out and hands the whole
batch to a worker thread, which masks, encodes, rotates and writes it; while it
works, the next batch collects. With dumps off, a hook costs one `is not None`.
"""
from __future__ import annotations

import base64
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
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

# A response at one hop is timed from its request at the same hop pair.
_ASKED_AT = {G2C: C2G, C2G: G2C, S2G: G2S, G2S: S2G}
_MAX_OPEN_REQUESTS = 100_000


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
        self.idle = True
        self.wake = trio.Event()
        self.masker = FrameMasker(settings.mask_patterns)
        self._closing = False
        self._asked: dict[tuple, float] = {}
        self._file: Any = None
        self._size = 0
        self.finished = trio.Event()     # set once the writer has written everything and closed

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
                batch, self.queue = self.queue, []
                dropped, self.dropped = self.dropped, 0
                await trio.to_thread.run_sync(self._write_batch, batch, dropped)
        finally:
            # Cancelled or closed: flush the rest synchronously, then close the file.
            batch, self.queue = self.queue, []
            dropped, self.dropped = self.dropped, 0
            if batch or dropped:
                self._write_batch(batch, dropped)
            if self._file is not None:
                self._file.close()
                self._file = None
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

    # ---- the worker thread: mask, encode, rotate, write ---------------------------------------

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab", buffering=0)
        self._size = self._file.tell()

    def _write_batch(self, batch: list[tuple], dropped: int) -> None:
        lines = [self._record(item) for item in batch]
        if dropped:
            self.dropped_total += dropped
            now = time.time()
            lines.append(orjson.dumps({"ts": rfc3339(now), "mono": round(time.monotonic(), 6),
                                       "dropped": dropped, "dropped_total": self.dropped_total}))
        data = b"\n".join(lines) + b"\n"
        if self._size and self._size + len(data) > self.settings.max_bytes:
            self._rotate()
        self._file.write(data)
        self._size += len(data)
        self.written += len(batch)

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

    def _record(self, item: tuple) -> bytes:
        wall, mono, tap, direction, raw, kind, method, msg_id, policy = item
        if kind is None:
            decoded = decode(raw)
            if isinstance(decoded, Frame):
                kind, method, msg_id = decoded.kind, decoded.method, decoded.id
        kind_name = kind.value if kind is not None else "invalid"
        era = tap.era if tap.era is not None else getattr(tap.upstream, "era", None)
        rec: dict[str, Any] = {
            "ts": rfc3339(wall), "mono": round(mono, 6), "session": tap.session, "server": tap.server,
            "transport": tap.transport, "era": era, "dir": direction, "kind": kind_name,
            "method": method, "id": msg_id, "bytes": len(raw)}
        if msg_id is not None:
            if kind is Kind.REQUEST:
                asked = self._asked
                if len(asked) >= _MAX_OPEN_REQUESTS:
                    del asked[next(iter(asked))]
                asked[(tap.session, tap.server, direction, _key(msg_id))] = mono
            elif kind is Kind.RESPONSE or kind is Kind.ERROR:
                start = self._asked.pop((tap.session, tap.server, _ASKED_AT[direction], _key(msg_id)), None)
                if start is not None:
                    rec["latency_ms"] = round((mono - start) * 1000, 3)
        rec["policy"] = policy
        masked, _ = self.masker.mask_raw(raw)
        try:
            rec["frame"] = masked.decode("utf-8")
        except UnicodeDecodeError:
            rec["frame_b64"] = base64.b64encode(masked).decode("ascii")
        try:
            return orjson.dumps(rec)
        except (TypeError, orjson.JSONEncodeError):   # an id beyond 64 bits
            return jsonfast.dumps(rec)


def _key(msg_id: Any) -> Any:
    # 1 and "1" are different JSON-RPC ids; True never is one.
    return (type(msg_id).__name__, msg_id)


def rfc3339(wall: float) -> str:
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


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
