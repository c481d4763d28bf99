"""One place that turns a server spec into the upstream a session talks to, so a
new kind of upstream (HTTP) plugs in without touching the sessions."""
from __future__ import annotations

from wire_gateway.config import Limits, ServerSpec
from wire_gateway.upstream.supervisor import Sink, SupervisedServer


def make_upstream(spec: ServerSpec, limits: Limits, sink: Sink) -> SupervisedServer:
    return SupervisedServer(spec, limits, sink)
