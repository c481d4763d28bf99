"""Which upstream a session talks to: the plain one, or the policy runner around it.

A server that configures no interceptor gets exactly what make_upstream gives, so it
pays nothing for the policy machinery; unless tracing is on, which the runner does
(docs/observability.md).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wire_gateway.config import Config, ServerSpec
from wire_gateway.policy.chain import Chain
from wire_gateway.proxy.policy_runner import PolicyRunner
from wire_gateway.telemetry import context as telemetry
from wire_gateway.upstream.factory import make_upstream
from wire_gateway.upstream.protocol import Sink, Upstream


def open_upstream(spec: ServerSpec, config: Config, sink: Sink, services: Any, auth_context: str = "") -> Upstream:
    """`services` is the process's policy.services.Services (None: no policy at all)."""
    chain = services.chain_for(spec) if services is not None else None
    if chain is None:
        if telemetry.TRACER is None:
            return make_upstream(spec, config.limits, sink)
        # Tracing on: every server's tool requests get spans, so a server without policy gets a
        # runner with an empty chain (its requests pass straight to the upstream, traced).
        chain = Chain(spec.name, [], sync=True)
    return PolicyRunner(spec, config.limits, sink, chain, auth_context)


def member_factory(config: Config, services: Any) -> Callable[[ServerSpec, Any, Sink], Upstream]:
    """The factory the aggregate makes its members with: each server keeps its own chain."""
    def make(spec: ServerSpec, limits: Any, sink: Sink) -> Upstream:
        return open_upstream(spec, config, sink, services)
    return make
