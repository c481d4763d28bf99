"""A tiny tokenizer over raw JSON bytes, for the two jobs a full parse cannot do.

1. Split a batch (a JSON array) into the exact bytes of each element, so batch
   members are forwarded untouched like any other frame.
2. Recover the top-level "id" from a frame we will not parse (too large, or
   broken), so the error we answer with reaches the request that caused it.
3. Replace the top-level "id" of a frame in place (a pooled upstream needs ids
   remapped), leaving every other byte as it arrived.
4. Open the top-level "result" object of an answer written the usual way, to add a member
   to it and change its id in one copy (the era bridge's `resultType`), every other byte kept.
5. Find the first whole JSON text at the start of a body and what follows it: an
   `application/json` body is one JSON text, and a server that streams several
   messages in one (say, a line each) must be caught before its body ends, since
   it may never end.

Strings are matched whole by the regex (C speed); only structure is walked in Python.
"""
from __future__ import annotations

import json
import re
from typing import Any

from wire_gateway.wire import ids

_TOKEN = re.compile(
    rb'"[^"\\]*(?:\\.[^"\\]*)*"'          # a complete string (unrolled: no per-character alternation)
    rb'|"'                                 # an unterminated string: stop here
    rb'|[\[\]{},:]'                        # structure
    rb'|-?[0-9][0-9.eE+\-]*'              # a number
    rb'|true|false|null',
    re.DOTALL,
)

# One token after optional whitespace, matched where the last one ended: JSON has nothing else
# between tokens, so text that is not JSON stops the walk at once instead of being searched.
_NEXT_TOKEN = re.compile(rb'[ \t\r\n]*(' + _TOKEN.pattern + rb')', re.DOTALL)

_MISSING = object()
ID_WALK_LIMIT = 65536

# A scalar id's text (a number or a string), and an optional `"jsonrpc":"2.0",` before a member.
_ID_TEXT = rb'-?[0-9][0-9.eE+\-]*|"[^"\\]*(?:\\.[^"\\]*)*"'
_JSONRPC = rb'(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?'

# `,"id":<id>}` ending a valid frame: the "}" that ends the text closes the top-level object, so the
# member just before it is a top-level member (a nested object would need another "}" after it).
_TAIL_ID = re.compile(rb',\s*"id"\s*:\s*(' + _ID_TEXT + rb')\s*\}\s*\Z', re.DOTALL)

# The head nearly every implementation writes: {"jsonrpc":"2.0","id":<id>, ... or {"id":<id>, ...
_HEAD_ID = re.compile(rb'\s*\{\s*' + _JSONRPC + rb'"id"\s*:\s*(' + _ID_TEXT + rb'|null)(?=\s*[,}])', re.DOTALL)

# An answer's head written the usual way, up to the "{" opening its result: {"jsonrpc":"2.0","id":<id>,
# "result":{ (jsonrpc before or after the id, or absent). Every member before "result" is then a
# top-level scalar, so that "{" is the top-level result's own.
_HEAD_RESULT = re.compile(
    rb'\s*\{\s*' + _JSONRPC + rb'"id"\s*:\s*(' + _ID_TEXT + rb')\s*,\s*' + _JSONRPC
    + rb'"result"\s*:\s*\{(\s*\})?',
    re.DOTALL,
)


def with_result_member(raw: bytes, new_id: bytes, member: bytes) -> bytes | None:
    """`raw`, an answer whose result is an object, with `new_id` (JSON text) for its id and
    `member` (`"key":value`, a key the result lacks) first in its result; None when its head is
    not written the usual way (the caller re-encodes the message instead)."""
    head = _HEAD_RESULT.match(raw)
    if head is None:
        return None
    at = head.end(0) if head.group(2) is None else head.start(2)
    return b"".join((raw[:head.start(1)], new_id, raw[head.end(1):at], member,
                     b"," if head.group(2) is None else b"", raw[at:]))


