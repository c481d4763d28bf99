"""A supervised upstream server: the gateway's client side of one server.

It owns the process (and its successors after crashes), the requests in flight
to it, and the legacy handshake to replay. Sessions hand it client frames and
get back server frames through a sink; they never see a process die, only a
well-formed error for each request the dead process owed.

Lifecycle (the table is `states.SUPERVISOR_TRANSITIONS`): starting -> running -> (exit) ->
restarting -> starting ... ; too many exits in a window -> crash_loop (requests fail fast) for a
cool-down; shutdown -> stopped. Everything runs in the nursery of the session that owns it.

This module is the lifecycle: spawning, replaying the handshake, releasing queued frames,
restarting, shutting down. The frames themselves (client -> stdin, stdout -> client, request
timeouts) are `stdio_frames.StdioFrames`, its base; the books of what is owed to whom are
`answers.Answers`, its `pending`.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import trio

from wire_gateway.config import Limits, ServerSpec
from wire_gateway.dump.tap import G2S
from wire_gateway.telemetry.metrics import METRICS
from wire_gateway.transport.outbuffer import OutBuffer
from wire_gateway.upstream.backoff import Backoff
from wire_gateway.upstream.process import ServerProcess, describe_status
from wire_gateway.upstream.protocol import Sink
from wire_gateway.upstream.states import SUPERVISOR_TRANSITIONS, SupervisorState, check_transition
from wire_gateway.upstream.stdio_frames import StdioFrames
from wire_gateway.wire import errors

log = logging.getLogger("wire_gateway.upstream")


class SupervisedServer(StdioFrames):
    def __init__(self, spec: ServerSpec, limits: Limits, sink: Sink,
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(spec, limits, sink)
        self.backoff = Backoff(spec.restart)
        self.restarts = 0
        self.process: ServerProcess | None = None
        self._wake = trio.Event()                      # interrupts backoff sleeps on shutdown
        self._stopped = trio.Event()
        self._started_at = 0.0

    # ---- lifecycle ------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a process running until shutdown() is called."""
        task_status.started()
        async with trio.open_nursery() as timers:
            if self.timeout is not None:
                timers.start_soon(self.pending.run_timer, self._time_out)
            try:
                while not self._closing:
                    await self._run_one()
                    if self._closing:
                        break
                    await self._pause_before_restart()
            finally:
                self._set_state(SupervisorState.STOPPED)
                self._unavailable_reason = "the gateway is shutting down"
                self.pending.fail_all(errors.UPSTREAM_UNAVAILABLE,
                                      f"the gateway is shutting down; request to server '{self.name}' was not answered")
                self._queue.clear()
                self.sink.flush()
                self.pending.close(time.monotonic())
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
            if METRICS.on and not self._closing:
                METRICS.exits.inc((self.name,))
            return
        if METRICS.on:
            METRICS.starts.inc((self.name,))
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
        if METRICS.on and not self._closing:
            METRICS.exits.inc((self.name,))
        log.log(level, "server %s: pid %d ended (%s) after %.1fs", self.name, proc.pid, self.last_exit,
                trio.current_time() - proc.started)
        lost = self.pending.take_generation(gen)
        if lost:
            self.pending.fail(lost, errors.UPSTREAM_EXITED,
                              f"server '{self.name}' exited ({self.last_exit}) before answering " + "{method}"
                              + ("" if self._closing else "; it is being restarted, retry the request"))
            self.sink.flush()

    async def _pause_before_restart(self) -> None:
        now = trio.current_time()
        decision = self.backoff.on_exit(now, now - self._started_at)
        self.restarts += 1
        if decision.crash_loop:
            self._set_state(SupervisorState.CRASH_LOOP)
            if METRICS.on:
                METRICS.crash_loops.inc((self.name,))
            self._unavailable_reason = (
                f"server '{self.name}' is crash-looping ({decision.exits_in_window} exits within "
                f"{self.spec.restart.crash_loop_window:g}s, last: {self.last_exit}); the gateway will try "
                f"again in {decision.delay:g}s")
            log.error("%s%s", self._unavailable_reason,
                      f"; last stderr: {' | '.join(self._last_stderr[-5:])}" if self._last_stderr else "")
            lost = self.pending.take_all()
            self._queue.clear()
            self.pending.fail(lost, errors.UPSTREAM_UNAVAILABLE, self._unavailable_reason + " ({method} not sent)")
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
        The first process replays only a handshake restored from a record (an adopted session).

        Queued frames are flushed even during shutdown: a client that wrote a request and
        closed its stdin expects the answer, as it would from the server itself."""
        if self.handshake.needs_replay and (proc.generation > 1 or self.handshake.restored):
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
