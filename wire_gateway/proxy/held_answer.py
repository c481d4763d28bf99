"""A legacy client's `initialize` answer, held for the HTTP front to look at before the client does.

Which servers a legacy client reaches through the era bridge (docs/bridge.md): those that speak
only the modern era. `server/discover` alone cannot say so: the official SDKs' servers list only
2026-07-28 there and still accept `initialize`. So on a route with `era: auto` whose discover
lists no legacy version, the first legacy client's `initialize` is tried as it always was, in a
passed-through session, with this responder in front of the client's: a plain JSON answer is held
(a stream goes to the client as it comes: the server is talking, it speaks the era). When the
server itself refused it, the front takes the route for modern-only, ends that session and opens a
bridged one for the same `initialize`; otherwise the held answer goes to the client unchanged.

Only a well-formed `initialize` is tried so (`decides`): the route's choice holds for every later
client, and a server refuses a malformed one whatever its era, so one client's bad handshake would
otherwise send every legacy client of that route through the bridge. A malformed one is passed
through and gets the server's own answer; the next well-formed one decides.
"""
from __future__ import annotations

from typing import Any

import trio

from wire_gateway.transport.http_server import Responder
from wire_gateway.wire import errors, jsonfast
from wire_gateway.wire.frame import Frame


def decides(init: Frame) -> bool:
    """Whether a server's refusal of this `initialize` may say the server refuses the legacy era: its
    params are what every legacy `initialize` carries (a version string, capabilities and clientInfo
    objects)."""
    params = init.params
    return isinstance(params, dict) and isinstance(params.get("protocolVersion"), str) \
        and isinstance(params.get("capabilities"), dict) and isinstance(params.get("clientInfo"), dict)


class HeldAnswer:
    """A Responder for one request: a whole answer is kept (`held`), a stream passed on."""

    def __init__(self, responder: Responder) -> None:
        self.responder = responder
        self.held: tuple[int, list[tuple[str, str]], bytes] | None = None

    @property
    def disconnected(self) -> trio.Event:
        return self.responder.disconnected

    @property
    def started(self) -> bool:
        return self.held is not None or self.responder.started

    @property
    def buffered(self) -> int:
        return self.responder.buffered

    async def send(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self.held = (status, list(headers), body)

    def send_now(self, status: int, headers: list[tuple[str, str]], body: bytes) -> bool:
        return False                  # the caller sends it with `send`, which holds it

    async def finish(self) -> None:
        """Nothing is written by `send_now` here."""

    async def start_stream(self, status: int, headers: list[tuple[str, str]]) -> None:
        await self.responder.start_stream(status, headers)

    async def send_chunk(self, data: bytes) -> None:
        await self.responder.send_chunk(data)

    async def end_stream(self) -> None:
        await self.responder.end_stream()

    def refused_by_server(self) -> bool:
        """Whether the held answer is the server's own JSON-RPC error (not the gateway's)."""
        if self.held is None:
            return False
        try:
            msg: Any = jsonfast.loads(self.held[2])
        except ValueError:
            return False
        error = msg.get("error") if isinstance(msg, dict) else None
        data = error.get("data") if isinstance(error, dict) else None
        return isinstance(error, dict) and not (isinstance(data, dict) and data.get("source") == errors.SOURCE)

    async def release(self) -> None:
        """The held answer, to the client."""
        if self.held is not None:
            await self.responder.send(*self.held)
