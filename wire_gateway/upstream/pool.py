"""Several processes of one server behind one `Upstream`: `"pool": {"size": N}`.

One process per server caps a gateway at one core's worth of that server, however many cores
the machine has: the modern era's requests all share it. A pool runs N copies, each supervised
on its own (a crash restarts that copy; the others keep serving), and sends each request to the
copy with the fewest requests in flight, preferring copies that are running over copies that
are starting or waiting to restart.

It is the `Upstream` its user sees; each copy answers to a `_CopySink` that tells the pool which
copy spoke, then passes the frame on to the user. Its user (the modern
pool, `proxy.modern_http`) already gives every request a gateway-wide id, so answers need no
remapping on the way back: the pool only remembers which copy carries which id (to count it
done, and to send a cancellation to the copy that has the request). Requests a copy sends the
client (none in the modern era over stdio, but the contract allows them) get ids of the pool's
own, `"p<copy>-<n>"`, so two copies' ids never meet; the client's answer goes back to the copy
that asked, with its id. Other notifications from the client (the modern era forwards them) go
to every copy.

Only servers whose requests stand alone may be pooled: nothing makes a copy see another copy's
state. Legacy sessions are not pooled: each already has a process of its own.
"""
from __future__ import annotations

import itertools
from typing import Any

import trio

from wire_gateway.dump.tap import Tap
from wire_gateway.upstream.handshake import Handshake
from wire_gateway.upstream.pending import PendingTable
from wire_gateway.upstream.protocol import Sink, Upstream
from wire_gateway.wire import jsonfast, scan
from wire_gateway.wire.frame import Frame, Kind

__all__ = ["PooledUpstream"]


