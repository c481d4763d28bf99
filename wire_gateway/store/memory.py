"""The default store: a dict in this process, with expiry.

Pins and quarantines may be kept in a JSON file (`store.pins_file`) so they outlive
the process and `wire-gateway tools approve` can change them for a running gateway:
the file is re-read whenever its modification time changes. Caches never touch disk.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from typing import Any

import trio

from wire_gateway.store.base import Listener

log = logging.getLogger("wire_gateway.store")

PERSISTED = ("pins:", "quarantine:")


class MemoryStore:
    backend = "memory"
    shared = False

    def __init__(self, pins_file: str | None = None, clock: Any = time.monotonic) -> None:
        self._data: dict[str, tuple[bytes, float | None]] = {}
        self._listeners: list[Listener] = []
        self._clock = clock
        self.pins_file = pins_file
        self._pins_mtime: int | None = None
        if pins_file:
            self.shared = True     # another process (the CLI) may change the file
            self._reload_pins()

    # ---- pins file --------------------------------------------------------------------------

    def _persisted(self, key: str) -> bool:
        return self.pins_file is not None and key.startswith(PERSISTED)

    def refresh_pins(self) -> None:
        """Notice an edit of the pins file now (listeners hear "pins:*" if it changed)."""
        if self.pins_file is not None:
            self._reload_pins()

    def _reload_pins(self) -> None:
        assert self.pins_file is not None
        try:
            mtime = os.stat(self.pins_file).st_mtime_ns
        except OSError:          # not there (yet), or not reachable: nothing to load
            mtime = None
        if mtime == self._pins_mtime:
            return
        self._pins_mtime = mtime
        entries: dict[str, str] = {}
        if mtime is not None:
            try:
                with open(self.pins_file, encoding="utf-8") as f:
                    loaded = json.load(f)
                entries = {k: v for k, v in loaded.items() if isinstance(v, str) and k.startswith(PERSISTED)}
            except (OSError, ValueError, AttributeError) as exc:
                log.error("store: cannot read pins file %s (%s); keeping the pins already loaded", self.pins_file, exc)
                return
        for key in [k for k in self._data if k.startswith(PERSISTED)]:
            del self._data[key]
        for key, value in entries.items():
            self._data[key] = (value.encode(), None)
        for listener in self._listeners:
            listener("pins:*")

    def _save_pins(self) -> None:
        """Write the pins file atomically. A file that cannot be written costs persistence, never
        service: the pins stay in memory and the error is logged."""
        assert self.pins_file is not None
        doc = {k: v.decode() for k, (v, _) in sorted(self._data.items()) if k.startswith(PERSISTED)}
        folder = os.path.dirname(os.path.abspath(self.pins_file))
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".pins-", dir=folder)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f, indent=1, sort_keys=True)
            os.replace(tmp, self.pins_file)    # atomic: a running gateway never reads half a file
            self._pins_mtime = os.stat(self.pins_file).st_mtime_ns
        except OSError as exc:
            log.error("store: cannot write pins file %s (%s); pins are kept in memory only", self.pins_file, exc)

    # ---- the interface ------------------------------------------------------------------------

    def get_now(self, key: str) -> bytes | None:
        if self._persisted(key):
            self._reload_pins()
        entry = self._data.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires is not None and expires <= self._clock():
            del self._data[key]
            return None
        return value

    def set_now(self, key: str, value: bytes, ttl: float | None = None, only_new: bool = False) -> bool:
        persisted = self._persisted(key)
        if persisted:
            self._reload_pins()
        if only_new and self.get_now(key) is not None:
            return False
        self._data[key] = (value, None if ttl is None else self._clock() + ttl)
        if persisted:
            self._save_pins()
        return True

    def delete_now(self, key: str) -> int:
        persisted = self._persisted(key)
        if persisted:
            self._reload_pins()
        found = self._data.pop(key, None) is not None
        if found and persisted:
            self._save_pins()
        return int(found)

    def delete_prefix_now(self, prefix: str) -> int:
        keys = [k for k in self._data if k.startswith(prefix)]
        for key in keys:
            del self._data[key]
        if self.pins_file is not None and any(k.startswith(PERSISTED) for k in keys):
            self._save_pins()
        return len(keys)

    def scan_now(self, prefix: str) -> list[tuple[str, bytes]]:
        if self.pins_file is not None and prefix.startswith(PERSISTED):
            self._reload_pins()
        now = self._clock()
        return [(k, v) for k, (v, exp) in list(self._data.items())
                if k.startswith(prefix) and (exp is None or exp > now)]

    async def get(self, key: str) -> bytes | None:
        return self.get_now(key)

    async def set(self, key: str, value: bytes, ttl: float | None = None, only_new: bool = False) -> bool:
        return self.set_now(key, value, ttl, only_new)

    async def delete(self, key: str) -> int:
        return self.delete_now(key)

    async def delete_prefix(self, prefix: str) -> int:
        return self.delete_prefix_now(prefix)

    async def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        return self.scan_now(prefix)

    async def publish(self, event: str) -> None:
        self.deliver(event)

    def deliver(self, event: str) -> None:
        for listener in self._listeners:
            listener(event)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Nothing runs in the background; expired entries are dropped when read or swept."""
        task_status.started()
        while True:
            await trio.sleep(60)
            self.sweep()

    def sweep(self) -> int:
        now = self._clock()
        dead = [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now]
        for key in dead:
            del self._data[key]
        return len(dead)

    def status(self) -> dict[str, Any]:
        return {"backend": "memory", "reachable": True, "entries": len(self._data), "pinsFile": self.pins_file}
