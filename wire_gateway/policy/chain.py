"""The chain runner, sans IO: requests go down the interceptors, answers come back up.

An interceptor may pass (return None), rewrite the request (replace `call.frame`), or
answer on the upstream's behalf (return a Reply). An answer, whoever made it, travels
back through the interceptors *before* the one that produced it, in reverse order: so
a cache hit is still filtered and pinned like a fresh answer from the server.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from wire_gateway.auth.directory import Principal
from wire_gateway.policy.tools import ToolIndex
from wire_gateway.wire import errors, jsonfast
from wire_gateway.wire.frame import Frame, Kind

log = logging.getLogger("wire_gateway.policy")

TOOL_METHODS = frozenset({"tools/list", "tools/call"})
LIST_CHANGED = "notifications/tools/list_changed"

# The order of the chain, by slot (docs/policy.md says why).
ORDER = ("auth", "filter", "pinning", "schema", "guardrails", "list_cache", "result_cache")
# The slots that may wait (the store, a remote check) or cost real time: a traced request gets a span
# for each of them (docs/observability.md); the others cost microseconds and get none.
SLOW = frozenset({"auth", "guardrails", "list_cache", "result_cache"})


@dataclass(slots=True)
class Call:
    """One tools/list or tools/call request on its way through the chain."""

    server: str
    frame: Frame
    auth: str = ""                  # the caller's auth context; "" is anonymous
    version: str = "unknown"        # protocol era/version: result shapes differ between them
    state: dict[str, Any] = field(default_factory=dict)   # interceptors' notes between request and answer
    caller: Principal | None = None  # who is asking, when auth is on (auth.context.CALLER)
    # The request's trace, when it is traced: `trace.step(slot)` is a span for one of the SLOW slots.
    trace: Any = None

    @property
    def method(self) -> str | None:
        return self.frame.method

    @property
    def params(self) -> dict[str, Any]:
        params = self.frame.params
        return params if isinstance(params, dict) else {}

    @property
    def tool(self) -> str | None:
        name = self.params.get("name")
        return name if isinstance(name, str) else None


@dataclass(slots=True)
class Reply:
    """An answer to a Call. `gateway` is True for errors the gateway made (they go to the
    session as gateway replies); `raw` is None once an interceptor changed `msg`."""

    msg: dict[str, Any]
    raw: bytes | None
    gateway: bool = False
    note: str | None = None
    status: int | None = None     # the HTTP status an upstream gave an error answer (Frame.status)

    @classmethod
    def of(cls, frame: Frame) -> Reply:
        return cls(frame.msg, frame.raw, status=frame.status)

    @classmethod
    def result(cls, call: Call, result: Any, note: str) -> Reply:
        """An answer made by the gateway in the server's name (a cache hit), under the requester's id."""
        return cls({"jsonrpc": "2.0", "id": call.frame.id, "result": result}, None, note=note)

    @classmethod
    def error(cls, call: Call, code: int, message: str, data: dict[str, Any] | None = None,
              note: str | None = None) -> Reply:
        raw = errors.error_frame(call.frame.id, code, message, data)
        return cls(jsonfast.loads(raw), raw, gateway=True, note=note)

    @property
    def ok(self) -> bool:
        return "result" in self.msg

    @property
    def result_dict(self) -> dict[str, Any] | None:
        result = self.msg.get("result")
        return result if isinstance(result, dict) else None

    def with_result(self, result: dict[str, Any], note: str) -> Reply:
        return Reply({**self.msg, "result": result}, None, self.gateway, note)

    def frame(self) -> Frame:
        raw = self.raw if self.raw is not None else jsonfast.dumps(self.msg)
        kind = Kind.RESPONSE if "result" in self.msg else Kind.ERROR
        return Frame(raw, kind, self.msg, None, self.msg.get("id"), self.note,
                     self.status if kind is Kind.ERROR else None)



DEFER = Reply({}, None, note="defer")
"""A `check`'s answer for "not without waiting": see Interceptor.check."""

class Interceptor:
    """Base: pass everything. Subclasses override what they need, and say for which methods
    their hooks do anything (the chain skips them for the others: a tools/call answer through
    filter, pinning and the list cache then costs nothing at all on its way back)."""

    name = "pass"
    request_methods: frozenset[str] = TOOL_METHODS
    response_methods: frozenset[str] = TOOL_METHODS
    # An interceptor whose on_request never waits (it reads no store) also defines
    # `check(call) -> Reply | None`, the same decision as a plain call: the chain then
    # runs it without a coroutine when every interceptor on the way down has one. A check
    # that must wait for this one call (guardrails judging a large frame in a worker thread)
    # returns DEFER: the chain then runs as coroutines, in a task.
    check: Callable[[Call], Reply | None] | None = None
    # True for an interceptor that acts only for callers whose project asks it to (the auth slot;
    # guardrails a server has none of its own): see Chain.project_only.
    project_only = False

    async def on_request(self, call: Call) -> Reply | None:
        return None

    async def on_response(self, call: Call, reply: Reply) -> Reply:
        return reply


