"""The Redis store: shared by every gateway instance that names the same URL and prefix.

redis-py's asyncio client runs inside trio through trio-asyncio (one asyncio loop per
process, opened by the CLI around `serve`/`stdio` only when Redis is configured).
Invalidations travel on one pub/sub channel (`PREFIX + "events"`).

When Redis goes away the gateway keeps serving: every operation falls back to this
process's memory, ONE warning is logged, a background task pings until Redis is back
(logged too). On return the shared cache entries are dropped (invalidations made while
we were apart were not seen by the others) and pins learnt meanwhile are copied over.

The `*_shared` operations have no fallback: they raise `StoreUnreachable` instead, for a
caller to whom this process's memory is no answer (the session registry: a session
another instance opened is not found in our memory, and must not be taken as ended).
"""
from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
import trio
import trio_asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from wire_gateway.store.base import Listener
from wire_gateway.store.memory import PERSISTED, MemoryStore
from wire_gateway.telemetry.masking import mask

log = logging.getLogger("wire_gateway.store")

T = TypeVar("T")
FAILURES = (RedisError, OSError, trio.TooSlowError, ConnectionError)


# A token bucket kept in a hash (tokens, when), on Redis' own clock so that gateways with skewed
# clocks agree; the key expires once the bucket would be full again.
TOKEN_BUCKET = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local v = redis.call('HMGET', KEYS[1], 'tokens', 'when')
local tokens = math.min(burst, (tonumber(v[1]) or burst) + (now - (tonumber(v[2]) or now)) * rate)
local wait = 0
if tokens < 1 then wait = (1 - tokens) / rate else tokens = tokens - 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'when', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


# Entries appended to streams (shared_streams.py): ARGV = maxlen, ttl in ms, then per entry the
# index of its key in KEYS, its id, its number of fields, and the fields (name, value, ...).
APPEND_EVENTS = """
local maxlen, px, i = ARGV[1], ARGV[2], 3
while i <= #ARGV do
  local n = tonumber(ARGV[i + 2])
  local args = {KEYS[tonumber(ARGV[i])], 'MAXLEN', '~', maxlen, ARGV[i + 1]}
  for j = 1, 2 * n do args[5 + j] = ARGV[i + 2 + j] end
  redis.pcall('XADD', unpack(args))
  i = i + 3 + 2 * n
end
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, px) end
return 0
"""


class StoreUnreachable(Exception):
    """Redis did not answer a `*_shared` operation (or is known to be away)."""


def safe_url(url: str) -> str:
    """The URL as it may appear in logs and CLI output: never the password."""
    return mask(url)


