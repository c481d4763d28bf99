"""What an upstream owes its client: exactly one answer for every request it accepted.

A supervised process and a remote server fail in different ways (a process exits, a POST
breaks, an upstream session ends, a request outlives its timeout), but the client's side of
the contract is the same for both: the server's answer, with the id as the client wrote it,
or one gateway error naming the server; never both, never none. `Answers` is the pending
table with that duty added, so both upstreams keep these books one way:

* `note_request` and `owe` take a request onto the books (with its deadline, if the upstream
  times requests out: `timeouts.py` has the timer and the progress tokens);
* `settle` takes the server's answer off them, `cancel` a request the client gave up on,
  `progress` moves a request's deadline;
* `run_timer` expires requests past their deadline, and
* `fail`, `fail_one` and `timed_out` answer with a gateway error what the server will not.

The per-frame methods (`owe`, `settle`) do what each upstream did inline before, one call in
place of the table's own, so sharing them costs the passthrough path nothing.

Being the one place where every request an upstream takes on ends, this is also where the
request metrics are counted (telemetry/metrics.py): the outcome, the upstream time from `owe` to
`settle`, the gateway's time before `owe`, and the requests in flight (this table's length).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from wire_gateway.telemetry.metrics import MCP_METHODS, METRICS, Series
from wire_gateway.telemetry.throttle import ThrottledLog
from wire_gateway.upstream.handshake import Handshake
from wire_gateway.upstream.pending import Pending, PendingTable
from wire_gateway.upstream.protocol import Sink
from wire_gateway.upstream.timeouts import UNTIMED_METHODS, expire_requests, progress_token
from wire_gateway.wire import errors
from wire_gateway.wire.era import era_of_request
from wire_gateway.wire.frame import Frame, Kind
from wire_gateway.wire.ids import SPELLED

log = logging.getLogger("wire_gateway.upstream")


class _Books(Protocol):
    """The part of an upstream that `note_request` keeps up to date."""

    name: str
    era: str | None
    handshake: Handshake
    frames_in: int


def note_request(up: _Books, frame: Frame) -> None:
    """The books every upstream keeps on a client request it accepts: the handshake to
    replay, the session's era (for logs and /status), the frame counter."""
    if frame.method == "initialize":
        up.handshake.on_client_request(frame)
    if up.era is None:
        up.era = era_of_request(frame.method, frame.msg)
        if up.era is not None:
            log.info("server %s: the client speaks the %s era of MCP", up.name, up.era)
    up.frames_in += 1


