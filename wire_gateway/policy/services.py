"""What the policy chain shares across a whole gateway process: the store, the pins,
one chain per server (its tool index and caches serve every session of that server).

Created once per process (by the CLI) and handed to the fronts.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import trio

from wire_gateway.config import Config, ServerSpec, StoreSettings
from wire_gateway.config.loader import store_url
from wire_gateway.guardrails.engine import Compiled
from wire_gateway.policy.cache import Generations, ListCache, ResultCache, invalidate
from wire_gateway.policy.chain import ORDER, Chain, Interceptor
from wire_gateway.policy.filter import ToolFilter
from wire_gateway.policy.guardrails import Guardrails
from wire_gateway.policy.pinning import PinBook, Pinning
from wire_gateway.policy.project_tools import ProjectTools
from wire_gateway.policy.schema import SchemaGuard
from wire_gateway.policy.tools import ToolIndex
from wire_gateway.store.base import Store
from wire_gateway.store.memory import MemoryStore

log = logging.getLogger("wire_gateway.policy")


def make_store(settings: StoreSettings) -> Store:
    if settings.backend == "redis":
        from wire_gateway.store.redis import RedisStore

        return RedisStore(store_url(settings.url, dict(os.environ)), settings.prefix)
    return MemoryStore(settings.pins_file)


class Services:
    def __init__(self, config: Config, store: Store | None = None) -> None:
        self.config = config
        self.store = store if store is not None else make_store(config.store)
        self.pins = PinBook(self.store)
        self.generations = Generations()
        self.chains: dict[str, Chain | None] = {}
        # Every guardrail policy compiled once (servers share named ones); a server runs the slot
        # for its own, and with auth on every server does when any named one exists (projects add them).
        self.guardrails = {name: Compiled.of(p) for name, p in config.guardrails.items()}
        self._named_guardrails = {n: c for n, c in self.guardrails.items() if not n.startswith(":")}
        self._nursery: trio.Nursery | None = None
        self.store.subscribe(self._on_event)

    def _on_event(self, event: str) -> None:
        if event.startswith("invalidate:"):
            self.generations.bump(event[len("invalidate:"):])

    @property
    def needs_asyncio(self) -> bool:
        return self.store.backend == "redis"

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The store's background work (Redis pub/sub and reconnection), and the nursery that
        guardrails' parallel remote checks run in."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                await nursery.start(self.store.run)
                task_status.started()
                await trio.sleep_forever()     # the nursery stays open (a memory store's run returns at once)
            finally:
                self._nursery = None
                with trio.CancelScope(shield=True), trio.move_on_after(1.0):   # remote providers' connections
                    for chain in self.chains.values():
                        for x in chain.interceptors if chain is not None else ():
                            if isinstance(x, Guardrails):
                                await x.aclose()

    def chain_for(self, spec: ServerSpec) -> Chain | None:
        """The server's chain, built once; None when it configures no interceptor."""
        if spec.name not in self.chains:
            self.chains[spec.name] = self._build(spec)
        return self.chains[spec.name]

    def _build(self, spec: ServerSpec) -> Chain | None:
        policy = spec.policy
        # With auth on every server runs the auth slot: projects may narrow any server's tools,
        # and their rules change while the gateway runs.
        names = (["auth"] if self.config.auth.enforced else []) + policy.interceptors()
        if self.config.auth.enforced and self._named_guardrails and "guardrails" not in names:
            names = sorted([*names, "guardrails"], key=ORDER.index)
        if not names:
            return None
        index = ToolIndex()
        chain: list[Interceptor] = []
        for name in names:
            if name == "auth":
                chain.append(ProjectTools(spec.name))
            elif name == "filter":
                chain.append(ToolFilter(policy.allow, policy.deny))
            elif name == "pinning":
                chain.append(Pinning(spec.name, self.pins, policy.pinning))
            elif name == "schema":
                chain.append(SchemaGuard(spec.name, index))
            elif name == "guardrails":
                chain.append(Guardrails(spec.name, index, [self.guardrails[n] for n in policy.guardrails],
                                        self._named_guardrails, lambda: self._nursery))
            elif name == "list_cache":
                chain.append(ListCache(spec.name, self.store, policy.tools_list_ttl, self.generations))
            elif name == "result_cache":
                chain.append(ResultCache(spec.name, self.store, policy.results_ttl, index, self.generations))
        log.info("server %s: policy chain %s", spec.name, " -> ".join([*names, "upstream"]))

        async def on_invalidate() -> None:
            dropped = await invalidate(self.store, spec.name, self.generations)
            log.info("server %s: tool list changed; dropped %d cached entries", spec.name, dropped)

        waits = any(isinstance(x, Guardrails) and x.remote for x in chain)    # asks a remote provider
        return Chain(spec.name, chain, index, on_invalidate, sync=self.store.backend == "memory" and not waits)
