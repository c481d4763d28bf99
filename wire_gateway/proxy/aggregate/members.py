"""The aggregate's members: one configured server each, its upstream, its era and its handshake.

The aggregate is every member's client. A member probes its server's era with `server/discover`,
else does the legacy handshake the gateway does itself, and retries with backoff while the server
cannot be reached: a server that is down is left out of the aggregate, not fatal to it. An
exception while setting a member up is different: upstream faults arrive as error answers, never
as exceptions, so an exception is a bug in the gateway. It is logged as an ERROR with its
traceback (which the tests fail on) and the member stays BROKEN instead of being retried as if the
server were down (tests/test_aggregate_member_bug.py); the other members go on.

A member is also its upstream's Sink, so nothing a server sends reaches the client without the
aggregate's routing: answers settle the member's calls (or the fast path's, `direct`), requests
and notifications go to the relay.
"""
from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import trio

from wire_gateway.config import Limits, ServerSpec
from wire_gateway.proxy.aggregate.messages import (
    CLIENT_INFO,
    META_SERVER_INFO,
    dict_at,
    error_msg,
    modern_envelope,
)
from wire_gateway.proxy.aggregate.states import MEMBER_TRANSITIONS, MemberState
from wire_gateway.upstream.protocol import Sink, Upstream
from wire_gateway.upstream.states import check_transition
from wire_gateway.wire import errors, jsonfast
from wire_gateway.wire.era import LEGACY, LEGACY_VERSIONS, MODERN, MODERN_VERSIONS
from wire_gateway.wire.frame import Frame, Kind

if TYPE_CHECKING:
    from wire_gateway.proxy.aggregate.direct import Direct
    from wire_gateway.proxy.aggregate.endpoint import Aggregate

log = logging.getLogger("wire_gateway.aggregate")

UpstreamFactory = Callable[[ServerSpec, Limits, Sink], Upstream]

RETRY_MAX = 30.0                # longest pause between attempts to (re)connect a failed member


NOTES: ContextVar[list[str] | None] = ContextVar("wire_gateway_aggregate_notes", default=None)
"""Set by the task serving a client request: what the members' policies did to the answers it
waited for (a guardrail block), so its dump record can say so."""


class Call:
    """One request to a member, waiting for its answer. A call the era bridge serves (`accepts`: the
    requests the modern client can take as an input-required result) also collects the requests the
    member sends the client meanwhile (`asks`), which wake its waiter too (relay.py, asks.py)."""

    __slots__ = ("done", "wake", "msg", "note", "accepts", "asks", "shown", "log_level")

    def __init__(self, accepts: frozenset[str] | None = None, log_level: str | None = None) -> None:
        self.done = trio.Event()
        self.wake = trio.Event()           # the answer, or a new ask
        self.msg: dict[str, Any] | None = None
        self.note: str | None = None
        self.accepts = accepts
        self.asks: list[Frame] = []
        self.shown = 0                     # asks already put to the client
        self.log_level = log_level         # a modern client's `logLevel` for the call (relay.py filters logs)

    def answered(self, msg: dict[str, Any], note: str | None) -> None:
        self.msg, self.note = msg, note
        self.done.set()
        self.wake.set()

    def refused(self, msg: dict[str, Any]) -> None:
        """The gateway answers the call itself while the server still works on it (it was told to
        stop): `done` stays unset, so a session of the call's own is not reused (sessions.py)."""
        self.msg = msg
        self.wake.set()


