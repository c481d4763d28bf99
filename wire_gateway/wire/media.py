"""Media types at the HTTP edge: the Content-Type a POST body must have, the Accept it must carry.

- Content-Type (RFC 9110 §8.3): `application/json`, any case, with optional parameters.
  JSON exchanged between systems is UTF-8 (RFC 8259 §8.1) and the gateway reads and
  forwards the body as UTF-8, so a `charset` other than utf-8 (compared ignoring case,
  quoted or not) is refused rather than misread; a charset named twice is refused too,
  since two readers could each take a different one.
- Accept (RFC 9110 §12.5.1): media ranges with q-values; the most specific range that
  matches a type decides its quality (`*/*` < `application/*` < `application/json`), and
  q=0 means "not acceptable". Streamable HTTP (2025-11-25 and 2026-07-28) says a POST
  must accept both application/json and text/event-stream, since the server chooses
  per request (the gateway answers JSON, or SSE once anything comes before the answer),
  and a GET must accept text/event-stream. No Accept at all means any media type
  (RFC 9110); an Accept that is present but lists no usable range accepts nothing.

Sans-IO: header values in, None (fine) or the text of the problem out.
"""
from __future__ import annotations

import re

from wire_gateway.wire.authority import show

__all__ = ["JSON_TYPE", "SSE_TYPE", "accept_problem", "json_content_type_problem", "quality"]

JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x20-\x7e\x80-\xff])*"'
_PARAM = rf"[ \t]*;[ \t]*(?:({_TOKEN})=({_TOKEN}|{_QUOTED}))?"
_MEDIA = re.compile(rf"({_TOKEN})/({_TOKEN})((?:{_PARAM})*)[ \t]*")
_PARAMS = re.compile(_PARAM)
_QVALUE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
_UNQUOTE = re.compile(r"\\(.)")

_CT_HINT = "send the body as UTF-8 JSON with Content-Type: application/json"


def _params(text: str) -> list[tuple[str, str]]:
    """(name lowercased, value unquoted) of each parameter in the parameters part of a media type."""
    out = []
    for match in _PARAMS.finditer(text):
        name, value = match.group(1), match.group(2)
        if name is None:
            continue   # an empty parameter (`;;`) is allowed and means nothing
        if value[:1] == '"':
            value = _UNQUOTE.sub(r"\1", value[1:-1])
        out.append((name.lower(), value))
    return out


def json_content_type_problem(value: str | None) -> str | None:
    """Why a POST's Content-Type is not JSON the gateway can read as UTF-8; None if it is."""
    if not value:
        return f"Content-Type is missing; {_CT_HINT}"
    match = _MEDIA.fullmatch(value)
    if match is None:
        return f"Content-Type {show(value)} is not a media type (type/subtype;name=value); {_CT_HINT}"
    media = f"{match.group(1)}/{match.group(2)}".lower()
    if media != JSON_TYPE:
        return f"Content-Type must be application/json, not {show(media)}"
    charsets = [v for n, v in _params(match.group(3)) if n == "charset"]
    if len(charsets) > 1:
        return f"Content-Type {show(value)} names a charset more than once; {_CT_HINT}"
    if charsets and charsets[0].lower() != "utf-8":
        return (f"Content-Type charset {show(charsets[0])} is not supported: the body is read as UTF-8 "
                f"(RFC 8259 §8.1); send it as UTF-8, with charset=utf-8 or no charset")
    return None


def _ranges(text: str) -> list[tuple[str, str, float]]:
    """(type, subtype, q) of each well-formed media range in an Accept value; others are skipped."""
    out = []
    for element in _split_list(text):
        match = _MEDIA.fullmatch(element)
        if match is None:
            continue
        kind, sub = match.group(1).lower(), match.group(2).lower()
        if kind == "*" and sub != "*":
            continue
        q = 1.0
        for name, value in _params(match.group(3)):
            if name == "q":
                if not _QVALUE.fullmatch(value):
                    q = -1.0
                else:
                    q = float(value)
                break   # what follows q are accept extensions, not media parameters
        if q >= 0:
            out.append((kind, sub, q))
    return out


def _split_list(text: str) -> list[str]:
    """The elements of a comma-separated list (RFC 9110 §5.6.1), commas in quoted strings kept."""
    if '"' not in text:
        return [part.strip(" \t") for part in text.split(",") if part.strip(" \t")]
    out, start, quoted, escaped = [], 0, False, False
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return [part.strip(" \t") for part in out if part.strip(" \t")]


def quality(ranges: list[tuple[str, str, float]], media: str) -> float:
    """The q-value `ranges` give `media` (a concrete type/subtype): the most specific match decides."""
    kind, _, sub = media.partition("/")
    best, q = -1, 0.0
    for r_kind, r_sub, r_q in ranges:
        if r_kind == kind and r_sub == sub:
            level = 2
        elif r_kind == kind and r_sub == "*":
            level = 1
        elif r_kind == "*":
            level = 0
        else:
            continue
        if level > best:
            best, q = level, r_q
        elif level == best:
            q = max(q, r_q)
    return q


def accept_problem(text: str | None, required: tuple[str, ...]) -> str | None:
    """Why an Accept value (its lines joined with ", "; None when there is none) does not
    allow every type in `required`; None if it does."""
    if text is None:
        return None   # no Accept: any media type is acceptable (RFC 9110 §12.5.1)
    ranges = _ranges(text)
    refused = [media for media in required if quality(ranges, media) <= 0]
    if not refused:
        return None
    need = " and ".join(required)
    which = f"allows neither {refused[0]} nor {refused[1]}" if len(refused) == 2 else f"does not allow {refused[0]}"
    return (f"Not Acceptable: Accept {show(text)} {which}; "
            f"this request must accept {'both ' if len(required) > 1 else ''}{need} "
            f"(send Accept: {', '.join(required)})")
