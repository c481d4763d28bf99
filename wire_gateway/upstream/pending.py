"""The requests a client has in flight to one upstream, so that each gets exactly
one answer even when the server dies before giving it, or never answers at all.

Deadlines (request timeouts) cost one float per entry and no extra structure: every
deadline is "when it was set + the server's one timeout", and setting it again (a
progress notification) moves the entry to the end of the table, so the table's
insertion order is deadline order. The entries to expire are always at its front.
(Entries without a deadline, such as subscriptions, are skipped where they stand.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wire_gateway.wire import errors, jsonfast, scan
from wire_gateway.wire.frame import Frame
from wire_gateway.wire.ids import SPELLED, plain

NEVER = float("inf")


@dataclass(slots=True)
class Pending:
    method: str
    generation: int | None          # the process it was written to; None while queued
    deadline: float = NEVER         # when it times out (time.monotonic()); NEVER: no timeout
    token: Any = None               # its progressToken, if it has one and a deadline
    asked: Any = None               # the request's id if the client spelled it unusually (wire.ids)
    sent: float = 0.0               # perf_counter() when it was written (metrics on; telemetry/metrics.py)
    series: Any = None              # its server's and method's instruments (metrics on: metrics.Series)


class PendingTable:
    __slots__ = ("_by_id", "_tokens")

    def __init__(self) -> None:
        self._by_id: dict[Any, Pending] = {}
        self._tokens: dict[Any, Any] = {}     # progressToken -> request id (requests with deadlines)

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

    def add(self, req_id: Any, method: str, generation: int | None, deadline: float = NEVER,
            token: Any = None) -> None:
        entry = Pending(method, generation, deadline, token)
        if type(req_id) in SPELLED:
            entry.asked = req_id
        self._by_id[req_id] = entry
        if token is not None:
            self._tokens[token] = req_id

    def mark_sent(self, req_id: Any, generation: int) -> None:
        entry = self._by_id.get(req_id)
        if entry is not None:
            entry.generation = generation

    def generation_of(self, req_id: Any) -> int | None:
        """The process a request in flight was written to (None: unknown id, or queued)."""
        entry = self._by_id.get(req_id)
        return entry.generation if entry is not None else None

    def pop(self, req_id: Any) -> Pending | None:
        entry = self._by_id.pop(req_id, None)
        if entry is not None and entry.token is not None:
            self._forget_token(req_id, entry)
        return entry

    def _forget_token(self, req_id: Any, entry: Pending) -> None:
        if self._tokens.get(entry.token) == req_id:   # a client that reused a token: keep the newer
            del self._tokens[entry.token]

    def take_generation(self, generation: int) -> list[tuple[Any, Pending]]:
        """Remove and return the requests written to process `generation`."""
        lost = [(k, v) for k, v in self._by_id.items() if v.generation == generation]
        for k, v in lost:
            del self._by_id[k]
            if v.token is not None:
                self._forget_token(k, v)
        return lost

    def awaiting_answers(self, open_ended: frozenset[str]) -> bool:
        """Whether a request that will end by itself is in flight: one whose method is not in
        `open_ended` (a subscriptions/listen stream ends only when it is cancelled)."""
        return any(entry.method not in open_ended for entry in self._by_id.values())

    def take_all(self) -> list[tuple[Any, Pending]]:
        lost = list(self._by_id.items())
        self._by_id.clear()
        self._tokens.clear()
        return lost

    # ---- deadlines ----------------------------------------------------------------------------

    def extend(self, token: Any, deadline: float) -> Any:
        """Progress on the request with this progressToken: it now times out at `deadline` (which
        must be now + the same timeout, so the table stays in deadline order). Returns its id, or
        None if no request with a deadline has this token."""
        req_id = self._tokens.get(token)
        if req_id is None:
            return None
        entry = self._by_id.pop(req_id)
        entry.deadline = deadline
        self._by_id[req_id] = entry
        return req_id

    def expire(self, now: float) -> list[tuple[Any, Pending]]:
        """Remove and return the requests whose deadline has passed."""
        expired = []
        for req_id, entry in self._by_id.items():
            if entry.deadline > now:
                if entry.deadline == NEVER:
                    continue
                break
            expired.append((req_id, entry))
        for req_id, entry in expired:
            del self._by_id[req_id]
            if entry.token is not None:
                self._forget_token(req_id, entry)
        return expired

    def next_deadline(self) -> float | None:
        """The earliest deadline of a request in flight, or None."""
        for entry in self._by_id.values():
            if entry.deadline != NEVER:
                return entry.deadline
        return None


def as_asked(frame: Frame, entry: Pending | None) -> Frame:
    """The answer `frame` with its id written as the request wrote it (`-0` stays `-0`, whatever
    the server wrote). Costs nothing unless one of the two was spelled unusually."""
    if entry is None or (entry.asked is None and type(frame.id) not in SPELLED):
        return frame
    asked = entry.asked if entry.asked is not None else plain(frame.id)
    raw = scan.replace_id(frame.raw, jsonfast.dumps(asked))
    return Frame(raw, frame.kind, frame.msg, frame.method, asked, frame.note, frame.status)
