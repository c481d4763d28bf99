"""Rate limiting for repeated warnings of one kind (sans-IO: the caller passes the time).

A server that prints a million junk lines must not write a million log lines: the log
grows without bound, and formatting, masking and writing each one costs far more than
dropping the line did, so the junk also delays the answers queued behind it. A
`Throttle` lets the first few occurrences through in full (they show what the junk
looks like), then only counts, and says how many it counted at most once per
`interval`:

    if throttle.suppressed:          # cheap: check once per batch of events, before them
        due = throttle.due(now)
        if due is not None:
            log.warning("dropped %d more in the last %.1fs", *due)
    if throttle.event(now):
        log.warning("... the event in full ...")
    ...
    at the end of the stream: report throttle.take(now) the same way

One instance per kind of event and source (e.g. junk lines from one server). After a
quiet `interval` with nothing left to report, the next event is shown in full again, so
an occasional stray line is never hidden.
"""
from __future__ import annotations


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