def split_array(raw: bytes) -> list[bytes]:
    """Exact bytes of each element of a JSON array that is known to be valid."""
    parts: list[bytes] = []
    depth = 0
    start = -1
    for m in _TOKEN.finditer(raw):
        tok = m.group()
        c = tok[:1]
        if c in (b"[", b"{"):
            depth += 1
            if depth == 1:
                start = m.end()
                continue
        elif c in (b"]", b"}"):
            depth -= 1
            if depth == 0:
                elem = raw[start:m.start()].strip()
                if elem:
                    parts.append(elem)
                break
        elif c == b"," and depth == 1:
            parts.append(raw[start:m.start()].strip())
            start = m.end()
    return parts


def recover_id(prefix: bytes) -> Any:
    """The value of the top-level "id" key if it appears in `prefix`, else None.

    Only string and integer ids count (the MCP rule); anything doubtful gives None. The
    first "id" counts if a (refused) frame repeats it: that is the one its writer means.
    """
    span = id_span(prefix)
    return None if span is None else ids.id_from_token(prefix[span[0]:span[1]])


def id_token(raw: bytes) -> bytes | None:
    """The JSON text of the top-level id, where it is cheap to find: at the head, at the end
    (`..."jsonrpc":"2.0","id":0}`, as the TypeScript SDK writes answers), or anywhere in a
    frame of at most ID_WALK_LIMIT bytes."""
    head = _HEAD_ID.match(raw)
    if head is not None:
        return head.group(1)
    tail = _TAIL_ID.search(raw, max(0, len(raw) - 512))
    if tail is not None:
        return tail.group(1)
    if len(raw) > ID_WALK_LIMIT:
        return None
    span = id_span(raw)
    return None if span is None else raw[span[0]:span[1]]


def replace_id(raw: bytes, new_id: bytes) -> bytes:
    """`raw` with the JSON text of its top-level id replaced by `new_id` (JSON text)."""
    span = id_span(raw)
    if span is None:
        raise ValueError("frame has no top-level scalar id")
    return raw[:span[0]] + new_id + raw[span[1]:]


def id_span(raw: bytes) -> tuple[int, int] | None:
    """Byte offsets of the top-level "id" value (a scalar), or None."""
    head = _HEAD_ID.match(raw)
    if head is not None:
        return head.start(1), head.end(1)
    depth = 0
    expect_key = False
    key: Any = _MISSING
    after_colon = False
    pos = 0
    while (m := _NEXT_TOKEN.match(raw, pos)) is not None:
        pos = m.end()
        tok = m.group(1)
        c = tok[:1]
        if tok == b'"' or (depth == 0 and c != b"{"):
            return None     # a string cut short, or no top-level object (so no top-level id)
        if after_colon:
            after_colon = False
            if depth == 1 and key == "id" and c not in (b"[", b"{"):
                return m.start(1), m.end(1)
        if c in (b"[", b"{"):
            depth += 1
            expect_key = depth == 1 and c == b"{"
        elif c in (b"]", b"}"):
            depth -= 1
        elif c == b",":
            expect_key = depth == 1
        elif c == b":":
            after_colon = True
        elif expect_key and c == b'"':
            expect_key = False
            if b"\\" not in tok:
                key = tok[1:-1].decode("utf-8", "replace")
            else:
                try:
                    key = json.loads(tok)
                except ValueError:
                    key = _MISSING
    return None


_FIRST = json.JSONDecoder()


def first_value(raw: bytes) -> tuple[Any, bytes] | None:
    """The first whole JSON value at the start of `raw` and the bytes after it (whitespace
    stripped); None while `raw` holds no whole value yet (or is not JSON at all)."""
    try:
        text = raw.decode("utf-8")
        start = len(text) - len(text.lstrip(" \t\r\n"))
        value, end = _FIRST.raw_decode(text, start)
    except (UnicodeDecodeError, ValueError):
        return None
    return value, text[end:].strip(" \t\r\n").encode("utf-8")
