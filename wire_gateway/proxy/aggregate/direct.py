"""The aggregate's fast path for `tools/call` (and, for the era bridge, its lists): no task per request.

A call the aggregate can pass on as it is, except for its id and the tool's name, is
forwarded from `Aggregate.request` itself, and the member's answer goes back to the
client from the member's reader, with only the id changed in its bytes when the
client's era needs nothing else changed. The general path (a task per request,
`Aggregate._serve` in endpoint.py) costs a task start, an event and two wake-ups per call, more than
the routing itself; it still serves everything this path declines: a name it cannot
route (its error comes from there), a progress token (remapped there), `_meta` the
member's era needs adapted, a member or client whose era differs, start-up. One difference of
eras is taken here: a modern client's call to a legacy member (the era bridge's every call), its
modern `_meta` keys stripped, when the client declared no capability a member's request could
need (else asks.py must be able to park it), asked for no log messages (the general path's call
carries its level, which relay.py filters the member's logs by) and it is no retry of an
input-required result. The other difference of eras is taken too: a legacy client's call to a
modern member, the modern `_meta` envelope added (Aggregate.params_for), when the client declared
none of those capabilities (else asks_legacy.py must be able to put the member's input requests to
it; such a client can only be told no, as asks_legacy.py tells it) and set no log level. The era
bridge's one-server aggregate also sends the lists (`tools/list`, ...) this way: its member's own
pages, in the client's era.

What the general path guarantees holds here too:
- exactly one answer per request, settled by the aggregate's `pending` table: whoever
  pops the client's id first (the answer, a cancellation, the timeout, shutdown) decides;
- a request the client cancelled gets no answer, and the member gets `notifications/cancelled`;
- a member that does not answer within its `timeout` is sent `notifications/cancelled` and
  the client gets the same error as from the general path, from one watchdog task whose
  deadline is the oldest call's (a member's calls expire in the order they were made).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import trio

from wire_gateway.proxy.aggregate.asks import CAPABILITY, INPUT_METHODS, accepted
from wire_gateway.proxy.aggregate.messages import META_CLIENT_CAPS, META_CLIENT_INFO, META_LOG_LEVEL
from wire_gateway.wire import errors, jsonfast, namespacing as ns, scan
from wire_gateway.wire.era import LEGACY, META_PROTOCOL_VERSION, MODERN, MODERN_VERSIONS
from wire_gateway.wire.frame import Frame, Kind

if TYPE_CHECKING:
    from wire_gateway.proxy.aggregate.endpoint import Aggregate
    from wire_gateway.proxy.aggregate.members import Member

META_PREFIX = "io.modelcontextprotocol/"
ENVELOPE = (META_PROTOCOL_VERSION, META_CLIENT_INFO, META_CLIENT_CAPS)
# Keys a legacy client's result loses (namespacing.result_for_legacy): an answer with any of them is remade.
MODERN_RESULT_KEYS = ("resultType", "ttlMs", "cacheScope")
# What a modern client's result says besides the legacy member's (namespacing.result_for_modern), and
# those members' bytes, written into the member's answer:
COMPLETE_FIELD = {"resultType": "complete"}
LISTED_FIELDS = {**COMPLETE_FIELD, "ttlMs": 0, "cacheScope": "private"}   # a list's too (cacheable)
COMPLETE, LISTED = (jsonfast.dumps(fields)[1:-1] for fields in (COMPLETE_FIELD, LISTED_FIELDS))
# The lists a modern client of the era bridge's one legacy member gets from here (its own pages).
BRIDGED_LISTS = frozenset({"tools/list", "prompts/list", "resources/list", "resources/templates/list"})


class Direct:
    """One forwarded call: the client's id, and the member and id it went to."""

    __slots__ = ("client_id", "deadline", "member", "method", "our_id")

    def __init__(self, client_id: Any, member: Member, our_id: str, deadline: float, method: str) -> None:
        self.client_id = client_id
        self.member = member
        self.our_id = our_id
        self.deadline = deadline
        self.method = method


