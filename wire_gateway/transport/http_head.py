"""The common request head, parsed in one regex; h11 parses every other one.

h11 costs ~60 us of CPU to parse a small request head on this machine, a third of
the data plane's whole per-request budget. Nearly every MCP request has the same
plain shape: `METHOD /path HTTP/1.1`, CRLF line ends, token header names, printable
values, one Host, at most one Content-Length, no Transfer-Encoding, no Expect. That
shape is recognised here in a few microseconds.

The rule that keeps this safe: what `parse_head` accepts is a strict subset of what
h11 accepts, read the same way (same method, target, header names and values, body
length). Anything else (obs-fold, bare LF, control characters, chunked bodies,
duplicate or comma-joined lengths, `Expect: 100-continue`, absolute-form targets,
HTTP/2 prefaces) returns None and the caller hands the bytes to h11, which parses or
refuses them exactly as before. tests/test_http_head.py checks the subset rule
against h11 itself.

Sans-IO: bytes in, a `Head` or None out.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Head", "find_head_end", "parse_head"]

_TOKEN = r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
# A value of printable characters, spaces and tabs: h11 reads any such as OWS value OWS.
# (h11 also takes control characters other than NUL, CR, LF: those heads go to h11.)
_VALUE = r"[\t\x20-\x7e\x80-\xff]*"
# The whole head (without its final blank line) as one latin-1 string.
_HEAD = re.compile(rf"({_TOKEN}) (/[\x21-\x7e]*) HTTP/1\.([01])(?:\r\n{_TOKEN}:{_VALUE})*")
_FIELDS = re.compile(r"\r\n([^:]+):[ \t]*([^\r]*)")   # on a head _HEAD has matched
_LENGTH = re.compile(r"[0-9]{1,18}")
_BLANK_LINE = re.compile(rb"\n\r?\n")    # where h11 ends a head


@dataclass(slots=True)
class Head:
    method: str
    target: str
    version: str                        # "1.1" or "1.0"
    headers: list[tuple[str, str]]      # names lowercased, values stripped, as h11 gives them
    length: int                         # body bytes (0 without Content-Length)
    close: bool                         # the client said Connection: close


def find_head_end(buf: bytes | bytearray, start: int = 0) -> tuple[int, int] | None:
    """(end of the head's last line, start of the body) once a blank line has arrived.

    `start`: where to look from; a caller that had looked before passes how far it got
    minus 2, so a head that trickles in byte by byte costs linear time, not quadratic."""
    found = _BLANK_LINE.search(buf, start)
    if found is None:
        return None
    start = found.start()
    if found.end() - start == 3 and start and buf[start - 1] == 13:   # CRLF CRLF
        return start - 1, found.end()
    return start, found.end()    # a bare LF somewhere: parse_head declines it


def parse_head(text: str) -> Head | None:
    """The head's lines (latin-1, no final CRLF CRLF), or None when h11 should judge them."""
    match = _HEAD.fullmatch(text)
    if match is None:
        return None
    headers = [(name.lower(), value.rstrip(" \t")) for name, value in _FIELDS.findall(text)]
    names = [name for name, _ in headers]
    if "transfer-encoding" in names or "expect" in names:
        return None
    version = "1.1" if match.group(3) == "1" else "1.0"
    hosts = names.count("host")
    if hosts > 1 or (hosts == 0 and version == "1.1"):
        return None
    length = 0
    lengths = names.count("content-length")
    if lengths:
        if lengths > 1:
            return None
        value = headers[names.index("content-length")][1]
        if not _LENGTH.fullmatch(value):
            return None
        length = int(value)
    close = False
    if "connection" in names:
        for name, value in headers:
            if name == "connection" and "close" in [t.strip(" \t") for t in value.lower().split(",")]:
                close = True
    return Head(match.group(1), match.group(2), version, headers, length, close)
