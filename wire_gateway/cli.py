"""The `wire-gateway` command.

Over 400 lines because it is the parser and one thin function per command (`serve`, `stdio`,
`check`, `init`, `load`, ...), each only reading its arguments and calling the layer below; the larger
command groups already live in cli_policy.py, cli_auth.py and cli_guardrails.py.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from wire_gateway import __version__
from wire_gateway.config import (
    Config,
    ConfigError,
    default_document,
    load_config,
    register_secrets,
    schema_path,
)
from wire_gateway.telemetry import memtrace
from wire_gateway.telemetry.logs import setup_logging
from wire_gateway.telemetry.metrics import METRICS, configure as configure_metrics

log = logging.getLogger("wire_gateway.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wire-gateway",
        description="A streaming reverse proxy for the Model Context Protocol.")
    parser.add_argument("--version", action="version", version=f"wire-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="PATH",
                       help="config file (default: $WIRE_GATEWAY_CONFIG, else the built-in echo server)")

    p = sub.add_parser("stdio", help="serve one MCP server over this process's stdin/stdout")
    add_config(p)
    p.add_argument("--server", metavar="NAME",
                   help="which configured server to proxy (default: the only one; with several, all of them "
                        "as one aggregate server with namespaced tools)")
    p.add_argument("--aggregate", action="store_true",
                   help="serve the aggregate of all configured servers even when there is only one")
    p.add_argument("--log-file", metavar="PATH", help="write logs here instead of stderr")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--dump", metavar="PATH", help="dump every frame at every hop to this JSONL file (docs/dumps.md)")

    p = sub.add_parser("serve", help="serve the configured servers over Streamable HTTP")
    add_config(p)
    p.add_argument("--host", help="address to listen on (default: http.host, else 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default: http.port, else 8080; 0 picks one)")
    p.add_argument("--admin-port", type=int, help="serve the control plane (GET /status) on this port")
    p.add_argument("--admin-host", help="address of the control plane (default: http.admin_host, else 127.0.0.1)")
    p.add_argument("--port-file", metavar="PATH",
                   help="once listening, write the bound port to PATH (atomically: a reader sees all of it or "
                        "no file); with --port 0 this is how a starter learns the port")
    p.add_argument("--log-file", metavar="PATH", help="write logs here instead of stderr")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--dump", metavar="PATH", help="dump every frame at every hop to this JSONL file (docs/dumps.md)")

    p = sub.add_parser("check", help="validate a config file; exit 0 if it is usable, 1 if not")
    add_config(p)

    p = sub.add_parser("cache", help="inspect or clear the policy caches in the configured store")
    cache_sub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    q = cache_sub.add_parser("status", help="backend, whether it is reachable, entries per server")
    add_config(q)
    q = cache_sub.add_parser("clear", help="drop cached tool lists and results (all servers, or one)")
    add_config(q)
    q.add_argument("--server", metavar="NAME")

    p = sub.add_parser("tools", help="tool pinning: list quarantined tools, approve a changed definition")
    tools_sub = p.add_subparsers(dest="tools_command", required=True, metavar="ACTION")
    q = tools_sub.add_parser("approve", help="pin a quarantined tool's new definition, lifting the quarantine")
    add_config(q)
    q.add_argument("server", metavar="SERVER")
    q.add_argument("tool", metavar="TOOL")
    q = tools_sub.add_parser("pins", help="count pinned tools and list quarantined ones")
    add_config(q)
    q.add_argument("--server", metavar="NAME")

    from wire_gateway.cli_auth import add_auth_parsers

    add_auth_parsers(sub, add_config)

    p = sub.add_parser("init", help="write a starter config file")
    p.add_argument("path", nargs="?", default="wire-gateway.json", metavar="PATH")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")

    from wire_gateway.dump.tools import add_dump_parser

    add_dump_parser(sub)

    from wire_gateway.cli_guardrails import add_guardrails_parser

    add_guardrails_parser(sub)

    sub.add_parser("load", add_help=False, help="the load tool: replay recorded sessions, benchmarks "
                                                    "(`wire-gateway load --help`; docs/load.md)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["load"]:   # everything after it is the load tool's (argparse would claim its options)
        return cmd_load(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return cmd_check(args)
    if args.command == "init":
        return cmd_init(args)
    if args.command == "serve":
        return cmd_serve(args)
    if args.command in ("cache", "tools"):
        from wire_gateway.cli_policy import cmd_cache, cmd_tools

        config = _load(args)
        if config is None:
            return 1
        return cmd_cache(args, config) if args.command == "cache" else cmd_tools(args, config)
    if args.command in ("projects", "users", "keys"):
        from wire_gateway.cli_auth import run_auth_command

        config = _load(args)
        return 1 if config is None else run_auth_command(args, config)
    if args.command == "guardrails":
        from wire_gateway.cli_guardrails import run_guardrails_command

        return run_guardrails_command(args)
    if args.command == "dump":
        from wire_gateway.dump.tools import run_dump_command

        return run_dump_command(args)
    return cmd_stdio(args)


def cmd_load(argv: list[str]) -> int:
    """The load tool, imported only when asked for: installed as `wire_gateway_load`, or a checkout's `load/`."""
    import importlib

    try:   # by name: the tool is outside the type-checked package, and this keeps it so
        tool = importlib.import_module("wire_gateway_load.__main__")
    except ImportError:
        checkout = Path(__file__).resolve().parent.parent
        if not (checkout / "load" / "__main__.py").is_file():
            print("wire-gateway load: the load tool is not installed (wire_gateway_load)", file=sys.stderr)
            return 2
        sys.path.insert(0, str(checkout))
        tool = importlib.import_module("load.__main__")
    return int(tool.main(argv, prog="wire-gateway load"))


