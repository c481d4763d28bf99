"""Duplicated members: a frame the gateway would read differently from the server.

`{"jsonrpc":"2.0","id":"x","id":3,...}` is one message to a parser that keeps the first
`id` and another to one that keeps the last (orjson and most parsers keep the last,
silently). A gateway that routes by one reading while the server answers by the other
delivers that answer to somebody else's request, so a frame whose top-level object repeats
a member is refused, on every front and from every upstream.

The check must cost an ordinary frame almost nothing:

- Small frames (the usual requests and answers): orjson parses; nearly every peer writes
  compact JSON as orjson does, so serialising the parsed value gives the frame back byte for
  byte (a quarter of the parse's cost), which proves that no member, at any depth, was
  dropped. Otherwise each parsed top-level key's spelling is counted in the raw bytes: seen
  once each, and no `\\u` escape of an ASCII letter or digit (the only way to spell a
  protocol member's name differently), there is no duplicate. Else the paths below decide.
- Large frames: counting would scan the whole frame once per key. Instead the top level
  is read around its one large value: the members before it and after it are small and
  matched by regexes, the large value is parsed by orjson in place (a memoryview, no copy)
  and the object is assembled from the parts, so the frame is still parsed only once. The
  split is exact or refused: JSON has a single parse, so head + a value that orjson accepts
  + a tail of well-formed members *is* the parse of the frame.
- Anything else (several large values, odd layouts): the stdlib parser with an
  `object_pairs_hook` that keeps every pair, at C speed.
"""
from __future__ import annotations

import json
import re
from typing import Any

import orjson

from wire_gateway.wire import jsonfast

SMALL = 4096     # bytes: up to this, re-serialising (or counting) is cheaper than splitting the top level

_PROTOCOL_SPELLINGS = {k: b'"' + k.encode() + b'"' for k in ("jsonrpc", "id", "method", "params", "result", "error")}
# An escape that writes an ASCII letter, digit or one of @[\]^_`{|}~ another way: needed by nobody, and
# the only way to spell "id" (or any member name made of those) so that counting its spelling misses it.
_DISGUISE = re.compile(rb"\\u00(?:3[0-9]|[4-7][0-9a-fA-F])")

_WS = rb"[ \t\n\r]*"
_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_SCALAR = _STRING + rb"|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null"
_OPEN = re.compile(_WS + rb"\{")
# One member of the head: a scalar value and what follows it, or the start of a container value.
_HEAD_MEMBER = re.compile(_WS + rb"(" + _STRING + rb")" + _WS + rb":" + _WS
                          + rb"(?:(" + _SCALAR + rb")" + _WS + rb"([,}])|([\[{]))")
_TAIL_MEMBER = re.compile(_WS + rb"," + _WS + rb"(" + _STRING + rb")" + _WS + rb":" + _WS + rb"(" + _SCALAR + rb")")
_TAIL = re.compile(rb"(?:" + _WS + rb"," + _WS + _STRING + _WS + rb":" + _WS + rb"(?:" + _SCALAR + rb"))*" + _WS)
TAIL_WINDOW = 4096     # where the large value's end is looked for
_FAILED = object()


class Unverifiable(ValueError):
    """orjson read the frame but the exact check could not (nesting beyond the stdlib's depth)."""


def loads(raw: bytes) -> tuple[Any, str | None]:
    """Parse one frame: (its value, the first top-level key it repeats, or None).

    Raises ValueError if it is not JSON, Unverifiable (a ValueError) if it cannot be checked."""
    if len(raw) <= SMALL:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = jsonfast.loads(raw)          # the stdlib's turn (lone surrogates, 1e400), or ValueError
        if type(obj) is not dict:
            return obj, None
        try:
            if orjson.dumps(obj) == raw:       # the usual case, inlined: see repeated()
                return obj, None
        except (TypeError, orjson.JSONEncodeError):
            pass
        return obj, _counted(obj, raw)
    split = _split(raw)
    if split is not None:
        return split
    obj = jsonfast.loads(raw)
    return obj, (_exact(raw) if type(obj) is dict else None)


def repeated(obj: dict[str, Any], raw: bytes) -> str | None:
    """The first top-level key that `raw` (which parses to `obj`) repeats, or None."""
    try:
        if orjson.dumps(obj) == raw:
            return None
    except (TypeError, orjson.JSONEncodeError):    # a value orjson cannot write (a big integer)
        pass
    return _counted(obj, raw)


