"""`wire-gateway cache ...` and `wire-gateway tools ...`: act on the store the config names.

With Redis they act on the shared store, so running gateways see the change at once
(pins and invalidations are announced on the store's pub/sub channel). The memory store
lives inside each gateway process: caches cannot be reached from here (say so, exit 1
for actions); pins can, when the config keeps them in a file (`store.pins_file`), which
running gateways re-read when it changes.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from wire_gateway.config import Config, ConfigError
from wire_gateway.policy.pinning import PinBook
from wire_gateway.policy.services import make_store
from wire_gateway.store.base import Store

MEMORY_NOTE = ("the memory store lives inside each running gateway process, so this command cannot "
               "see or change it; use \"store\": {\"backend\": \"redis\"} to share caches between processes "
               "and this command")


def _run(fn: Any, config: Config) -> int:
    try:
        store = make_store(config.store)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return 1
    if store.backend == "redis":
        import trio_asyncio

        from wire_gateway.store.redis import RedisStore
        redis = store
        assert isinstance(redis, RedisStore)    # what make_store builds for the redis backend

        async def main() -> int:
            try:
                if not await redis.connect():
                    print(f"store: Redis at {redis.safe_url} is not reachable", file=sys.stderr)
                    return 1
                return await fn(redis)
            finally:
                await redis.aclose()
        return trio_asyncio.run(main)
    import trio

    return trio.run(fn, store)


def _servers(config: Config, name: str | None) -> list[str] | None:
    if name is None:
        return list(config.servers)
    if name not in config.servers:
        print(f"no server named {name!r} in {config.source}; configured: {', '.join(config.servers)}",
              file=sys.stderr)
        return None
    return [name]


def cmd_cache(args: argparse.Namespace, config: Config) -> int:
    servers = _servers(config, getattr(args, "server", None))
    if servers is None:
        return 2

    async def status(store: Store) -> int:
        info = store.status()
        print(f"backend: {info['backend']}" + (f" {info['url']}" if "url" in info else ""))
        if store.backend == "memory":
            print(f"cache entries: not visible from here: {MEMORY_NOTE}")
            return 0
        print(f"reachable: {'yes' if info['reachable'] else 'no'}")
        print(f"{'server':<24} {'tools/list pages':>16} {'tool results':>13}")
        for name in servers:
            lists = len(await store.scan(f"cache:list:{name}:"))
            results = len(await store.scan(f"cache:result:{name}:"))
            print(f"{name:<24} {lists:>16} {results:>13}")
        return 0

    async def clear(store: Store) -> int:
        if store.backend == "memory":
            print(f"nothing cleared: {MEMORY_NOTE}; restarting the gateway empties its cache", file=sys.stderr)
            return 1
        from wire_gateway.policy.cache import Generations, invalidate

        total = 0
        for name in servers:
            dropped = await invalidate(store, name, Generations())
            total += dropped
            print(f"{name}: dropped {dropped} cached entr{'y' if dropped == 1 else 'ies'}")
        print(f"cleared {total} in all; running gateways were told (pub/sub)")
        return 0

    return _run(status if args.cache_command == "status" else clear, config)


def cmd_tools(args: argparse.Namespace, config: Config) -> int:
    servers = _servers(config, args.server)
    if servers is None:
        return 2
    if config.store.backend == "memory" and not config.store.pins_file:
        print(f"cannot reach the pins: {MEMORY_NOTE}; or keep pins in a file with \"store\": "
              "{\"pins_file\": \"pins.json\"}", file=sys.stderr)
        return 1

    async def approve(store: Store) -> int:
        record = await PinBook(store).approve(args.server, args.tool)
        if record is None:
            print(f"tool {args.tool!r} of server {args.server!r} is not quarantined; nothing to approve "
                  f"(`wire-gateway tools pins --server {args.server}` lists what is)", file=sys.stderr)
            return 1
        print(f"approved {args.server}/{args.tool}: pinned its new definition ({record['seen'][:12]}, was "
              f"{str(record['pinned'])[:12]}); running gateways show it again on their next tools/list")
        return 0

    async def pins(store: Store) -> int:
        book = PinBook(store)
        for name in servers:
            print(f"{name}: {await book.pin_count(name)} pinned tool(s)")
            for record in await book.quarantine_list(name):
                desc = record.get("description") or ""
                print(f"  QUARANTINED {record['tool']}: changed definition {record['seen'][:12]} "
                      f"(pinned {str(record['pinned'])[:12]}); new description: {desc[:100]!r}\n"
                      f"    approve with: wire-gateway tools approve {name} {record['tool']}")
        return 0

    return _run(approve if args.tools_command == "approve" else pins, config)
