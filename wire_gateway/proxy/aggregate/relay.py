"""What crosses the aggregate besides requests and their answers: progress, cancellations, the
members' own requests to the client, and list changes.

Every member numbers its requests and progress tokens on its own, and the client numbers its, so
nothing can cross as it is: a progress token the client chose is replaced by one of the
aggregate's for the member (and put back on each progress notification), and a request a member
sends the client (sampling, elicitation, roots) gets an id of the aggregate's, mapped back to the
member's own when the client answers, or when the member cancels it. A modern client takes no
requests from a server: a legacy member's request during one of its calls becomes an input-required
result (asks.py), and anything else gets the member an error; its log messages reach the modern
client only for the call that asked for them with a `logLevel`. The other way round, a modern
member's input-required result becomes requests to a legacy client (asks_legacy.py). List changes
are announced the way the client's era hears them: as plain notifications to a legacy client, on
each `subscriptions/listen` stream that asked for them to a modern one; a legacy client's resource
subscriptions of a modern member ride on the member's own listen stream.
"""
from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any

from wire_gateway.proxy.aggregate.asks import Asks
from wire_gateway.proxy.aggregate.asks_legacy import LegacyAsks
from wire_gateway.proxy.aggregate.directory import LIST_TIMEOUT
from wire_gateway.proxy.aggregate.messages import LOG_LEVELS, client_log_level, dict_at, error_msg, result_msg
from wire_gateway.proxy.aggregate.subscriptions import ResourceSubscriptions
from wire_gateway.wire import errors, jsonfast, namespacing as ns
from wire_gateway.wire.era import LEGACY, META_SUBSCRIPTION_ID, MODERN
from wire_gateway.wire.frame import Frame, Kind, decode

if TYPE_CHECKING:
    from wire_gateway.proxy.aggregate.endpoint import Aggregate
    from wire_gateway.proxy.aggregate.members import Member

log = logging.getLogger("wire_gateway.aggregate")

RETRY_PARAMS = ("inputResponses", "requestState")     # a modern retry's: no legacy server knows them
LIST_CHANGED = {"notifications/tools/list_changed": "toolsListChanged",
                "notifications/prompts/list_changed": "promptsListChanged",
                "notifications/resources/list_changed": "resourcesListChanged"}