def _dumper(args: argparse.Namespace, config: Config):  # -> Dumper | None
    """--dump PATH and/or the config's `dump` section; a config path is relative to the config file."""
    from wire_gateway.dump.writer import Dumper, settings_from

    section = dict(config.document.get("dump") or {})
    path = section.get("path")
    if path and not args.dump and not os.path.isabs(path) and os.path.isfile(config.source):
        section["path"] = str(Path(config.source).resolve().parent / path)
    settings = settings_from(section, args.dump, config.mask_patterns)
    if settings is None:
        return None
    try:   # fail now, plainly, rather than from inside the event loop
        Path(settings.path).parent.mkdir(parents=True, exist_ok=True)
        open(settings.path, "ab").close()
    except OSError as exc:
        print(f"wire-gateway {args.command}: cannot write the dump file {settings.path}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        raise SystemExit(1) from None
    log.info("dumping frames to %s (rotating at %d bytes, %d backups)", settings.path, settings.max_bytes,
             settings.backups)
    return Dumper(settings)


def _load(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args)
    if config is None:
        return 1
    problems = []
    for spec in config.servers.values():
        try:
            spec.resolved()
        except ConfigError as exc:
            problems += exc.problems
    if config.store.backend == "redis":
        from wire_gateway.config.loader import store_url

        try:
            store_url(config.store.url, dict(os.environ))
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        print(ConfigError(problems, config.source).report(), file=sys.stderr)
        return 1
    names = ", ".join(config.servers)
    print(f"{config.source}: OK ({len(config.servers)} server(s): {names})")
    for name, spec in config.servers.items():
        chain = spec.policy.interceptors()
        print(f"  {name}: " + (" -> ".join([*chain, "upstream"]) if chain else "passthrough (no policy)"))
    if any(spec.policy.interceptors() for spec in config.servers.values()):
        from wire_gateway.store.redis import safe_url

        st = config.store
        where = f"redis {safe_url(st.url)} (prefix {st.prefix!r})" if st.backend == "redis" else \
            "memory" + (f" (pins in {st.pins_file})" if st.pins_file else " (pins live only as long as the process)")
        print(f"  store: {where}")
    auth = config.auth
    if not auth.present:
        print("  auth: none (anyone who reaches the gateway may call every tool; `serve` allows this on "
              "loopback only)")
    else:
        where = "redis (shared)" if config.store.backend == "redis" else f"{auth.file}"
        issuer = f", tokens from {auth.jwt.issuer}" if auth.tokens and auth.jwt is not None else ""
        print(f"  auth: {auth.mode} (records in {where}{issuer})")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        print(f"{path}: already exists; not overwriting it (use --force)", file=sys.stderr)
        return 1
    doc = {"$schema": schema_path().resolve().as_uri(), **default_document()}
    doc["servers"]["echo"]["env"] = {}
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}: one server, 'echo' (the bundled demo server).\n"
          f"Next: replace or add servers under \"servers\" (command, args, env, cwd); put secrets in env as\n"
          f"\"${{VAR}}\" references rather than literal values; then run `wire-gateway check --config {path}`\n"
          f"and point your MCP client at `wire-gateway stdio --config {path.resolve()} --server NAME`.")
    return 0


