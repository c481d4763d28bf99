"""JSON parsing and serialising: orjson first, the stdlib as a faithful fallback.

orjson refuses some JSON that is valid (a lone surrogate escape such as "\\ud800",
integers beyond 64 bits, numbers beyond double range such as 1e400). A proxy must
still understand those frames, so we fall back to the stdlib parser, rejecting
only what is not JSON at all (NaN/Infinity literals, bad UTF-8).
"""
from __future__ import annotations

import json
import re
from typing import Any

import orjson

from wire_gateway.wire.ids import SPELLED

# What a JSON text can start with (after whitespace). A line that starts otherwise (a banner, a
# log line) is not JSON for any parser: no need to ask the slow one too.
_NOT_JSON = re.compile(rb'[ \t\r\n]*[^ \t\r\n{\["\-0-9tfn]')


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(raw: bytes | bytearray | memoryview | str) -> Any:
    """Parse one JSON text; raise ValueError if it is not valid JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if isinstance(raw, bytes) and _NOT_JSON.match(raw) is not None:
            raise ValueError(str(exc)) from None
    return loads_exact(raw)


def loads_exact(raw: bytes | bytearray | memoryview | str) -> Any:
    """The stdlib parser: slower, but exact for big integers and lone surrogates."""
    if not isinstance(raw, str):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8: {exc}") from None
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


_SUBCLASSES = orjson.OPT_PASSTHROUGH_SUBCLASS


def default(obj: Any) -> Any:
    """A spelled id (wire.ids) is written as the client wrote it; other subclasses of the
    builtins as their base type, as orjson would without OPT_PASSTHROUGH_SUBCLASS."""
    if type(obj) in SPELLED:
        return orjson.Fragment(obj.spelling)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, list):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON")


def dumps(obj: Any) -> bytes:
    """Serialise compactly; big integers and lone surrogates fall back to the stdlib."""
    try:
        return orjson.dumps(obj, default=default, option=_SUBCLASSES)
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()
