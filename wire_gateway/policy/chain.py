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
from typing import Any

from wire_gateway.policy.tools import ToolIndex
from wire_gateway.wire import errors, jsonfast
from wire_gateway.wire.frame import Frame, Kind

log = logging.getLogger("wire_gateway.policy")

TOOL_METHODS = frozenset({"tools/list", "tools/call"})
LIST_CHANGED = "notifications/tools/list_changed"

# The order of the chain, by slot. auth and guardrails belong to later issues: their slots
# are here so the order is fixed now, but nothing runs in them yet.
ORDER = ("auth", "filter", "pinning", "schema", "list_cache", "result_cache")


@dataclass(slots=True)
class Call:
    """One tools/list or tools/call request on its way through the chain."""

    server: str
    frame: Frame
    auth: str = ""                  # the caller's auth context; "" is anonymous
    version: str = "unknown"        # protocol era/version: result shapes differ between them
    state: dict[str, Any] = field(default_factory=dict)   # interceptors' notes between request and answer

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

    @classmethod
    def of(cls, frame: Frame) -> "Reply":
        return cls(frame.msg, frame.raw)

    @classmethod
    def result(cls, call: Call, result: Any, note: str) -> "Reply":
        """An answer made by the gateway in the server's name (a cache hit), under the requester's id."""
        return cls({"jsonrpc": "2.0", "id": call.frame.id, "result": result}, None, note=note)

    @classmethod
    def error(cls, call: Call, code: int, message: str, data: dict[str, Any] | None = None,
              note: str | None = None) -> "Reply":
        raw = errors.error_frame(call.frame.id, code, message, data)
        return cls(jsonfast.loads(raw), raw, gateway=True, note=note)

    @property
    def ok(self) -> bool:
        return "result" in self.msg

    @property
    def result_dict(self) -> dict[str, Any] | None:
        result = self.msg.get("result")
        return result if isinstance(result, dict) else None

    def with_result(self, result: dict[str, Any], note: str) -> "Reply":
        return Reply({**self.msg, "result": result}, None, self.gateway, note)

    def frame(self) -> Frame:
        raw = self.raw if self.raw is not None else jsonfast.dumps(self.msg)
        kind = Kind.RESPONSE if "result" in self.msg else Kind.ERROR
        return Frame(raw, kind, self.msg, None, self.msg.get("id"), self.note)


class Interceptor:
    """Base: pass everything. Subclasses override what they need."""

    name = "pass"

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

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.interceptors]

    async def handle(self, call: Call, forward: Forward) -> Reply:
        reply, stop = await self.down(call)
        if reply is None:
            reply = await forward(call)
        return await self.up(call, reply, stop)

    async def down(self, call: Call) -> tuple[Reply | None, int]:
        """The request's way down: an answer and the index of who gave it, or (None, len)."""
        for i, interceptor in enumerate(self.interceptors):
            reply = await interceptor.on_request(call)
            if reply is not None:
                return reply, i
        return None, len(self.interceptors)

    async def up(self, call: Call, reply: Reply, stop: int) -> Reply:
        """The answer's way back, through the interceptors before `stop`, in reverse."""
        if call.method == "tools/list" and not reply.gateway:
            self.index.learn(reply.result_dict)
        for interceptor in reversed(self.interceptors[:stop]):
            reply = await interceptor.on_response(call, reply)
        return reply

    async def invalidate(self) -> None:
        """The server said its tool list changed (notifications/tools/list_changed)."""
        if self._on_invalidate is not None:
            await self._on_invalidate()