class DirectCalls:
    """The calls on the fast path, by the client's id, and the watchdog that times them out."""

    def __init__(self, agg: Aggregate) -> None:
        self.agg = agg
        self.route_tool = agg.directory.route_tool     # bound once: every call is routed
        self.by_client: dict[Any, Direct] = {}
        self.ready = False                       # every member has had its first chance to connect
        self._watch: trio.CancelScope | None = None   # the watchdog's sleep; None while it is not running
        self._unflushed: set[Member] = set()

    # ---- client -> member ---------------------------------------------------------------------------

    def start(self, frame: Frame) -> bytes | bool | None:
        """Forward a tools/call (or a bridged list, BRIDGED_LISTS) at once: None (forwarded), bytes
        (the answer now), or False when the general path must serve it."""
        agg = self.agg
        if self._watch is None or agg.closing.is_set():
            return False
        if not self.ready:
            self.ready = all(m.tried.is_set() for m in agg.members.values())
            if not self.ready:
                return False
        params = frame.params
        method = frame.method or ""
        if not isinstance(params, dict):
            return False
        if method == "tools/call":
            if not isinstance(params.get("name"), str):
                return False
            routed = self.route_tool(params["name"])
            if routed is None:
                return False         # the general path answers why it cannot route it
            member, original = routed
        else:                        # a bridged list (Aggregate.request sends no other here)
            member, original = agg.members[agg.name], None
            if not member.ok:
                return False
        if member.era == LEGACY and agg.era == MODERN:
            if not self._bridgeable(params):
                return False
            if len(params["_meta"]) == len(ENVELOPE):      # the envelope alone (most requests): no _meta left
                params = params.copy()
                del params["_meta"]
            else:
                params = ns.strip_modern_meta(params)
        elif member.era == MODERN and agg.era == LEGACY:
            if not self._askless(params):
                return False
            params = agg.params_for(member, params)
        elif member.era != agg.era or not self._meta_fits(agg.era, params) or original is None:
            return False
        our_id = f"agg-{next(member.ids)}"
        msg = {"jsonrpc": "2.0", "id": our_id, "method": method,
               "params": {**params, "name": original} if original is not None else params}
        try:
            raw = jsonfast.dumps(msg)
        except ValueError:
            return False
        timeout = member.timeout
        deadline = trio.current_time() + timeout if timeout != math.inf else math.inf
        entry = Direct(frame.id, member, our_id, deadline, method)
        agg.pending.add(frame.id, method, None)
        member.direct[our_id] = entry
        self.by_client[frame.id] = entry
        refused = member.upstream.request(Frame(raw, Kind.REQUEST, msg, method, our_id))
        if refused is not None:
            self._forget(entry)
            agg.pending.pop(frame.id)
            agg.frames_out += 1
            return jsonfast.dumps({**jsonfast.loads(refused), "id": frame.id})
        self._unflushed.add(member)
        watch = self._watch
        if deadline < watch.deadline:      # (rarely: calls expire in the order they are made; setting costs)
            watch.deadline = deadline
        return None

    @staticmethod
    def _meta_fits(era: str | None, params: dict[str, Any]) -> bool:
        """Whether the member may get the client's `_meta` as it is (Aggregate.params_for would
        leave it unchanged) and it names no progress token (remapped by the general path)."""
        meta = params.get("_meta")
        if era == MODERN:
            return isinstance(meta, dict) and "progressToken" not in meta and all(k in meta for k in ENVELOPE)
        if era == LEGACY:
            if "_meta" not in params:
                return True
            return isinstance(meta, dict) and bool(meta) and "progressToken" not in meta \
                and not any(k.startswith(META_PREFIX) for k in meta)
        return False

    @staticmethod
    def _bridgeable(params: dict[str, Any]) -> bool:
        """Whether a modern client's call may go to a legacy member from here: a well-formed modern
        request of a version the gateway speaks (the member cannot refuse one it does not: the
        general path answers -32022 for it), no progress token, no log level, no retry, and nothing
        the member could ask the client for."""
        meta = params.get("_meta")
        return isinstance(meta, dict) and "progressToken" not in meta and META_CLIENT_INFO in meta \
            and META_CLIENT_CAPS in meta and meta.get(META_PROTOCOL_VERSION) in MODERN_VERSIONS \
            and META_LOG_LEVEL not in meta and "requestState" not in params and "inputResponses" not in params \
            and not accepted(params)

    def _askless(self, params: dict[str, Any]) -> bool:
        """Whether a legacy client's request may go to a modern member from here: no progress token
        (the general path remaps it), no log level (its call carries it), and a client that declared
        none of the capabilities a member's input request needs."""
        agg = self.agg
        meta = params.get("_meta")
        if agg.log_level is not None or (meta is not None and (not isinstance(meta, dict) or "progressToken" in meta)):
            return False
        caps = agg.client_init.get("capabilities")
        return not isinstance(caps, dict) or not any(isinstance(caps.get(cap), dict) for cap in CAPABILITY.values())

    def flush(self, soon: bool) -> None:
        """Write what the calls just made queued for their members (the front calls this once
        per batch of client input, as for any upstream)."""
        if self._unflushed:
            members, self._unflushed = self._unflushed, set()
            for member in members:
                if soon:
                    member.upstream.flush_soon()
                else:
                    member.upstream.flush()

    def cancel(self, client_id: Any) -> bool:
        """The client cancelled: no answer is owed, the member is told. False if not ours."""
        entry = self.by_client.get(client_id)
        if entry is None:
            return False
        self._forget(entry)
        self.agg.pending.pop(client_id)
        entry.member.cancel(entry.our_id, "the client cancelled the request")
        return True

    def _forget(self, entry: Direct) -> None:
        self.by_client.pop(entry.client_id, None)
        entry.member.direct.pop(entry.our_id, None)

    # ---- member -> client -------------------------------------------------------------------------

    def answered(self, entry: Direct, msg: dict[str, Any], frame: Frame | None) -> None:
        """The member's answer (`frame`; None for an error the gateway made) reaches the client."""
        agg = self.agg
        self.by_client.pop(entry.client_id, None)
        if agg.pending.pop(entry.client_id) is None:
            return                      # cancelled, timed out or answered at shutdown already
        client_id = entry.client_id
        if frame is not None:
            out = self._as_sent(frame, msg, client_id, entry.method)
            if out is not None:
                agg.frames_out += 1
                agg.sink.server_frame(Frame(out[0], frame.kind, out[1], None, client_id, frame.note))
                return                  # the member's reader flushes the sink after its batch
        if agg.era == LEGACY and entry.member.era == MODERN and entry.method in INPUT_METHODS:
            msg = self._input_refused(entry, msg)
        agg.deliver(client_id, entry.method, msg, frame.note if frame is not None else None)

    def _input_refused(self, entry: Direct, msg: dict[str, Any]) -> dict[str, Any]:
        """A modern member's input-required result for a legacy client that declared no capability to
        answer it with: the error asks_legacy.py answers such a client with (the member is told the
        client's capabilities, so a well-behaved one does not ask)."""
        result = msg.get("result")
        if not isinstance(result, dict) or result.get("resultType") != "input_required":
            return msg
        member = entry.member
        legacy_asks = self.agg.relay.legacy_asks
        problem = legacy_asks.check(member, result)[2] or (
            f"server '{member.name}' asked for client input during {entry.method}, and the client declared none "
            "of the capabilities to give it")
        return legacy_asks.refusal(entry.our_id, member, entry.method, problem)

    def _as_sent(self, frame: Frame, msg: dict[str, Any], client_id: Any,
                 method: str) -> tuple[bytes, dict[str, Any]] | None:
        """The member's answer as the client gets it, made from the member's own bytes: only its id
        changed, and for a modern client of a legacy member (the era bridge) the modern result
        fields added too (`resultType`; a list's cache hints); None where Aggregate.deliver must
        remake it."""
        listed = method != "tools/call"
        try:
            new_id = jsonfast.dumps(client_id)
            if not listed and self._unchanged(msg):
                return scan.replace_id(frame.raw, new_id), {**msg, "id": client_id}
        except ValueError:
            return None
        result = msg.get("result")      # (a list's error: deliver says it in the modern era's words)
        if self.agg.era != MODERN or not isinstance(result, dict) or any(k in result for k in MODERN_RESULT_KEYS):
            return None
        added = LISTED if listed else COMPLETE
        raw = scan.with_result_member(frame.raw, new_id, added)
        if raw is None:
            return None
        return raw, {**msg, "id": client_id, "result": {**(LISTED_FIELDS if listed else COMPLETE_FIELD), **result}}

    def _unchanged(self, msg: dict[str, Any]) -> bool:
        """Whether Aggregate.deliver would send this answer as it is, but for its id."""
        if "result" not in msg:
            return "error" in msg
        result = msg["result"]
        if not isinstance(result, dict):
            return False
        if self.agg.era == MODERN:
            return "resultType" in result
        if any(k in result for k in MODERN_RESULT_KEYS):
            return False
        meta = result.get("_meta")
        return (meta is None and "_meta" not in result) or (
            isinstance(meta, dict) and bool(meta) and not any(k.startswith(META_PREFIX) for k in meta))

    # ---- timeouts ---------------------------------------------------------------------------------------

    async def watch(self) -> None:
        """Expire calls whose member did not answer within its timeout."""
        try:
            while True:
                with trio.CancelScope(deadline=self._soonest()) as scope:
                    self._watch = scope
                    await trio.sleep_forever()
                self._watch = None
                self._expire(trio.current_time())
        finally:
            self._watch = None

    def _soonest(self) -> float:
        soonest = math.inf
        for member in self.agg.members.values():
            if member.direct:
                first = next(iter(member.direct.values()))
                soonest = min(soonest, first.deadline)
        return soonest

    def _expire(self, now: float) -> None:
        for member in self.agg.members.values():
            while member.direct:
                entry = next(iter(member.direct.values()))
                if entry.deadline > now:
                    break
                self._forget(entry)
                timeout = member.timeout
                member.cancel(entry.our_id, f"no answer within {timeout:g}s")
                self.answered(entry, jsonfast.loads(errors.error_frame(
                    entry.our_id, errors.UPSTREAM_UNAVAILABLE,
                    f"server '{member.name}' did not answer {entry.method} within {timeout:g}s",
                    {"server": member.name, "method": entry.method})), None)
