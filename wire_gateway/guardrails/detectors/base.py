"""What every detector is: a pure function from one string to the spans it finds.

A detector never sees JSON: the walker (`guardrails.walk`) hands it every string of the
arguments or result, one at a time, with the name of the object key the string sits under
(or None), because a few detectors judge a value by its key (`"api_key": "..."`). It returns
the spans it matched, so the engine can mask exactly them, and nothing about the rest of the
text. Detectors are registered by name (the name the config uses, the log and the dump
print, and the corpus labels); groups name several at once.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Span:
    """One match: the detector's name and where it is in the string (text[start:end])."""

    detector: str
    start: int
    end: int


# text, the key it sits under (None for a list item or a bare string) -> matches, in order
Detect = Callable[[str, "str | None"], list[Span]]


@dataclass(frozen=True, slots=True)
class Detector:
    name: str
    group: str             # "pii" | "secrets" | "injection" | "arguments" | "custom"
    detect: Detect
    summary: str           # one line for docs and `wire-gateway guardrails detectors`