def _counted(obj: dict[str, Any], raw: bytes) -> str | None:
    count = raw.count
    for key in obj:
        spelled = _PROTOCOL_SPELLINGS.get(key)
        if spelled is None:
            spelled = jsonfast.dumps(key)
        if count(spelled) != 1:
            break
    else:
        if 92 not in raw or _DISGUISE.search(raw) is None:     # 92: a backslash (a byte test is memchr)
            return None
    split = _split(raw)
    return split[1] if split is not None else _exact(raw)


def _split(raw: bytes) -> tuple[dict[str, Any], str | None] | None:
    """Parse a top-level object around its one container value; None if the frame is not laid out
    so (then the caller parses it whole). Raises nothing."""
    m = _OPEN.match(raw)
    if m is None:
        return None
    pos = m.end()
    head: list[tuple[bytes, bytes]] = []
    while True:
        m = _HEAD_MEMBER.match(raw, pos)
        if m is None:
            return None
        if m.group(2) is None:
            break
        head.append((m.group(1), m.group(2)))
        pos = m.end()
        if m.group(3) == b"}":
            return _assemble(head, None, None, []) if not raw[pos:].strip(b" \t\n\r") else None
    big_key, start = m.group(1), m.start(4)
    end = len(raw.rstrip(b" \t\n\r")) - 1           # the closing brace of the frame
    if end <= start or raw[end] != 0x7D:
        return None
    closer = b"}" if raw[start] == 0x7B else b"]"
    low = max(start, end - TAIL_WINDOW)
    close = raw.rfind(closer, low, end)
    tries = 0
    while close > start and tries < 2:
        if _TAIL.fullmatch(raw, close + 1, end) is not None:
            tries += 1
            try:
                value = jsonfast.loads(memoryview(raw)[start:close + 1])
            except ValueError:
                value = _FAILED
            if value is not _FAILED:
                tail = [(t.group(1), t.group(2)) for t in _TAIL_MEMBER.finditer(raw, close + 1, end)]
                return _assemble(head, big_key, value, tail)
        close = raw.rfind(closer, low, close)
    return None


def _assemble(head: list[tuple[bytes, bytes]], big_key: bytes | None, big_value: Any,
              tail: list[tuple[bytes, bytes]]) -> tuple[dict[str, Any], str | None] | None:
    obj: dict[str, Any] = {}
    first: str | None = None
    try:
        for key_tok, value in [*((k, jsonfast.loads(v)) for k, v in head),
                               *(((big_key, big_value),) if big_key is not None else ()),
                               *((k, jsonfast.loads(v)) for k, v in tail)]:
            key = jsonfast.loads(key_tok)
            if first is None and key in obj:
                first = key
            obj[key] = value
    except ValueError:
        return None
    return obj, first


def _exact(raw: bytes) -> str | None:
    """The precise check: the stdlib parser keeps every pair when asked to."""
    try:
        pairs: list[tuple[str, Any]] = json.loads(raw.decode("utf-8"), object_pairs_hook=list)
    except RecursionError:
        raise Unverifiable("nested too deeply for the gateway to check it for repeated members") from None
    except ValueError:       # orjson accepted it, the stdlib did not: nothing to compare, so no verdict
        raise Unverifiable("the gateway could not check it for repeated members") from None
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    return None


def nested_repeat(raw: bytes, msg: Any = None) -> str | None:
    """The first key repeated inside any object at any depth of `raw` (which parses to `msg`), or None.

    For what a policy reads (a tools/call's name and arguments): the gateway must not judge
    one reading of them while the server acts on another."""
    if msg is not None and b"\\u003" not in raw:
        # Colons: raw has one per key written plus those inside its strings; orjson's text of what
        # was parsed has one per key kept plus those inside the kept strings (it never escapes a
        # colon). With no colon written as an escape (`\u003a`), the counts are equal exactly when
        # no key was dropped, at any depth: a dropped key takes its colon, and any in its value, with it.
        try:
            again = orjson.dumps(msg, default=jsonfast.default, option=orjson.OPT_PASSTHROUGH_SUBCLASS)
            if again.count(b":") == raw.count(b":"):
                return None
        except (TypeError, orjson.JSONEncodeError):
            pass
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> None:
        if len(items) > 1 and not found:
            seen: set[str] = set()
            for key, _ in items:
                if key in seen:
                    found.append(key)
                    return
                seen.add(key)

    try:
        json.loads(raw.decode("utf-8"), object_pairs_hook=pairs)
    except RecursionError:
        raise Unverifiable("nested too deeply for the gateway to check it for repeated keys") from None
    except ValueError:
        raise Unverifiable("the gateway could not check it for repeated keys") from None
    return found[0] if found else None
