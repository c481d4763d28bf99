"""What the gateway knows about the request being handled, for traces and log lines, carried in
context variables (as `auth.context` carries the caller) rather than through every `Upstream`.

Two layers of it:
- `SCOPE`, set by a front: the session's label (the one its dump records carry), the server, the
  W3C trace context of the HTTP request (`traceparent`/`tracestate` headers) and when the caller
  was proven (the auth check's times, for its span). The HTTP front sets it per request, the
  stdio front once for its life.
- `REQUEST`, set by the policy runner while it handles one traced (or, with JSON logs, tagged)
  request: its request id and the ids of its span, so every log line written meanwhile carries
  them. The request id is `<session label>/<JSON-RPC id at the gateway->server hop>`: the pair a
  dump record of that request carries (its `session` and `id` at the server-side hops), so a log
  line, a span (attribute `wire_gateway.request_id`) and dump records are found from one another
  without the dump's record format changing.

`OUTBOUND` is the trace context the runner gives a forwarded request, for the HTTP upstream to put
in the POST's headers (the stdio upstream gets it in `params._meta` only). trio copies the context
into the task that posts the request, so it is read there.

Nothing here imports OpenTelemetry: with tracing and JSON logs off (`ACTIVE` false) the fronts skip
all of this after one attribute test.
"""
from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

ACTIVE = False
"""Tracing or JSON logs are on (`telemetry.tracing.setup`, `telemetry.logs.setup_logging`): the
fronts fill `SCOPE`."""
TRACING = False
"""Tracing is on: the HTTP upstream reads `OUTBOUND`, the HTTP front the `traceparent` header."""
JSON_LOGS = False
"""Log lines are JSON (`telemetry.logs.setup_logging`): the only reader of `REQUEST`, which is set
only then."""


@dataclass(slots=True)
class Scope:
    """What a front knows of the request (HTTP) or the session (stdio) it is handling."""

    session: str | None = None
    server: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None
    auth_start: int = 0            # ns since the epoch: the auth check's span, when there was one
    auth_end: int = 0


@dataclass(slots=True)
class Tag:
    """One request being handled: what its log lines say."""

    server: str
    session: str | None
    request_id: str
    trace_id: int = 0              # of its span, when it is traced (formatted only when a line is written)
    span_id: int = 0


class Attrs:
    """Attributes that many spans share (a server's method, tool, era...), made once and encoded
    once (`telemetry.otlp_encode`); a span keeps a reference and its own few (ids, outcome) beside it."""

    __slots__ = ("values", "encoded")

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.encoded: bytes | None = None       # written by the export thread, the only encoder


NO_ATTRS = Attrs({})


SCOPE: ContextVar[Scope | None] = ContextVar("wire_gateway_scope", default=None)
REQUEST: ContextVar[Tag | None] = ContextVar("wire_gateway_request", default=None)
OUTBOUND: ContextVar[dict[str, str] | None] = ContextVar("wire_gateway_outbound_trace", default=None)


def request_id(session: str | None, msg_id: object) -> str:
    return f"{session or '-'}/{msg_id}"


TRACER: Any = None
"""The process's `telemetry.tracing.Tracing` once tracing is set up (typed loosely here so that
this module loads no OpenTelemetry): a policy runner made while it is set traces."""
