"""The store interface every backend implements, and the key helpers.

Keys are relative ("cache:list:SERVER:..."); a backend adds its configured prefix.
Values are bytes. Events are short strings ("invalidate:SERVER", "pins:SERVER")
published to every gateway sharing the store, including the publisher itself.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import quote

Listener = Callable[[str], None]


class Store(Protocol):
    backend: str
    shared: bool          # True when other processes see the same data (a memo must listen for events)

    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl: float | None = None, only_new: bool = False) -> bool: ...
    async def delete(self, key: str) -> int: ...
    async def delete_prefix(self, prefix: str) -> int: ...
    async def scan(self, prefix: str) -> list[tuple[str, bytes]]: ...
    async def publish(self, event: str) -> None: ...
    def subscribe(self, listener: Listener) -> None: ...
    async def run(self, *, task_status: Any = ...) -> None: ...
    def status(self) -> dict[str, Any]: ...


@functools.lru_cache(maxsize=4096)   # a handful of versions and tool names recur on every call
def part(text: str) -> str:
    """One key component: anything a server or client sends is quoted, so ':' cannot forge a prefix."""
    return quote(text, safe="")
