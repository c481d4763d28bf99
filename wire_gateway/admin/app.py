"""The control plane: a tiny read-only HTTP API, served by hypercorn's trio worker.

Routes: `GET /status` (the gateway's `status()` snapshot as JSON, every string in it through
the process's secret masker: a last exit or a member's problem can quote a server), `GET /healthz`
and, unless `telemetry.metrics` is false, `GET /metrics` (Prometheus' text format,
telemetry/prometheus.py; its labels are config names and bounded values, never secrets).
Any other path is 404, another method on a known path is 405; every other answer is JSON.
Each request is first checked at the edge like the data plane's: a Host that is not a
loopback name (or the bound address), or an Origin that is present and not loopback,
gets 403 (DNS-rebinding protection: a web page must not read /status through a
hostile name that resolves to 127.0.0.1).

Port 0 works without binding anything ourselves: `hypercorn.trio.serve` reports the
addresses it actually bound through `task_status` (a list like
["http://127.0.0.1:43211"]), taken from each listening socket's getsockname(); we
start it in our own nursery and pass the port on to our caller.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from wire_gateway.telemetry import prometheus
from wire_gateway.telemetry.masking import mask
from wire_gateway.telemetry.prometheus import CONTENT_TYPE, make_registry
from wire_gateway.wire.authority import AuthorityError, parse_host, parse_origins

log = logging.getLogger("wire_gateway.admin")

LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD = frozenset({"", "0.0.0.0", "::"})
ROUTES = ("/status", "/healthz", "/metrics")
GRACEFUL_TIMEOUT = 1.0  # every answer is immediate; this only bounds a stuck client at shutdown


def edge_refusal(host: str | None, origin: str | None, bound: str) -> str | None:
    """Why a request must be refused (DNS-rebinding protection), or None if it may pass.

    Host and Origin are parsed as their RFCs define them (wire/authority.py), as on the
    data plane: a value that does not parse is refused."""
    try:
        name = parse_host(host or "").host
    except AuthorityError:
        name = None
    bound = bound.strip("[]").lower()
    if name is None or not (name in LOOPBACK or (bound not in WILDCARD and name == bound)):
        return f"Host {host!r} is not allowed (DNS-rebinding protection): use a loopback name"
    if origin is not None:
        try:
            origins = parse_origins(origin)
        except AuthorityError:
            origins = None
        if not origins or any(o.authority.host not in LOOPBACK for o in origins):
            return f"Origin {origin!r} is not allowed (DNS-rebinding protection): only loopback origins are"
    return None


def _dumps(doc: Any) -> bytes:
    try:
        return orjson.dumps(doc)
    except orjson.JSONEncodeError:  # e.g. a client's clientInfo with a lone surrogate or a 65-bit integer
        return json.dumps(doc, default=str).encode()


def make_app(status: Callable[[], dict], bound_host: str,
             metrics: Callable[[], bytes] | None = None) -> Callable[..., Any]:
    """The raw ASGI app: lifespan (hypercorn requires it) and the GET routes (`metrics`: the
    exposition's text, None with metrics off)."""

    async def app(scope: dict, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return  # websockets: hypercorn refuses the handshake when the app returns

        async def respond(code: int, doc: Any, *extra: tuple[bytes, bytes], ctype: bytes = b"application/json") -> None:
            body = doc if isinstance(doc, bytes) else _dumps(doc)
            headers = [(b"content-type", ctype), (b"content-length", b"%d" % len(body)),
                       (b"cache-control", b"no-store"), *extra]
            await send({"type": "http.response.start", "status": code, "headers": headers})
            await send({"type": "http.response.body", "body": body})

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = edge_refusal(headers.get("host", headers.get(":authority")), headers.get("origin"), bound_host)
        path = scope["path"].rstrip("/") or "/"
        if refusal is not None:
            await respond(403, {"error": refusal})
        elif path not in ROUTES or (path == "/metrics" and metrics is None):
            await respond(404, {"error": f"no such route: {scope['path']}; try GET /status or GET /healthz"
                                + ("" if metrics is None else " or GET /metrics")})
        elif scope["method"] != "GET":
            await respond(405, {"error": f"method {scope['method']} is not allowed; use GET"}, (b"allow", b"GET"))
        elif path == "/healthz":
            await respond(200, b'{"status":"ok"}')
        elif path == "/metrics":
            assert metrics is not None
            await respond(200, metrics(), ctype=CONTENT_TYPE.encode())
        else:
            try:
                body = _dumps(mask.data(status()))
            except Exception:
                log.exception("GET /status: the status snapshot failed")
                await respond(500, {"error": "the status snapshot failed; see the gateway's log"})
                return
            await respond(200, body)

    return app


async def serve_admin(status: Callable[[], dict], host: str, port: int, shutdown: trio.Event, *,
                      metrics: bool = False, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the control plane on host:port until `shutdown` is set (`metrics`: with GET /metrics).

    task_status.started(bound_port): port 0 picks a free port and reports it.
    """
    hypercorn_log = logging.getLogger("wire_gateway.admin.hypercorn")
    if hypercorn_log.level == logging.NOTSET:
        hypercorn_log.setLevel(logging.WARNING)  # its INFO is "Running on ... (CTRL + C to quit)"
    config = Config()
    config.bind = [f"[{host.strip('[]')}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None               # no access log at all
    config.errorlog = hypercorn_log       # errors (and app exceptions) into our logging, never stdout
    config.graceful_timeout = GRACEFUL_TIMEOUT
    config.include_server_header = False
    async with trio.open_nursery() as nursery:
        exposition = None
        if metrics:
            registry = make_registry()
            exposition = partial(prometheus.exposition, registry)
        binds = await nursery.start(partial(serve, make_app(status, host, exposition), config,
                                            shutdown_trigger=shutdown.wait))
        task_status.started(urlsplit(binds[0]).port)
