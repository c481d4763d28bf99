"""Answering one HTTP request from its Exchange: one JSON body when the answer is
all there is, an SSE stream when anything comes before it (progress, a
server-to-client request), as Streamable HTTP lets the server choose.
"""
from __future__ import annotations

import trio

from wire_gateway.proxy.exchange import WRITTEN, Exchange
from wire_gateway.transport.http_server import Responder
from wire_gateway.wire.sse import encode_comment, encode_event

JSON = ("content-type", "application/json")  # one header, for `[JSON, *headers]`
SSE_HEADERS = [("content-type", "text/event-stream"), ("cache-control", "no-cache, no-transform"),
               ("x-accel-buffering", "no")]


async def answer(ex: Exchange, responder: Responder, headers: list[tuple[str, str]],
                 keepalive: float = 15.0) -> None:
    """Send everything the exchange yields until its final frame. Raises if the client goes.

    A quiet stream (a `subscriptions/listen`, a slow tool) gets an SSE comment every
    `keepalive` seconds so proxies and client idle timers do not cut it."""
    first = await first_answer(ex, responder, [JSON, *headers])
    if first is None:
        return
    raw, final, status = first
    if final:
        await responder.send(status, [JSON, *headers], raw)
        return
    ex.streamed = True
    await responder.start_stream(200, [*SSE_HEADERS, *headers])
    await responder.send_chunk(encode_event(raw))
    while not final:
        with trio.move_on_after(keepalive) as quiet:
            raw, final, _ = await ex.next()
        if quiet.cancelled_caught:
            await responder.send_chunk(encode_comment())
            continue
        await responder.send_chunk(encode_event(raw))
    await responder.end_stream()


async def first_answer(ex: Exchange, responder: Responder,
                       headers: list[tuple[str, str]]) -> tuple[bytes, bool, int] | None:
    """The exchange's first frame; or None when it was the final answer and went out as JSON
    (with `headers`) straight from the task that pushed it, which saves the handler's
    wake-up before the write (latency; the CPU is the same)."""
    ex.direct = lambda raw, status: responder.send_now(status, headers, raw)
    try:
        first = await ex.next()
    finally:
        ex.direct = None
    if first[0] is WRITTEN:
        await responder.finish()
        return None
    return first
