"""Tool pinning: the first definition of a tool the gateway sees is pinned (a hash of
name, description, inputSchema, outputSchema, annotations). A later, different
definition is a "rug pull" until a person says otherwise: in `enforce` mode the tool is
quarantined (hidden from tools/list, calls refused with the command that lifts it),
in `warn` mode it is only logged. Pins and quarantines live in the store, so every
gateway sharing it agrees, and `wire-gateway tools approve SERVER TOOL` reaches them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

from wire_gateway.policy.chain import Call, Interceptor, Reply
from wire_gateway.store.base import Store, part
from wire_gateway.wire import errors

log = logging.getLogger("wire_gateway.policy.pinning")

PINNED_FIELDS = ("name", "description", "inputSchema", "outputSchema", "annotations")


def tool_hash(tool: dict[str, Any]) -> str:
    canonical = json.dumps({k: tool.get(k) for k in PINNED_FIELDS}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def approve_hint(server: str, tool: str) -> str:
    return f"wire-gateway tools approve {server} {tool}"


class PinBook:
    """Pins and quarantines in the store, with an in-process memo when the store is shared
    (kept right by the store's "pins:SERVER" events)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pins: dict[tuple[str, str], str] = {}
        self._quarantined: dict[tuple[str, str], bool] = {}
        self._warned: set[tuple[str, str, str]] = set()
        self._version = 0        # bumped by every change to pins or quarantines this book hears of
        store.subscribe(self._on_event)

    @property
    def version(self) -> int:
        """Changes whenever a verdict of `check` may have: a pin set, a quarantine, an approval,
        here or (through the store's events) in another process. A pins file edited by the CLI
        is looked at first (one stat), so a verdict memo keyed on this sees its approvals."""
        refresh = getattr(self.store, "refresh_pins", None)
        if refresh is not None:
            refresh()
        return self._version

    def _on_event(self, event: str) -> None:
        if not event.startswith("pins:"):
            return
        self._version += 1
        server = event[5:]
        if server == "*":
            self._pins.clear()
            self._quarantined.clear()
            return
        for memo in (self._pins, self._quarantined):
            for key in [k for k in memo if k[0] == server]:
                del memo[key]

    @staticmethod
    def pin_key(server: str, tool: str) -> str:
        return f"pins:{server}:{part(tool)}"

    @staticmethod
    def quarantine_key(server: str, tool: str) -> str:
        return f"quarantine:{server}:{part(tool)}"

    async def pin_of(self, server: str, tool: str) -> str | None:
        memo = self.store.shared and not getattr(self.store, "pins_file", None)
        if memo and (server, tool) in self._pins:
            return self._pins[(server, tool)]
        raw = await self.store.get(self.pin_key(server, tool))
        pin = raw.decode() if raw is not None else None
        if memo and pin is not None:
            self._pins[(server, tool)] = pin
        return pin

    async def check(self, server: str, tool: dict[str, Any], mode: str) -> bool:
        """True if the tool may be shown: first sighting (pinned now) or unchanged."""
        name = tool["name"]
        digest = tool_hash(tool)
        pin = await self.pin_of(server, name)
        if pin is None:
            if await self.store.set(self.pin_key(server, name), digest.encode(), only_new=True):
                self._version += 1
                log.info("server %s: pinned tool %r (%s)", server, name, digest[:12])
                return True
            pin = await self.pin_of(server, name)   # another gateway pinned it first
            if pin is None:
                return True
        if pin == digest:
            return True
        if mode == "enforce":
            await self._quarantine(server, tool, pin, digest)
        elif (server, name, digest) not in self._warned:
            self._warned.add((server, name, digest))
            log.warning("server %s: tool %r changed its definition since it was pinned (pinning: warn, so it "
                        "stays visible); review it, then `%s` to pin the new one", server, name,
                        approve_hint(server, name))
        return False

    async def _quarantine(self, server: str, tool: dict[str, Any], pin: str, digest: str) -> None:
        name = tool["name"]
        key = self.quarantine_key(server, name)
        raw = await self.store.get(key)
        if raw is not None:
            try:
                if json.loads(raw).get("seen") == digest:
                    self._quarantined[(server, name)] = True
                    return
            except ValueError:
                pass
        description = tool.get("description")
        record = {"server": server, "tool": name, "pinned": pin, "seen": digest, "since": time.time(),
                  "description": description[:500] if isinstance(description, str) else None}
        await self.store.set(key, json.dumps(record).encode())
        self._version += 1
        self._quarantined[(server, name)] = True
        log.warning("server %s: tool %r changed its definition since it was pinned; quarantined it (hidden, "
                    "calls refused). Review the new definition, then run `%s`", server, name,
                    approve_hint(server, name))
        await self.store.publish(f"pins:{server}")

    async def quarantined(self, server: str, tool: str) -> bool:
        memo = self.store.shared and not getattr(self.store, "pins_file", None)
        if memo and (server, tool) in self._quarantined:
            return self._quarantined[(server, tool)]
        found = await self.store.get(self.quarantine_key(server, tool)) is not None
        if memo:
            self._quarantined[(server, tool)] = found
        return found

    async def approve(self, server: str, tool: str) -> dict[str, Any] | None:
        """Pin the quarantined definition; None if the tool is not quarantined."""
        raw = await self.store.get(self.quarantine_key(server, tool))
        if raw is None:
            return None
        record: dict[str, Any] = json.loads(raw)
        await self.store.set(self.pin_key(server, tool), str(record["seen"]).encode())
        await self.store.delete(self.quarantine_key(server, tool))
        await self.store.publish(f"pins:{server}")
        return record

    async def quarantine_list(self, server: str | None = None) -> list[dict[str, Any]]:
        prefix = "quarantine:" + (f"{server}:" if server else "")
        out = []
        for _, raw in await self.store.scan(prefix):
            try:
                out.append(json.loads(raw))
            except ValueError:
                continue
        return sorted(out, key=lambda r: (r.get("server", ""), r.get("tool", "")))

    async def pin_count(self, server: str | None = None) -> int:
        return len(await self.store.scan("pins:" + (f"{server}:" if server else "")))


class Pinning(Interceptor):
    name = "pinning"
    request_methods = frozenset({"tools/call"})
    response_methods = frozenset({"tools/list"})

    def __init__(self, server: str, book: PinBook, mode: str = "enforce") -> None:
        self.server = server
        self.book = book
        self.mode = mode
        # (tools list, book version, what was kept or None for all): a cache hit hands back the
        # same list object, and while no pin changed its verdict is the same, so a hit costs an
        # identity test here instead of a hash and a store read per tool.
        self._memo: tuple[list[Any], int, list[Any] | None] | None = None

    async def on_request(self, call: Call) -> Reply | None:
        if call.method != "tools/call" or self.mode != "enforce":
            return None
        tool = call.tool
        if tool is None or not await self.book.quarantined(self.server, tool):
            return None
        return Reply.error(call, errors.TOOL_QUARANTINED,
                           f"tool {tool!r} of server '{self.server}' is quarantined: its definition changed since "
                           f"it was pinned. An operator must review it and run `{approve_hint(self.server, tool)}`",
                           {"server": self.server, "tool": tool, "approve": approve_hint(self.server, tool)},
                           note="pinning")

    async def on_response(self, call: Call, reply: Reply) -> Reply:
        result = reply.result_dict
        if call.method != "tools/list" or result is None or not isinstance(result.get("tools"), list):
            return reply
        tools = result["tools"]
        memo = self._memo
        if memo is not None and memo[0] is tools and memo[1] == self.book.version:
            shown = memo[2]
        else:
            kept = []
            for tool in tools:
                named = isinstance(tool, dict) and isinstance(tool.get("name"), str)
                if not named or await self.book.check(self.server, tool, self.mode) or self.mode != "enforce":
                    kept.append(tool)
            shown = None if len(kept) == len(tools) else kept
            self._memo = (tools, self.book.version, shown)
        if shown is None:
            return reply
        return reply.with_result({**result, "tools": shown}, "pinning")
