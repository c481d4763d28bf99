"""A modern member's input-required results, put to a legacy client as requests of its own era.

The other way round from asks.py. A modern (2026-07-28) server that needs the client's input in
the middle of a `tools/call`, `prompts/get` or `resources/read` does not send the client a request:
it answers `resultType: "input_required"` with `inputRequests` (`elicitation/create`,
`sampling/createMessage`, `roots/list`, each under a key of its own) and maybe a `requestState`,
and expects the same request again with `inputResponses` under those keys and the state. A legacy
client cannot retry so, but it takes server-to-client requests. So the gateway makes each input
request a request to the client under an id of its own (`wire-gateway/<server>/in-<n>`: on the
POST's SSE stream or the GET stream over HTTP, on stdout over stdio), and when every one is
answered sends the member the retry (a new request id, the answers keyed as the member keyed
them, its state echoed as it gave it); the member may ask again (another round), or answer.

Bounded everywhere a peer could hold the call forever: at most `MAX_ROUNDS` rounds, and each
round's answers within the member's own `timeout` (else the call fails with a gateway error and
the client is told the requests are cancelled). The member's input requests are checked before
anything is asked: only the three kinds the spec allows, as objects, and each one only of a client
that declared its capability in `initialize` (the member was told those capabilities in `_meta`,
so a well-behaved one asks nothing else); otherwise the call fails with -31005 saying why.
"""
from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any

import trio

from wire_gateway.proxy.aggregate.asks import CAPABILITY, INPUT_METHODS
from wire_gateway.proxy.aggregate.messages import error_msg
from wire_gateway.wire import errors
from wire_gateway.wire.era import LEGACY, MODERN
from wire_gateway.wire.frame import Frame, Kind

if TYPE_CHECKING:
    from wire_gateway.proxy.aggregate.endpoint import Aggregate
    from wire_gateway.proxy.aggregate.members import Member

log = logging.getLogger("wire_gateway.aggregate")

MAX_ROUNDS = 8            # input-required rounds one request may take before the gateway gives up


class Asked:
    """A request put to the client on a member's behalf, waiting for its answer."""

    __slots__ = ("done", "msg")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.msg: dict[str, Any] | None = None


