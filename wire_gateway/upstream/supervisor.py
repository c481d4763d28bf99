"""A supervised upstream server: the gateway's client side of one server.

It owns the process (and its successors after crashes), the requests in flight
to it, and the legacy handshake to replay. Sessions hand it client frames and
get back server frames through a sink; they never see a process die, only a
well-formed error for each request the dead process owed.

Lifecycle (the table is `states.SUPERVISOR_TRANSITIONS`): starting -> running -> (exit) ->
restarting -> starting ... ; too many exits in a window -> crash_loop (requests fail fast) for a
cool-down; shutdown -> stopped. Everything runs in the nursery of the session that owns it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import trio

from wire_gateway.config import Limits, ServerSpec
from wire_gateway.dump.tap import G2S, S2G, Tap
from wire_gateway.telemetry.throttle import ThrottledLog
from wire_gateway.transport.outbuffer import OutBuffer, read_some
from wire_gateway.upstream.backoff import Backoff
from wire_gateway.upstream.handshake import Handshake
from wire_gateway.upstream.pending import NEVER, Pending, PendingTable, as_asked
from wire_gateway.upstream.process import ServerProcess, describe_status
from wire_gateway.upstream.protocol import Sink
from wire_gateway.upstream.states import SUPERVISOR_TRANSITIONS, SupervisorState, check_transition
from wire_gateway.upstream.timeouts import UNTIMED_METHODS, expire_requests, progress_of, progress_token
from wire_gateway.wire import errors, jsonfast, scan
from wire_gateway.wire.era import era_of_request
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


class SupervisedServer:
    tap: Tap | None = None     # frame dumps: set after construction when --dump is on

    def __init__(self, spec: ServerSpec, limits: Limits, sink: Sink,
                 clock: Callable[[], float] | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.limits = limits
        self.sink = sink
        self.state = SupervisorState.STARTING     # changed only by _set_state (states.py has the table)
        self.pending = PendingTable()
        self.handshake = Handshake()
        self.backoff = Backoff(spec.restart)
        self.restarts = 0
        self.frames_in = 0      # client -> server frames accepted
        self.frames_out = 0     # server -> client frames delivered
        self.era: str | None = None                    # "legacy" or "modern", once a request shows it
        self.last_exit: str | None = None
        self.process: ServerProcess | None = None
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
        self._wake = trio.Event()                      # interrupts backoff sleeps on shutdown
        self._stopped = trio.Event()
        self._unavailable_reason = ""
        self._last_stderr: list[str] = []
        self._started_at = 0.0
        # junk lines on stdout, requests timed out: a few logged in full, then counted
        self._junk = ThrottledLog(log, "server %s: dropped %d more lines on stdout that are not JSON-RPC messages "
                                  "over the last %.2fs (the first lines of a burst are logged in full, then only "
                                  "counted)", self.name)
        self.timeout = spec.timeout                    # seconds without an answer or progress; None: no limit
        self._timeouts_log = ThrottledLog(log, "server %s: %d more requests got no answer within their timeout "
                                          "over the last %.2fs", self.name)

    # ---- called by the session (client -> server) ---------------------------------

    def request(self, frame: Frame) -> bytes | None:
        """Take a client request. Returns an error frame to answer at once, or None."""
        if self.state in _REFUSING or self._closing:
            return errors.error_frame(frame.id, errors.UPSTREAM_UNAVAILABLE, self._unavailable_message(),
                                      self._error_data(frame.method))
        refused = self.pending.refusal(frame.id, self.name, self.limits.max_in_flight)
        if refused is not None:
            return refused
        note_request(self, frame)
        if self.tap is not None:
            self.tap.frame(G2S, frame)
        if self.timeout is None or frame.method in UNTIMED_METHODS:
            deadline, token = NEVER, None
        else:
            deadline, token = time.monotonic() + self.timeout, progress_token(frame)
        if self._out is not None:
            self.pending.add(frame.id, frame.method or "", self._generation, deadline, token)
            self._out.put_line(frame.raw)
            return None
        if len(self._queue) >= self.limits.max_queued_frames:
            return errors.error_frame(frame.id, errors.GATEWAY_OVERLOADED,
                                      f"server '{self.name}' is restarting and {len(self._queue)} frames are "
                                      "already waiting for it; try again shortly", self._error_data(frame.method))
        self.pending.add(frame.id, frame.method or "", None, deadline, token)
        self._queue.append((frame.raw, frame.id))
        return None

    def notify(self, frame: Frame) -> None:
        """Take a client notification (cancellation drops the request from our books)."""
        if frame.method == "notifications/initialized":
            self.handshake.on_client_notification(frame)
        elif frame.method == "notifications/cancelled":
            params = frame.params
            if isinstance(params, dict):
                self.pending.pop(params.get("requestId"))
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

    # ---- lifecycle ------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a process running until shutdown() is called."""
        task_status.started()
        async with trio.open_nursery() as timers:
            if self.timeout is not None:
                timers.start_soon(expire_requests, self.pending, self.timeout, self._time_out)
            try:
                while not self._closing:
                    await self._run_one()
                    if self._closing:
                        break
                    await self._pause_before_restart()
            finally:
                self._set_state(SupervisorState.STOPPED)
                self._unavailable_reason = "the gateway is shutting down"
                self._fail(self.pending.take_all(), errors.UPSTREAM_UNAVAILABLE,
                           "the gateway is shutting down; request to server '{name}' was not answered")
                self._queue.clear()
                self.sink.flush()
                self._timeouts_log.close(time.monotonic())
                self._stopped.set()
                timers.cancel_scope.cancel()

    def _set_state(self, new: SupervisorState) -> None:
        """The one place the state changes: a transition the table does not list is a bug."""
        self.state = check_transition(SUPERVISOR_TRANSITIONS, self.name, self.state, new)

    async def shutdown(self) -> None:
        """Spec shutdown: close the server's stdin, wait, SIGTERM, wait, SIGKILL."""
        self._closing = True
        self._wake.set()
        if self._out is not None:
            self._out.close()
        await self._stopped.wait()

    async def _run_one(self) -> None:
        self._generation += 1
        gen = self._generation
        self._set_state(SupervisorState.STARTING)
        try:
            proc = await ServerProcess.spawn(self.spec, gen)
        except OSError as exc:
            self.last_exit = f"could not start {self.spec.command!r}: {exc.strerror or exc}"
            self._last_stderr = []
            self._started_at = trio.current_time()
            log.error("server %s: %s", self.name, self.last_exit)
            return
        self.process = proc
        self._live_generation = gen
        self._started_at = proc.started
        assert isinstance(proc.proc.stdin, trio.lowlevel.FdStream)   # a pipe (POSIX): written by its fd
        out = OutBuffer(proc.proc.stdin.fileno())
        activated = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump_stdin, proc, out)
            nursery.start_soon(proc.read_stderr)
            nursery.start_soon(self._activate, proc, out, activated)
            nursery.start_soon(self._end_on_shutdown, proc, out, activated)
            await self._read_stdout(proc)
            # stdout is closed: the process is ending. Bound the wait, then escalate.
            self._live_generation = None
            out.close()
            self._out = None
            code = await proc.terminate()
            with trio.move_on_after(1.0):
                await proc.stderr_done.wait()
            nursery.cancel_scope.cancel()
        self._last_stderr = list(proc.stderr_tail)
        self.last_exit = describe_status(code)
        level = logging.INFO if self._closing else logging.WARNING
        log.log(level, "server %s: pid %d ended (%s) after %.1fs", self.name, proc.pid, self.last_exit,
                trio.current_time() - proc.started)
        lost = self.pending.take_generation(gen)
        if lost:
            self._fail(lost, errors.UPSTREAM_EXITED,
                       "server '{name}' " + f"exited ({self.last_exit}) before answering" + " {method}"
                       + ("" if self._closing else "; it is being restarted, retry the request"))
            self.sink.flush()

    async def _pause_before_restart(self) -> None:
        now = trio.current_time()
        decision = self.backoff.on_exit(now, now - self._started_at)
        self.restarts += 1
        if decision.crash_loop:
            self._set_state(SupervisorState.CRASH_LOOP)
            self._unavailable_reason = (
                f"server '{self.name}' is crash-looping ({decision.exits_in_window} exits within "
                f"{self.spec.restart.crash_loop_window:g}s, last: {self.last_exit}); the gateway will try "
                f"again in {decision.delay:g}s")
            log.error("%s%s", self._unavailable_reason,
                      f"; last stderr: {' | '.join(self._last_stderr[-5:])}" if self._last_stderr else "")
            lost = self.pending.take_all()
            self._queue.clear()
            self._fail(lost, errors.UPSTREAM_UNAVAILABLE, self._unavailable_reason + " ({method} not sent)")
            self.sink.flush()
        else:
            self._set_state(SupervisorState.RESTARTING)
            log.info("server %s: restarting in %.2fs", self.name, decision.delay)
        with trio.move_on_after(decision.delay):
            await self._wake.wait()

    async def _end_on_shutdown(self, proc: ServerProcess, out: OutBuffer, activated: trio.Event) -> None:
        """On shutdown: let what the client already sent reach the server, close its stdin,
        and bound its exit even if it ignores that."""
        await self._wake.wait()
        with trio.move_on_after(self.spec.handshake_timeout):
            await activated.wait()
        out.close()
        await proc.terminate()

    async def _activate(self, proc: ServerProcess, out: OutBuffer, activated: trio.Event) -> None:
        try:
            await self._replay_and_flush(proc, out)
        finally:
            activated.set()

    async def _replay_and_flush(self, proc: ServerProcess, out: OutBuffer) -> None:
        """Replay the legacy handshake if the session had one, then let queued frames through.

        Queued frames are flushed even during shutdown: a client that wrote a request and
        closed its stdin expects the answer, as it would from the server itself."""
        if self.handshake.needs_replay and proc.generation > 1:
            self._replay_id = f"wire-gateway/replay/{proc.generation}"
            self._replay_done = trio.Event()
            self._replay_ok = False
            init, initialized = self.handshake.replay(self._replay_id)
            if self.tap is not None:
                self.tap.gateway(G2S, init)
            out.put_line(init)
            out.flush()
            with trio.move_on_after(self.spec.handshake_timeout):
                await self._replay_done.wait()
            if not self._replay_ok:
                log.error("server %s: restarted process did not accept the replayed initialize within %.1fs; "
                          "stopping it", self.name, self.spec.handshake_timeout)
                await proc.kill()
                return
            if initialized is not None:
                if self.tap is not None:
                    self.tap.gateway(G2S, initialized)
                out.put_line(initialized)
                out.flush()
            log.info("server %s: replayed the session's initialize to pid %d", self.name, proc.pid)
        if out.closed:
            return
        queue, self._queue = self._queue, []
        for raw, req_id in queue:
            if req_id is not None:
                self.pending.mark_sent(req_id, proc.generation)
            out.put_line(raw)
        out.flush()
        self._out = out
        self._set_state(SupervisorState.RUNNING)

    async def _pump_stdin(self, proc: ServerProcess, out: OutBuffer) -> None:
        assert proc.proc.stdin is not None
        try:
            await out.pump()
            await proc.proc.stdin.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("server %s: stdin closed under us (pid %d)", self.name, proc.pid)

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
            entry = self.pending.pop(frame.id)
            if entry is None and frame.id is not None:
                log.debug("server %s: answer to %r, which nobody waits for any more (timed out or cancelled); "
                          "dropped", self.name, frame.id)
                return
            if entry is not None and (entry.asked is not None or type(frame.id) in SPELLED):
                frame = as_asked(frame, entry)       # the id as the client wrote it (wire.ids)
            self.handshake.on_server_reply(frame)
        elif kind is Kind.REQUEST:
            frame = self._track_server_request(frame)
        elif frame.method == "notifications/progress" and self.timeout is not None:
            token = progress_of(frame)
            if token is not None:
                self.pending.extend(token, time.monotonic() + self.timeout)
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
            method = entry.method or "the request"
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
            if self._timeouts_log.event(now):
                log.warning("server %s: request %r (%s) got no answer within %gs (timeout); %s", self.name, req_id,
                            method, self.timeout, done)
            self.sink.gateway_reply(req_id, errors.error_frame(
                req_id, errors.UPSTREAM_UNAVAILABLE,
                f"server '{self.name}' did not answer {method} within {self.timeout:g}s (its timeout); {done}",
                {"server": self.name, "method": entry.method, "timeout": self.timeout}))
        if self._out is not None:
            self._out.flush()
        self.sink.flush()

    # ---- errors ---------------------------------------------------------------------------

    def _fail(self, lost: list[tuple[Any, Any]], code: int, template: str) -> None:
        for req_id, entry in lost:
            message = template.format(name=self.name, method=entry.method or "the request")
            self.sink.gateway_reply(req_id, errors.error_frame(req_id, code, message, self._error_data(entry.method)))

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
