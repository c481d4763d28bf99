"""Request timeouts for a supervised (stdio) server: a server that never answers must not
hold its caller forever.

A request times out `timeout` seconds after it was accepted, or after the last
`notifications/progress` the server sent for it (the SDKs' convention: progress means
work is happening; the progress token in the request's `params._meta` says which request
it is about). The caller then gets a gateway error and the server `notifications/cancelled`.
`answers.Answers` keeps the deadlines on its books (`owe`, `progress`) and answers what
expires (`timed_out`); this module has the timer and reads the request's token.

One task per server does the timing: it sleeps until the earliest deadline in the pending
table (its first entry: see pending.py) and expires what is due. Per request that costs one
clock read (time.monotonic, a fifth of the cost of trio.current_time) and a float in the
table's entry; per answer, nothing beyond the pop it already does. A trio cancel scope per
request would cost a task (or a scope registered with the scheduler) for every request, and
be cancelled for nearly all of them.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

from wire_gateway.upstream.pending import Pending, PendingTable
from wire_gateway.wire.frame import Frame

# A request that is meant to stay open until it is cancelled (2026-07-28): never timed out.
UNTIMED_METHODS = frozenset({"subscriptions/listen"})


def progress_token(frame: Frame) -> Any:
    """The request's progressToken (a string or an integer), or None."""
    params = frame.msg.get("params")
    if type(params) is dict:
        meta = params.get("_meta")
        if type(meta) is dict:
            token = meta.get("progressToken")
            if type(token) is str or type(token) is int:
                return token
    return None


async def expire_requests(pending: PendingTable, timeout: float,
                          on_expired: Callable[[list[tuple[Any, Pending]]], None]) -> None:
    """Run for as long as the server does: hand each batch of requests past their deadline to
    `on_expired` (already removed from the table, so each is answered exactly once).

    With nothing due, it sleeps until the first deadline, or for `timeout` when no request has
    one: a request accepted meanwhile cannot be due any sooner."""
    while True:
        now = time.monotonic()
        expired = pending.expire(now)
        if expired:
            on_expired(expired)
        first = pending.next_deadline()
        await trio.sleep(timeout if first is None else max(0.0, first - time.monotonic()))
