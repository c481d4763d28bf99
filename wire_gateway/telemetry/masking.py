"""Mask secrets in text before it reaches a log (and later a dump).

We never write a full token: a bearer token keeps its first four characters so two
different tokens can still be told apart while debugging.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

_SECRET_KEYS = r"(?:authorization|proxy-authorization|token|access_token|refresh_token|id_token|api[_-]?key|apikey|password|passwd|secret|client_secret|cookie|set-cookie|x-api-key)"

_RULES: list[tuple[re.Pattern[str], str]] = [
    # "key": "value" in JSON text
    (re.compile(r'("[A-Za-z0-9_-]*' + _SECRET_KEYS + r'"\s*:\s*")((?:[^"\\]|\\.)*)(")', re.IGNORECASE), r"\1***\3"),
    # the password in a URL's userinfo (redis://:secret@host, https://user:secret@host)
    (re.compile(r"\b([a-z][a-z0-9+.-]*://[^\s/:@]*:)([^\s/@]+)(@)", re.IGNORECASE), r"\1***\3"),
    # Bearer / Basic credentials anywhere
    (re.compile(r"\b(Bearer|Basic)\s+([A-Za-z0-9._~+/=-]{4})[A-Za-z0-9._~+/=-]*", re.IGNORECASE), r"\1 \2***"),
    # key=value or key: value in plain text (headers, env dumps, argv)
    (re.compile(r"\b([A-Za-z0-9_-]*" + _SECRET_KEYS + r")(\s*[=:]\s*)(?!Bearer\b|Basic\b|\*\*\*)([^\s,;\"'&]+)", re.IGNORECASE), r"\1\2***"),
]


class Masker:
    def __init__(self, extra_patterns: Iterable[str] = ()) -> None:
        self.rules = list(_RULES) + [(re.compile(p), "***") for p in extra_patterns]

    def __call__(self, text: str) -> str:
        for pattern, repl in self.rules:
            text = pattern.sub(repl, text)
        return text


mask = Masker()