class Member:
    """One configured server inside the aggregate: its upstream, its era, its calls in flight."""

    def __init__(self, agg: Aggregate, spec: ServerSpec, limits: Limits, factory: UpstreamFactory) -> None:
        self.agg = agg
        self.name = spec.name
        self.spec = spec
        # The one call site that creates member upstreams: the policy chain plugs in here.
        self.upstream = factory(spec, limits, self)
        self.era: str | None = None
        self.state = MemberState.WAITING
        # `state is CONNECTED`, kept as a plain attribute: every routed request reads it (the fast path too).
        self.ok = False
        self.tried = trio.Event()         # the first setup attempt has ended (either way)
        self.capabilities: dict[str, Any] = {}
        self.instructions: str | None = None
        self.server_info: dict[str, Any] | None = None   # who the server says it is (its initialize answer)
        self.problem = "not started yet (a lazy aggregate starts with its first request)"
        self.calls: dict[str, Call] = {}
        self.direct: dict[str, Direct] = {}     # tools/calls forwarded without a task (direct.py)
        # A modern member's listen stream: the resources a legacy client subscribed to ride on it too.
        self.resource_uris: set[str] = set()
        self.listen_acked = trio.Event()
        self._listen_scope: trio.CancelScope | None = None
        self._listening = False
        self.ids = itertools.count(1)

    @property
    def timeout(self) -> float:
        """How long a call to this member may wait for its answer (`timeout: null`: no limit)."""
        return math.inf if self.spec.timeout is None else self.spec.timeout

    def _become(self, state: MemberState) -> None:
        self.state = check_transition(MEMBER_TRANSITIONS, self.name, self.state, state)
        self.ok = state is MemberState.CONNECTED
        self.tried.set()

    # ---- connecting: era and handshake ------------------------------------------------------------

    async def connect(self) -> None:
        """Probe the member's era and do the handshake its era needs; retry with backoff while it fails."""
        agg = self.agg
        delay = 1.0
        while not agg.closing.is_set():
            try:
                problem = await self._setup()
            except Exception as exc:
                log.error("aggregate: setting up member %s failed inside the gateway (a bug, not the server's "
                          "fault); the member stays unavailable", self.name, exc_info=exc)
                self.problem = f"the gateway failed to set it up: {type(exc).__name__}"
                self._become(MemberState.BROKEN)
                agg.update_state()
                return
            if problem is not None:
                self.problem = problem
            self._become(MemberState.UNAVAILABLE if problem is not None else MemberState.CONNECTED)
            agg.update_state()
            if problem is None:
                log.info("aggregate: member %s connected (%s era)", self.name, self.era)
                agg.relay.announce_all_lists()
                return
            log.warning("aggregate: member %s is unavailable (%s); its tools are left out, retrying in %.0fs",
                        self.name, self.problem, delay)
            with trio.move_on_after(delay):
                await agg.closing.wait()
            delay = min(delay * 2, RETRY_MAX)

    async def _setup(self) -> str | None:
        """One attempt: None when the member is connected, else what went wrong."""
        timeout = self.spec.handshake_timeout
        probe: dict[str, Any] = {}
        if self.agg.member_era != LEGACY:      # known legacy (the era bridge): no probe
            probe = await self.call("server/discover", {"_meta": modern_envelope(None, {})}, timeout)
        discovered = dict_at(probe, "result")
        versions = discovered.get("supportedVersions")
        if isinstance(versions, list) and MODERN_VERSIONS[0] in versions:
            self.era = MODERN
            self.upstream.era = MODERN
            self.capabilities = dict_at(discovered, "capabilities")
            self.instructions = discovered.get("instructions")
            info = dict_at(discovered, "_meta").get(META_SERVER_INFO)
            self.server_info = info if isinstance(info, dict) else None
            self._start_listen()
            return None
        # Anything else (an error, a 4xx from an HTTP server that has no modern endpoint, no answer)
        # may be a legacy-only server: try the legacy handshake; it fails fast if the member is down.
        init = await self._initialize(timeout)
        result = init.get("result")
        if not isinstance(result, dict):
            err = dict_at(init, "error")
            probe_err = dict_at(probe, "error")
            if not probe:                  # not probed: the server is known to be legacy
                return f"initialize failed ({err.get('message', 'no result')})"
            return (f"server/discover failed ({probe_err.get('message', 'no usable answer')}) and so did "
                    f"initialize ({err.get('message', 'no result')})")
        self._legacy(result)
        return None

    async def setup_session(self, owner: Member) -> str | None:
        """The handshake of another legacy session with `owner`'s server (sessions.py): None when done,
        else what went wrong. The server's era is known, so there is no probe and no retry."""
        init = await self._initialize(owner.spec.handshake_timeout)
        result = init.get("result")
        if not isinstance(result, dict):
            return f"initialize failed ({dict_at(init, 'error').get('message', 'no result')})"
        self._legacy(result)
        self._become(MemberState.CONNECTED)
        return None

    async def _initialize(self, timeout: float) -> dict[str, Any]:
        return await self.call("initialize", {
            "protocolVersion": LEGACY_VERSIONS[0],
            "capabilities": {"sampling": {}, "elicitation": {}, "roots": {"listChanged": True}},
            "clientInfo": CLIENT_INFO}, timeout)

    def _legacy(self, result: dict[str, Any]) -> None:
        """The legacy handshake's answer: the member's era, capabilities and identity; initialized."""
        self.era = LEGACY
        self.upstream.era = LEGACY
        self.capabilities = dict_at(result, "capabilities")
        self.instructions = result.get("instructions")
        info = result.get("serverInfo")
        self.server_info = info if isinstance(info, dict) else None
        self.send_notification("notifications/initialized", None)

    def _listen_filter(self) -> dict[str, Any]:
        """What the aggregate's listen stream asks for: the list changes the member announces, and
        the resources a legacy client subscribed to (`resources/subscribe`, endpoint.py)."""
        caps = self.capabilities
        wanted: dict[str, Any] = {flag: True for key, flag in (
            ("tools", "toolsListChanged"), ("prompts", "promptsListChanged"), ("resources", "resourcesListChanged"))
            if isinstance(caps.get(key), dict) and caps[key].get("listChanged")}
        if self.resource_uris:
            wanted["resourceSubscriptions"] = sorted(self.resource_uris)
        return wanted

    def _start_listen(self) -> None:
        """Modern members announce list changes (and resource updates) only on a subscriptions/listen
        stream: keep one open, re-opened after a restart, and with a new filter when it changes."""
        agg = self.agg
        if self._listening or not self._listen_filter() or agg.nursery is None:
            return
        self._listening = True

        async def listen() -> None:
            try:
                while not agg.closing.is_set():
                    wanted = self._listen_filter()
                    if not wanted:
                        return
                    with trio.CancelScope() as scope:
                        self._listen_scope = scope
                        answer = await self.call("subscriptions/listen",
                                                 {"notifications": wanted, "_meta": modern_envelope(None, {})})
                    self._listen_scope = None
                    if scope.cancelled_caught:
                        continue           # relisten: the same stream with the new filter
                    error = answer.get("error") if isinstance(answer.get("error"), dict) else None
                    log.info("aggregate: member %s ended its subscriptions/listen stream: %s", self.name,
                             error.get("message") if error else "completed")
                    if error is None or not isinstance(error.get("data"), dict) \
                            or error["data"].get("source") != errors.SOURCE:
                        return             # the server's own answer: it will not take one
                    with trio.move_on_after(1.0):   # the member restarted: listen again once it is back
                        await agg.closing.wait()
            finally:
                self._listening = False
                self._listen_scope = None

        agg.nursery.start_soon(listen)

    async def relisten(self, timeout: float) -> bool:
        """Re-open the listen stream with the current filter; whether the member acknowledged it in time."""
        self.listen_acked = trio.Event()
        if self._listen_scope is not None:
            self._listen_scope.cancel()
        else:
            self._start_listen()
        with trio.move_on_after(timeout):
            await self.listen_acked.wait()
        return self.listen_acked.is_set()

    # ---- calls to the member --------------------------------------------------------------

    async def call(self, method: str, params: Any, timeout: float = math.inf,
                   log_level: str | None = None) -> dict[str, Any]:
        """Send one request to the member and wait for its answer (a result or error message).

        Cancelled (the client gave up): the member gets `notifications/cancelled`."""
        our_id, call, refused = self.begin(method, params, log_level=log_level)
        if refused is not None:
            return refused
        try:
            answer = await self.wait(our_id, call, method, timeout)
            assert answer is not None
            return answer
        finally:
            self.calls.pop(our_id, None)

    def begin(self, method: str, params: Any, accepts: frozenset[str] | None = None,
              log_level: str | None = None) -> tuple[str, Call, dict[str, Any] | None]:
        """Send one request: its id, its call, and the gateway's refusal if it could not be sent.
        The call stays in `calls` until the caller pops it."""
        our_id = f"agg-{next(self.ids)}"
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": our_id, "method": method}
        if params is not None:
            msg["params"] = params
        raw = jsonfast.dumps(msg)
        call = Call(accepts, log_level)
        self.calls[our_id] = call
        refused = self.upstream.request(Frame(raw, Kind.REQUEST, msg, method, our_id))
        self.upstream.flush()
        if refused is not None:
            self.calls.pop(our_id, None)
            return our_id, call, jsonfast.loads(refused)
        return our_id, call, None

    async def wait(self, our_id: str, call: Call, method: str, timeout: float,
                   asks: bool = False) -> dict[str, Any] | None:
        """The answer to a call `begin` made; with `asks`, None as soon as the member has asked the
        client something not yet shown. No answer within `timeout`: the member is told to stop and
        the caller gets an error; cancelled, the member is told too."""
        try:
            with trio.move_on_after(timeout) as scope:
                while call.msg is None and not (asks and len(call.asks) > call.shown):
                    await call.wake.wait()
                    call.wake = trio.Event()
        except trio.Cancelled:
            if not call.done.is_set():
                self.cancel(our_id, "the client cancelled the request")
            raise
        if call.msg is None and scope.cancelled_caught:
            self.cancel(our_id, f"no answer within {timeout:g}s")
            return error_msg(our_id, errors.UPSTREAM_UNAVAILABLE,
                             f"server '{self.name}' did not answer {method} within {timeout:g}s",
                             {"server": self.name, "method": method})
        if call.msg is None:
            return None
        notes = NOTES.get() if call.note is not None else None
        if notes is not None and call.note is not None:
            notes.append(call.note)
        return call.msg

    def send_notification(self, method: str, params: Any) -> None:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.upstream.notify(Frame(jsonfast.dumps(msg), Kind.NOTIFICATION, msg, method))
        self.upstream.flush()

    def cancel(self, our_id: str, reason: str) -> None:
        """Tell the member that nobody waits for its answer to `our_id` any more."""
        self.send_notification("notifications/cancelled", {"requestId": our_id, "reason": reason})

    # ---- Sink: what the member sends --------------------------------------------------------

    def server_frame(self, frame: Frame) -> None:
        if frame.kind is Kind.RESPONSE or frame.kind is Kind.ERROR:
            if self.direct:
                entry = self.direct.pop(frame.id, None)
                if entry is not None:
                    self.agg.direct.answered(entry, frame.msg, frame)
                    return
            call = self.calls.get(frame.id)
            if call is not None and not call.done.is_set():
                call.answered(frame.msg, frame.note)
            else:
                log.debug("aggregate: %s answered %r, which nobody waits for any more", self.name, frame.id)
            return
        if frame.kind is Kind.REQUEST:
            self.agg.relay.on_member_request(self, frame)
        else:
            self.agg.relay.on_member_notification(self, frame)

    def gateway_reply(self, req_id: Any, data: bytes) -> None:
        if self.direct:
            entry = self.direct.pop(req_id, None)
            if entry is not None:
                self.agg.direct.answered(entry, jsonfast.loads(data), None)
                return
        call = self.calls.get(req_id)
        if call is not None and not call.done.is_set():
            call.answered(jsonfast.loads(data), None)

    def flush(self) -> None:
        self.agg.sink.flush()

    async def wait_writable(self) -> None:
        await self.agg.sink.wait_writable()

    def status(self) -> dict[str, Any]:
        up = self.upstream
        proc = getattr(up, "process", None)
        return {"ok": self.ok, "era": self.era, "state": up.state, "problem": None if self.ok else self.problem,
                "url": getattr(up, "url", None),
                "pid": proc.pid if proc is not None and proc.returncode is None else None,
                "restarts": up.restarts, "lastExit": up.last_exit}
