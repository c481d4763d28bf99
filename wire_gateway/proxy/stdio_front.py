"""`wire-gateway stdio`: the gateway as a desktop client's MCP server.

The client launches us; we launch the real server and keep it alive. When the
client closes our stdin (or vanishes, or we get SIGTERM/SIGINT/SIGHUP), the
server is shut down the spec's way and we exit, leaving no process behind.
"""
from __future__ import annotations

import dataclasses
import logging
import secrets
import signal

import trio

from wire_gateway.auth.directory import Refusal
from wire_gateway.auth.gate import gate_for
from wire_gateway.config import Config
from wire_gateway.dump.writer import Dumper
from wire_gateway.policy.services import Services
from wire_gateway.proxy.aggregate import AGGREGATE_NAME, Aggregate
from wire_gateway.proxy.route import member_factory
from wire_gateway.proxy.session import PassthroughSession
from wire_gateway.proxy.stdio_auth import ENV_KEY, StdioAdmission
from wire_gateway.proxy.stdio_era import EraChoice
from wire_gateway.telemetry import context as telemetry
from wire_gateway.telemetry.metrics import METRICS
from wire_gateway.transport.outbuffer import OutBuffer, read_some
from wire_gateway.transport.stdio import READ_SIZE, StdioStreams
from wire_gateway.upstream.protocol import Upstream
from wire_gateway.wire.framing import LineFramer

log = logging.getLogger("wire_gateway.stdio")


async def serve_stdio(config: Config, server_name: str | None, streams: StdioStreams,
                      services: Services | None = None, dumper: Dumper | None = None) -> None:
    """`server_name` None: serve the aggregate of all configured servers (with auth: of the servers
    the key's project may use)."""
    try:
        async with trio.open_nursery() as nursery:
            admission = None
            if config.auth.enforced:
                admission = await _admission(config, server_name, nursery, services)
                if admission.principal is not None and server_name is None:
                    project = admission.principal.project
                    config = dataclasses.replace(config, servers={n: s for n, s in config.servers.items()
                                                                  if project.may_use(n)})
            label = secrets.token_hex(4)    # the session's label in dump records, spans and log lines
            if telemetry.ACTIVE:
                telemetry.SCOPE.set(telemetry.Scope(label, server_name or AGGREGATE_NAME))
            front = StdioFront(config, server_name, streams, services)
            front.session.admit = admission
            if dumper is not None:
                await nursery.start(dumper.run)
                tap = dumper.tap(label, server_name or AGGREGATE_NAME, "stdio", upstream=front.upstream)
                front.session.tap = front.upstream.tap = tap
            try:
                await front.run()
            finally:
                if dumper is not None:
                    await dumper.aclose()
                nursery.cancel_scope.cancel()     # the gate's refresh task
    finally:
        with trio.CancelScope(shield=True):
            await streams.aclose()   # also puts a terminal back into blocking mode


async def _admission(config: Config, server_name: str | None, nursery: trio.Nursery,
                     services: Services | None) -> StdioAdmission:
    gate = gate_for(config)
    if services is not None:
        services.store.subscribe(gate.on_store_event)
    await nursery.start(gate.run)
    admission = StdioAdmission.from_environment(gate, server_name)
    got = await admission.start()
    if isinstance(got, Refusal):
        log.warning("auth: %s; every request will be refused (set %s to a valid key)", got.reason, ENV_KEY)
    else:
        log.info("auth: serving %s (project %s)", got.id, got.project.name)
    return admission


class StdioFront:
    def __init__(self, config: Config, server_name: str | None, streams: StdioStreams,
                 services: Services | None = None) -> None:
        self.config = config
        self.streams = streams
        self.client_out = OutBuffer(streams.stdout.fileno())
        self.session = PassthroughSession(self.client_out, config.limits.max_frame_bytes)
        self.services = services if services is not None else Services(config)
        self.upstream: Upstream
        if server_name is None:
            specs = [spec.resolved() for spec in config.servers.values()]
            self.shutdown_budget = max(s.stdin_close_timeout + s.sigterm_timeout for s in specs) + 5.0
            self.upstream = Aggregate(config, self.session, member_factory(config, self.services))
        else:
            self.spec = config.servers[server_name].resolved()
            self.shutdown_budget = self.spec.stdin_close_timeout + self.spec.sigterm_timeout + 5.0
            # The client's era and the server's choose passthrough or the era bridge (stdio_era.py).
            self.upstream = EraChoice(self.spec, config, self.session, self.services)
        self.session.upstream = self.upstream
        self.done = trio.Event()          # set by whichever ending comes first
        self.writer_done = trio.Event()
        if METRICS.on:
            METRICS.sessions.watch(self, _session)

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.upstream.run)
            nursery.start_soon(self._write_client)
            reader_scope = trio.CancelScope()

            async def reader() -> None:
                with reader_scope:
                    await self._read_client()

            nursery.start_soon(reader)
            nursery.start_soon(self._watch_signals)
            await self.done.wait()
            reader_scope.cancel()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(self.shutdown_budget):
                    await self.upstream.shutdown()
                self.client_out.flush()
                self.client_out.close()
                with trio.move_on_after(2.0):
                    await self.writer_done.wait()
            nursery.cancel_scope.cancel()

    async def _write_client(self) -> None:
        try:
            await self.client_out.pump()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("client closed its end of our stdout; shutting down")
        finally:
            self.writer_done.set()
            self.done.set()

    async def _read_client(self) -> None:
        framer = LineFramer(self.config.limits.max_frame_bytes)
        stdin_fd = self.streams.stdin.fileno()
        session, upstream, client_out = self.session, self.upstream, self.client_out
        metrics = METRICS.bound()
        received = METRICS.received_bytes.cell("stdio")
        while True:
            chunk = await read_some(stdin_fd, READ_SIZE)
            if metrics is not None:     # every request in the chunk arrived now
                metrics.arrive()
                received.value += len(chunk)
            items = framer.feed(chunk) if chunk else framer.close()
            for item in items:
                session.on_client_item(item)
            upstream.flush()
            client_out.flush()
            if not chunk:
                log.info("client closed stdin; shutting down")
                self.done.set()
                return
            await upstream.wait_writable()
            await client_out.wait_writable()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("received %s; shutting down", signal.Signals(signum).name)
                self.done.set()
                return


def _session(front: StdioFront) -> list[tuple[tuple[str, ...], float]]:
    return [(("stdio", front.upstream.era or "unknown"), 1)]
