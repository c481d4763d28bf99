"""Request ids exactly as the client wrote them.

A client may write an id that means the same as a shorter spelling: `-0` (0), `1.0` or
`1e2` (JSON Schema integers, as the MCP schema types ids), `"\\u0061"` ("a"). Routing
compares ids by value; the client must still get back the bytes it sent, and a gateway
that re-serialises the parsed id would answer `0` to `-0`. Such an id is carried as a
`SpelledInt`/`SpelledStr`: equal to (and hashing as) its value, so every table keyed by
id works unchanged, and written back by `jsonfast.dumps` as its original text. Ids
written the canonical way (nearly all) stay plain ints and strs and cost nothing.
"""
from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any, Self

import orjson

_INTEGER = re.compile(rb"-?(?:0|[1-9][0-9]*)")
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
MAX_EXPONENT = 1000     # 1e1000 is an integer too, but nobody's id: refuse rather than build huge ints


class SpelledInt(int):
    """An integer id and the JSON text the client wrote it as."""

    spelling: bytes

    def __new__(cls, value: int, spelling: bytes) -> Self:
        self = super().__new__(cls, value)
        self.spelling = spelling
        return self


class SpelledStr(str):
    """A string id and the JSON text (with its escapes) the client wrote it as."""

    spelling: bytes

    def __new__(cls, value: str, spelling: bytes) -> Self:
        self = super().__new__(cls, value)
        self.spelling = spelling
        return self


SPELLED = (SpelledInt, SpelledStr)


def plain(value: Any) -> Any:
    """The id without its spelling (what a re-serialisation would write)."""
    t = type(value)
    if t is SpelledInt:
        return int(value)
    if t is SpelledStr:
        return str(value)
    return value


def _canonical_str(value: str) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:       # a lone surrogate: what jsonfast.dumps writes then
        return json.dumps(value, ensure_ascii=True).encode()


def id_from_token(tok: bytes) -> Any:
    """The id a JSON token denotes (str or int, spelled if not written canonically), or None
    if it is not a valid MCP id (null, a fraction, a container, not JSON)."""
    if tok[:1] == b'"':
        try:
            value = json.loads(tok)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(value, str):
            return None
        return value if _canonical_str(value) == tok else SpelledStr(value, tok)
    if _INTEGER.fullmatch(tok) is not None:
        number = int(tok)
        return number if tok != b"-0" else SpelledInt(0, tok)
    if _NUMBER.fullmatch(tok) is None:
        return None
    try:
        exact = Decimal(tok.decode("ascii"))
    except InvalidOperation:
        return None
    if exact.adjusted() > MAX_EXPONENT or exact != exact.to_integral_value():
        return None
    return SpelledInt(int(exact), tok)
