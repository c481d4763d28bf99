"""Frame: the raw bytes of one JSON-RPC message plus a cheap parsed view.

The raw bytes are what gets forwarded; the view (kind, method, id) is what routing
and policies look at. Every frame is parsed fully (about a microsecond with
orjson): deciding by peeking at bytes can be fooled by escapes, nesting and
duplicate keys, and a proxy that can be fooled can be bypassed. A frame that repeats a
top-level member is refused outright (wire.members says why and how it stays cheap).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from wire_gateway.wire import errors, ids, jsonfast, members, scan


class Kind(enum.Enum):
    REQUEST = "request"
    NOTIFICATION = "notification"
    RESPONSE = "response"
    ERROR = "error"


@dataclass(slots=True)
class Frame:
    raw: bytes
    kind: Kind
    msg: dict[str, Any]
    method: str | None = None
    id: Any = None
    # Set by a policy that rewrote this frame (e.g. "filter"), so dumps and logs can say so.
    note: str | None = None
    # An error answer's HTTP status, when an HTTP upstream gave it one (400, 404, ...): the modern
    # front answers with it, as the server would have.
    status: int | None = None

    @property
    def params(self) -> Any:
        return self.msg.get("params")


@dataclass(slots=True)
class Invalid:
    """A line that is not a usable JSON-RPC message, with the error to answer it with."""

    raw: bytes
    code: int
    message: str
    id: Any = None

    def error_frame(self) -> bytes:
        return errors.error_frame(self.id, self.code, self.message)


@dataclass(slots=True)
class Batch:
    """A JSON array of messages (JSON-RPC batch, allowed by MCP 2025-03-26)."""

    raw: bytes
    items: list[Frame | Invalid]


def valid_id(value: Any) -> bool:
    """MCP ids are strings or integers (never null, never fractional)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def decode(raw: bytes) -> Frame | Batch | Invalid:
    """Decode one line of the wire."""
    try:
        obj, dup = members.loads(raw)
    except members.Unverifiable as exc:
        return Invalid(raw, errors.INVALID_REQUEST, f"Invalid Request: {exc}", scan.recover_id(raw[:4096]))
    except ValueError as exc:
        return Invalid(raw, errors.PARSE_ERROR, f"Parse error: not valid JSON ({exc})", scan.recover_id(raw[:4096]))
    if dup is not None:
        return repeated_member(raw, dup)
    if isinstance(obj, list):
        if not obj:
            return Invalid(raw, errors.INVALID_REQUEST, "Invalid Request: empty batch")
        parts = scan.split_array(raw)
        if len(parts) != len(obj):  # cannot happen for valid JSON; be safe rather than wrong
            parts = [jsonfast.dumps(o) for o in obj]
        return Batch(raw, [_member(o, p) for o, p in zip(obj, parts)])
    return classify(_exact_id(obj, raw), raw)


def _member(obj: Any, raw: bytes) -> Frame | Invalid:
    """One element of a batch: checked for repeated members like a frame of its own."""
    if type(obj) is dict:
        try:
            dup = members.repeated(obj, raw)
        except members.Unverifiable as exc:
            return Invalid(raw, errors.INVALID_REQUEST, f"Invalid Request: {exc}", scan.recover_id(raw[:4096]))
        if dup is not None:
            return repeated_member(raw, dup)
    return classify(_exact_id(obj, raw), raw)


def repeated_member(raw: bytes, key: str) -> Invalid:
    """A frame that names a member twice: the gateway and the server could read two different
    messages in it. Answered with the first id written, which is the one a client means."""
    shown = key if len(key) <= 64 else key[:64] + "..."
    return Invalid(raw, errors.INVALID_REQUEST,
                   f"Invalid Request: the member {shown!r} appears more than once in the message; "
                   "JSON-RPC messages must name each member once", scan.recover_id(raw[:4096]))


