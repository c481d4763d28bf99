"""Restart pacing for a crashing server: exponential backoff with jitter, and
crash-loop detection so a server that cannot start is reported, not spun.

Sans-IO: the caller passes the clock; nothing here sleeps.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from wire_gateway.config import RestartPolicy


@dataclass(frozen=True)
class Decision:
    delay: float        # seconds to wait before the next start
    crash_loop: bool    # True: too many exits in the window; callers fail fast meanwhile
    exits_in_window: int


class Backoff:
    def __init__(self, policy: RestartPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self.rng = rng or random.Random()
        self._attempt = 0
        self._exits: deque[float] = deque()

    def on_exit(self, now: float, lived: float) -> Decision:
        """Record an exit at `now` of a process that ran for `lived` seconds."""
        p = self.policy
        if lived >= p.reset_after:
            self._attempt = 0
        self._exits.append(now)
        while self._exits and now - self._exits[0] > p.crash_loop_window:
            self._exits.popleft()
        if len(self._exits) >= p.crash_loop_exits:
            self._exits.clear()
            self._attempt = 0
            return Decision(p.crash_loop_cooldown, True, p.crash_loop_exits)
        base = min(p.max_delay, p.initial_delay * (p.multiplier ** self._attempt))
        self._attempt += 1
        spread = base * p.jitter
        delay = max(0.0, base + self.rng.uniform(-spread, spread))
        return Decision(delay, False, len(self._exits))
