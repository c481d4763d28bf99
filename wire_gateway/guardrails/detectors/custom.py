"""Detectors a policy configures: a list of words and phrases, or a list of regular expressions.

They are built per policy by the engine (not registered in `DETECTORS`), named by the policy, and
belong to the group "custom". Words match whole: "secret" finds "the secret plan" and "Secret:",
not "secretary"; a phrase matches across any run of whitespace ("project  x" finds "project x").
Case is ignored unless asked. A bad regular expression is a configuration error, raised when the
policy is loaded with the pattern named, not when the first tool call meets it.
"""
from __future__ import annotations

import re

from wire_gateway.guardrails.detectors.base import Detector, Span


def keywords(name: str, words: list[str] | tuple[str, ...], case_sensitive: bool = False) -> Detector:
    """A detector for whole-word occurrences of `words` (each a word or a phrase)."""
    cleaned = [w.strip() for w in words if w.strip()]
    if not cleaned:
        raise ValueError(f"custom detector {name!r}: no keywords")
    # longest first, so "api key" wins over "api" at the same position
    alts = [r"\s+".join(re.escape(part) for part in w.split()) for w in sorted(cleaned, key=len, reverse=True)]
    rx = re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", 0 if case_sensitive else re.IGNORECASE)
    # literal prefilter: one of the words must be in the text (lowered unless case-sensitive)
    needles = tuple(w.split()[0] if case_sensitive else w.split()[0].lower() for w in cleaned)

    def detect(text: str, key: str | None) -> list[Span]:
        hay = text if case_sensitive else text.lower()
        if not any(n in hay for n in needles):
            return []
        return [Span(name, m.start(), m.end()) for m in rx.finditer(text)]

    return Detector(name, "custom", detect, f"configured keywords ({len(cleaned)})")


def patterns(name: str, regexes: list[str] | tuple[str, ...]) -> Detector:
    """A detector for matches of any of `regexes` (Python syntax). Empty matches are ignored."""
    if not regexes:
        raise ValueError(f"custom detector {name!r}: no patterns")
    compiled = []
    for pattern in regexes:
        try:
            compiled.append(re.compile(pattern))
        except re.error as e:
            raise ValueError(f"custom detector {name!r}: bad pattern {pattern!r}: {e}") from None

    def detect(text: str, key: str | None) -> list[Span]:
        out = [Span(name, m.start(), m.end()) for rx in compiled for m in rx.finditer(text) if m.end() > m.start()]
        if len(compiled) > 1:
            out.sort(key=lambda s: (s.start, s.end))
        return out

    return Detector(name, "custom", detect, f"configured patterns ({len(compiled)})")