def repeated_params(frame: Frame) -> bytes | None:
    """The answer to a request whose params name a key twice in some object, at any depth; None
    if they do not. For tools/list and tools/call through a policy, and every request the aggregate
    routes: a policy (or the routing by tool name) would judge one reading of the params while the
    server may act on the other."""
    try:
        key = members.nested_repeat(frame.raw, frame.msg)
    except members.Unverifiable as exc:
        return errors.error_frame(frame.id, errors.INVALID_PARAMS, f"Invalid params: {exc}")
    if key is None:
        return None
    shown = key if len(key) <= 64 else key[:64] + "..."
    return errors.error_frame(frame.id, errors.INVALID_PARAMS,
                              f"Invalid params: the key {shown!r} appears more than once in an object of the "
                              f"{frame.method} request; name each key once", {"key": shown})


def _exact_id(obj: Any, raw: bytes) -> Any:
    """orjson turns integers beyond 64 bits into floats; ids must stay exact."""
    if isinstance(obj, dict) and type(obj.get("id")) is float:
        return jsonfast.loads_exact(raw)
    return obj


def _as_written(obj: dict[str, Any], raw: bytes, value: Any) -> Any:
    """The id as the frame writes it: a spelled id (wire.ids) if its text is not the canonical
    one (`-0`, `1e2`, escapes), the value itself if it is, None if it is no valid id."""
    tok = scan.id_token(raw)
    if tok is None:
        return value if type(value) is not float else None
    exact = ids.id_from_token(tok)
    if exact is None:
        return value if type(value) is not float else None
    if type(exact) in ids.SPELLED:
        obj["id"] = exact
    return exact


def classify(obj: Any, raw: bytes) -> Frame | Invalid:
    """Check the JSON-RPC 2.0 envelope and build the Frame view."""
    if not isinstance(obj, dict):
        return Invalid(raw, errors.INVALID_REQUEST, "Invalid Request: a JSON-RPC message must be a JSON object")
    msg_id = obj.get("id")
    rid = msg_id if valid_id(msg_id) else None
    t = type(msg_id)
    if t is int:
        if msg_id == 0:                       # perhaps written -0
            rid = _as_written(obj, raw, msg_id)
    elif t is str:
        if 92 in raw:                         # a backslash: perhaps the id is written with escapes
            rid = _as_written(obj, raw, msg_id)
    elif t is float:                          # 1.0 and 1e2 are integers (JSON Schema's, MCP's id type)
        rid = _as_written(obj, raw, msg_id)
    if obj.get("jsonrpc") != "2.0":
        return Invalid(raw, errors.INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', rid)
    method = obj.get("method")
    if method is not None:
        if not isinstance(method, str):
            return Invalid(raw, errors.INVALID_REQUEST, 'Invalid Request: "method" must be a string', rid)
        params = obj.get("params")
        if params is not None and not isinstance(params, (dict, list)):
            return Invalid(raw, errors.INVALID_REQUEST, 'Invalid Request: "params" must be an object', rid)
        if "id" not in obj:
            return Frame(raw, Kind.NOTIFICATION, obj, method)
        if rid is None:
            return Invalid(raw, errors.INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer')
        return Frame(raw, Kind.REQUEST, obj, method, rid)
    has_result = "result" in obj
    has_error = "error" in obj
    if has_result == has_error:
        return Invalid(raw, errors.INVALID_REQUEST,
                       'Invalid Request: a message needs "method", or exactly one of "result" and "error"', rid)
    if has_error:
        err = obj["error"]
        if not isinstance(err, dict) or not isinstance(err.get("code"), int) or not isinstance(err.get("message"), str):
            return Invalid(raw, errors.INVALID_REQUEST,
                           'Invalid Request: "error" needs an integer code and a message', rid)
        if msg_id is not None and rid is None:
            return Invalid(raw, errors.INVALID_REQUEST, 'Invalid Request: "id" must be a string or an integer')
        return Frame(raw, Kind.ERROR, obj, None, rid)
    if rid is None:
        return Invalid(raw, errors.INVALID_REQUEST, 'Invalid Request: a response needs a string or integer "id"')
    return Frame(raw, Kind.RESPONSE, obj, None, rid)
