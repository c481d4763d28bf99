"""The tool filter: per server allow/deny globs; deny wins.

A hidden tool vanishes from every tools/list page, and a call to it is answered
-32602 "Unknown tool: NAME" without reaching the server, exactly as a server answers
a tool it does not have: a client cannot tell a filtered tool from a missing one.
"""
from __future__ import annotations

import fnmatch
import re

from wire_gateway.policy.chain import Call, Interceptor, Reply
from wire_gateway.wire import errors


def _compile(globs: tuple[str, ...]) -> re.Pattern[str] | None:
    if not globs:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in globs))


class ToolFilter(Interceptor):
    name = "filter"
    request_methods = frozenset({"tools/call"})
    response_methods = frozenset({"tools/list"})

    def __init__(self, allow: tuple[str, ...] = (), deny: tuple[str, ...] = ()) -> None:
        self._allow = _compile(allow)
        self._deny = _compile(deny)
        self._verdicts: dict[str, bool] = {}     # the same few names come on every call

    def allowed(self, tool: str) -> bool:
        verdict = self._verdicts.get(tool)
        if verdict is None:
            verdict = not (self._deny is not None and self._deny.match(tool)) and (
                self._allow is None or self._allow.match(tool) is not None)
            if len(self._verdicts) < 4096:
                self._verdicts[tool] = verdict
        return verdict

    def check(self, call: Call) -> Reply | None:
        """on_request, which never waits (see Interceptor.check)."""
        if call.method == "tools/call":
            tool = call.tool
            if tool is not None and not self.allowed(tool):
                return Reply.error(call, errors.INVALID_PARAMS, f"Unknown tool: {tool}", note="filter")
        return None

    async def on_request(self, call: Call) -> Reply | None:
        return self.check(call)

    async def on_response(self, call: Call, reply: Reply) -> Reply:
        result = reply.result_dict
        if call.method != "tools/list" or result is None or not isinstance(result.get("tools"), list):
            return reply
        tools = result["tools"]
        kept = [t for t in tools if not (isinstance(t, dict) and isinstance(t.get("name"), str)
                                         and not self.allowed(t["name"]))]
        if len(kept) == len(tools):
            return reply
        return reply.with_result({**result, "tools": kept}, "filter")
