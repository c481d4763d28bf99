"""Reassemble the answers to a JSON-RPC batch.

A batch is split into single frames on the way in (servers of later eras do not
accept batches); the answers come back one by one, in any order, and the client
gets them together as one array once the last has arrived.
"""
from __future__ import annotations

from typing import Any


class _Open:
    __slots__ = ("waiting", "answers")

    def __init__(self, waiting: set[Any], answers: list[bytes]) -> None:
        self.waiting = waiting
        self.answers = answers


class BatchCollector:
    __slots__ = ("_by_id",)

    def __init__(self) -> None:
        self._by_id: dict[Any, _Open] = {}

    def __bool__(self) -> bool:
        return bool(self._by_id)

    def open(self, waiting: list[Any], answered: list[bytes]) -> bytes | None:
        """Start a batch expecting answers for `waiting`; `answered` already has some.

        Returns the whole batch answer at once if nothing is awaited (None if it is empty,
        as for a batch of notifications only, which gets no answer).
        """
        if not waiting:
            return _join(answered) if answered else None
        entry = _Open(set(waiting), list(answered))
        for req_id in waiting:
            self._by_id[req_id] = entry
        return None

    def owns(self, req_id: Any) -> bool:
        return req_id in self._by_id

    def deliver(self, req_id: Any, data: bytes) -> bytes | None:
        """Add one answer; returns the whole batch answer when it is complete."""
        entry = self._by_id.pop(req_id)
        entry.waiting.discard(req_id)
        entry.answers.append(data)
        if entry.waiting:
            return None
        return _join(entry.answers)


def _join(answers: list[bytes]) -> bytes:
    return b"[" + b",".join(answers) + b"]"