class Answers(PendingTable):
    """The requests one upstream owes answers for, and the gateway's answer when the server
    will not give one. `data(method)` is the `error.data` the upstream's errors carry; `log` is
    the upstream's logger. `timeout` (seconds without an answer or progress; None: none) is the
    upstream's own request timer, not a transport's (an HTTP upstream's is its client's).
    With `warn_each`, every gateway answer is logged (an HTTP upstream has no process exit
    to log once for all the requests it cost)."""

    __slots__ = ("name", "sink", "handshake", "timeout", "_data", "_log", "_warn_each", "_timeouts_log", "_metrics",
                 "_series", "__weakref__")

    def __init__(self, name: str, sink: Sink, handshake: Handshake, data: Callable[[str | None], dict[str, Any]],
                 log: logging.Logger, timeout: float | None = None, *, warn_each: bool = False) -> None:
        super().__init__()
        self.name = name
        self.sink = sink
        self.handshake = handshake
        self.timeout = timeout
        self._data = data
        self._log = log
        self._warn_each = warn_each
        self._timeouts_log = ThrottledLog(log, "server %s: %d more requests got no answer within their timeout "
                                          "over the last %.2fs", name)
        self._metrics = METRICS.bound()
        self._series: dict[str | None, Series] = {}
        if self._metrics is not None:
            self._metrics.in_flight.watch(self, _in_flight)

    # ---- the books (per frame) ------------------------------------------------------------

    def owe(self, frame: Frame, generation: int | None) -> None:
        """A request that goes (or waits to go) to the server: owed one answer from now on, by
        `timeout` from now unless progress moves that (requests meant to stay open: never)."""
        req_id = frame.id
        timeout = self.timeout
        if timeout is None or frame.method in UNTIMED_METHODS:
            entry = Pending(frame.method or "", generation)
        else:
            entry = Pending(frame.method or "", generation, time.monotonic() + timeout, progress_token(frame))
            if entry.token is not None:
                self._tokens[entry.token] = req_id
        if type(req_id) in SPELLED:
            entry.asked = req_id
        if self._metrics is not None:
            label = frame.method if frame.method in MCP_METHODS else None    # a bounded number of series
            series = self._series.get(label)
            if series is None:
                series = self._series[label] = self._metrics.series(self.name, label)
            entry.series = series
            entry.sent = series.forwarded()
        self._by_id[req_id] = entry

    def refused(self, method: str | None) -> None:
        """The upstream answered a request at once with an error (unavailable, overloaded, a
        duplicate id) instead of taking it on: counted."""
        if self._metrics is not None:
            self._metrics.ended(self.name, method, "refused")

    def settle(self, frame: Frame) -> Pending | None:
        """The server answered `frame.id`: off the books, and the handshake learns whether an
        initialize succeeded. Returns the request's entry (`as_asked` gives the answer the id
        as the client wrote it), or None if nobody waits for this answer any more."""
        req_id = frame.id
        entry = self._by_id.pop(req_id, None)
        if entry is None:
            return None
        if entry.token is not None:
            self._forget_token(req_id, entry)
        self.handshake.on_server_reply(frame)    # ids compare by value: the spelling does not matter here
        if entry.series is not None:
            entry.series.answered(entry.sent, frame.msg.get("error") if frame.kind is Kind.ERROR else None)
        return entry

    def cancel(self, frame: Frame) -> Any:
        """A client's notifications/cancelled: its request is owed nothing any more (a later crash
        must not invent an error for it, nor a timeout). Returns the request's id."""
        params = frame.msg.get("params")
        req_id = params.get("requestId") if isinstance(params, dict) else None
        entry = self.pop(req_id)
        if entry is not None and self._metrics is not None:
            self._metrics.ended(self.name, entry.method, "cancelled")
        return req_id

    def progress(self, frame: Frame) -> None:
        """A server's notifications/progress: the request it is about times out `timeout` from now."""
        params = frame.msg.get("params")
        if self.timeout is not None and type(params) is dict:
            token = params.get("progressToken")
            if type(token) is str or type(token) is int:
                self.extend(token, time.monotonic() + self.timeout)

    # ---- the gateway's answers ------------------------------------------------------------

    def fail(self, lost: Iterable[tuple[Any, Pending]], code: int, template: str) -> None:
        """Answer each of `lost` (already off the books) with a gateway error; "{method}" in
        `template` names its method. The caller flushes the sink."""
        for req_id, entry in lost:
            self._error(req_id, entry.method, code, template)

    def fail_one(self, req_id: Any, code: int, template: str) -> bool:
        """Answer one request with a gateway error, if it is still owed one (never twice)."""
        entry = self.pop(req_id)
        if entry is None:
            return False
        self._error(req_id, entry.method, code, template)
        return True

    def fail_all(self, code: int, template: str) -> None:
        """Answer every request still owed with a gateway error (the server is gone or stopping)."""
        self.fail(self.take_all(), code, template)

    def _error(self, req_id: Any, method: str | None, code: int, template: str) -> None:
        message = template.replace("{method}", method or "the request")
        if self._metrics is not None:
            self._metrics.ended(self.name, method, "error", code)
        if self._warn_each:
            self._log.warning("server %s: request %r: %s", self.name, req_id, message)
        self.sink.gateway_reply(req_id, errors.error_frame(req_id, code, message, self._data(method)))

    # ---- timeouts ---------------------------------------------------------------------------

    async def run_timer(self, on_expired: Callable[[list[tuple[Any, Pending]]], None]) -> None:
        """The timer (timeouts.expire_requests): hands each batch of requests past their deadline,
        already off the books, to `on_expired`, which says what became of them to `timed_out`."""
        assert self.timeout is not None
        await expire_requests(self, self.timeout, on_expired)

    def timed_out(self, req_id: Any, entry: Pending, done: str, now: float) -> None:
        """Answer a request that got no answer (or progress) within `timeout`; `done` says what
        the gateway did about it upstream. The caller flushes the sink."""
        assert self.timeout is not None
        method = entry.method or "the request"
        if self._metrics is not None:
            self._metrics.ended(self.name, entry.method, "timeout")
        if self._timeouts_log.event(now):
            self._log.warning("server %s: request %r (%s) got no answer within %gs (timeout); %s", self.name,
                              req_id, method, self.timeout, done)
        self.sink.gateway_reply(req_id, errors.error_frame(
            req_id, errors.UPSTREAM_UNAVAILABLE,
            f"server '{self.name}' did not answer {method} within {self.timeout:g}s (its timeout); {done}",
            {"server": self.name, "method": entry.method, "timeout": self.timeout}))

    def close(self, now: float) -> None:
        """The upstream stopped: the summary of timeouts still unlogged, if any."""
        self._timeouts_log.close(now)


def _in_flight(books: Answers) -> list[tuple[tuple[str, ...], float]]:
    return [((books.name,), len(books))]
