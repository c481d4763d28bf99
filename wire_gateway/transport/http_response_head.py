"""Response heads, written by the server itself and remembered: h11 takes ~40 us to write one.

A data-plane answer has one of a few heads (status, content-type, maybe a session id), so
the checked status line and header lines of each are kept, and a response costs a dict
look-up plus its framing line. A header that could split the response (CR, LF, NUL, ...)
or a name that is not a token raises ValueError before anything is sent, so the caller can
still answer 500 instead.

Sans-IO: status and headers in, text out. The framing lines (Content-Length, chunked,
Connection: close) depend on the connection and are added by `Cycle.response_head`.
"""
from __future__ import annotations

import re
from http import HTTPStatus

__all__ = ["STATUS_LINES", "head_lines"]

STATUS_LINES = {int(s): f"HTTP/1.1 {s.value} {s.phrase}\r\n" for s in HTTPStatus}
_FRAMING = frozenset(("content-length", "transfer-encoding"))
_is_token = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+").fullmatch
_bad_value = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]").search   # CR, LF, NUL, ...: header injection

_HEADS: dict[tuple, tuple[str, bool]] = {}   # (status, *headers) -> (head lines, says close)
_HEADS_MAX = 512     # the same few heads recur; a bound for whatever else comes
# Headers whose value names one session: a head carrying one never recurs once its
# session ends, so keeping it would only hold the session's id after it is gone (and
# fill the cache with heads nobody asks for again). Looked for on a miss only.
_PER_SESSION = frozenset({"mcp-session-id"})


def head_lines(status: int, headers: list[tuple[str, str]]) -> tuple[str, bool]:
    """`_check_lines`, remembered. A per-session header is not part of what is kept: the
    head is the shared one with that header's line added after it."""
    key = (status, *headers)
    try:
        cached = _HEADS.get(key)
    except TypeError:   # a header given as a list: fine, just not kept
        return _check_lines(status, headers)
    if cached is not None:
        return cached
    for i, (name, value) in enumerate(headers):
        if name.lower() in _PER_SESSION:
            lines, close = head_lines(status, headers[:i] + headers[i + 1:])
            if _bad_value(value):
                raise ValueError(f"invalid response header {name!r}: {value!r}")
            return f"{lines}{name}: {value}\r\n", close
    cached = _check_lines(status, headers)
    if len(_HEADS) < _HEADS_MAX:
        _HEADS[key] = cached
    return cached


def _check_lines(status: int, headers: list[tuple[str, str]]) -> tuple[str, bool]:
    """The status line and the caller's headers (framing ones dropped), checked; and
    whether they say Connection: close."""
    if not 200 <= status <= 999:
        raise ValueError(f"status {status} is not a final status")
    said_close = False
    out = [STATUS_LINES.get(status) or f"HTTP/1.1 {status} \r\n"]
    for name, value in headers:
        low = name.lower()
        if low in _FRAMING:
            continue
        if not _is_token(name) or _bad_value(value):
            raise ValueError(f"invalid response header {name!r}: {value!r}")
        if low == "connection" and "close" in [t.strip() for t in value.lower().split(",")]:
            said_close = True
        out.append(f"{name}: {value}\r\n")
    return "".join(out), said_close
