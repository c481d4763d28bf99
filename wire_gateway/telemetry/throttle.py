"""Rate limiting for repeated warnings of one kind (sans-IO: the caller passes the time).

A server that prints a million junk lines must not write a million log lines: the log
grows without bound, and formatting, masking and writing each one costs far more than
dropping the line did, so the junk also delays the answers queued behind it. A
`Throttle` lets the first few occurrences through in full (they show what the junk
looks like), then only counts, and says how many it counted at most once per
`interval`. `ThrottledLog` does the bookkeeping for a logger:

    junk = ThrottledLog(log, "server %s: dropped %d more lines over the last %.2fs", name)
    if junk.event(now):          # writes the summary first when one is due
        log.warning("server %s: dropped a line: %s", name, line)
    junk.tick(now)               # after a batch: a summary if one is due
    junk.close(now)              # at the end of the stream: whatever was counted

One instance per kind of event and source (e.g. junk lines from one server). After a
quiet `interval` with nothing left to report, the next event is shown in full again, so
an occasional stray line is never hidden.
"""
from __future__ import annotations

import logging


class Throttle:
    __slots__ = ("burst", "interval", "_shown", "_last", "_suppressed", "_since")

    def __init__(self, burst: int = 5, interval: float = 1.0) -> None:
        self.burst = burst          # events shown in full before counting starts
        self.interval = interval    # seconds between summaries (and of quiet before a fresh burst)
        self._shown = 0
        self._last = float("-inf")  # time of the last event
        self._suppressed = 0        # events counted since the last summary
        self._since = 0.0           # when counting started (or the last summary was taken)

    @property
    def suppressed(self) -> int:
        """Events counted and not yet reported by due()/take()."""
        return self._suppressed

    def event(self, now: float) -> bool:
        """Record one event at `now`. True: show it in full; False: it was counted."""
        if not self._suppressed and now - self._last >= self.interval:
            self._shown = 0         # quiet for a while: a fresh burst
        self._last = now
        if self._shown < self.burst:
            self._shown += 1
            return True
        if not self._suppressed:
            self._since = now
        self._suppressed += 1
        return False

    def due(self, now: float) -> tuple[int, float] | None:
        """(count, seconds it covers) if events were counted and `interval` has passed since
        counting started or the last summary; else None. Taking it starts a new count."""
        if self._suppressed and now - self._since >= self.interval:
            return self.take(now)
        return None

    def take(self, now: float) -> tuple[int, float] | None:
        """Whatever was counted, now (at the end of a stream, on shutdown), or None."""
        if not self._suppressed:
            return None
        summary = (self._suppressed, max(0.0, now - self._since))
        self._suppressed = 0
        self._since = now
        return summary


class ThrottledLog:
    """A Throttle that writes its own summaries: `summary` is a %-format for a logger, given
    `args` then the count and the seconds it covers (e.g. "server %s: dropped %d more lines
    over the last %.2fs")."""

    __slots__ = ("throttle", "logger", "summary", "args")

    def __init__(self, logger: logging.Logger, summary: str, *args: object, burst: int = 5,
                 interval: float = 1.0) -> None:
        self.throttle = Throttle(burst, interval)
        self.logger = logger
        self.summary = summary
        self.args = args

    def event(self, now: float) -> bool:
        """Record one event (after the summary of earlier ones, if due). True: log it in full."""
        if self.throttle.suppressed:
            self._write(self.throttle.due(now))
        return self.throttle.event(now)

    def tick(self, now: float) -> None:
        """Write the summary if one is due (call it when a batch of events may have ended)."""
        if self.throttle.suppressed:
            self._write(self.throttle.due(now))

    def close(self, now: float) -> None:
        """The end of the stream: write whatever was counted."""
        self._write(self.throttle.take(now))

    def _write(self, summary: tuple[int, float] | None) -> None:
        if summary is not None:
            self.logger.warning(self.summary, *self.args, *summary)
