"""The requests a client has in flight to one upstream, so that each gets exactly
one answer even when the server dies before giving it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from wire_gateway.wire import errors, jsonfast, scan
from wire_gateway.wire.frame import Frame
from wire_gateway.wire.ids import SPELLED, plain


@dataclass(slots=True)
class Pending:
    method: str
    generation: int | None          # the process it was written to; None while queued
    started: float = field(default_factory=time.monotonic)
    asked: Any = None               # the request's id if the client spelled it unusually (wire.ids)


class PendingTable:
    __slots__ = ("_by_id",)

    def __init__(self) -> None:
        self._by_id: dict[Any, Pending] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, req_id: Any) -> bool:
        return req_id in self._by_id

    def refusal(self, req_id: Any, server: str, max_in_flight: int) -> bytes | None:
        """The error to answer a new request with, if the table cannot take it, else None."""
        if req_id in self._by_id:
            return errors.error_frame(req_id, errors.INVALID_REQUEST,
                                      f"Invalid Request: id {req_id!r} is already in flight; ids must be unique "
                                      "among a client's outstanding requests")
        if len(self._by_id) >= max_in_flight:
            return errors.error_frame(req_id, errors.GATEWAY_OVERLOADED,
                                      f"too many requests in flight to server '{server}' "
                                      f"(limit {max_in_flight}); wait for answers before sending more")
        return None

    def add(self, req_id: Any, method: str, generation: int | None) -> None:
        entry = Pending(method, generation)
        if type(req_id) in SPELLED:
            entry.asked = req_id
        self._by_id[req_id] = entry

    def mark_sent(self, req_id: Any, generation: int) -> None:
        entry = self._by_id.get(req_id)
        if entry is not None:
            entry.generation = generation

    def pop(self, req_id: Any) -> Pending | None:
        return self._by_id.pop(req_id, None)

    def take_generation(self, generation: int) -> list[tuple[Any, Pending]]:
        """Remove and return the requests written to process `generation`."""
        lost = [(k, v) for k, v in self._by_id.items() if v.generation == generation]
        for k, _ in lost:
            del self._by_id[k]
        return lost

    def take_all(self) -> list[tuple[Any, Pending]]:
        lost = list(self._by_id.items())
        self._by_id.clear()
        return lost


def as_asked(frame: Frame, entry: Pending | None) -> Frame:
    """The answer `frame` with its id written as the request wrote it (`-0` stays `-0`, whatever
    the server wrote). Costs nothing unless one of the two was spelled unusually."""
    if entry is None or (entry.asked is None and type(frame.id) not in SPELLED):
        return frame
    asked = entry.asked if entry.asked is not None else plain(frame.id)
    raw = scan.replace_id(frame.raw, jsonfast.dumps(asked))
    return Frame(raw, frame.kind, frame.msg, frame.method, asked, frame.note)
