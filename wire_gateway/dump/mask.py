"""Masking secrets out of frames before they are dumped.

Masking works on the parsed message, not on the text: a key-based rule must see keys
as JSON sees them (escapes, nesting), and the frame must stay valid JSON so the
dump tools and fixtures can read it. Only frames that might hold something to mask
are parsed and re-serialised (`might_hold_secret` is a cheap test on the raw bytes);
every other frame is dumped as the exact bytes that travelled.
"""
from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable
from typing import Any

import orjson

from wire_gateway.telemetry.masking import Masker
from wire_gateway.wire import jsonfast

MASK = "***"

# Whole key names (case-insensitive), optionally after a "something_" / "something-" prefix
# ("github_token", "x-api-key"). camelCase compounds such as progressToken are NOT secrets.
SECRET_KEY = re.compile(
    r"(?:.*[_-])?(?:authorization|cookie|set-cookie|password|passwd|(?:client[_-]?)?secret|"
    r"token|(?:access|refresh|id|auth|bearer|session)[_-]?token|api[_-]?key)",
    re.IGNORECASE)
BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
# Anything that could make the exact-bytes shortcut unsafe: a secret-ish word, a credential
# scheme, or any escape (a key spelled with \u escapes must not slip past the word test).
# Matched on the lower-cased bytes: several times faster than a case-insensitive regex,
# and this runs for every dumped frame.
_PRECHECK = re.compile(rb"auth|token|key|secret|passw|cookie|bearer|basic|\\")
_WORDS = (b"auth", b"token", b"key", b"secret", b"passw", b"cookie", b"bearer", b"basic", b"\\")
_PLAIN_WORDS = _WORDS[:-1]   # without the backslash


def _has_word(low: bytes) -> bool:
    """Substring tests in C: far faster than one alternation regex when nothing matches."""
    return any(word in low for word in _PLAIN_WORDS)


class FrameMasker:
    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns = [re.compile(p) for p in patterns]
        self._text_masker = Masker(p.pattern for p in self.patterns)   # for frames that are not JSON
        # Configured patterns are matched on the decoded text too, so the pre-check stays exact.
        self._bytes_patterns = []
        self._text_patterns = []
        for p in self.patterns:
            try:
                self._bytes_patterns.append(re.compile(p.pattern.encode("utf-8")))
            except (re.error, UnicodeEncodeError):
                self._text_patterns.append(p)

    def might_hold_secret(self, raw: bytes) -> bool:
        if _PRECHECK.search(raw.lower()):
            return True
        if any(p.search(raw) for p in self._bytes_patterns):
            return True
        if self._text_patterns:
            text = raw.decode("utf-8", "replace")
            return any(p.search(text) for p in self._text_patterns)
        return False

    def suspects(self, raws: list[bytes]) -> set[int]:
        """Which of a batch of frames might hold a secret (the others are written as they are).

        Same test as might_hold_secret, but on the whole batch at once: a few substring
        scans in C over the joined frames instead of a regex per frame, which was the
        largest single cost of a dump record."""
        if self._text_patterns:
            return set(range(len(raws)))
        starts = []
        pos = 0
        for raw in raws:
            starts.append(pos)
            pos += len(raw) + 1
        joined = b"\0".join(raws)          # no word spans two frames: none contains a NUL
        low = joined.lower()
        found: set[int] = set()
        last = len(raws) - 1
        for word in _WORDS:
            i = low.find(word)
            while i >= 0:
                n = bisect_right(starts, i) - 1
                found.add(n)
                if n == last:
                    break
                i = low.find(word, starts[n + 1])   # the rest of that frame is settled
        if self._bytes_patterns:   # per frame: a configured pattern may be anchored (^, $)
            for n, raw in enumerate(raws):
                if n not in found and any(p.search(raw) for p in self._bytes_patterns):
                    found.add(n)
        return found

    def mask_raw(self, raw: bytes) -> tuple[bytes, bool]:
        """The frame to dump and whether anything was masked. Unparseable frames that
        might hold a secret are masked as text, never written as they are."""
        if not self.might_hold_secret(raw):
            return raw, False
        try:
            obj = jsonfast.loads(raw)
        except ValueError:
            text = raw.decode("utf-8", "replace")
            masked = self._text_masker(self._mask_text(text))
            return masked.encode("utf-8"), masked != text
        if self._only_escapes(obj):
            return raw, False
        masked_obj, changed = self.mask_obj(obj)
        if not changed:
            return raw, False
        return jsonfast.dumps(masked_obj), True

    def _only_escapes(self, obj: Any) -> bool:
        """True when the pre-check fired only for a backslash and the message, with its escapes
        resolved, holds nothing the words or the configured patterns could match. Most tool
        results carry `\\n` or `\\"` in their text; walking each of them costs about twice as much."""
        if self._text_patterns:
            return False
        try:
            # Escapes resolved (only quote, backslash and control characters stay escaped): every
            # word the raw bytes hold is here too, and so is every word an escape spelled out.
            plain = orjson.dumps(obj)
        except (TypeError, orjson.JSONEncodeError):   # an integer beyond 64 bits: take the long way
            return False
        if _has_word(plain.lower()):
            return False
        return not any(p.search(plain) for p in self._bytes_patterns)

    def mask_obj(self, obj: Any) -> tuple[Any, bool]:
        if isinstance(obj, dict):
            changed = False
            out = {}
            for key, value in obj.items():
                if isinstance(key, str) and SECRET_KEY.fullmatch(key) and value not in (None, "", MASK):
                    out[key] = MASK
                    changed = True
                    continue
                new, did = self.mask_obj(value)
                out[key] = new
                changed |= did
            return (out, True) if changed else (obj, False)
        if isinstance(obj, list):
            changed = False
            items = []
            for value in obj:
                new, did = self.mask_obj(value)
                items.append(new)
                changed |= did
            return (items, True) if changed else (obj, False)
        if isinstance(obj, str):
            masked = self._mask_text(obj)
            return masked, masked != obj
        return obj, False

    def _mask_text(self, text: str) -> str:
        text = BEARER.sub(lambda m: f"{m.group(1)} {MASK}", text)
        for p in self.patterns:
            text = p.sub(MASK, text)
        return text
