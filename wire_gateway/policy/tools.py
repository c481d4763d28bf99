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
        self._last: Any = None       # the result learnt last: a cache hit hands the same object again

    def learn(self, result: dict[str, Any] | None) -> None:
        if result is None or result is self._last or not isinstance(result.get("tools"), list):
            return
        self._last = result
        for tool in result["tools"]:
            if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                if tool["name"] in self.tools or len(self.tools) < MAX_TOOLS:
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
