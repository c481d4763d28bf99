"""What the gateway last saw of a server's tools, from its tools/list answers.

The schema guard validates arguments against `inputSchema`; the result cache reads
`annotations`. Learnt from every page that passes (from the server or the cache),
before filtering, so it is the server's own word.
"""
from __future__ import annotations

from typing import Any

MAX_TOOLS = 10000


class ToolIndex:
    def __init__(self) -> None:
        self.tools: dict[str, dict[str, Any]] = {}
        # the tools list learnt last: a cache hit hands the same list again (in a fresh result
        # when it carries a ttlMs of its own)
        self._last: Any = None

    def learn(self, result: dict[str, Any] | None) -> None:
        tools = result.get("tools") if result is not None else None
        if tools is self._last or not isinstance(tools, list):
            return
        self._last = tools
        for tool in tools:
            if isinstance(tool, dict) and isinstance(tool.get("name"), str) and (
                    tool["name"] in self.tools or len(self.tools) < MAX_TOOLS):
                self.tools[tool["name"]] = tool

    def get(self, name: str) -> dict[str, Any] | None:
        return self.tools.get(name)

    def input_schema(self, name: str) -> Any:
        tool = self.tools.get(name)
        return None if tool is None else tool.get("inputSchema")

    def annotations(self, name: str) -> dict[str, Any]:
        tool = self.tools.get(name)
        ann = tool.get("annotations") if tool is not None else None
        return ann if isinstance(ann, dict) else {}