class LegacyAsks:
    """The requests put to a legacy client for modern members' input-required results."""

    def __init__(self, agg: Aggregate) -> None:
        self.agg = agg
        self.asked: dict[str, Asked] = {}       # the id the client was asked under -> its answer
        self._ids = itertools.count(1)

    def wanted(self, member: Member, method: str | None) -> bool:
        """Whether a request is served here: a legacy client's input-capable request to a modern member."""
        return self.agg.era == LEGACY and member.era == MODERN and method in INPUT_METHODS

    async def serve(self, frame: Frame, member: Member, params: dict[str, Any]) -> dict[str, Any]:
        """The member's answer to `params` (in its era), asking the client for input as often as it says."""
        method = frame.method or ""
        for _round in range(MAX_ROUNDS):
            answer = await member.call(method, params, member.timeout)
            result = answer.get("result")
            if not isinstance(result, dict) or result.get("resultType") != "input_required":
                return answer
            requests, state, problem = self.check(member, result)
            if problem is not None:
                return self.refusal(frame.id, member, method, problem)
            responses, failed = await self._ask(member, method, requests)
            if failed is not None:
                return failed
            params = {k: v for k, v in params.items() if k not in ("inputResponses", "requestState")}
            params["inputResponses"] = responses
            if state is not None:
                params["requestState"] = state
        return error_msg(frame.id, errors.ERA_MISMATCH,
                         f"server '{member.name}' asked for client input {MAX_ROUNDS} times during {method} "
                         "without answering it; the gateway gave up", {"reason": "input_required"})

    def check(self, member: Member, result: dict[str, Any]) -> tuple[dict[str, Any], str | None, str | None]:
        """The member's input requests and state, or why they cannot be put to this client."""
        requests = result.get("inputRequests", {})
        state = result.get("requestState")
        if not isinstance(requests, dict) or (state is not None and not isinstance(state, str)):
            return {}, None, (f"server '{member.name}' sent a malformed input_required result (inputRequests must "
                              "be an object, requestState a string)")
        if not requests and state is None:
            return {}, None, (f"server '{member.name}' sent an input_required result with neither inputRequests "
                              "nor requestState")
        declared = self.agg.client_init.get("capabilities")
        declared = declared if isinstance(declared, dict) else {}
        for key, request in requests.items():
            kind = request.get("method") if isinstance(request, dict) else None
            if kind not in CAPABILITY or not isinstance(request.get("params", {}), dict):
                return {}, None, (f"server '{member.name}' sent a malformed input request {key!r} (not an "
                                  "elicitation/create, sampling/createMessage or roots/list request object)")
            if not isinstance(declared.get(CAPABILITY[kind]), dict):
                return {}, None, (f"server '{member.name}' asked for {kind}, but the client did not declare the "
                                  f"{CAPABILITY[kind]} capability in initialize; it cannot be asked")
        return requests, state, None

    @staticmethod
    def refusal(req_id: Any, member: Member, method: str, problem: str) -> dict[str, Any]:
        """The answer to a request whose member asked for input the client cannot be asked (`problem`
        says why): logged, and -31005 to the client."""
        log.warning("aggregate: %s answered %s with an input_required result the client cannot be asked: %s",
                    member.name, method, problem)
        return error_msg(req_id, errors.ERA_MISMATCH, problem, {"reason": "input_required"})

    async def _ask(self, member: Member, method: str,
                   requests: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Put every input request to the client at once; their answers by key, or the error that ends
        the call (a request answered with an error, no answer within the member's timeout)."""
        ours = {key: f"wire-gateway/{member.name}/in-{next(self._ids)}" for key in requests}
        slots = {key: Asked() for key in requests}
        for key, request in requests.items():
            self.asked[ours[key]] = slots[key]
            msg: dict[str, Any] = {"jsonrpc": "2.0", "id": ours[key], "method": request["method"]}
            if "params" in request:
                msg["params"] = request["params"]
            self.agg.relay.to_client(msg)
        log.info("aggregate: %s asked for %s during %s; put to the legacy client", member.name,
                 ", ".join(sorted({r["method"] for r in requests.values()})), method)
        timeout = member.timeout
        try:
            with trio.move_on_after(timeout):
                for slot in slots.values():
                    await slot.done.wait()
            responses: dict[str, Any] = {}
            for key, slot in slots.items():
                if slot.msg is None:
                    return {}, error_msg(None, errors.UPSTREAM_UNAVAILABLE,
                                     f"the client did not answer {requests[key]['method']} within {timeout:g}s "
                                     f"(asked for server '{member.name}' during {method})",
                                     {"server": member.name, "method": method})
                if "error" in slot.msg:
                    error = slot.msg["error"] if isinstance(slot.msg["error"], dict) else {}
                    return {}, error_msg(None, errors.ERA_MISMATCH,
                                         f"the client refused {requests[key]['method']} (asked for server "
                                     f"'{member.name}' during {method}): {error.get('message')}",
                                     {"reason": "input_required", "clientError": error})
                responses[key] = slot.msg.get("result")
            return responses, None
        finally:
            for key, cid in ours.items():
                self.asked.pop(cid, None)
                if not slots[key].done.is_set():    # timed out or cancelled: the client may stop asking
                    self.agg.relay.to_client({"jsonrpc": "2.0", "method": "notifications/cancelled",
                                              "params": {"requestId": cid, "reason": "no longer needed"}})

    def answered(self, frame: Frame) -> bool:
        """The client's answer to one of these requests (True), or to something else (False)."""
        slot = self.asked.pop(frame.id, None) if isinstance(frame.id, str) else None
        if slot is None:
            return False
        slot.msg = frame.msg if frame.kind in (Kind.RESPONSE, Kind.ERROR) else None
        slot.done.set()
        return True
