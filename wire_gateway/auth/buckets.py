"""Token buckets in this process's memory: per key, per project, per client address.

Sans-IO: the caller passes the time. A bucket holds up to `burst` tokens and gains `rate`
per second; a request takes one, or is told how long until one is there. Buckets that have
refilled completely carry no information and are dropped once there are many, so a flood
of distinct addresses cannot grow memory without bound.
"""
from __future__ import annotations

import math

MAX_BUCKETS = 100_000


class Buckets:
    __slots__ = ("rate", "burst", "_state")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._state: dict[str, tuple[float, float]] = {}      # name -> (tokens, when)

    def take(self, name: str, now: float) -> float:
        """0.0 when a token was taken; else the seconds until one will be there (nothing taken)."""
        tokens, when = self._state.get(name, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        if tokens < 1.0:
            self._state[name] = (tokens, now)
            return (1.0 - tokens) / self.rate
        if len(self._state) >= MAX_BUCKETS and name not in self._state:
            self._prune(now)
        self._state[name] = (tokens - 1.0, now)
        return 0.0

    def wait(self, name: str, now: float) -> float:
        """What `take` would answer, without taking: 0.0 when a token is there."""
        tokens, when = self._state.get(name, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        full = [n for n, (t, w) in self._state.items() if t + (now - w) * self.rate >= self.burst]
        for n in full:
            del self._state[n]
        if len(self._state) >= MAX_BUCKETS:      # all busy: forget the oldest half rather than grow
            for n in sorted(self._state, key=lambda n: self._state[n][1])[: MAX_BUCKETS // 2]:
                del self._state[n]


def retry_after_header(seconds: float) -> str:
    """Retry-After is whole seconds (RFC 9110); round up so a client that obeys it is let in."""
    return str(max(1, math.ceil(seconds)))
