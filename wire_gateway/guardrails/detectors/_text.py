"""Shared work for the injection and argument detectors: one lowered copy per string, and spans.

The engine calls every enabled detector on the same string in turn, so the lowered copy is kept
for the last string seen (by identity): the second to eighth detector get it for the price of an
`is` test. The copy is the same length as the text (index i of one is index i of the other), so
spans found in it are spans of the text; the few characters whose lower case is longer (U+0130)
are left as they are.

Regex scanning is the cost that matters: `re` walking 1 MiB with a pattern that starts with a
character class, a repeat or an alternation costs 10-30 ms; with a literal first character or
word it searches like `str.find` (about 0.5 ms). Every pattern these detectors run over a whole
string therefore starts with a literal, and the lowered copy is what makes that possible without
(?i).
"""
from __future__ import annotations

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
