"""The modern era's HTTP request headers: MCP-Protocol-Version, Mcp-Method, Mcp-Name, Mcp-Param-*.

Streamable HTTP (2026-07-28) mirrors body fields into headers so intermediaries can
route without parsing the body. A header that disagrees with the body is an attack
on whoever trusts the header, so whoever reads the body must check that they agree
(-32020 HeaderMismatch). The gateway checks what clients send it, and builds the
headers it must send when it calls a modern HTTP upstream.

Header names are given lowercased to `check_request_headers`; values are compared
case-sensitively. Mcp-Name and Mcp-Param-* values may use the Base64 sentinel
`=?base64?...?=` and are compared after decoding; the other headers are compared as sent.
"""
from __future__ import annotations

import base64
import binascii
import decimal
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wire_gateway.wire import errors
from wire_gateway.wire.era import META_PROTOCOL_VERSION, request_version

HEADER_MISMATCH = -32020  # reserved by the MCP spec (2026-07-28) for HeaderMismatch

PROTOCOL_VERSION_HEADER = "MCP-Protocol-Version"
METHOD_HEADER = "Mcp-Method"
NAME_HEADER = "Mcp-Name"
PARAM_HEADER_PREFIX = "Mcp-Param-"

# method -> the params field Mcp-Name mirrors
NAME_SOURCES = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}

_SENTINEL_PREFIX = "=?base64?"
_SENTINEL_SUFFIX = "?="
# RFC 9110 field-value, restricted to ASCII as MCP asks (no obs-text):
# visible characters, with SP/HTAB allowed only between them.
_FIELD_VALUE = re.compile(r"(?:[\x21-\x7e](?:[\x21-\x7e \t]*[\x21-\x7e])?)?")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 1*tchar
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")  # JSON number
_HEADER_TYPES = frozenset({"string", "integer", "boolean"})
# Keywords whose object keys are names (each value a schema), and keywords holding
# instance data rather than schemas; everything else that is an object is a schema.
_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_INSTANCE_DATA = frozenset({"const", "enum", "default", "examples"})
_ABSENT = object()


class HeaderError(ValueError):
    """A header value or an x-mcp-header annotation that cannot be used."""


@dataclass(slots=True, frozen=True)
class HeaderProblem:
    """Why a request's headers do not agree with its body; the text is the error message."""

    message: str
    header: str | None = None  # the header at fault, spelled canonically


@dataclass(slots=True, frozen=True)
class HeaderParam:
    """One x-mcp-header annotation: the header it names and where its value sits in the arguments."""

    name: str               # the annotation's value, e.g. "Region"
    path: tuple[str, ...]   # the chain of `properties` keys, e.g. ("region",)

    @property
    def header(self) -> str:
        return PARAM_HEADER_PREFIX + self.name


# -- values -----------------------------------------------------------------------------


def header_value_ok(value: str) -> bool:
    """True if `value` is a valid plain header value: visible ASCII, inner spaces and tabs."""
    return _FIELD_VALUE.fullmatch(value) is not None


def _is_sentinel(value: str) -> bool:
    return value.startswith(_SENTINEL_PREFIX) and value.endswith(_SENTINEL_SUFFIX)


def encode_header_value(value: str) -> str:
    """`value` as is when it is safe plain, else the Base64 sentinel of its UTF-8.

    The empty string is encoded too (`=?base64??=`): an empty header is easily
    dropped on the way, and the spec requires the header whenever the value exists.
    """
    if value and header_value_ok(value) and not _is_sentinel(value):
        return value
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise HeaderError(f"value {_show(value)} is not valid Unicode (lone surrogate)") from None
    return _SENTINEL_PREFIX + base64.b64encode(raw).decode("ascii") + _SENTINEL_SUFFIX


