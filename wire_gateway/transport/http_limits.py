"""Limits of the data-plane HTTP server, apart so config can build them without h11 or trio."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 16384       # request line + headers; beyond it: 431
    max_body_bytes: int = 4 * 1024 * 1024  # beyond it: 413, from Content-Length up front or while reading
    header_timeout: float = 10.0        # time to receive a full request head (and the TLS handshake)
    body_timeout: float = 30.0          # time to receive the whole body
    idle_timeout: float = 75.0          # keep-alive idle between requests; silent close
    max_connections: int = 10000        # beyond it: accepted, answered 503, closed
    write_high_water: int = 1 << 20     # response bytes queued behind a blocked write before senders wait
