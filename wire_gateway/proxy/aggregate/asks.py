"""A legacy member's requests to a modern client, carried as input-required results (2026-07-28 MRTR).

A legacy server asks its client things in the middle of a call (`elicitation/create`,
`sampling/createMessage`, `roots/list`) and waits for the answer; a modern client takes no requests
from a server, but answers an input-required result (`inputRequests`, `requestState`) by sending the
same request again with `inputResponses`. So when a member asks during a `tools/call`,
`prompts/get` or `resources/read` of a modern client, the member's call is kept waiting (parked),
the client gets an input-required result whose `inputRequests` are the member's requests, and its
retry answers them under the member's own ids and waits on for the same call, which may end, or
ask again (another round).

Which call asks: a legacy session cannot say which request a server's request belongs to (stdio
has no field for it). Where one aggregate serves many clients (the HTTP routes), a call that could
be asked something runs on a legacy session of its own (sessions.py), so a request arriving there
is that call's. On a shared session (the stdio fronts, a pool at its bound, `bridge_sessions: 0`)
a request is given to the one input-capable call of that session in flight; with none, or with
several, it is refused (-31005): a guess could put one client's question to another. Nor is it
shown to a client that did not declare the capability it needs (2026-07-28: a server must not).
When that client declared none of them, the gateway, as the modern server, answers its call with
MissingRequiredClientCapabilityError (-32021, which the modern HTTP front sends with status 400)
and cancels the server's call; a client that declared another may still be asked that one, so only
the server's request is refused and the server goes on.

The `requestState` is an HMAC-protected token (wire.request_state) naming the parked call, bound to
the method, the original params, the caller (with auth) and an expiry (`STATE_TTL`); a state that
fails any check gets -32602. A parked call the client does not come back for is cancelled at its
expiry, and the member's requests are answered with an error. The member's own `timeout` still
bounds each wait for the server, as for any call.
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from wire_gateway.auth.context import CALLER
from wire_gateway.proxy.aggregate.messages import META_CLIENT_CAPS, client_log_level, error_msg, result_msg
from wire_gateway.wire import errors, jsonfast, request_state
from wire_gateway.wire.era import LEGACY, MODERN
from wire_gateway.wire.frame import Frame, Kind

if TYPE_CHECKING:
    from wire_gateway.proxy.aggregate.endpoint import Aggregate
    from wire_gateway.proxy.aggregate.members import Call, Member

log = logging.getLogger("wire_gateway.aggregate")

INPUT_METHODS = frozenset({"tools/call", "prompts/get", "resources/read"})   # 2026-07-28: may be input_required
CAPABILITY = {"elicitation/create": "elicitation", "sampling/createMessage": "sampling", "roots/list": "roots"}
NOTHING: frozenset[str] = frozenset()
STATE_TTL = 300.0        # seconds a client has to retry with its input
KEY_MAX = 64            # longest server request id used as an inputRequests key as it is
ASK_SETTLE = 0.03        # a server's requests this close together are put to the client in one round


def accepted(params: dict[str, Any]) -> frozenset[str]:
    """The member requests a modern client can be shown: those whose capability it declared."""
    meta = params.get("_meta")
    caps = meta.get(META_CLIENT_CAPS) if isinstance(meta, dict) else None
    if not isinstance(caps, dict) or not caps:
        return NOTHING
    return frozenset(method for method, cap in CAPABILITY.items() if isinstance(caps.get(cap), dict))


class Parked:
    """A member call waiting for the client's input."""

    __slots__ = ("member", "session", "our_id", "call", "keys", "token", "expiry")

    def __init__(self, member: Member, session: Member, our_id: str, call: Call, keys: dict[str, Frame],
                 token: str | None) -> None:
        self.member = member
        self.session = session            # the legacy session the call runs on: the member's own, or one of its pool's
        self.our_id = our_id
        self.call = call
        self.keys = keys                  # inputRequests key -> the member's request
        self.token = token                # the progress token the member was given, if any
        self.expiry = trio.CancelScope()


