"""Argument validation: a tools/call whose arguments do not match the tool's last-seen
inputSchema is answered -32602 with the failing path and reason, and never reaches the
server. A tool the gateway has not seen listed (or a schema that is itself broken)
passes: the server remains the judge of what it does not describe.
"""
from __future__ import annotations

import logging
from typing import Any

import jsonschema
import orjson
from jsonschema.exceptions import SchemaError

from wire_gateway.policy.chain import Call, Interceptor, Reply
from wire_gateway.policy.fastcheck import Check, compile_check
from wire_gateway.policy.tools import ToolIndex
from wire_gateway.wire import errors

log = logging.getLogger("wire_gateway.policy.schema")


def canonical(schema: Any) -> bytes | None:
    """The schema as JSON with sorted keys (equal bytes: the same schema, 1 and 1.0 and true kept
    apart); None for what orjson cannot write (then nothing is reused)."""
    try:
        return orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return None


def make_validator(schema: Any, which: str, logger: logging.Logger, server: str, tool: str) -> Any:
    """A jsonschema validator of a tool's `which` (inputSchema, outputSchema), by the schema's own
    `$schema` (2020-12 when it names none); None when the schema is not an object, or is invalid
    (said once, here: its tool is then not judged against it)."""
    if not isinstance(schema, dict):
        return None
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except SchemaError as exc:
        logger.warning("server %s: tool %r has an invalid %s (%s); its %s are not validated", server, tool, which,
                       exc.message, "arguments" if which == "inputSchema" else "results")
        return None
    return cls(schema)


class SchemaGuard(Interceptor):
    name = "schema"
    request_methods = frozenset({"tools/call"})
    response_methods: frozenset[str] = frozenset()

    def __init__(self, server: str, index: ToolIndex) -> None:
        self.server = server
        self.index = index
        # tool name -> (the schema object it was built from, validator or None if the schema is broken,
        # the fast "certainly valid" test or None: see fastcheck)
        self._validators: dict[str, tuple[Any, Any, Check | None]] = {}

    def _validator(self, tool: str, schema: Any) -> tuple[Any, Check | None]:
        cached = self._validators.get(tool)
        if cached is not None:
            if cached[0] is schema:
                return cached[1], cached[2]
            # Every tools/list from the server brings new objects, mostly for the same schemas:
            # building a validator costs milliseconds, comparing canonical bytes microseconds.
            same = canonical(cached[0])
            if same is not None and same == canonical(schema):
                self._validators[tool] = (schema, cached[1], cached[2])
                return cached[1], cached[2]
        validator = make_validator(schema, "inputSchema", log, self.server, tool)
        fast = compile_check(schema) if validator is not None else None
        self._validators[tool] = (schema, validator, fast)
        return validator, fast

    async def on_request(self, call: Call) -> Reply | None:
        return self.check(call)

    def check(self, call: Call) -> Reply | None:
        """on_request, which never waits (see Interceptor.check)."""
        if call.method != "tools/call":
            return None
        tool = call.tool
        if tool is None:
            return None
        schema = self.index.input_schema(tool)
        if schema is None:
            return None
        validator, fast = self._validator(tool, schema)
        if validator is None:
            return None
        arguments = call.params.get("arguments", {})
        if fast is not None and fast(arguments):
            return None
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
        if error is None:
            return None
        where = error.json_path.replace("$", "arguments", 1)
        return Reply.error(call, errors.INVALID_PARAMS,
                           f"Invalid arguments for tool {tool}: {where}: {error.message}",
                           {"tool": tool, "path": where, "reason": error.message}, note="schema")
