"""Caches: tools/list pages, and (opt-in) results of read-only, idempotent tools.

A hit is answered under the requester's id and still passes back through the filter and
pinning, so it is never more than the caller may see. Entries are keyed by server, the
caller's auth context and what changes the answer: for lists the cursor and the protocol
era/version (result shapes differ), for results the tool and its arguments as canonical
JSON. A modern result's `ttlMs` sets its freshness; `cacheScope: "public"` lets callers of
every auth context share one entry, anything else stays within its auth context.
`notifications/tools/list_changed` drops a server's lists and results at once, in every
gateway sharing the store (pub/sub).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from wire_gateway.policy.chain import Call, Interceptor, Reply
from wire_gateway.policy.tools import ToolIndex
from wire_gateway.store.base import Store, part
from wire_gateway.telemetry.metrics import METRICS, Cell
from wire_gateway.wire import jsonfast

log = logging.getLogger("wire_gateway.policy.cache")

PUBLIC = "public"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@functools.lru_cache(maxsize=4096)   # one per live auth context; the digest runs once per context
def auth_part(auth: str) -> str:
    return "anon" if not auth else "auth-" + digest(auth)   # never the credential itself


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def complete(result: dict[str, Any]) -> bool:
    """Interim (input_required) results are not cacheable; legacy results have no resultType."""
    kind: object = result.get("resultType", "complete")
    return kind == "complete"


class Generations:
    """A per-server counter bumped by every invalidation (here or, through the store's events,
    in another gateway), so an answer that was in flight during the change is not stored."""

    def __init__(self) -> None:
        self._gen: dict[str, int] = {}

    def __getitem__(self, server: str) -> int:
        return self._gen.get(server, 0)

    def bump(self, server: str) -> None:
        if server == "*":
            for key in self._gen:
                self._gen[key] += 1
        self._gen[server] = self._gen.get(server, 0) + 1


def _cells(server: str, cache: str) -> tuple[Cell, Cell]:
    """The hit and miss counters of one cache (telemetry/metrics.py); with metrics off, cells no
    exposition reads (counting into them costs what testing for metrics would)."""
    if not METRICS.on:
        return Cell(), Cell()
    return METRICS.cache.cell(server, cache, "hit"), METRICS.cache.cell(server, cache, "miss")


class ListCache(Interceptor):
    name = "list_cache"
    request_methods = frozenset({"tools/list"})
    response_methods = frozenset({"tools/list"})

    def __init__(self, server: str, store: Store, ttl: float, generations: Generations,
                 clock: Callable[[], float] = time.time) -> None:
        self.server = server
        self.store = store
        self.ttl = ttl
        self.gens = generations
        self.clock = clock
        self.hits = 0
        self.misses = 0
        self._hit, self._miss = _cells(server, "list")
        # key -> (the stored bytes, parsed entry, serialized result): a memory store hands back the
        # same bytes object on every hit, so the entry is parsed and its result serialized once
        # (without its ttlMs, which each hit writes afresh).
        self._parsed: dict[str, tuple[bytes, dict[str, Any], bytes]] = {}

    def _entry(self, key: str, raw: bytes) -> tuple[dict[str, Any], bytes]:
        memo = self._parsed.get(key)
        if memo is not None and memo[0] is raw:
            return memo[1], memo[2]
        entry = jsonfast.loads(raw)
        result = entry["result"]
        result_raw = jsonfast.dumps({k: v for k, v in result.items() if k != "ttlMs"} if "ttlMs" in result else result)
        if len(self._parsed) >= 1024:
            self._parsed.clear()
        self._parsed[key] = (raw, entry, result_raw)
        return entry, result_raw

    def key(self, call: Call, scope: str) -> str:
        cursor = call.params.get("cursor")
        cursor_part = "-" if cursor is None else digest(canonical(cursor))
        return f"cache:list:{self.server}:{scope}:{part(call.version)}:{cursor_part}"

    async def on_request(self, call: Call) -> Reply | None:
        if call.method != "tools/list":
            return None
        for scope in (auth_part(call.auth), PUBLIC):
            key = self.key(call, scope)
            raw = await self.store.get(key)
            if raw is not None:
                entry, result_raw = self._entry(key, raw)
                result = entry["result"]
                self.hits += 1
                self._hit.value += 1
                head = b'{"jsonrpc":"2.0","id":' + jsonfast.dumps(call.frame.id) + b',"result":'
                if "ttlMs" in result:   # tell the client how fresh it still is
                    left = max(0, int((entry["stored"] + entry["ttl"] - self.clock()) * 1000))
                    reply = Reply.result(call, {**result, "ttlMs": left}, "cache")
                    rest = b"}" if result_raw == b"{}" else b"," + result_raw[1:]
                    reply.raw = head + b'{"ttlMs":%d' % left + rest + b"}"
                    return reply
                reply = Reply.result(call, result, "cache")
                reply.raw = head + result_raw + b"}"
                return reply
        self.misses += 1
        self._miss.value += 1
        call.state["list_gen"] = self.gens[self.server]
        return None

    async def on_response(self, call: Call, reply: Reply) -> Reply:
        result = reply.result_dict
        if call.method != "tools/list" or result is None or not complete(result) or reply.gateway:
            return reply
        if call.state.get("list_gen") != self.gens[self.server]:
            return reply    # the list changed while this answer was in flight
        ttl = self.ttl
        ttl_ms = result.get("ttlMs")
        if isinstance(ttl_ms, (int, float)) and not isinstance(ttl_ms, bool):
            ttl = max(0.0, ttl_ms / 1000)
        if ttl <= 0:
            return reply
        scope = PUBLIC if result.get("cacheScope") == PUBLIC else auth_part(call.auth)
        entry = {"result": result, "stored": self.clock(), "ttl": ttl}
        await self.store.set(self.key(call, scope), jsonfast.dumps(entry), ttl)
        return reply


class ResultCache(Interceptor):
    name = "result_cache"
    request_methods = frozenset({"tools/call"})
    response_methods = frozenset({"tools/call"})

    def __init__(self, server: str, store: Store, ttl: float, index: ToolIndex, generations: Generations) -> None:
        self.server = server
        self.store = store
        self.ttl = ttl
        self.index = index
        self.gens = generations
        self.hits = 0
        self._hit, self._miss = _cells(server, "result")

    def cacheable(self, call: Call) -> bool:
        tool = call.tool
        if tool is None or self.ttl <= 0:
            return False
        params = call.params
        if "inputResponses" in params or "requestState" in params:   # multi round-trip retries: never
            return False
        ann = self.index.annotations(tool)
        return ann.get("readOnlyHint") is True and ann.get("idempotentHint") is True

    def key(self, call: Call) -> str:
        args = canonical(call.params.get("arguments", {}))
        return (f"cache:result:{self.server}:{auth_part(call.auth)}:{part(call.version)}:"
                f"{part(call.tool or '')}:{digest(args)}")

    async def on_request(self, call: Call) -> Reply | None:
        if call.method != "tools/call" or not self.cacheable(call):
            return None
        key = self.key(call)
        raw = await self.store.get(key)
        if raw is not None:
            self.hits += 1
            self._hit.value += 1
            return Reply.result(call, jsonfast.loads(raw), "cache")
        self._miss.value += 1
        call.state["result_key"] = key
        call.state["result_gen"] = self.gens[self.server]
        return None

    async def on_response(self, call: Call, reply: Reply) -> Reply:
        key = call.state.get("result_key")
        result = reply.result_dict
        if key is None or result is None or reply.gateway or result.get("isError") is True or not complete(result):
            return reply
        if call.state.get("result_gen") == self.gens[self.server]:
            await self.store.set(key, jsonfast.dumps(result), self.ttl)
        return reply


async def invalidate(store: Store, server: str, generations: Generations) -> int:
    """Drop a server's cached lists and results here and in every gateway sharing the store."""
    generations.bump(server)
    dropped = await store.delete_prefix(f"cache:list:{server}:")
    dropped += await store.delete_prefix(f"cache:result:{server}:")
    await store.publish(f"invalidate:{server}")
    return dropped
