"""Shared scanning work for the phrase detectors (injection, arguments): one lowered copy of a
string per string, and keyword-anchored regex matching.

The engine calls every enabled detector on the same string in turn, so the lowered copy is kept
for the last string seen (by identity): the second to eighth detector get it for the price of an
`is` test. The copy is the same length as the text (index i of one is index i of the other), so
spans found in it are spans of the text; the few characters whose lower case is longer (U+0130)
are left as they are.

Regex scanning is the cost that matters: `re` walking 1 MiB with a pattern that starts with a
character class or an alternation costs 10-30 ms, `str.find` of a literal about 0.5 ms. So a
phrase detector finds a literal keyword first and runs its regex only on a window around each
occurrence (`anchored`).
"""
from __future__ import annotations

import re
from collections.abc import Iterator

from wire_gateway.guardrails.detectors.base import Span

_last: tuple[str, str] = ("", "")


def lowered(text: str) -> str:
    """`text.lower()`, index for index (cached for the last string)."""
    global _last
    last = _last
    if last[0] is text:
        return last[1]
    low = text.lower()
    if len(low) != len(text):
        low = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
    _last = (text, low)
    return low


def anchored(low: str, keyword: str, rx: re.Pattern[str], back: int, ahead: int) -> Iterator[re.Match[str]]:
    """Matches of `rx` in windows of `low` reaching `back` characters before and `ahead` after each
    occurrence of `keyword`; a match must cover the keyword's position or start after the last match."""
    i = low.find(keyword)
    done = 0
    while i >= 0:
        m = rx.search(low, max(done, i - back), i + len(keyword) + ahead)
        if m is not None and m.start() <= i + len(keyword):
            yield m
            done = m.end()
            i = low.find(keyword, max(done, i + 1))
        else:
            i = low.find(keyword, i + 1)


def merged(name: str, found: dict[int, int]) -> list[Span]:
    """Spans from {start: end}, in order, overlapping ones merged into one."""
    out: list[Span] = []
    for start in sorted(found):
        end = found[start]
        if out and start <= out[-1].end:
            if end > out[-1].end:
                out[-1] = Span(name, out[-1].start, end)
        else:
            out.append(Span(name, start, end))
    return out
