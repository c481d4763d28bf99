"""A fast "certainly valid" test for the simple input schemas most tools have.

jsonschema's validators are general and cost tens of microseconds per call even for
`{"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}`,
more than the rest of a tools/call's way through the gateway. `compile_check` turns a
schema made only of the keywords below into a plain predicate: True means the value is
valid under every JSON Schema draft; False means "not sure", and the caller asks
jsonschema, which also writes the error. So the predicate can only ever be too strict,
never too lenient, and a schema with any other keyword is not compiled at all (None).

Handled: `type` (a name or a list of names), `properties`, `required`,
`additionalProperties` (true, false or a schema), `items` (one schema); ignored as
annotations: `title`, `description`, `default`, `examples`, `deprecated`, `readOnly`,
`writeOnly`, `$comment`, `$schema` (not draft 3), and `x-*` extensions.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]

ANNOTATIONS = frozenset({"title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly",
                         "$comment", "$schema"})
HANDLED = frozenset({"type", "properties", "required", "additionalProperties", "items"})
MAX_DEPTH = 8


def _is_type(name: str) -> Check | None:
    """The test for one type name. integer accepts only int: 1.0 is an integer to some drafts,
    so it is left to jsonschema (False: not sure)."""
    if name == "string":
        return lambda v: type(v) is str
    if name == "integer":
        return lambda v: type(v) is int
    if name == "number":
        return lambda v: type(v) is int or type(v) is float
    if name == "boolean":
        return lambda v: type(v) is bool
    if name == "object":
        return lambda v: type(v) is dict
    if name == "array":
        return lambda v: type(v) is list
    if name == "null":
        return lambda v: v is None
    return None


def compile_check(schema: Any, depth: int = 0) -> Check | None:
    """A predicate that is True only for values `schema` accepts; None if the schema uses more
    than this module handles."""
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    for key in schema:
        if key not in HANDLED and key not in ANNOTATIONS and not (isinstance(key, str) and key.startswith("x-")):
            return None
    version = schema.get("$schema")
    if version is not None and (not isinstance(version, str) or "draft-03" in version):
        return None
    tests: list[Check] = []
    kind = schema.get("type")
    if kind is not None:
        names = [kind] if isinstance(kind, str) else kind
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            return None
        found = [_is_type(n) for n in names]
        alternatives = [a for a in found if a is not None]
        if len(alternatives) != len(found):
            return None
        if len(alternatives) == 1:
            tests.append(alternatives[0])
        else:
            tests.append(lambda v: any(a(v) for a in alternatives))
    supported, object_test = _object_check(schema, depth)
    if not supported:
        return None
    if object_test is not None:
        tests.append(object_test)
    if "items" in schema:
        item = compile_check(schema["items"], depth + 1)
        if item is None:
            return None
        each: Check = item
        tests.append(lambda v: type(v) is not list or all(each(x) for x in v))
    if not tests:
        return lambda v: True
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda v: first(v) and second(v)
    return lambda v: all(t(v) for t in tests)


def _object_check(schema: dict[str, Any], depth: int) -> tuple[bool, Check | None]:
    """(handled, the object keywords' test): they apply to objects only; the test is None if
    there are none, and handled is False if they use something this module does not handle."""
    if not any(k in schema for k in ("properties", "required", "additionalProperties")):
        return True, None
    props = schema.get("properties", {})
    required = schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if not isinstance(props, dict) or not isinstance(required, list) \
            or not all(isinstance(r, str) for r in required):
        return False, None
    checks: dict[str, Check] = {}
    for name, sub in props.items():
        check = compile_check(sub, depth + 1)
        if check is None:
            return False, None
        checks[name] = check
    extra_check: Check | None
    if extra is True:
        extra_check = None
    elif extra is False:
        extra_check = _never            # a key not in properties: not sure, ask jsonschema
    else:
        extra_check = compile_check(extra, depth + 1)
        if extra_check is None:
            return False, None
    needed = tuple(required)

    def test(value: Any) -> bool:
        if type(value) is not dict:
            return True                 # these keywords do not apply to other types
        for name in needed:
            if name not in value:
                return False
        for name, item in value.items():
            check = checks.get(name)
            if check is not None:
                if not check(item):
                    return False
            elif extra_check is not None and not extra_check(item):
                return False
        return True

    return True, test


def _never(value: Any) -> bool:
    return False
