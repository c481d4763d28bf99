"""What the pii and secrets detectors share to stay cheap on text that holds nothing.

A regex that starts with a character class makes Python's engine try every position of the
text (~10 ms a MiB), while `bytes.translate` and a byte search (`bytes.find`, or a regex that
starts with a literal) cost well under 1 ms a MiB. So a detector maps the text to a few classes
of bytes (`one_byte_each`, then its own translation table), finds its candidates there with a
byte search, and reads only those in the text itself.

The engine hands every string to every enabled detector in turn, so the detectors of one module
share that first pass through `LastText`, a memo of the last string seen, keyed by the string's
identity (the memo keeps a reference to that one string; the answers do not depend on it).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def one_byte_each(text: str) -> bytes:
    """text as bytes, one a code point, so offsets are the text's: ASCII and Latin-1 text as it
    is (a copy), wider text with '?' for every code point that is not ASCII (the slow path)."""
    if text.isascii():
        return text.encode("ascii")
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("ascii", "replace")


class LastText(Generic[T]):
    """compute(text), remembered for the last text it was asked about."""

    __slots__ = ("_compute", "_last")

    def __init__(self, compute: Callable[[str], T]) -> None:
        self._compute = compute
        self._last: tuple[str, T] | None = None

    def __call__(self, text: str) -> T:
        last = self._last                      # one read: another thread may replace it
        if last is not None and last[0] is text:
            return last[1]
        value = self._compute(text)
        self._last = (text, value)
        return value
