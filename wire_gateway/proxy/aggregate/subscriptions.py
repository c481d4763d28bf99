"""A modern client's resource subscriptions, carried to legacy members as `resources/subscribe`.

2026-07-28 removed `resources/subscribe`: a client names the URIs it wants to hear about in
`subscriptions/listen` (`notifications.resourceSubscriptions`), and gets each
`notifications/resources/updated` for them on that stream, until it closes it. A legacy server only
knows the session-wide subscription. So the first listen stream that names a URI makes the
aggregate send `resources/subscribe` for it on the member's shared session, and the last one to
close sends `resources/unsubscribe` (a count per member and URI: the session holds one subscription
however many streams want it). The server's `notifications/resources/updated` then goes to each
open stream that named its URI, with that stream's `subscriptionId`.

A URI is honoured (listed in the acknowledgement's `resourceSubscriptions`) when a connected legacy
member owns it (the era bridge: its one server; the aggregate: by `Directory.by_uri`), says
`resources.subscribe` in its capabilities, and answered the subscribe; any other is left out of the
acknowledgement, as the spec lets a server do. The subscriptions live on the member's shared
session: a server process restarted by its supervisor has forgotten them (the handshake is
replayed, not the subscriptions), so its updates stop until the streams listen again. Modern
members are not asked (the aggregate's own listen stream with them carries list changes only).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio

from wire_gateway.proxy.aggregate.directory import LIST_TIMEOUT, RouteError
from wire_gateway.wire.era import LEGACY, META_SUBSCRIPTION_ID

if TYPE_CHECKING:
    from wire_gateway.proxy.aggregate.endpoint import Aggregate
    from wire_gateway.proxy.aggregate.members import Member

log = logging.getLogger("wire_gateway.aggregate")

MAX_URIS = 256           # URIs one listen stream may name; more are not honoured


class _Subscription:
    """One URI subscribed on one member's session, and how many listen streams want it."""

    __slots__ = ("count", "ready", "ok")

    def __init__(self) -> None:
        self.count = 0
        self.ready = trio.Event()          # the member answered the subscribe
        self.ok = False


class ResourceSubscriptions:
    """The aggregate's resource subscriptions: per member and URI, and per listen stream."""

    def __init__(self, agg: Aggregate) -> None:
        self.agg = agg
        self.subs: dict[tuple[str, str], _Subscription] = {}
        self.by_listen: dict[Any, list[tuple[Member, str]]] = {}

    async def open(self, listen_id: Any, uris: Any) -> list[str]:
        """Subscribe a listen stream to `uris` (the client's `resourceSubscriptions`): the ones honoured."""
        if not isinstance(uris, list):
            return []
        held: list[tuple[Member, str]] = []
        self.by_listen[listen_id] = held
        honoured = []
        for uri in dict.fromkeys(u for u in uris[:MAX_URIS] if isinstance(u, str)):
            member = await self._owner(uri)
            if member is not None and await self._take(member, uri):
                held.append((member, uri))
                honoured.append(uri)
        return honoured

    async def _owner(self, uri: str) -> Member | None:
        agg = self.agg
        if agg.single:
            member: Member | None = agg.members[agg.name]
        else:
            try:
                member = await agg.directory.by_uri(uri)
            except RouteError:
                return None
        if member is None or not member.ok or member.era != LEGACY:
            return None
        resources = member.capabilities.get("resources")
        return member if isinstance(resources, dict) and resources.get("subscribe") else None

    async def _take(self, member: Member, uri: str) -> bool:
        """Count one more stream for the URI, subscribing on the member's session for the first;
        whether the member holds the subscription."""
        key = (member.name, uri)
        sub = self.subs.get(key)
        got = False
        if sub is None:
            sub = self.subs[key] = _Subscription()
        sub.count += 1
        try:
            if sub.count == 1 and not sub.ready.is_set():
                try:
                    answer = await member.call("resources/subscribe", {"uri": uri},
                                               min(member.timeout, LIST_TIMEOUT))
                    sub.ok = "result" in answer
                    if not sub.ok:
                        log.info("aggregate: %s refused resources/subscribe %r: %s", member.name, uri,
                                 answer.get("error"))
                finally:
                    sub.ready.set()
            else:
                await sub.ready.wait()
            got = sub.ok
        finally:
            if not got:                    # refused, or cancelled: this stream holds nothing
                self._drop(member, uri)
        return got

    def _drop(self, member: Member, uri: str) -> None:
        """One stream fewer wants the URI; the last one unsubscribes (if the server had subscribed)."""
        key = (member.name, uri)
        sub = self.subs.get(key)
        if sub is None:
            return
        sub.count -= 1
        if sub.count > 0:
            return
        del self.subs[key]
        agg = self.agg
        if sub.ok and agg.nursery is not None and not agg.closing.is_set():
            agg.nursery.start_soon(self._unsubscribe, member, uri)

    def close(self, listen_id: Any) -> None:
        """A listen stream ended: a URI no open stream wants any more is unsubscribed."""
        for member, uri in self.by_listen.pop(listen_id, ()):
            self._drop(member, uri)

    @staticmethod
    async def _unsubscribe(member: Member, uri: str) -> None:
        await member.call("resources/unsubscribe", {"uri": uri}, min(member.timeout, LIST_TIMEOUT))

    def updated(self, member: Member, params: dict[str, Any]) -> None:
        """The member's `notifications/resources/updated`: to each stream that named its URI."""
        uri = params.get("uri")
        for listen_id, held in list(self.by_listen.items()):
            if any(m is member and u == uri for m, u in held):
                meta = params.get("_meta")
                meta = {**meta, META_SUBSCRIPTION_ID: listen_id} if isinstance(meta, dict) else \
                    {META_SUBSCRIPTION_ID: listen_id}
                self.agg.relay.to_client({"jsonrpc": "2.0", "method": "notifications/resources/updated",
                                          "params": {**params, "_meta": meta}})
