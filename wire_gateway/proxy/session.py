"""A client talking to one server through the gateway, frame by frame.

Client frames are checked (each bad one answered with a JSON-RPC error, the
connection kept), batches are split and their answers reassembled, and
everything else goes through as the exact bytes that arrived.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from wire_gateway.dump.tap import C2G, G2C, Tap
from wire_gateway.proxy.batch import BatchCollector
from wire_gateway.telemetry.metrics import METRICS, Cell
from wire_gateway.transport.outbuffer import OutBuffer
from wire_gateway.upstream.protocol import Upstream
from wire_gateway.wire import errors, scan
from wire_gateway.wire.frame import Batch, Frame, Invalid, Kind, decode
from wire_gateway.wire.framing import Oversize

log = logging.getLogger("wire_gateway.session")


class PassthroughSession:
    """Implements the upstream Sink: server frames land in the client's OutBuffer."""

    tap: Tap | None = None     # frame dumps: set after construction when --dump is on
    # With auth (stdio): decides each request before it goes anywhere; bytes are the refusal.
    admit: Callable[[Frame], bytes | None] | None = None

    def __init__(self, client_out: OutBuffer, max_frame_bytes: int) -> None:
        self.client_out = client_out
        self.max_frame_bytes = max_frame_bytes
        self.upstream: Upstream | None = None
        self.batches = BatchCollector()
        self._sent: Cell | None = METRICS.sent_bytes.cell("stdio") if METRICS.on else None

    # ---- client -> gateway --------------------------------------------------------------

    def on_client_item(self, item: bytes | Oversize) -> None:
        if isinstance(item, Oversize):
            req_id = scan.recover_id(item.prefix)
            log.warning("client sent a %d-byte frame, over the %d-byte limit; answered with an error",
                        item.size, self.max_frame_bytes)
            self._answer(errors.error_frame(
                req_id, errors.INVALID_REQUEST,
                f"Invalid Request: frame of {item.size} bytes exceeds the gateway's limit of "
                f"{self.max_frame_bytes} bytes (limits.max_frame_bytes)", {"frameBytes": item.size}))
            return
        decoded = decode(item)
        if isinstance(decoded, Frame):
            answer = self._from_client(decoded)
            if answer is not None:
                self._answer(answer)
        elif isinstance(decoded, Batch):
            self._from_client_batch(decoded)
        else:
            self._reject(decoded)

    def _from_client(self, frame: Frame) -> bytes | None:
        """Route one client frame; returns an immediate answer if the gateway must give one."""
        upstream = self.upstream
        assert upstream is not None
        if self.tap is not None:
            self.tap.frame(C2G, frame)
        kind = frame.kind
        if kind is Kind.REQUEST:
            if self.admit is not None:
                refused = self.admit(frame)
                if refused is not None:
                    return refused
            return upstream.request(frame)
        if kind is Kind.NOTIFICATION:
            upstream.notify(frame)
        else:
            upstream.reply(frame)
        return None

    def _from_client_batch(self, batch: Batch) -> None:
        waiting: list[Any] = []
        answered: list[bytes] = []
        for item in batch.items:
            if isinstance(item, Invalid):
                log.info("client batch member rejected: %s", item.message)
                answered.append(item.error_frame())
                if self.tap is not None:
                    self.tap.gateway(G2C, answered[-1])
                continue
            answer = self._from_client(item)
            if answer is not None:
                answered.append(answer)
                if self.tap is not None:
                    self.tap.gateway(G2C, answer)
            elif item.kind is Kind.REQUEST:
                waiting.append(item.id)
        whole = self.batches.open(waiting, answered)
        if whole is not None:
            self._to_client(whole)

    def _reject(self, bad: Invalid) -> None:
        preview = bad.raw[:120].decode("utf-8", "replace")
        log.warning("client sent an unusable frame (%s): %s", bad.message, preview)
        self._answer(bad.error_frame())

    # ---- Sink: upstream -> client -----------------------------------------------------------

    def server_frame(self, frame: Frame) -> None:
        if self.tap is not None:
            self.tap.frame(G2C, frame)
        if self.batches and frame.kind is not Kind.REQUEST and frame.kind is not Kind.NOTIFICATION \
                and self.batches.owns(frame.id):
            whole = self.batches.deliver(frame.id, frame.raw)
            if whole is not None:
                self._to_client(whole)
            return
        self._to_client(frame.raw)

    def gateway_reply(self, req_id: Any, data: bytes) -> None:
        if self.tap is not None:
            self.tap.gateway(G2C, data)
        if self.batches and self.batches.owns(req_id):
            whole = self.batches.deliver(req_id, data)
            if whole is not None:
                self._to_client(whole)
            return
        self._to_client(data)

    def flush(self) -> None:
        self.client_out.flush()

    async def wait_writable(self) -> None:
        await self.client_out.wait_writable()

    def _answer(self, data: bytes) -> None:
        """An answer the gateway gives itself (an error), not one from the server."""
        if self.tap is not None:
            self.tap.gateway(G2C, data)
        self._to_client(data)

    def _to_client(self, data: bytes) -> None:
        if self._sent is not None:
            self._sent.value += len(data) + 1      # and its newline
        self.client_out.put_line(data)
