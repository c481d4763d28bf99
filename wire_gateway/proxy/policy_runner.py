"""The policy runner: an upstream that runs the server's policy chain on tools/list and
tools/call, and is a plain passthrough for everything else.

(About 500 lines, on purpose: the inline path, the task path and the pass-back share the
one-answer-per-request bookkeeping below, and splitting them apart would put that invariant in
two files. The metrics and trace hooks sit where each fact is known; the span logic itself is in
`request_trace`, the instruments in `telemetry.metrics`.)

Towards the session it is an Upstream; towards the real upstream (a process or an HTTP
client, made by make_upstream) it is the Sink, through a small adapter because both
protocols name a `flush` and a `wait_writable` that mean different things.

Why tasks: the chain may wait on the store (Redis), which the synchronous `request()`
cannot do. So with Redis the two tool methods run in a task in the runner's own nursery,
and their answers reach the session through its sink. With the memory store nothing in
the chain ever waits, so it is driven inline (`chain.drive`): a cache hit is answered
from `request()` itself, a miss is forwarded at once and its answer passed back through
the chain as it arrives, with no task hop either way (a hop costs more than the chain).
Other frames cost one set-membership test; other responses one dict lookup (only while a
tool request is awaiting its answer).

Exactly one answer per request: a chain answer, the server's (or inner upstream's)
answer passed back through the chain, or, when the runner stops, the answer the inner
upstream already gave or a shutting-down error. A request the client cancelled
(`notifications/cancelled`) gets none, as the spec asks and as the rest of the gateway does.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

import trio

from wire_gateway.auth.context import CALLER
from wire_gateway.config import Limits, ServerSpec
from wire_gateway.policy.chain import LIST_CHANGED, Call, Chain, Reply, drive
from wire_gateway.proxy.request_trace import Answers, Observer, UpstreamAnswers
from wire_gateway.telemetry import context as telemetry
from wire_gateway.telemetry.metrics import METRICS
from wire_gateway.upstream.factory import make_upstream
from wire_gateway.upstream.handshake import Handshake
from wire_gateway.upstream.pending import PendingTable
from wire_gateway.upstream.protocol import Sink
from wire_gateway.wire import errors, jsonfast, scan
from wire_gateway.wire.era import request_version
from wire_gateway.wire.frame import Frame, Kind, repeated_params, valid_id
from wire_gateway.wire.ids import SPELLED

log = logging.getLogger("wire_gateway.policy.runner")

INVALIDATE_TIMEOUT = 5.0
_CACHES = frozenset({"list_cache", "result_cache"})     # interceptors whose answers are hits, not blocks


class _InChain:
    """One tool request the runner owes an answer to."""

    __slots__ = ("frame", "scope", "done", "answer", "event", "call", "stop")

    def __init__(self, frame: Frame, call: Call | None = None, stop: int = 0) -> None:
        self.frame = frame
        self.call = call              # set for a request driven inline: its answer is passed back inline
        self.stop = stop
        # A task's (made when one runs for this request: an inline request usually needs none)
        self.scope: trio.CancelScope | None = trio.CancelScope() if call is None else None
        self.done = False
        self.answer: Reply | None = None     # what the inner upstream answered, once it has
        self.event: trio.Event | None = trio.Event() if call is None else None


class _InnerSink:
    """What the inner upstream sees as its sink: the runner's watch on tool answers."""

    __slots__ = ("runner", "flush", "wait_writable")

    def __init__(self, runner: PolicyRunner) -> None:
        self.runner = runner
        # Pure passthroughs, bound once (the session's sink never changes): no extra call per batch.
        self.flush: Callable[[], None] = runner.sink.flush
        self.wait_writable: Callable[[], Coroutine[Any, Any, None]] = runner.sink.wait_writable

    def server_frame(self, frame: Frame) -> None:
        runner = self.runner
        kind = frame.kind
        if kind is Kind.RESPONSE or kind is Kind.ERROR:
            if runner._watch:
                entry = runner._watch.pop(frame.id, None)
                if entry is not None:
                    runner._answered(entry, Reply.of(frame), frame)
                    return
        elif kind is Kind.NOTIFICATION and frame.method == LIST_CHANGED:
            runner._list_changed(frame)
            return
        runner.sink.server_frame(frame)

    def gateway_reply(self, req_id: Any, data: bytes) -> None:
        runner = self.runner
        entry = runner._watch.pop(req_id, None) if runner._watch else None
        if entry is None:
            runner.sink.gateway_reply(req_id, data)
            return
        runner._answered(entry, Reply(jsonfast.loads(data), data, gateway=True))