def decode_header_value(value: str) -> str:
    """The value a header carries: the sentinel decoded, anything else as is.

    Anything that starts with `=?base64?` and ends with `?=` is taken as a sentinel (clients
    must encode plain values of that shape), so one that is not valid standard Base64 of
    UTF-8 is an error, not a literal.
    """
    if not _is_sentinel(value):
        return value
    if len(value) < len(_SENTINEL_PREFIX) + len(_SENTINEL_SUFFIX):
        raise HeaderError(f"malformed Base64 sentinel {_show(value)}")
    payload = value[len(_SENTINEL_PREFIX):-len(_SENTINEL_SUFFIX)]
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise HeaderError(f"invalid Base64 in sentinel value {_show(value)}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HeaderError(f"Base64 sentinel value {_show(value)} is not UTF-8") from None


# -- x-mcp-header annotations -------------------------------------------------------------


def header_params(tool: Mapping[str, Any]) -> list[HeaderParam]:
    """The x-mcp-header annotations of a tool's inputSchema, checked against the spec's rules.

    Raises HeaderError for an invalid annotation (empty or not a token, duplicate
    ignoring case, not on a string/integer/boolean parameter, or not reachable from
    the root through `properties` alone): the spec says such a tool must be dropped
    from tools/list.
    """
    tool_name = tool.get("name")
    schema = tool.get("inputSchema")
    if not isinstance(schema, dict):
        return []
    found: list[HeaderParam] = []
    # (schema, property path if reachable through `properties` only else None, location)
    stack: list[tuple[dict[str, Any], tuple[str, ...] | None, str]] = [(schema, (), "inputSchema")]
    while stack:
        node, path, where = stack.pop()
        if "x-mcp-header" in node:
            found.append(_annotation(tool_name, node, path, where))
        for key, value in node.items():
            if key == "x-mcp-header" or key in _INSTANCE_DATA:
                continue
            if key in _SCHEMA_MAPS and isinstance(value, dict):
                for name, sub in value.items():
                    if isinstance(sub, dict):
                        sub_path = (*path, name) if key == "properties" and path is not None else None
                        stack.append((sub, sub_path, f"{where}.{key}.{name}"))
            elif isinstance(value, dict):
                stack.append((value, None, f"{where}.{key}"))
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        stack.append((item, None, f"{where}.{key}[{i}]"))
    seen: dict[str, str] = {}
    for param in found:
        folded = param.name.lower()
        if folded in seen:
            raise HeaderError(f"tool {tool_name!r}: x-mcp-header {param.name!r} duplicates "
                              f"{seen[folded]!r} (names are case-insensitive)")
        seen[folded] = param.name
    found.sort(key=lambda p: p.path)
    return found


def _annotation(tool_name: Any, node: dict[str, Any], path: tuple[str, ...] | None, where: str) -> HeaderParam:
    value = node["x-mcp-header"]
    prefix = f"tool {tool_name!r}: x-mcp-header at {where}"
    if not path:
        raise HeaderError(f"{prefix} is not on a property reachable from the root through `properties` only")
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise HeaderError(f"{prefix} must be a non-empty HTTP token (letters, digits, !#$%&'*+-.^_`|~), "
                          f"not {value!r}")
    declared = node.get("type")
    types = [declared] if isinstance(declared, str) else declared
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise HeaderError(f"{prefix} needs a declared type of string, integer or boolean")
    kinds = [t for t in types if t != "null"]
    if not kinds or not set(kinds) <= _HEADER_TYPES:
        raise HeaderError(f"{prefix} is on a parameter of type {declared!r}; "
                          f"only string, integer and boolean may be mirrored")
    return HeaderParam(value, path)


def _lookup(arguments: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(arguments, dict) or key not in arguments:
            return _ABSENT
        arguments = arguments[key]
    return arguments


def _plain_param(value: Any, header: str) -> str:
    """The string form of an argument before header encoding (the spec's type conversion)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):  # an integer written as 42.0 in the JSON
        if value != value or value in (float("inf"), float("-inf")):
            raise HeaderError(f"{header}: argument {value!r} cannot be mirrored")
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        return value
    raise HeaderError(f"{header}: argument of type {type(value).__name__} cannot be mirrored "
                      f"(only string, integer and boolean)")


# -- building (the gateway as a client of a modern HTTP upstream) ----------------------------


def mcp_headers_for(msg: dict[str, Any]) -> dict[str, str]:
    """MCP-Protocol-Version, Mcp-Method and (where the method needs it) Mcp-Name for a request body.

    Raises HeaderError when the body lacks what a header must mirror, or a value the
    spec does not let us Base64-encode (version, method) is not a plain header value.
    """
    version = request_version(msg)
    if version is None:
        raise HeaderError(f"request has no params._meta {META_PROTOCOL_VERSION!r} to send as {PROTOCOL_VERSION_HEADER}")
    method = msg.get("method")
    if not isinstance(method, str):
        raise HeaderError("request has no string method to send as Mcp-Method")
    for header, value in ((PROTOCOL_VERSION_HEADER, version), (METHOD_HEADER, method)):
        if not value or not header_value_ok(value):
            raise HeaderError(f"{header} value {_show(value)} is not a valid header value")
    out = {PROTOCOL_VERSION_HEADER: version, METHOD_HEADER: method}
    field = NAME_SOURCES.get(method)
    if field is not None:
        params = msg.get("params")
        name = params.get(field) if isinstance(params, dict) else None
        if not isinstance(name, str):
            raise HeaderError(f"{method} request has no string params.{field} to send as {NAME_HEADER}")
        out[NAME_HEADER] = encode_header_value(name)
    return out


def param_headers_for(tool: Mapping[str, Any], arguments: Mapping[str, Any] | None) -> dict[str, str]:
    """The Mcp-Param-* headers for a call of `tool` with `arguments` (absent or null: no header).

    Raises HeaderError for an invalid annotation or an argument that cannot be mirrored.
    """
    out: dict[str, str] = {}
    for param in header_params(tool):
        value = _lookup(arguments, param.path)
        if value is _ABSENT or value is None:
            continue
        out[param.header] = encode_header_value(_plain_param(value, param.header))
    return out


# -- checking (the gateway as the server of a modern HTTP client) ---------------------------


def check_request_headers(
    headers: Mapping[str, str],
    msg: dict[str, Any],
    tools: Mapping[str, Mapping[str, Any]] | None = None,
) -> HeaderProblem | None:
    """The first way the headers of a modern request disagree with its body, or None.

    `headers` has lowercased names. `tools` (name -> definition, as listed by the
    server) enables the Mcp-Param-* checks for the tool being called; a tool whose
    annotations are invalid gets none, since no conforming client would know its
    headers. Mcp-Param-* headers that no annotation names are not ours to judge.
    """
    params = msg.get("params")
    if not isinstance(params, dict):
        params = {}

    version = headers.get("mcp-protocol-version")
    if version is None:
        return _missing(PROTOCOL_VERSION_HEADER)
    if not header_value_ok(version):
        return _bad_chars(PROTOCOL_VERSION_HEADER, version)
    body_version = request_version(msg)
    if version != body_version:
        return _mismatch(PROTOCOL_VERSION_HEADER, version, body_version, f"params._meta {META_PROTOCOL_VERSION!r}")

    method = headers.get("mcp-method")
    if method is None:
        return _missing(METHOD_HEADER)
    if not header_value_ok(method):
        return _bad_chars(METHOD_HEADER, method)
    body_method = msg.get("method")
    if method != body_method:
        return _mismatch(METHOD_HEADER, method, body_method, "method")

    field = NAME_SOURCES.get(body_method)
    if field is None:
        return None
    raw_name = headers.get("mcp-name")
    if raw_name is None:
        return _missing(NAME_HEADER)
    body_name = params.get(field)
    if not isinstance(body_name, str):
        return HeaderProblem(f"Header mismatch: {NAME_HEADER} header value {_show(raw_name)} has no "
                             f"corresponding body value (params.{field} is absent or not a string)", NAME_HEADER)
    problem = _check_encoded(NAME_HEADER, raw_name, body_name, f"params.{field}")
    if problem is not None or body_method != "tools/call" or not tools:
        return problem

    tool = tools.get(body_name)
    if not isinstance(tool, Mapping):
        return None
    try:
        annotated = header_params(tool)
    except HeaderError:
        return None
    arguments = params.get("arguments")
    for param in annotated:
        value = _lookup(arguments, param.path)
        if value is None:
            value = _ABSENT
        problem = _check_encoded(param.header, headers.get(param.header.lower()), value,
                                 "arguments." + ".".join(param.path))
        if problem is not None:
            return problem
    return None


def header_mismatch_error(req_id: Any, problem: HeaderProblem) -> bytes:
    """The JSON-RPC error (-32020 HeaderMismatch) answering a request whose headers failed the check."""
    data = {"header": problem.header} if problem.header else None
    return errors.error_frame(req_id, HEADER_MISMATCH, problem.message, data)


def _check_encoded(header: str, raw: str | None, body: Any, where: str) -> HeaderProblem | None:
    """Compare a header that may carry the Base64 sentinel with its body value (_ABSENT: none)."""
    if raw is None:
        if body is _ABSENT:
            return None
        return HeaderProblem(f"Header mismatch: required header {header} is missing "
                             f"(body value {_show_body(body)})", header)
    if body is _ABSENT:
        return HeaderProblem(f"Header mismatch: {header} header value {_show(raw)} has no "
                             f"corresponding body value ({where} is absent)", header)
    if not header_value_ok(raw):
        return _bad_chars(header, raw)
    try:
        value = decode_header_value(raw)
    except HeaderError as exc:
        return HeaderProblem(f"Header mismatch: {header} header: {exc}", header)
    if not _same(value, body):
        return _mismatch(header, value, body, where)
    return None


def _same(text: str, body: Any) -> bool:
    """Header text against a body value: booleans as true/false, numbers numerically."""
    if isinstance(body, bool):
        return text == ("true" if body else "false")
    if isinstance(body, (int, float)):
        if not _NUMBER.fullmatch(text):
            return False
        try:
            return decimal.Decimal(text) == decimal.Decimal(body)
        except (ArithmeticError, ValueError):
            return False
    return isinstance(body, str) and text == body


def _missing(header: str) -> HeaderProblem:
    return HeaderProblem(f"Header mismatch: required header {header} is missing", header)


def _bad_chars(header: str, raw: str) -> HeaderProblem:
    return HeaderProblem(f"Header mismatch: {header} header value {_show(raw)} contains characters "
                         f"not allowed in a header value", header)


def _mismatch(header: str, value: str, body: Any, where: str) -> HeaderProblem:
    if body is None:
        return HeaderProblem(f"Header mismatch: {header} header value {_show(value)} has no "
                             f"corresponding body value ({where} is absent)", header)
    return HeaderProblem(f"Header mismatch: {header} header value {_show(value)} does not match "
                         f"body value {_show_body(body)}", header)


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SHOW_MAX = 120


def _show(text: str) -> str:
    """A value quoted for an error message: bounded, control characters escaped."""
    if len(text) > _SHOW_MAX:
        text = text[:_SHOW_MAX] + "..."
    text = _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                            else f"\\u{ord(m.group()):04x}", text)
    return f"'{text}'"


def _show_body(value: Any) -> str:
    if isinstance(value, str):
        return _show(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _show(str(value))[1:-1]
    return f"of type {type(value).__name__}"