def _observe(args: argparse.Namespace, config: Config) -> bool:
    """Logs, metrics and traces as the config (and the command line) say; False if tracing cannot start."""
    setup_logging(args.log_level or config.log_level, args.log_file or config.log_file, config.mask_patterns,
                  config.log_format)
    configure_metrics(config.telemetry.metrics)
    return start_tracing(config)


def cmd_stdio(args: argparse.Namespace) -> int:
    from wire_gateway.proxy.stdio_front import serve_stdio
    from wire_gateway.transport.stdio import claim_stdio

    # Claim stdout first: from here on nothing but MCP frames may reach fd 1.
    streams = claim_stdio()
    config = _load(args)
    if config is None:
        return 1
    if not _observe(args, config):
        return 1
    name = args.server
    if name is not None and args.aggregate:
        print("wire-gateway stdio: --server and --aggregate exclude each other", file=sys.stderr)
        return 2
    aggregate = name is None and (args.aggregate or len(config.servers) > 1)
    if name is None and not aggregate:
        name = next(iter(config.servers))
    if name is not None and name not in config.servers:
        print(f"wire-gateway stdio: no server named {name!r} in {config.source}; "
              f"configured: {', '.join(config.servers)}", file=sys.stderr)
        return 2
    from wire_gateway.policy.services import Services

    try:   # resolves each server (a missing ${VAR} is a config error) and registers its secrets
        register_secrets(config.servers.values() if aggregate else [config.servers[name]])
        services = Services(config)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return 1
    if aggregate:
        log.info("wire-gateway %s (pid %d): stdio front for the aggregate of %s from %s", __version__,
                 os.getpid(), ", ".join(config.servers), config.source)
    else:
        log.info("wire-gateway %s (pid %d): stdio front for server %s from %s", __version__, os.getpid(), name,
                 config.source)

    dumper = _dumper(args, config)

    async def main() -> None:
        async with running(services, config.telemetry.otlp_metrics):
            await serve_stdio(config, name, streams, services, dumper)

    run_trio(main, services)
    return 0


def start_tracing(config: Any) -> bool:
    """Tracing on (`telemetry.tracing` or WIRE_GATEWAY_TRACING=1): set it up before any runner is
    made. False when the exporter the environment asks for cannot be made (said on stderr)."""
    from wire_gateway.telemetry.context import TRACER

    if TRACER is not None:
        return True
    import os

    switch = os.environ.get("WIRE_GATEWAY_TRACING", "").strip().lower() in ("1", "true", "yes", "on")
    if not (config.telemetry.tracing or switch):
        return True
    from wire_gateway.telemetry import tracing

    try:
        tracing.setup(config.telemetry.trace_passthrough)
    except tracing.TracingError as exc:
        print(f"wire-gateway: cannot trace: {exc}", file=sys.stderr)
        return False
    log.info("tracing on: OTLP export (%s)", os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
             or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "the default endpoint")
    return True


def running(services: Any, otlp_metrics: bool = False) -> Any:
    """The process's shared services (the store's background work, the OTLP metrics push when
    `telemetry.otlp_metrics` is on) around a front."""
    import contextlib

    import trio

    @contextlib.asynccontextmanager
    async def scope() -> Any:
        push = None
        if otlp_metrics and METRICS.on:
            from wire_gateway.telemetry import otlp_metrics as otlp

            push = otlp.start(True)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(services.run)
                yield
                nursery.cancel_scope.cancel()
        finally:
            if push is not None:     # a last export, from a thread: it reads the instruments through trio
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(push.shutdown)
    return scope()


def run_trio(main: Any, services: Any) -> None:
    """trio.run, inside one asyncio loop (trio-asyncio) when the Redis store needs it."""
    if services.needs_asyncio:
        import trio_asyncio

        trio_asyncio.run(main)
    else:
        import trio

        trio.run(main)


