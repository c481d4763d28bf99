"""The frames between a session and a supervised server process: the client's frames to the
process's stdin (or to the queue while no process runs), and the process's stdout back to
the session, line by line.

`StdioFrames` is the frame half of `supervisor.SupervisedServer`, which adds the process
lifecycle (spawn, handshake replay, restart, shutdown) on top of it. They are one object,
not two, because this half is the hot path: a request goes from `request()` to the pipe,
an answer from `_read_stdout` to the sink, each touching the lifecycle's state (the live
process's buffer, the generation, the replay) directly, with no call between the halves.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import trio

from wire_gateway.config import Limits, ServerSpec
from wire_gateway.dump.tap import G2S, S2G, Tap
from wire_gateway.telemetry.throttle import ThrottledLog
from wire_gateway.transport.outbuffer import OutBuffer, read_some
from wire_gateway.upstream.answers import Answers, note_request
from wire_gateway.upstream.handshake import Handshake
from wire_gateway.upstream.pending import Pending, as_asked
from wire_gateway.upstream.process import ServerProcess
from wire_gateway.upstream.protocol import Sink
from wire_gateway.upstream.states import SupervisorState
from wire_gateway.wire import errors, jsonfast, scan
from wire_gateway.wire.frame import Batch, Frame, Invalid, Kind, decode
from wire_gateway.wire.framing import LineFramer, Oversize
from wire_gateway.wire.ids import SPELLED

log = logging.getLogger("wire_gateway.upstream")

READ_SIZE = 65536
# The bytes a JSON-RPC line can start with: an object, a batch, or whitespace before one. The
# framer never emits empty lines, so raw[0] exists; anything else is junk without parsing it.
_FRAME_START = frozenset(b"{[ \t\r")
# The states in which a request is answered at once with an error, and those in which frames wait
# for the next process (module constants: request() checks on every frame).
_REFUSING = frozenset({SupervisorState.CRASH_LOOP, SupervisorState.STOPPED})
_QUEUEING = frozenset({SupervisorState.STARTING, SupervisorState.RESTARTING})


class StdioFrames:
    tap: Tap | None = None     # frame dumps: set after construction when --dump is on

    def __init__(self, spec: ServerSpec, limits: Limits, sink: Sink) -> None:
        self.spec = spec
        self.name = spec.name
        self.limits = limits
        self.sink = sink
        self.state = SupervisorState.STARTING     # changed only by the lifecycle's _set_state (states.py)
        self.handshake = Handshake()
        self.timeout = spec.timeout                    # seconds without an answer or progress; None: no limit
        self.pending = Answers(self.name, sink, self.handshake, self._error_data, log, self.timeout)
        self.frames_in = 0      # client -> server frames accepted
        self.frames_out = 0     # server -> client frames delivered
        self.era: str | None = None                    # "legacy" or "modern", once a request shows it
        self.last_exit: str | None = None
        self._generation = 0
        self._out: OutBuffer | None = None
        self._queue: list[tuple[bytes, Any]] = []     # (raw, request id or None) while not running
        # server->client requests by the id the client sees -> (generation, the server's own id)
        self._server_requests: dict[Any, tuple[int, Any]] = {}
        self._live_generation: int | None = None       # the process whose stdout is still open
        self._replay_id: str | None = None
        self._replay_done: trio.Event | None = None
        self._replay_ok = False
        self._closing = False
        self._unavailable_reason = ""
        self._last_stderr: list[str] = []
        # junk lines on stdout: a few logged in full, then counted
        self._junk = ThrottledLog(log, "server %s: dropped %d more lines on stdout that are not JSON-RPC messages "
                                  "over the last %.2fs (the first lines of a burst are logged in full, then only "
                                  "counted)", self.name)

    # ---- called by the session (client -> server) ---------------------------------

    def request(self, frame: Frame) -> bytes | None:
        """Take a client request. Returns an error frame to answer at once, or None."""
        if self.state in _REFUSING or self._closing:
            self.pending.refused(frame.method)
            return errors.error_frame(frame.id, errors.UPSTREAM_UNAVAILABLE, self._unavailable_message(),
                                      self._error_data(frame.method))
        refused = self.pending.refusal(frame.id, self.name, self.limits.max_in_flight)
        if refused is not None:
            self.pending.refused(frame.method)
            return refused
        note_request(self, frame)
        if self.tap is not None:
            self.tap.frame(G2S, frame)
        if self._out is not None:
            self.pending.owe(frame, self._generation)
            self._out.put_line(frame.raw)
            return None
        if len(self._queue) >= self.limits.max_queued_frames:
            self.pending.refused(frame.method)
            return errors.error_frame(frame.id, errors.GATEWAY_OVERLOADED,
                                      f"server '{self.name}' is restarting and {len(self._queue)} frames are "
                                      "already waiting for it; try again shortly", self._error_data(frame.method))
        self.pending.owe(frame, None)
        self._queue.append((frame.raw, frame.id))
        return None

    def notify(self, frame: Frame) -> None:
        """Take a client notification (cancellation drops the request from our books)."""
        if frame.method == "notifications/initialized":
            self.handshake.on_client_notification(frame)
        elif frame.method == "notifications/cancelled":
            self.pending.cancel(frame)
        if self.tap is not None:
            self.tap.frame(G2S, frame)
        self._send_other(frame.raw)

    def reply(self, frame: Frame) -> None:
        """Take the client's answer to a server->client request (sampling, elicitation, roots)."""
        asked = self._server_requests.pop(frame.id, None)
        if asked is None:
            if self.tap is not None:
                self.tap.frame(G2S, frame)
            self._send_other(frame.raw)
            return
        gen, server_id = asked
        if gen != self._live_generation:
            log.info("server %s: dropping the client's answer to request %r: the process that asked "
                     "(generation %d) has exited", self.name, frame.id, gen)
            return
        raw = frame.raw if server_id == frame.id else scan.replace_id(frame.raw, jsonfast.dumps(server_id))
        if self.tap is not None:
            self.tap.put(G2S, raw, frame.kind, None, server_id, frame.note)
        self._send_other(raw)

    def _send_other(self, raw: bytes) -> None:
        self.frames_in += 1
        if self._out is not None:
            self._out.put_line(raw)
        elif self.state in _QUEUEING and not self._closing:
            if len(self._queue) < self.limits.max_queued_frames:
                self._queue.append((raw, None))
            else:
                log.warning("server %s: restart queue full; dropping a notification", self.name)

    def flush(self) -> None:
        """Write what the session queued for the server (call once per batch of client input)."""
        if self._out is not None:
            self._out.flush()

    def flush_soon(self) -> None:
        """Like flush, but coalesced with other requests of the same scheduler batch (HTTP)."""
        if self._out is not None:
            self._out.flush_soon()

    async def wait_writable(self) -> None:
        if self._out is not None:
            await self._out.wait_writable()

    # ---- server -> client -------------------------------------------------------------

    async def _read_stdout(self, proc: ServerProcess) -> None:
        framer = LineFramer(self.limits.max_frame_bytes)
        assert isinstance(proc.proc.stdout, trio.lowlevel.FdStream)  # a pipe (POSIX): read by its fd
        fd = proc.proc.stdout.fileno()
        while True:
            chunk = await read_some(fd, READ_SIZE)
            if self._junk.throttle.suppressed:   # a summary first, so a line after a quiet second shows in full
                self._junk.tick(time.monotonic())
            self._take(framer, chunk)
            if not chunk:
                self._junk.close(time.monotonic())
                return
            # Nothing read stays referenced while this waits (for a slow client, then for the
            # server's next line, maybe as long as the session idles): the last answer,
            # megabytes perhaps, would otherwise live on with no one left to give it to.
            del chunk
            await self.sink.wait_writable()

    def _take(self, framer: LineFramer, chunk: bytes) -> None:
        """The frames in what was read (the end of the stream if empty), each to the sink."""
        for item in framer.feed(chunk) if chunk else framer.close():
            if isinstance(item, Oversize):
                self._on_oversize(item)
            else:
                self._on_line(item)
        self.sink.flush()

    def _on_line(self, raw: bytes) -> None:
        if raw[0] not in _FRAME_START:      # a banner, a print(): skip it for what reading it cost
            if self._junk.event(time.monotonic()):
                self._log_junk(raw, "not JSON")
            return
        decoded = decode(raw)
        if isinstance(decoded, Frame):
            self._on_frame(decoded)
        elif isinstance(decoded, Batch):
            for item in decoded.items:
                if isinstance(item, Frame):
                    self._on_frame(item)
                else:
                    self._drop(item)
        else:
            self._drop(decoded)

    def _on_frame(self, frame: Frame) -> None:
        if self.tap is not None:
            self.tap.frame(S2G, frame)
        kind = frame.kind
        if kind is Kind.RESPONSE or kind is Kind.ERROR:
            if self._replay_id is not None and frame.id == self._replay_id:
                self._replay_ok = kind is Kind.RESPONSE
                self._replay_id = None
                if self._replay_done is not None:
                    self._replay_done.set()
                return
            entry = self.pending.settle(frame)
            if entry is None:
                if frame.id is not None:
                    log.debug("server %s: answer to %r, which nobody waits for any more (timed out or "
                              "cancelled); dropped", self.name, frame.id)
                    return
            elif entry.asked is not None or type(frame.id) in SPELLED:
                frame = as_asked(frame, entry)       # the id as the client wrote it (wire.ids)
        elif kind is Kind.REQUEST:
            frame = self._track_server_request(frame)
        elif frame.method == "notifications/progress" and self.timeout is not None:
            self.pending.progress(frame)
        self.frames_out += 1
        self.sink.server_frame(frame)

    def _track_server_request(self, frame: Frame) -> Frame:
        """Remember who asked, past the process's death, so a late answer is never handed to its
        successor. A restarted process may reuse its predecessor's ids, so from the second
        generation on the client sees them prefixed with the generation (mapped back on reply)."""
        gen = self._generation
        seen_as = frame.id if gen == 1 else f"wire-gateway/{gen}/{jsonfast.dumps(frame.id).decode()}"
        if len(self._server_requests) >= self.limits.max_in_flight:
            del self._server_requests[next(iter(self._server_requests))]
        self._server_requests.pop(seen_as, None)
        self._server_requests[seen_as] = (gen, frame.id)
        if seen_as == frame.id:
            return frame
        raw = scan.replace_id(frame.raw, jsonfast.dumps(seen_as))
        return Frame(raw, frame.kind, frame.msg, frame.method, seen_as)

    def _drop(self, bad: Invalid) -> None:
        if self._junk.event(time.monotonic()):
            self._log_junk(bad.raw, bad.message)

    def _log_junk(self, raw: bytes, why: str) -> None:
        log.warning("server %s: dropped a line on stdout that is not a JSON-RPC message (%s): %s",
                    self.name, why, raw[:200].decode("utf-8", "replace"))

    def _on_oversize(self, over: Oversize) -> None:
        req_id = scan.recover_id(over.prefix)
        log.error("server %s: sent a %d-byte frame, over the %d-byte limit (limits.max_frame_bytes); dropped it%s",
                  self.name, over.size, self.limits.max_frame_bytes,
                  f" and answered request {req_id!r} with an error" if req_id is not None else "")
        if req_id is not None and self.pending.pop(req_id) is not None:
            self.sink.gateway_reply(req_id, errors.error_frame(
                req_id, errors.UPSTREAM_BAD_FRAME,
                f"server '{self.name}' answered with a {over.size}-byte frame, over the gateway's "
                f"{self.limits.max_frame_bytes}-byte limit (limits.max_frame_bytes)",
                {"server": self.name, "frameBytes": over.size}))

    # ---- timeouts ---------------------------------------------------------------------------

    def _time_out(self, expired: list[tuple[Any, Pending]]) -> None:
        """Requests with no answer (or progress) for `timeout` seconds: the caller gets an error,
        the server notifications/cancelled (a request still queued for a restarting server is
        simply not sent)."""
        assert self.timeout is not None
        now = time.monotonic()
        for req_id, entry in expired:
            if entry.generation is None:        # still queued for a restarting server: just not sent
                self._queue = [item for item in self._queue if item[1] != req_id]
                done = "it was not sent (the server was restarting)"
            elif self._out is not None and entry.generation == self._live_generation:
                cancel = jsonfast.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {
                    "requestId": req_id, "reason": f"wire-gateway: no answer within {self.timeout:g}s (timeout)"}})
                if self.tap is not None:
                    self.tap.gateway(G2S, cancel)
                self._out.put_line(cancel)
                done = "the gateway cancelled it"
            else:                               # its process is ending: its exit would answer it later
                done = "its server process is ending"
            self.pending.timed_out(req_id, entry, done, now)
        if self._out is not None:
            self._out.flush()
        self.sink.flush()

    # ---- errors ---------------------------------------------------------------------------

    def _error_data(self, method: str | None) -> dict[str, Any]:
        data: dict[str, Any] = {"server": self.name}
        if method:
            data["method"] = method
        if self.last_exit:
            data["lastExit"] = self.last_exit
        if self._last_stderr:
            data["stderrTail"] = self._last_stderr[-5:]
        return data

    def _unavailable_message(self) -> str:
        return self._unavailable_reason or f"server '{self.name}' is not available"
