"""Upstream servers: spawning and supervising processes, and the gateway's client side
of each (pending requests, the legacy handshake it replays after a restart)."""
