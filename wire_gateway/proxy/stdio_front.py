"""`wire-gateway stdio`: the gateway as a desktop client's MCP server.

The client launches us; we launch the real server and keep it alive. When the
client closes our stdin (or vanishes, or we get SIGTERM/SIGINT/SIGHUP), the
server is shut down the spec's way and we exit, leaving no process behind.
"""
from __future__ import annotations

import logging
import signal

import trio

from wire_gateway.config import Config
from wire_gateway.proxy.session import PassthroughSession
from wire_gateway.transport.outbuffer import OutBuffer
from wire_gateway.transport.stdio import READ_SIZE, StdioStreams
from wire_gateway.upstream.supervisor import SupervisedServer
from wire_gateway.wire.framing import LineFramer

log = logging.getLogger("wire_gateway.stdio")


async def serve_stdio(config: Config, server_name: str, streams: StdioStreams) -> None:
    spec = config.servers[server_name].resolved()
    client_out = OutBuffer()
    session = PassthroughSession(client_out, config.limits.max_frame_bytes)
    upstream = SupervisedServer(spec, config.limits, session)
    session.upstream = upstream
    done = trio.Event()
    writer_done = trio.Event()

    async def write_client() -> None:
        try:
            await client_out.pump(streams.stdout)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("client closed its end of our stdout; shutting down")
        finally:
            writer_done.set()
            done.set()

    async def read_client() -> None:
        framer = LineFramer(config.limits.max_frame_bytes)
        while True:
            try:
                chunk = await streams.stdin.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            items = framer.feed(chunk) if chunk else framer.close()
            for item in items:
                session.on_client_item(item)
            if not chunk:
                log.info("client closed stdin; shutting down")
                done.set()
                return
            await upstream.wait_writable()
            await client_out.wait_writable()

    async def watch_signals() -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("received %s; shutting down", signal.Signals(signum).name)
                done.set()
                return

    async with trio.open_nursery() as nursery:
        await nursery.start(upstream.run)
        nursery.start_soon(write_client)
        reader_scope = trio.CancelScope()

        async def reader() -> None:
            with reader_scope:
                await read_client()

        nursery.start_soon(reader)
        nursery.start_soon(watch_signals)
        await done.wait()
        reader_scope.cancel()
        budget = spec.stdin_close_timeout + spec.sigterm_timeout + 5.0
        with trio.CancelScope(shield=True):
            with trio.move_on_after(budget):
                await upstream.shutdown()
            client_out.close()
            with trio.move_on_after(2.0):
                await writer_done.wait()
        nursery.cancel_scope.cancel()