class Asks:
    """The parked calls of one aggregate, and the secret their states are signed with."""

    def __init__(self, agg: Aggregate) -> None:
        self.agg = agg
        self.secret = request_state.new_secret()
        self.parked: dict[str, Parked] = {}
        self._keys = itertools.count(1)

    def wanted(self, member: Member, method: str | None) -> bool:
        """Whether a request is served here: a modern client's input-capable request to a legacy member."""
        return self.agg.era == MODERN and member.era == LEGACY and method in INPUT_METHODS

    # ---- client -> member ----------------------------------------------------------------------

    async def serve(self, frame: Frame, member: Member, client_params: dict[str, Any],
                    member_params: dict[str, Any], token: str | None) -> dict[str, Any]:
        """Answer one request: the member's answer, or an input-required result. `client_params` as
        the client sent them (routed), `member_params` as the member gets them."""
        method = frame.method or ""
        caller = CALLER.get()
        principal = caller.id if caller is not None else None
        if "requestState" in client_params:
            checked = request_state.verify(self.secret, client_params["requestState"], time.time(), method,
                                           request_state.params_digest(method, client_params), principal)
            parked = self.parked.pop(checked.key, None) if isinstance(checked, request_state.Verified) else None
            if parked is None or parked.member is not member:
                why = checked if isinstance(checked, str) else \
                    "requestState names no waiting request (answered already, expired, or the gateway restarted)"
                return error_msg(frame.id, errors.INVALID_PARAMS, f"Invalid params: {why}", {"reason": "requestState"})
            parked.expiry.cancel()
            missing = self._answer(parked, client_params.get("inputResponses"))
            our_id, call, session = parked.our_id, parked.call, parked.session
            token = parked.token
            if token is not None:
                self._follow_progress(token, frame, client_params)
            if missing:               # 2026-07-28: ask again for what is missing, rather than fail
                return self._park(frame.id, member, session, our_id, call, missing, token, method, client_params,
                                  principal)
        else:
            wants = accepted(client_params)
            pool = self.agg.sessions.get(member.name) if wants else None
            session = (await pool.take() or member) if pool is not None else member
            our_id, call, refused = session.begin(method, member_params, wants, client_log_level(client_params))
            if refused is not None:
                self._release(member, session, call)
                return refused
        parked_again = False
        try:
            answer = await session.wait(our_id, call, method, member.timeout, asks=True)
            if answer is None:
                await self._settle(call)
                answer = await session.wait(our_id, call, method, member.timeout) if call.msg is not None else None
            if answer is not None:
                return answer
            fresh = call.asks[call.shown:]
            call.shown = len(call.asks)
            keys = self._name(fresh)
            parked_again = True
            return self._park(frame.id, member, session, our_id, call, keys, token, method, client_params, principal)
        finally:
            if not parked_again:
                session.calls.pop(our_id, None)
                self._release(member, session, call)
            if token is not None and client_params.get("requestState") is not None:
                self.agg.relay.tokens.pop(token, None)

    def _name(self, fresh: list[Frame]) -> dict[str, Frame]:
        """The `inputRequests` keys of a round: each request's own JSON-RPC id, the one name its
        server gave it (unique among its open requests, so within a round), or `input-N` where that
        would not do (an id too long to echo, or `1` beside `"1"`)."""
        keys: dict[str, Frame] = {}
        for ask in fresh:
            key = ask.id if isinstance(ask.id, str) else str(ask.id)
            if not 0 < len(key) <= KEY_MAX or key in keys:
                key = f"input-{next(self._keys)}"
            keys[key] = ask
        return keys

    @staticmethod
    async def _settle(call: Call) -> None:
        """The server asked something: wait until it has asked all it asks at once (a server may send
        several requests together), so one input-required result carries them all."""
        seen = -1
        while len(call.asks) != seen and call.msg is None:
            seen = len(call.asks)
            await trio.sleep(ASK_SETTLE)

    def _release(self, member: Member, session: Member, call: Call) -> None:
        """A call on a session of its own ended: the session goes back to its pool, or is closed when
        the server did not answer the call, or asked it for roots (sessions.py says why)."""
        if session is not member:
            reusable = call.done.is_set() and not any(ask.method == "roots/list" for ask in call.asks)
            self.agg.sessions[member.name].give_back(session, reusable)

    def _park(self, client_id: Any, member: Member, session: Member, our_id: str, call: Call,
              keys: dict[str, Frame], token: str | None, method: str, client_params: dict[str, Any],
              principal: str | None) -> dict[str, Any]:
        key = f"{next(self._keys)}"
        parked = Parked(member, session, our_id, call, keys, token)
        self.parked[key] = parked
        agg = self.agg
        if agg.nursery is not None:
            agg.nursery.start_soon(self._expire, key, parked)
        digest = request_state.params_digest(method, client_params)    # only now: most calls never ask
        state = request_state.mint(self.secret, key, time.time() + STATE_TTL, method, digest, principal)
        requests = {}
        for name, ask in keys.items():
            request: dict[str, Any] = {"method": ask.method}
            if ask.params is not None:
                request["params"] = ask.params
            requests[name] = request
        log.info("aggregate: %s asked the client %s during %s; answered input_required",
                 member.name, ", ".join(sorted({a.method or "?" for a in keys.values()})), method)
        return result_msg(client_id, {"resultType": "input_required", "inputRequests": requests,
                                      "requestState": state})

    def _answer(self, parked: Parked, responses: Any) -> dict[str, Frame]:
        """Answer the member's requests the client answered; the ones it did not."""
        responses = responses if isinstance(responses, dict) else {}
        missing = {}
        for key, ask in parked.keys.items():
            value = responses.get(key)
            if isinstance(value, dict):
                self._reply(parked.session, {"jsonrpc": "2.0", "id": ask.id, "result": value}, Kind.RESPONSE)
            else:
                missing[key] = ask
        return missing

    def _follow_progress(self, token: str, frame: Frame, client_params: dict[str, Any]) -> None:
        """The member's progress on a resumed call goes to the retry, under the retry's own token."""
        meta = client_params.get("_meta")
        if isinstance(meta, dict) and "progressToken" in meta:
            self.agg.relay.tokens[token] = (frame.id, meta["progressToken"])

    @staticmethod
    def _reply(member: Member, msg: dict[str, Any], kind: Kind) -> None:
        member.upstream.reply(Frame(jsonfast.dumps(msg), kind, msg, None, msg["id"]))
        member.upstream.flush()

    async def _expire(self, key: str, parked: Parked) -> None:
        with parked.expiry:
            await trio.sleep(STATE_TTL)
            if self.parked.pop(key, None) is None:
                return
            session = parked.session
            for ask in parked.keys.values():
                self._reply(session, error_msg(ask.id, errors.ERA_MISMATCH, f"the client did not answer {ask.method} "
                                               f"within {STATE_TTL:g}s"), Kind.ERROR)
            session.cancel(parked.our_id, f"the client did not come back with its input within {STATE_TTL:g}s")
            session.calls.pop(parked.our_id, None)
            self._release(parked.member, session, parked.call)

    # ---- member -> client -----------------------------------------------------------------------

    def on_member_request(self, member: Member, frame: Frame) -> str | None:
        """A legacy member's request while the client is modern: given to the call it belongs to
        (None), or why it cannot be (the relay answers the member with that). A call whose client
        declared none of the capabilities a server could ask for is answered -32021 in its place;
        one that declared another than the request needs is left running (the server is refused
        this request and may go on with what the client can answer)."""
        calls = [(our_id, c) for our_id, c in member.calls.items() if c.accepts is not None and not c.done.is_set()]
        inflight = len(calls) + len(member.direct)     # the fast path's calls (direct.py) count too
        # (a session of a call's own, sessions.py, carries that call only: its requests are that call's)
        if inflight != 1:
            return (f"{frame.method} cannot be delivered: the gateway cannot tell which of "
                    f"{inflight} calls in flight it belongs to" if inflight else
                    f"{frame.method} cannot be delivered: no request of a modern client that could carry it "
                    "(tools/call, prompts/get, resources/read) is in flight")
        accepts = calls[0][1].accepts if calls else None
        if accepts and frame.method in accepts:
            call = calls[0][1]
            call.asks.append(frame)
            call.wake.set()
            return None
        # it declared another one: the server may do without this (and asks what it can); or a
        # request no capability covers (a `ping`): refused alone, the call goes on
        if accepts or frame.method not in CAPABILITY:
            cap = CAPABILITY.get(frame.method or "", frame.method)
            return (f"the client reached '{member.name}' through the wire-gateway in the modern era and did not "
                    f"declare the {cap} capability; {frame.method} cannot be delivered")
        return self._missing_capability(member, frame, calls[0] if calls else None)

    def _missing_capability(self, member: Member, frame: Frame, asking: tuple[str, Call] | None) -> str:
        """The server needs a capability the client did not declare: the client's call is answered
        -32021 (MissingRequiredClientCapabilityError, naming it), and the server's call is cancelled,
        so that neither waits; what the relay answers the server's request with."""
        cap = CAPABILITY.get(frame.method or "", frame.method or "?")
        message = (f"Missing required client capability: '{member.name}' needs {cap} ({frame.method}) for this "
                   f"request, which the client did not declare in {META_CLIENT_CAPS}")
        data: dict[str, Any] = {"requiredCapabilities": {cap: {}}}
        agg = self.agg
        if asking is None:               # a fast-path call (direct.py): its client declared no capability
            entry = next(iter(member.direct.values()))
            our_id = entry.our_id
            member.direct.pop(our_id, None)
            agg.direct.answered(entry, error_msg(our_id, errors.MISSING_CLIENT_CAPABILITY, message, data), None)
        else:
            our_id, call = asking
            member.calls.pop(our_id, None)
            call.refused(error_msg(our_id, errors.MISSING_CLIENT_CAPABILITY, message, data))
        member.cancel(our_id, f"the client did not declare the {cap} capability")
        log.info("aggregate: %s asked for %s, which the modern client did not declare; its call was answered "
                 "-32021 and cancelled", member.name, frame.method)
        return (f"the client reached '{member.name}' through the wire-gateway in the modern era and did not "
                f"declare the {cap} capability; {frame.method} cannot be delivered (its request was answered "
                "-32021, and this call cancelled)")