Forward = Callable[[Call], Awaitable[Reply]]


def drive(coro: Any) -> tuple[bool, Any]:
    """Run a coroutine that is expected never to suspend (the memory store never does) to its end,
    synchronously: (True, its value). If it does suspend, it is closed: (False, None), and the
    caller runs it again in a task. Why: a task hop per tool request costs more than the chain."""
    try:
        coro.send(None)
    except StopIteration as done:
        return True, done.value
    coro.close()
    return False, None


class Chain:
    """The interceptors one server runs, in ORDER, and what they share (the tool index).

    `sync`: every await in the chain completes at once (memory store), so the runner may drive it
    inline with `drive` instead of in a task."""

    def __init__(self, server: str, interceptors: list[Interceptor], index: ToolIndex | None = None,
                 on_invalidate: Callable[[], Awaitable[None]] | None = None, sync: bool = False) -> None:
        ranks = [ORDER.index(i.name) for i in interceptors]
        if ranks != sorted(ranks):
            raise ValueError(f"interceptors out of order: {[i.name for i in interceptors]}; order is {ORDER}")
        self.server = server
        self.interceptors = interceptors
        self.index = index or ToolIndex()
        self._on_invalidate = on_invalidate
        self.sync = sync
        # The methods the runner sends through the chain: the tool methods, and whatever else an
        # interceptor asks for (guardrails' scan_server_info: initialize and server/discover).
        self.methods = TOOL_METHODS.union(*(x.request_methods | x.response_methods for x in interceptors))
        # Every interceptor acts only for some projects' callers: a caller whose project asks for
        # none of them goes straight through, as if there were no runner (PolicyRunner.request).
        self.project_only = all(x.project_only for x in interceptors)
        # per method: (index in the chain, interceptor) of those whose hooks act on it
        self._down = {m: [(i, x) for i, x in enumerate(interceptors) if m in x.request_methods]
                      for m in self.methods}
        self._up = {m: [(i, x) for i, x in reversed(list(enumerate(interceptors))) if m in x.response_methods]
                    for m in self.methods}
        self._checks: dict[str, list[tuple[int, Callable[[Call], Reply | None]]] | None] = {
            m: [(i, cast(Callable[[Call], "Reply | None"], x.check)) for i, x in self._down[m]]
            if all(x.check is not None for _, x in self._down[m]) else None for m in self.methods}
        # per method: the position of the first interceptor acting on its answers (a list: 0, the index learns)
        self._up_from = {m: min((i for i, _ in self._up[m]), default=len(interceptors)) for m in self.methods}
        self._up_from["tools/list"] = 0

    def passes_up(self, method: str | None, stop: int) -> bool:
        """Whether an answer to `method` comes back through the interceptors before `stop`
        unchanged (none of them acts on it, and it is not a list the index learns from)."""
        return stop <= self._up_from.get(method or "", 0)

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.interceptors]

    async def handle(self, call: Call, forward: Forward) -> Reply:
        reply, stop = await self.down(call)
        if reply is None:
            reply = await forward(call)
        return await self.up(call, reply, stop)

    def down_now(self, call: Call) -> tuple[Reply | None, int] | None:
        """`down` without a coroutine, when every interceptor on the way has a `check` and none
        defers; else None (the caller then runs `down`)."""
        checks = self._checks.get(call.method or "")
        if checks is None:
            return None
        for i, check in checks:
            if call.trace is not None and self.interceptors[i].name in SLOW:
                with call.trace.step(self.interceptors[i].name):
                    reply = check(call)
            else:
                reply = check(call)
            if reply is DEFER:
                return None
            if reply is not None:
                return reply, i
        return None, len(self.interceptors)

    async def down(self, call: Call) -> tuple[Reply | None, int]:
        """The request's way down: an answer and the index of who gave it, or (None, len)."""
        for i, interceptor in self._down.get(call.method or "", ()):
            if call.trace is not None and interceptor.name in SLOW:
                with call.trace.step(interceptor.name):
                    reply = await interceptor.on_request(call)
            else:
                reply = await interceptor.on_request(call)
            if reply is not None:
                return reply, i
        return None, len(self.interceptors)

    async def up(self, call: Call, reply: Reply, stop: int) -> Reply:
        """The answer's way back, through the interceptors before `stop`, in reverse."""
        if call.method == "tools/list" and not reply.gateway:
            self.index.learn(reply.result_dict)
        for i, interceptor in self._up.get(call.method or "", ()):
            if i < stop:
                if call.trace is not None and interceptor.name in SLOW:
                    with call.trace.step(interceptor.name):
                        reply = await interceptor.on_response(call, reply)
                else:
                    reply = await interceptor.on_response(call, reply)
        return reply

    async def invalidate(self) -> None:
        """The server said its tool list changed (notifications/tools/list_changed)."""
        if self._on_invalidate is not None:
            await self._on_invalidate()
