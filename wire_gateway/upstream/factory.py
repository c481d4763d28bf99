"""One place that turns a server spec into the upstream a session talks to, so a
new kind of upstream (HTTP) plugs in without touching the sessions."""
from __future__ import annotations

from wire_gateway.config import Limits, ServerSpec
from wire_gateway.upstream.http_upstream import HttpUpstream
from wire_gateway.upstream.protocol import Sink, Upstream
from wire_gateway.upstream.supervisor import SupervisedServer


def make_upstream(spec: ServerSpec, limits: Limits, sink: Sink) -> Upstream:
    """A supervised process for a `command` server, a Streamable HTTP client for a `url` one."""
    if spec.url:
        return HttpUpstream(spec, limits, sink)
    return SupervisedServer(spec, limits, sink)