class PolicyRunner:
    def __init__(self, spec: ServerSpec, limits: Limits, sink: Sink, chain: Chain, auth_context: str = "") -> None:
        self.name = spec.name
        self.limits = limits
        self.sink = sink
        self.chain = chain
        self.auth_context = auth_context
        # A server whose interceptors act only for some projects (auth on, no policy of its own): a
        # caller whose project sets no tool rule for it and adds no guardrails goes straight through,
        # as if there were no runner.
        self._project_only = chain.project_only
        # No interceptor at all (a runner made for tracing alone): tool requests go straight to the
        # inner upstream (which checks ids and limits as it would without a runner), observed.
        self._empty = not chain.interceptors
        self._methods = chain.methods
        # Tracing or JSON logs on: an observer watches the requests (proxy/request_trace.py); off,
        # each of its sites costs one attribute test.
        self._obs: Observer | None = None
        inner_sink: Any = None
        if telemetry.ACTIVE:
            self._obs = Observer(self, telemetry.TRACER, "tcp" if spec.url else "pipe")
            self.sink = Answers(sink, self._obs)
            inner_sink = UpstreamAnswers(_InnerSink(self), self._obs)
        self.inner = make_upstream(spec, limits, inner_sink or _InnerSink(self))
        # How a tool request reaches the inner upstream (the observer's way adds the upstream span).
        self._forward: Callable[[Frame], bytes | None] = (
            self._obs.forward if self._obs is not None else self.inner.request)
        # Pure passthroughs to the inner upstream, bound once: a frame that the chain has no business
        # with pays no extra call through the runner for them.
        self.reply: Callable[[Frame], None] = self.inner.reply               # type: ignore[method-assign]  # see above
        self.flush: Callable[[], None] = self.inner.flush                    # type: ignore[method-assign]  # see above
        self.flush_soon: Callable[[], None] = self.inner.flush_soon          # type: ignore[method-assign]  # see above
        self.wait_writable: Callable[[], Coroutine[Any, Any, None]] = self.inner.wait_writable  # type: ignore[method-assign]  # see above
        self._calls: dict[Any, _InChain] = {}     # every tool request not yet answered
        self._watch: dict[Any, _InChain] = {}     # those forwarded, awaiting the inner upstream's answer
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self._metrics = METRICS.bound()

    # ---- what /status and the sessions read: the inner upstream's ------------------------------

    @property
    def state(self) -> str:
        return self.inner.state

    @property
    def tap(self) -> Any:
        return self.inner.tap

    @tap.setter
    def tap(self, tap: Any) -> None:
        """Frame dumps record the server-side hops where they happen: in the inner upstream."""
        self.inner.tap = tap

    @property
    def era(self) -> str | None:
        return self.inner.era

    @era.setter
    def era(self, era: str | None) -> None:
        """The aggregate tells a member which era it speaks: the inner upstream keeps it."""
        self.inner.era = era

    @property
    def restarts(self) -> int:
        return self.inner.restarts

    @property
    def last_exit(self) -> str | None:
        return self.inner.last_exit

    @property
    def pending(self) -> PendingTable:
        return self.inner.pending

    @property
    def handshake(self) -> Handshake:
        return self.inner.handshake

    @property
    def frames_in(self) -> int:
        return self.inner.frames_in

    @property
    def frames_out(self) -> int:
        return self.inner.frames_out

    def __getattr__(self, name: str) -> Any:     # process, url, spec...: whatever the inner one has
        return getattr(self.__dict__["inner"], name)

    @property
    def in_chain(self) -> int:
        return len(self._calls)

    # ---- client -> server --------------------------------------------------------------------

    def request(self, frame: Frame) -> bytes | None:
        if frame.method not in self._methods:
            obs = self._obs
            if obs is not None and obs.tracing is not None and obs.tracing.sample_passthrough():
                return obs.request(frame, obs.forward, passthrough=True)
            return self.inner.request(frame)
        if self._obs is not None:
            return self._obs.request(frame, self._request)
        return self._request(frame)

    def _request(self, frame: Frame) -> bytes | None:
        if self._empty:
            return self._forward(frame)
        if self._project_only:
            caller = CALLER.get()
            if caller is None or (self.name not in caller.project.tools and not caller.project.guardrails):
                return self._forward(frame)
        refused = repeated_params(frame)      # the chain must read the params the server will
        if refused is not None:
            return self._refused(frame, refused)
        if self._closing or self._nursery is None:
            return self._refused(frame, errors.error_frame(
                frame.id, errors.UPSTREAM_UNAVAILABLE, f"server '{self.name}' is not available (the gateway is "
                "shutting down)", {"server": self.name, "method": frame.method}))
        if frame.id in self._calls:
            return self._refused(frame, errors.error_frame(
                frame.id, errors.INVALID_REQUEST, f"Invalid Request: id {frame.id!r} is already in flight; ids must "
                "be unique among a client's outstanding requests"))
        refused = self.inner.pending.refusal(frame.id, self.name, self.limits.max_in_flight - len(self._calls))
        if refused is not None:
            return self._refused(frame, refused)
        if self.chain.sync:
            return self._inline(frame)
        entry = _InChain(frame)
        self._calls[frame.id] = entry
        self._nursery.start_soon(self._run_call, entry)
        return None

    def _refused(self, frame: Frame, answer: bytes) -> bytes:
        if self._metrics is not None:
            self._metrics.answered_here(self.name, frame.method, "refused")
        return answer

    def _inline(self, frame: Frame) -> bytes | None:
        """The chain driven synchronously (memory store). Returns the answer when the chain gives
        one at once (cache hit, refusal), else forwards the request and returns None."""
        call = self._call(frame)
        try:
            now = self.chain.down_now(call)
            ok, down = (True, now) if now is not None else drive(self.chain.down(call))
            if not ok:          # something in the chain waited after all: run it in a task
                entry = _InChain(frame)
                self._calls[frame.id] = entry
                self._nursery.start_soon(self._run_call, entry)   # type: ignore[union-attr]
                return None
            reply, stop = down
            if reply is not None and self._metrics is not None:
                self._answered_down(frame, reply, stop)
            if reply is None and self.chain.passes_up(frame.method, stop):
                # Nothing on the way back acts on the answer: the inner upstream owes it and
                # delivers it (or its error, or a shutdown error) like any passthrough answer.
                return self._forward(call.frame)
            if reply is None:
                refused = self._forward(call.frame)
                if refused is None:
                    entry = _InChain(frame, call, stop)
                    self._calls[frame.id] = entry
                    self._watch[frame.id] = entry
                    return None
                reply = Reply(jsonfast.loads(refused), refused, gateway=True)
            ok, out = drive(self.chain.up(call, reply, stop))
            if ok and self._obs is not None:
                self._obs.decided(frame.id, out.note)
            if ok and not (out.note and out.note.startswith("guardrails")):
                return out.raw if out.raw is not None else out.frame().raw
            if ok:   # a guardrails answer goes the way a server's does, so the dump records which rule acted
                entry = _InChain(frame, call, stop)
                self._calls[frame.id] = entry
                self._nursery.start_soon(self._deliver_later, entry, out)   # type: ignore[union-attr]
                return None
        except Exception as exc:
            return self._failed(call, exc).raw
        entry = _InChain(frame, call, stop)
        self._calls[frame.id] = entry
        self._nursery.start_soon(self._pass_back, entry, reply)   # type: ignore[union-attr]
        return None

    def _call(self, frame: Frame) -> Call:
        """The chain's view of a tool request: with auth on, the caller (auth.context) and its
        project as the context caches are kept in."""
        caller = CALLER.get()
        return Call(self.name, frame, caller.context if caller is not None else self.auth_context,
                    self._version(frame), caller=caller,
                    trace=self._obs.trace_of(frame.id) if self._obs is not None else None)

    def _failed(self, call: Call, exc: Exception) -> Reply:
        log.error("server %s: the policy chain failed on %s %r", self.name, call.frame.method, call.frame.id,
                  exc_info=exc)
        return Reply.error(call, errors.INTERNAL_ERROR,
                           f"the gateway's policy chain failed on {call.frame.method}: {type(exc).__name__}",
                           {"server": self.name})

    def _answered(self, entry: _InChain, reply: Reply, frame: Frame | None = None) -> None:
        """The inner upstream answered a forwarded tool request (`frame`: the server's answer)."""
        if entry.call is None:                    # its task is waiting for it
            entry.answer = reply
            assert entry.event is not None
            entry.event.set()
            return
        if frame is not None and self.chain.passes_up(entry.call.method, entry.stop):
            if self._calls.get(entry.frame.id) is entry:     # nothing on the way back acts on it
                del self._calls[entry.frame.id]
            if not entry.done:
                entry.done = True
                self.sink.server_frame(frame)
            return
        try:
            ok, out = drive(self.chain.up(entry.call, reply, entry.stop))
        except Exception as exc:
            ok, out = True, self._failed(entry.call, exc)
        if ok:
            if self._calls.get(entry.frame.id) is entry:
                del self._calls[entry.frame.id]
            self._deliver(entry, out, flush=False)     # the inner upstream's reader flushes its batch
        elif self._nursery is not None:
            self._nursery.start_soon(self._pass_back, entry, reply)

    async def _pass_back(self, entry: _InChain, reply: Reply) -> None:
        assert entry.call is not None
        scope = entry.scope = trio.CancelScope()
        if entry.done:            # cancelled before this task ran
            scope.cancel()
        try:
            with scope:
                try:
                    out = await self.chain.up(entry.call, reply, entry.stop)
                except Exception as exc:
                    out = self._failed(entry.call, exc)
                self._deliver(entry, out)
        finally:
            if self._calls.get(entry.frame.id) is entry:
                del self._calls[entry.frame.id]

    async def _deliver_later(self, entry: _InChain, reply: Reply) -> None:
        try:
            self._deliver(entry, reply, counted=True)
        finally:
            if self._calls.get(entry.frame.id) is entry:
                del self._calls[entry.frame.id]

    def notify(self, frame: Frame) -> None:
        if self._obs is not None and frame.method == "notifications/cancelled":
            params = frame.params
            self._obs.cancelled(params.get("requestId") if isinstance(params, dict) else None)
        if frame.method == "notifications/cancelled" and self._calls:
            params = frame.params
            rid = params.get("requestId") if isinstance(params, dict) else None
            entry = self._calls.pop(rid, None) if valid_id(rid) else None
            if entry is not None:
                self._watch.pop(rid, None)
                entry.done = True          # the client gave up: no answer is owed
                if entry.scope is not None:
                    entry.scope.cancel()
        self.inner.notify(frame)

    def reply(self, frame: Frame) -> None:
        self.inner.reply(frame)

    def flush(self) -> None:
        self.inner.flush()

    def flush_soon(self) -> None:
        self.inner.flush_soon()

    async def wait_writable(self) -> None:
        await self.inner.wait_writable()

    # ---- the chain -----------------------------------------------------------------------------

    def _version(self, frame: Frame) -> str:
        version = request_version(frame.msg)
        if version is not None:
            return version
        init = self.inner.handshake.init_msg
        params = init.get("params") if init is not None else None
        if isinstance(params, dict) and isinstance(params.get("protocolVersion"), str):
            return "legacy-" + params["protocolVersion"]
        return "unknown"

    async def _run_call(self, entry: _InChain) -> None:
        call = self._call(entry.frame)

        async def forward(call: Call) -> Reply:
            refused = self._forward(call.frame)
            if refused is not None:
                return Reply(jsonfast.loads(refused), refused, gateway=True)
            self._watch[call.frame.id] = entry
            self.inner.flush()
            assert entry.event is not None
            await entry.event.wait()
            assert entry.answer is not None
            return entry.answer

        try:
            assert entry.scope is not None
            with entry.scope:
                down = False
                try:    # Chain.handle, with the metrics told who answered on the way down
                    reply, stop = await self.chain.down(call)
                    if reply is None:
                        reply = await forward(call)
                    else:
                        down = True
                        if self._metrics is not None:
                            self._answered_down(call.frame, reply, stop)
                    reply = await self.chain.up(call, reply, stop)
                except Exception as exc:
                    reply = self._failed(call, exc)
                self._deliver(entry, reply, counted=down)
        finally:
            if self._calls.get(entry.frame.id) is entry:
                del self._calls[entry.frame.id]
            if self._watch.get(entry.frame.id) is entry:
                del self._watch[entry.frame.id]

    def _deliver(self, entry: _InChain, reply: Reply, flush: bool = True, counted: bool = False) -> None:
        """`counted`: the chain answered on the way down (its block, if it is one, is counted)."""
        if entry.done:
            return
        entry.done = True
        if self._metrics is not None and reply.note is not None and not counted:
            self._blocked_up(reply)
        if self._obs is not None:
            self._obs.decided(entry.frame.id, reply.note)
        if reply.gateway and reply.raw is not None:
            self.sink.gateway_reply(entry.frame.id, reply.raw)
        else:
            frame = reply.frame()
            if type(entry.frame.id) in SPELLED and frame.raw is not reply.raw:   # rewritten: the id too
                frame = Frame(scan.replace_id(frame.raw, jsonfast.dumps(entry.frame.id)), frame.kind,
                              frame.msg, None, entry.frame.id, frame.note, frame.status)
            self.sink.server_frame(frame)
        if flush:
            self.sink.flush()

    # ---- metrics (telemetry/metrics.py) ------------------------------------------------------------

    def _answered_down(self, frame: Frame, reply: Reply, stop: int) -> None:
        """An interceptor answered on the way down: a cache hit, or a refusal (a policy block)."""
        assert self._metrics is not None
        by = self.chain.interceptors[stop].name
        error = reply.msg.get("error")
        code = error.get("code") if isinstance(error, dict) else None
        if by in _CACHES:
            self._metrics.answered_here(self.name, frame.method, "ok" if error is None else "error", code)
            return
        self._metrics.blocks.inc((self.name, by))
        self._metrics.answered_here(self.name, frame.method, "refused", code)

    def _blocked_up(self, reply: Reply) -> None:
        """A block on the way back (guardrails on a server's answer, or an input check that ran beside
        the request), known by its note; one on the way down was counted there (`_answered_down`)."""
        assert self._metrics is not None and reply.note is not None
        if reply.note.startswith("guardrails:block"):
            self._metrics.blocks.inc((self.name, "guardrails"))

    def _list_changed(self, frame: Frame) -> None:
        """Invalidate first, then tell the client: a client that re-lists at once must miss."""
        if self._nursery is None:
            self.sink.server_frame(frame)
            return
        self._nursery.start_soon(self._invalidate_then_forward, frame)

    async def _invalidate_then_forward(self, frame: Frame) -> None:
        try:
            with trio.move_on_after(INVALIDATE_TIMEOUT):
                await self.chain.invalidate()
        except Exception:
            log.exception("server %s: cache invalidation failed", self.name)
        finally:
            self.sink.server_frame(frame)
            self.sink.flush()

    # ---- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self._run_inner)
            task_status.started()

    async def _run_inner(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self.inner.run(task_status=task_status)
        finally:
            self._closing = True
            self._answer_leftovers()
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()

    async def shutdown(self) -> None:
        self._closing = True
        await self.inner.shutdown()
        self._answer_leftovers()

    def _answer_leftovers(self) -> None:
        """Every tool request still owed an answer gets one: what the inner upstream already said,
        else a shutting-down error."""
        for entry in list(self._calls.values()):
            if entry.scope is not None:
                entry.scope.cancel()
            if entry.done:
                continue
            if entry.answer is not None:
                self._deliver(entry, entry.answer)
                continue
            self._deliver(entry, Reply.error(
                Call(self.name, entry.frame), errors.UPSTREAM_UNAVAILABLE,
                f"the gateway is shutting down; {entry.frame.method} to server '{self.name}' was not answered",
                {"server": self.name, "method": entry.frame.method}))
        self._calls.clear()
        self._watch.clear()
        if self._obs is not None:
            self._obs.close()