class RedisStore:
    backend = "redis"
    shared = True

    def __init__(self, url: str, prefix: str = "wire-gateway:", op_timeout: float = 1.0) -> None:
        self.url = url
        self.safe_url = safe_url(url)
        self.prefix = prefix
        self.channel = prefix + "events"
        self.op_timeout = op_timeout
        self.fallback = MemoryStore()
        self.up = False
        self.instance = secrets.token_hex(8)
        self._client: Any = None
        self._listeners: list[Listener] = []
        self._down = trio.Event()
        self._back = trio.Event()
        self._warned = False
        self.outages = 0
        self._bucket: Any = None          # the token-bucket script, registered on first use
        self._append: Any = None          # the event-appending script, likewise

    # ---- plumbing ----------------------------------------------------------------------------

    async def _aio(self, fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any) -> T:
        with trio.fail_after(self.op_timeout * 2):
            return await trio_asyncio.aio_as_trio(fn)(*args, **kw)

    def _went_down(self, exc: BaseException) -> None:
        if self.up or not self._warned:
            self.outages += 1
            log.warning("store: Redis at %s is unreachable (%s); serving caches and pins from this "
                        "process's memory until it is back (reconnecting in the background)",
                        self.safe_url, type(exc).__name__ + (f": {exc}" if str(exc) else ""))
            self._warned = True
        self.up = False
        if self._back.is_set():     # only on the way down: the pub/sub listener waits on this one
            self._back = trio.Event()
        self._down.set()

    async def _op(self, remote: Callable[[], Awaitable[T]], local: Callable[[], T]) -> T:
        if self.up:
            try:
                return await remote()
            except FAILURES as exc:
                self._went_down(exc)
        return local()

    async def _shared(self, remote: Callable[[], Awaitable[T]]) -> T:
        if self.up:
            try:
                return await remote()
            except FAILURES as exc:
                self._went_down(exc)
        raise StoreUnreachable(f"Redis at {self.safe_url} is unreachable")

    def _k(self, key: str) -> str:
        return self.prefix + key

    async def connect(self) -> bool:
        """Open the client and check that Redis answers; False (with the one warning) if not."""
        if self._client is None:
            # One immediate retry (a pooled connection may have died), no backoff: when Redis is
            # gone, the gateway falls back to memory at once rather than waiting on it.
            self._client = aioredis.Redis.from_url(self.url, socket_timeout=self.op_timeout,
                                                   socket_connect_timeout=self.op_timeout,
                                                   retry=Retry(NoBackoff(), 1))
        try:
            await self._aio(self._client.ping)
        except FAILURES as exc:
            self._went_down(exc)
            return False
        self.up = True
        self._back.set()
        return True

    async def aclose(self) -> None:
        if self._client is not None:
            with trio.move_on_after(1):
                try:
                    await self._aio(self._client.aclose)
                except FAILURES:
                    pass

    # ---- the interface ---------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        return await self._op(lambda: self._aio(self._client.get, self._k(key)), lambda: self.fallback.get_now(key))

    async def set(self, key: str, value: bytes, ttl: float | None = None, only_new: bool = False) -> bool:
        px = None if ttl is None else max(1, int(ttl * 1000))

        async def remote() -> bool:
            return bool(await self._aio(self._client.set, self._k(key), value, px=px, nx=only_new))
        return await self._op(remote, lambda: self.fallback.set_now(key, value, ttl, only_new))

    async def delete(self, key: str) -> int:
        return await self._op(lambda: self._aio(self._client.delete, self._k(key)),
                              lambda: self.fallback.delete_now(key))

    async def get_shared(self, key: str) -> bytes | None:
        """As `get`, from Redis only: StoreUnreachable rather than this process's memory."""
        return await self._shared(lambda: self._aio(self._client.get, self._k(key)))

    async def set_shared(self, key: str, value: bytes, ttl: float, only_new: bool = False,
                         only_existing: bool = False) -> bool:
        """As `set`, in Redis only (StoreUnreachable otherwise); `only_existing`: False when the
        key is not there (SET XX), so an entry someone deleted is not brought back."""
        px = max(1, int(ttl * 1000))

        async def remote() -> bool:
            return bool(await self._aio(self._client.set, self._k(key), value, px=px, nx=only_new,
                                        xx=only_existing))
        return await self._shared(remote)

    async def keep_alive(self, key: str, ttl: float) -> None:
        """A heartbeat: `key` exists for `ttl` more seconds (PSETEX, a command of its own, so that
        Redis' statistics tell heartbeats from the rest); StoreUnreachable otherwise."""
        await self._shared(lambda: self._aio(self._client.psetex, self._k(key), max(1, int(ttl * 1000)), b"1"))

    async def delete_shared(self, key: str) -> int:
        """As `delete`, in Redis only (StoreUnreachable otherwise)."""
        return await self._shared(lambda: self._aio(self._client.delete, self._k(key)))

    async def append_events(self, entries: list[tuple[str, str, dict[str, bytes]]], maxlen: int,
                            ttl: float) -> None:
        """XADD each (key, entry id, fields) in one round trip (one script: a pipeline of XADDs
        costs this process several times the CPU, a reply to parse per entry), each stream trimmed
        to about `maxlen` entries (MAXLEN ~) and expiring `ttl` after its last write;
        StoreUnreachable otherwise. An entry whose id is not past its stream's last is refused by
        Redis, and skipped."""
        keys: dict[str, bytes] = {}
        args: list[bytes] = [b"%d" % maxlen, b"%d" % max(1, int(ttl * 1000))]
        for key, entry_id, fields in entries:       # bytes already: redis-py's encoder passes them as they are
            index = keys.get(key)
            if index is None:
                index = keys[key] = b"%d" % (len(keys) + 1)
            args += [index, entry_id.encode(), b"%d" % len(fields)]
            for name, value in fields.items():
                args += [name.encode(), value]

        async def remote() -> None:
            if self._append is None:
                self._append = self._client.register_script(APPEND_EVENTS)
            await self._aio(self._append, keys=[self._k(key) for key in keys], args=args)
        await self._shared(remote)

    async def add_event(self, key: str, entry_id: str, fields: dict[str, bytes], ttl: float) -> bool:
        """One XADD with an explicit id: False when the stream already has that id or a later one
        (another writer came first); StoreUnreachable when Redis is away."""
        async def remote() -> bool:
            try:
                await self._aio(self._client.xadd, self._k(key), fields, id=entry_id)
            except ResponseError:       # "The ID specified in XADD is equal or smaller than ..."
                return False
            await self._aio(self._client.pexpire, self._k(key), max(1, int(ttl * 1000)))
            return True
        return await self._shared(remote)

    async def read_events(self, key: str, after: str = "-", block: float | None = None
                          ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """The entries of a stream (XRANGE, or past `after` with `block`: XREAD BLOCK, waiting that
        many seconds for one to come); StoreUnreachable when Redis is away."""
        async def remote() -> list[tuple[bytes, dict[bytes, bytes]]]:
            if block is None:
                return list(await self._aio(self._client.xrange, self._k(key), min=after))
            got = await self._aio(self._client.xread, {self._k(key): after}, block=max(1, int(block * 1000)))
            return [entry for _, entries in got or () for entry in entries]
        return await self._shared(remote)

    async def _keys(self, prefix: str) -> list[bytes]:
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self._k(prefix)) + "*"
        keys: list[bytes] = []
        cursor = 0
        while True:
            cursor, batch = await self._aio(self._client.scan, cursor, match=pattern, count=500)
            keys += batch
            if not cursor:
                return keys

    async def delete_prefix(self, prefix: str) -> int:
        async def remote() -> int:
            keys = await self._keys(prefix)
            for i in range(0, len(keys), 500):
                await self._aio(self._client.unlink, *keys[i:i + 500])
            return len(keys)
        local = self.fallback.delete_prefix_now(prefix)
        return await self._op(remote, lambda: local)

    async def take_token(self, key: str, rate: float, burst: int) -> float | None:
        """One token from the bucket `key` shared by every gateway (Redis' clock, one round trip):
        0.0 when taken, else the seconds until one is there. None while Redis is unreachable:
        the caller counts in its own memory instead."""
        async def remote() -> float | None:
            if self._bucket is None:
                self._bucket = self._client.register_script(TOKEN_BUCKET)
            return float(await self._aio(self._bucket, keys=[self._k(key)], args=[rate, burst]))
        return await self._op(remote, lambda: None)

    async def scan(self, prefix: str) -> list[tuple[str, bytes]]:
        async def remote() -> list[tuple[str, bytes]]:
            keys = await self._keys(prefix)
            out: list[tuple[str, bytes]] = []
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                values = await self._aio(self._client.mget, chunk)
                out += [(k.decode()[len(self.prefix):], v) for k, v in zip(chunk, values) if v is not None]
            return out
        return await self._op(remote, lambda: self.fallback.scan_now(prefix))

    async def publish(self, event: str) -> None:
        """Deliver here at once, and to every other instance through Redis."""
        for listener in self._listeners:
            listener(event)
        message = json.dumps({"from": self.instance, "event": event})
        await self._op(lambda: self._aio(self._client.publish, self.channel, message), lambda: 0)

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def status(self) -> dict[str, Any]:
        return {"backend": "redis", "url": self.safe_url, "reachable": self.up, "outages": self.outages}

    # ---- background: pub/sub and reconnection -----------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if await self.connect():
            log.info("store: using Redis at %s (prefix %r)", self.safe_url, self.prefix)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._listen)
            nursery.start_soon(self._reconnect)
            task_status.started()

    async def _listen(self) -> None:
        while True:
            if not self.up:
                await self._back.wait()
            pubsub = self._client.pubsub()
            try:
                await self._aio(pubsub.subscribe, self.channel)
                while True:
                    msg = await self._aio(pubsub.get_message, ignore_subscribe_messages=True, timeout=0.5)
                    if msg is not None and msg.get("type") == "message":
                        self._on_message(msg.get("data"))
                    if not self.up:      # an operation elsewhere saw Redis go away
                        break
            except FAILURES as exc:
                self._went_down(exc)
            finally:
                with trio.move_on_after(0.5) as scope:
                    scope.shield = True
                    try:
                        await self._aio(pubsub.aclose)
                    except FAILURES:
                        pass

    def _on_message(self, data: Any) -> None:
        try:
            message = json.loads(data)
            event = message["event"]
        except (ValueError, TypeError, KeyError):
            log.warning("store: ignored a malformed message on %s", self.channel)
            return
        if message.get("from") == self.instance or not isinstance(event, str):
            return
        for listener in self._listeners:
            listener(event)

    async def _reconnect(self) -> None:
        while True:
            await self._down.wait()
            delay = 0.2
            while not self.up:
                await trio.sleep(delay)
                delay = min(delay * 2, 5.0)
                try:
                    await self._aio(self._client.ping)
                except FAILURES:
                    continue
                await self._came_back()
            self._down = trio.Event()

    async def _came_back(self) -> None:
        try:
            # Connections pooled before the outage point at a dead server: drop them all first.
            await self._aio(self._client.connection_pool.disconnect)
            stale = await self._keys("cache:")
            for i in range(0, len(stale), 500):
                await self._aio(self._client.unlink, *stale[i:i + 500])
            for prefix in PERSISTED:
                for key, value in self.fallback.scan_now(prefix):
                    await self._aio(self._client.set, self._k(key), value, nx=True)
        except FAILURES:
            return
        self.fallback = MemoryStore()
        self.up = True
        self._warned = False
        self._back.set()
        log.warning("store: Redis at %s is reachable again; back to the shared store "
                    "(dropped %d shared cache entries that may have gone stale)", self.safe_url, len(stale))
        for listener in self._listeners:
            listener("invalidate:*")
        for listener in self._listeners:
            listener("pins:*")