class PooledUpstream:
    """N copies of one server (made by `make(sink)`), least busy first."""

    def __init__(self, name: str, size: int, make: Any, sink: Sink) -> None:
        self.name = name
        self.sink = sink
        self.copies: list[Upstream] = [make(_CopySink(self, i)) for i in range(size)]
        self.busy = [0] * size
        # Requests in flight, by gateway id; an entry's `generation` is the copy that carries it.
        self.pending = PendingTable()
        self._asked: dict[str, tuple[int, Any]] = {}      # our id of a copy's request -> (copy, its id)
        self._ids = itertools.count(1)
        self._tap: Tap | None = None

    # ---- what the user reads -----------------------------------------------------------

    @property
    def era(self) -> str | None:
        return self.copies[0].era

    @era.setter
    def era(self, era: str | None) -> None:
        for copy in self.copies:
            copy.era = era

    @property
    def tap(self) -> Tap | None:
        return self._tap

    @tap.setter
    def tap(self, tap: Tap | None) -> None:
        self._tap = tap
        for copy in self.copies:
            copy.tap = tap

    @property
    def state(self) -> str:
        """"running" when every copy is, else the first other state (a copy restarting)."""
        states = [copy.state for copy in self.copies]
        return next((s for s in states if s != "running"), "running")

    @property
    def restarts(self) -> int:
        return sum(copy.restarts for copy in self.copies)

    @property
    def last_exit(self) -> str | None:
        return next((copy.last_exit for copy in self.copies if copy.last_exit is not None), None)

    @property
    def handshake(self) -> Handshake:
        return self.copies[0].handshake

    @property
    def frames_in(self) -> int:
        return sum(copy.frames_in for copy in self.copies)

    @property
    def frames_out(self) -> int:
        return sum(copy.frames_out for copy in self.copies)

    def status(self) -> list[dict[str, Any]]:
        """Each copy's state and load, for /status."""
        return [{"state": copy.state, "inFlight": self.busy[i], "restarts": copy.restarts,
                 "pid": getattr(getattr(copy, "process", None), "pid", None)}
                for i, copy in enumerate(self.copies)]

    # ---- client -> server ----------------------------------------------------------------

    def _pick(self) -> int:
        """The least busy copy that is running; with none running, the least busy (it queues or
        refuses as it would alone). Ties go to the first, so an idle pool keeps one copy warm."""
        copies, busy = self.copies, self.busy
        best, best_key = 0, (copies[0].state != "running", busy[0])
        for i in range(1, len(copies)):
            key = (copies[i].state != "running", busy[i])
            if key < best_key:
                best, best_key = i, key
        if best_key[0]:
            best = min(range(len(copies)), key=busy.__getitem__)
        return best

    def carrier(self, req_id: Any) -> int | None:
        """The copy that carries a request in flight."""
        return self.pending.generation_of(req_id)

    def request(self, frame: Frame) -> bytes | None:
        if frame.id in self.pending:    # each copy checks only its own: the pool checks them all
            return self.pending.refusal(frame.id, self.name, 0)
        i = self._pick()
        refused = self.copies[i].request(frame)
        if refused is None:
            self.pending.add(frame.id, frame.method or "", i)
            self.busy[i] += 1
        return refused

    def notify(self, frame: Frame) -> None:
        if frame.method == "notifications/cancelled":
            params = frame.params
            req_id = params.get("requestId") if isinstance(params, dict) else None
            carrier = self.carrier(req_id)
            if carrier is not None:
                self.copies[carrier].notify(frame)
                self._done(req_id)     # a cancelled request may never be answered: no longer busy
            return
        for copy in self.copies:
            copy.notify(frame)

    def reply(self, frame: Frame) -> None:
        asked = self._asked.pop(str(frame.id), None)
        if asked is None:
            return      # no copy asked this (or it was answered already): nobody to tell
        i, their_id = asked
        raw = scan.replace_id(frame.raw, jsonfast.dumps(their_id))
        self.copies[i].reply(Frame(raw, frame.kind, {**frame.msg, "id": their_id}, frame.method, their_id))

    def flush(self) -> None:
        for copy in self.copies:
            copy.flush()

    def flush_soon(self) -> None:
        for copy in self.copies:
            copy.flush_soon()

    async def wait_writable(self) -> None:
        for copy in self.copies:
            await copy.wait_writable()

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for copy in self.copies:
                await nursery.start(copy.run)
            task_status.started()

    async def shutdown(self) -> None:
        async with trio.open_nursery() as nursery:
            for copy in self.copies:
                nursery.start_soon(copy.shutdown)

    # ---- server -> client (through each copy's _CopySink) -----------------------------------

    def _done(self, req_id: Any) -> None:
        entry = self.pending.pop(req_id)
        if entry is not None and entry.generation is not None:
            self.busy[entry.generation] -= 1

    def from_copy(self, copy: int, frame: Frame) -> None:
        kind = frame.kind
        if kind is Kind.RESPONSE or kind is Kind.ERROR:
            self._done(frame.id)
        elif kind is Kind.REQUEST:
            ours = f"p{copy}-{next(self._ids)}"
            self._asked[ours] = (copy, frame.id)
            raw = scan.replace_id(frame.raw, jsonfast.dumps(ours))
            frame = Frame(raw, kind, {**frame.msg, "id": ours}, frame.method, ours)
        self.sink.server_frame(frame)

    def reply_from_gateway(self, req_id: Any, data: bytes) -> None:
        self._done(req_id)
        self.sink.gateway_reply(req_id, data)


class _CopySink:
    """What one copy answers to: the pool, told which copy it is."""

    __slots__ = ("pool", "copy")

    def __init__(self, pool: PooledUpstream, copy: int) -> None:
        self.pool = pool
        self.copy = copy

    def server_frame(self, frame: Frame) -> None:
        self.pool.from_copy(self.copy, frame)

    def gateway_reply(self, req_id: Any, data: bytes) -> None:
        self.pool.reply_from_gateway(req_id, data)

    def flush(self) -> None:
        self.pool.sink.flush()

    async def wait_writable(self) -> None:
        await self.pool.sink.wait_writable()
