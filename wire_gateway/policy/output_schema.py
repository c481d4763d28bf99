"""The answer side of schema validation: a tool result's `structuredContent` against the tool's
last-seen `outputSchema` (guardrails' `output_schema`: block or log).

The spec has servers MUST conform and clients SHOULD validate: a mismatch is the server's bug,
and a client that trusts the schema may act on data that is not what it says. A tool whose
schema the gateway has not seen, or whose schema is itself broken (logged once), is not judged;
an error result (`isError: true`) need not carry structured content.
"""
from __future__ import annotations

import logging
from typing import Any

import jsonschema

from wire_gateway.policy.schema import canonical, make_validator
from wire_gateway.policy.tools import ToolIndex

log = logging.getLogger("wire_gateway.policy.output_schema")


class OutputSchemas:
    def __init__(self, server: str, index: ToolIndex) -> None:
        self.server = server
        self.index = index
        self._validators: dict[str, tuple[Any, Any]] = {}    # tool -> (schema object, validator or None)

    def _validator(self, tool: str, schema: Any) -> Any:
        cached = self._validators.get(tool)
        if cached is not None and (cached[0] is schema or canonical(cached[0]) == canonical(schema)):
            if cached[0] is not schema:
                self._validators[tool] = (schema, cached[1])
            return cached[1]
        validator = make_validator(schema, "outputSchema", log, self.server, tool)
        self._validators[tool] = (schema, validator)
        return validator

    def problem(self, tool: str | None, result: dict[str, Any]) -> str | None:
        """What is wrong with `result` against the tool's outputSchema, or None."""
        if tool is None or result.get("isError") is True:
            return None
        t = self.index.get(tool)
        schema = t.get("outputSchema") if t is not None else None
        if schema is None:
            return None
        validator = self._validator(tool, schema)
        if validator is None:
            return None
        if "structuredContent" not in result:
            return "the tool declares an outputSchema but its result has no structuredContent"
        error = jsonschema.exceptions.best_match(validator.iter_errors(result["structuredContent"]))
        if error is None:
            return None
        return f"{error.json_path.replace('$', 'structuredContent', 1)}: {error.message}"
