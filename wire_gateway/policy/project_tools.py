"""The chain's auth slot: what the caller's project lets it see of this server's tools.

A project may narrow a server's tools with allow/deny globs (`projects create --allow/--deny
SERVER:GLOB`), layered on the server's own filter: a hidden tool vanishes from tools/list and
a call to it gets -32602 "Unknown tool", exactly as the filter answers, so a caller cannot
tell a tool its project hides from one that does not exist. Runs first, so nothing is
decided, cached or even looked up for a tool the caller may not use; on the way back it runs
last, so a list page cached for the project (or a public page shared by all) is cut to the
project's view every time.
"""
from __future__ import annotations

from wire_gateway.policy.chain import Call, Interceptor, Reply
from wire_gateway.policy.filter import ToolFilter


class ProjectTools(Interceptor):
    name = "auth"
    request_methods = frozenset({"tools/call"})
    response_methods = frozenset({"tools/list"})
    project_only = True

    def __init__(self, server: str) -> None:
        self.server = server
        self._filters: dict[tuple[tuple[str, ...], tuple[str, ...]], ToolFilter] = {}

    def _filter(self, call: Call) -> ToolFilter | None:
        caller = call.caller
        rule = caller.project.tools.get(self.server) if caller is not None else None
        if rule is None:
            return None
        key = (rule.allow, rule.deny)
        f = self._filters.get(key)
        if f is None:
            f = self._filters[key] = ToolFilter(rule.allow, rule.deny)
        return f

    def check(self, call: Call) -> Reply | None:
        f = self._filter(call)
        return f.check(call) if f is not None else None

    async def on_request(self, call: Call) -> Reply | None:
        return self.check(call)

    async def on_response(self, call: Call, reply: Reply) -> Reply:
        f = self._filter(call)
        return await f.on_response(call, reply) if f is not None else reply