def write_port_file(path: str, port: int) -> None:
    """The port, written to a temporary file renamed over `path`: a reader never sees a partial number."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


def cmd_serve(args: argparse.Namespace) -> int:
    import dataclasses
    import signal

    import trio

    from wire_gateway.proxy.http_front import HttpFront

    config = _load(args)
    if config is None:
        return 1
    if not _observe(args, config):
        return 1
    http = config.http
    if args.host is not None:
        http = dataclasses.replace(http, host=args.host)
    if args.port is not None:
        http = dataclasses.replace(http, port=args.port)
    if args.admin_port is not None:
        http = dataclasses.replace(http, admin_port=args.admin_port)
    if args.admin_host is not None:
        http = dataclasses.replace(http, admin_host=args.admin_host)
    config = dataclasses.replace(config, http=http)
    from wire_gateway.wire.authority import is_loopback

    if not config.auth.present and not is_loopback(http.host):
        print(f"wire-gateway serve: refusing to listen on {http.host} without auth: anyone who can reach "
              "it could call every tool of every server. Add an \"auth\" section to the config (\"mode\": "
              "\"keys\" or \"jwt\"; docs/auth.md), or write \"auth\": {\"mode\": \"none\"} to serve it "
              "open on purpose.", file=sys.stderr)
        return 1
    try:   # resolves each server (a missing ${VAR} is a config error) and registers its secrets
        register_secrets(config.servers.values())
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return 1

    port_file_failed: list[OSError] = []

    async def serve() -> None:
        shutdown = trio.Event()
        front = HttpFront(config, services)

        async def on_signals() -> None:
            """SIGTERM: /readyz answers 503 at once, requests are served for http.drain_grace more
            (a load balancer's health checks see it and stop sending), then the drain. SIGINT, or
            a second SIGTERM, drains at once."""
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    front.leaving = True
                    grace = http.drain_grace if signum == signal.SIGTERM else 0.0
                    if grace > 0:
                        log.info("received SIGTERM; /readyz answers 503 from now; serving %.1fs more "
                                 "(http.drain_grace), then draining (up to %.0fs) and shutting down",
                                 grace, http.drain_timeout)
                        with trio.move_on_after(grace):
                            again = await signals.__anext__()
                            log.info("received %s during the grace", signal.Signals(again).name)
                        log.info("draining (up to %.0fs) and shutting down", http.drain_timeout)
                    else:
                        log.info("received %s; draining (up to %.0fs) and shutting down",
                                 signal.Signals(signum).name, http.drain_timeout)
                    shutdown.set()
                    return

        async with trio.open_nursery() as nursery, running(services, config.telemetry.otlp_metrics):
            nursery.start_soon(on_signals)
            prefix = memtrace.prefix()
            if prefix is not None:   # a debug hook, off unless WIRE_GATEWAY_TRACEMALLOC is set
                memtrace.start()
                nursery.start_soon(memtrace.serve_snapshots, prefix)
            if dumper is not None:
                await nursery.start(dumper.run)
                front.dumper = dumper
            try:
                async with trio.open_nursery() as serving:
                    port = await serving.start(front.run, shutdown)
                    if args.port_file:
                        try:
                            write_port_file(args.port_file, port)
                        except OSError as exc:   # not a listening failure: said plainly, then stop
                            print(f"wire-gateway serve: cannot write the port file {args.port_file}: "
                                  f"{exc.strerror or exc}", file=sys.stderr)
                            port_file_failed.append(exc)
                            shutdown.set()
            finally:
                if dumper is not None:
                    await dumper.aclose()
            nursery.cancel_scope.cancel()

    from wire_gateway.policy.services import Services

    try:
        services = Services(config)
    except ConfigError as exc:
        print(exc.report(), file=sys.stderr)
        return 1
    log.info("wire-gateway %s (pid %d): HTTP front from %s", __version__, os.getpid(), config.source)
    dumper = _dumper(args, config)
    failed = False
    try:
        run_trio(serve, services)
    except* OSError as group:   # raised inside nurseries, so it arrives as a group
        first = group.exceptions[0]
        print(f"wire-gateway serve: cannot listen (http.port {config.http.port}, http.admin_port "
              f"{config.http.admin_port}): {getattr(first, 'strerror', None) or first}", file=sys.stderr)
        failed = True
    return 1 if failed or port_file_failed else 0