class Relay:
    """The id and token maps between the client and the members, and the client's listen streams."""

    def __init__(self, agg: Aggregate) -> None:
        self.agg = agg
        self.tokens: dict[str, tuple[Any, Any]] = {}                   # our progress token -> (client id, token)
        self.server_requests: dict[str, tuple[Member, Any]] = {}       # client-facing id -> (member, its id)
        self.listens: dict[Any, dict[str, Any]] = {}                   # client's listen id -> its filter
        self.asks = Asks(agg)                                          # input-required results (modern clients)
        self.legacy_asks = LegacyAsks(agg)                             # input-required results (legacy clients)
        self.subscriptions = ResourceSubscriptions(agg)                # resourceSubscriptions of listen streams
        self._tokens = itertools.count(1)
        self._asks = itertools.count(1)

    # ---- client -> member ---------------------------------------------------------------------------

    async def forward(self, frame: Frame, member: Member, params: dict[str, Any]) -> dict[str, Any]:
        """One request to one member, with its progress token and `_meta` adapted; the answer comes back
        with the client's id (set by Aggregate.deliver)."""
        client_params = params
        params = dict(params)
        if member.era == LEGACY:
            for key in RETRY_PARAMS:
                params.pop(key, None)
        meta = params.get("_meta")
        if isinstance(meta, dict) and "progressToken" in meta:
            ours = f"agg-p{next(self._tokens)}"
            self.tokens[ours] = (frame.id, meta["progressToken"])
            params["_meta"] = {**meta, "progressToken": ours}
        else:
            ours = None
        try:
            if self.asks.wanted(member, frame.method):
                return await self.asks.serve(frame, member, client_params, self.agg.params_for(member, params), ours)
            if self.legacy_asks.wanted(member, frame.method):
                return await self.legacy_asks.serve(frame, member, self.agg.params_for(member, params))
            return await member.call(frame.method or "", self.agg.params_for(member, params), member.timeout,
                                     client_log_level(client_params))
        finally:
            if ours is not None:
                self.tokens.pop(ours, None)

    def client_answered(self, frame: Frame) -> None:
        """The client's answer to a member's request (sampling, elicitation, roots), or to a modern
        member's input request (asks_legacy.py)."""
        if self.legacy_asks.asked and self.legacy_asks.answered(frame):
            return
        asked = self.server_requests.pop(frame.id, None) if isinstance(frame.id, str) else None
        if asked is None:
            log.info("aggregate: the client answered %r, which no member asked; dropped", frame.id)
            return
        member, member_id = asked
        msg = {**frame.msg, "id": member_id}
        member.upstream.reply(Frame(jsonfast.dumps(msg), frame.kind, msg, None, member_id))
        member.upstream.flush()

    # ---- member -> client ---------------------------------------------------------------------------

    def on_member_request(self, member: Member, frame: Frame) -> None:
        """A member asks the client something (sampling, elicitation, roots): pass it on under an id
        of the aggregate's own, unless the client's era cannot take a server request."""
        agg = self.agg
        if agg.era != LEGACY:
            why = self.asks.on_member_request(member, frame) if member.era == LEGACY else \
                (f"the client reached '{member.name}' through the wire-gateway aggregate in the modern era, which "
                 f"has no server-to-client requests; {frame.method} cannot be delivered")
            if why is None:
                return                    # it becomes the input-required result of the call it belongs to
            msg = error_msg(frame.id, errors.ERA_MISMATCH, why, {"reason": "era", "method": frame.method})
            member.upstream.reply(Frame(jsonfast.dumps(msg), Kind.ERROR, msg, None, frame.id))
            member.upstream.flush()
            log.warning("aggregate: %s sent %s, which cannot cross to a %s client; answered with an error",
                        member.name, frame.method, agg.era or "not yet known")
            return
        cid = f"wire-gateway/{member.name}/{next(self._asks)}"
        if len(self.server_requests) >= agg.limits.max_in_flight:
            del self.server_requests[next(iter(self.server_requests))]
        self.server_requests[cid] = (member, frame.id)
        self.to_client({**frame.msg, "id": cid})

    def on_member_notification(self, member: Member, frame: Frame) -> None:
        method = frame.method or ""
        params = frame.params if isinstance(frame.params, dict) else {}
        if method in LIST_CHANGED:
            if method == "notifications/tools/list_changed":
                self.agg.directory.forget_names(member, "tools")
            elif method == "notifications/prompts/list_changed":
                self.agg.directory.forget_names(member, "prompts")
            self.list_changed(method)
            return
        if method == "notifications/subscriptions/acknowledged":
            member.listen_acked.set()      # the ack of the aggregate's own listen stream
            return
        if method == "notifications/progress":
            token = params.get("progressToken")
            entry = self.tokens.get(token) if isinstance(token, str) else None
            if entry is None:
                log.debug("aggregate: progress from %s for an unknown token; dropped", member.name)
                return
            self.to_client({**frame.msg, "params": {**params, "progressToken": entry[1]}})
            return
        if method == "notifications/cancelled":
            cid = next((c for c, (m, mid) in self.server_requests.items() if m is member
                        and mid == params.get("requestId")), None)
            if cid is not None:
                self.server_requests.pop(cid, None)
                self.to_client({**frame.msg, "params": {**params, "requestId": cid}})
            return
        if method == "notifications/resources/updated" and self.agg.era != LEGACY:
            self.subscriptions.updated(member, params)     # to the listen streams that named its URI
            return
        if method == "notifications/resources/updated" or method == "notifications/message":
            agg = self.agg
            if method == "notifications/message" and agg.era == MODERN and member.era == LEGACY \
                    and not self._log_wanted(member, params):
                log.debug("aggregate: a log message from %s that no request asked for; dropped", member.name)
                return
            if agg.era == LEGACY and member.era == MODERN and isinstance(params.get("_meta"), dict):
                self.to_client({**frame.msg, "params": ns.strip_modern_meta(params)})   # no subscription id
                return
            agg.frames_out += 1
            agg.sink.server_frame(frame)
            agg.sink.flush()
            return
        log.debug("aggregate: %s from %s not forwarded", method, member.name)

    @staticmethod
    def _log_wanted(member: Member, params: dict[str, Any]) -> bool:
        """Whether a legacy member's log message may reach a modern client (2026-07-28: only for a
        request whose `_meta` set a logLevel, at or above it). A legacy session's log names no
        request: it is the one call's in flight on that session (a session of a call's own carries
        only that call, sessions.py); with several, or none, it is nobody's and is dropped."""
        calls = [call for call in member.calls.values() if not call.done.is_set()]
        if len(calls) != 1 or member.direct:
            return False
        wanted, level = calls[0].log_level, params.get("level")
        return wanted is not None and level in LOG_LEVELS and LOG_LEVELS.index(level) >= LOG_LEVELS.index(wanted)

    def to_client(self, msg: dict[str, Any]) -> None:
        agg = self.agg
        frame = decode(jsonfast.dumps(msg))
        assert isinstance(frame, Frame)
        agg.frames_out += 1
        agg.sink.server_frame(frame)
        agg.sink.flush()

    # ---- list changes and resource subscriptions ----------------------------------------------------

    async def listen(self, frame: Frame, params: dict[str, Any]) -> dict[str, Any] | None:
        """A modern client's subscriptions/listen: acknowledged at once, open until it is cancelled."""
        wanted = dict_at(params, "notifications")
        agreed: dict[str, Any] = {flag: True for flag in LIST_CHANGED.values() if wanted.get(flag)}
        try:
            uris = await self.subscriptions.open(frame.id, wanted.get("resourceSubscriptions"))
            if uris:
                agreed["resourceSubscriptions"] = uris
            self.listens[frame.id] = agreed
            self.to_client({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                            "params": {"_meta": {META_SUBSCRIPTION_ID: frame.id}, "notifications": agreed}})
            await self.agg.closing.wait()
            return result_msg(frame.id, {"resultType": "complete"})
        finally:
            self.listens.pop(frame.id, None)
            self.subscriptions.close(frame.id)

    def announce_all_lists(self) -> None:
        """A member joined (or came back): every list may have changed."""
        if not self.agg.greeted:
            return
        for method in LIST_CHANGED:
            self.list_changed(method)

    def list_changed(self, method: str) -> None:
        if self.agg.era == LEGACY:
            self.to_client({"jsonrpc": "2.0", "method": method})
            return
        flag = LIST_CHANGED[method]
        for listen_id, agreed in list(self.listens.items()):
            if agreed.get(flag):
                self.to_client({"jsonrpc": "2.0", "method": method,
                                "params": {"_meta": {META_SUBSCRIPTION_ID: listen_id}}})

    async def subscribe(self, frame: Frame, member: Member, params: dict[str, Any]) -> dict[str, Any]:
        """A legacy client's `resources/subscribe` or `unsubscribe` of a modern member's resource: the
        member's `subscriptions/listen` stream is re-opened with the new set of URIs (members.py), and
        its `notifications/resources/updated` reach the client (on_member_notification)."""
        uri = params.get("uri")
        if not isinstance(uri, str):
            return error_msg(frame.id, errors.INVALID_PARAMS, f"Invalid params: {frame.method} needs a string uri")
        before = set(member.resource_uris)
        if frame.method == "resources/subscribe":
            member.resource_uris.add(uri)
        else:
            member.resource_uris.discard(uri)
        if member.resource_uris != before and not await member.relisten(LIST_TIMEOUT):
            log.warning("aggregate: %s did not acknowledge its subscriptions/listen stream with %d resource "
                        "subscriptions within %gs", member.name, len(member.resource_uris), LIST_TIMEOUT)
        return result_msg(frame.id, {})
