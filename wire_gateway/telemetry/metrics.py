"""The gateway's own metrics: counters, gauges and histograms cheap enough to leave on.

Every instrument is plain Python on the gateway's one trio thread, with no lock: a counter is a
dict from a tuple of label values to a `Cell` (an int in a slot), a histogram a dict from label
values to a list of bucket counts plus the sum (one `bisect` to find the bucket), and a gauge is
not kept at all but read at scrape time from the live objects that know it (the pending tables,
the sessions), through callbacks registered when those objects are made. An update costs a dict
lookup and an addition (~0.1-0.3 us); a request pays a few of them and three `perf_counter()`s.

`METRICS` is the process's one set of instruments; the code that knows a fact updates it there
(the catalogue, and where each metric is counted: docs/observability.md). `METRICS.on` is
False when `telemetry.metrics` is: objects made after that bind nothing (`METRICS.bound()` is
None) and the remaining sites test that one attribute, so metrics off cost an attribute test.
Reading the instruments for an exposition (`telemetry/prometheus.py`, `telemetry/otlp_metrics.py`)
is `snapshot()`, which must run on the trio thread too (the OTLP exporter's thread asks it there).

Label values are bounded on purpose (a label value is a time series in Prometheus): methods are
the MCP methods or `other`, error codes the standard and gateway codes or a class, servers and
projects come from the config; never a principal, a key id, a tool argument or a session id.
"""
from __future__ import annotations

import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

PREFIX = "wire_gateway_"

# Request methods a label may name; any other is "other" (a client may send any method name).
MCP_METHODS = frozenset({
    "initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/templates/list",
    "resources/read", "resources/subscribe", "resources/unsubscribe", "prompts/list", "prompts/get",
    "completion/complete", "logging/setLevel", "server/discover", "subscriptions/listen", "tasks/get",
    "tasks/list", "tasks/result", "tasks/cancel", "sampling/createMessage", "elicitation/create", "roots/list",
})
# JSON-RPC error codes a label names as themselves; other codes go by class (see `code_label`).
_NAMED_CODES = frozenset({-32700, -32600, -32601, -32602, -32603})

# Seconds: from 100 us (a passthrough's own cost) to a minute (a slow tool).
# perf_counter() when the client frame being handled arrived, set by the fronts (a stdio read, an
# HTTP POST). A context variable: each HTTP request is handled in its connection's task, and a task
# started on a request's behalf (the policy chain's, the aggregate's) gets a copy of its caller's,
# so whoever writes a request upstream reads the stamp of the client request it serves.
ARRIVED: ContextVar[float] = ContextVar("wire_gateway_arrived", default=0.0)

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def method_label(method: str | None) -> str:
    return method if method is not None and method in MCP_METHODS else "other"


def code_label(code: Any) -> str:
    """A JSON-RPC error code as a label of bounded cardinality: the standard codes and the
    implementation-defined ranges (-32099..-32000 for servers, -31099..-31000 for the gateway's
    own, errors.md) as the number, anything else as `other`."""
    if type(code) is not int:
        return "other"
    if code in _NAMED_CODES or -32099 <= code <= -32000 or -31099 <= code <= -31000:
        return str(code)
    return "other"


class Cell:
    """One time series of a counter: label sites with fixed labels keep the cell itself."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class Counter:
    """A monotonic count per tuple of label values."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = ()) -> None:
        self.name = PREFIX + name
        self.help = help
        self.labels = labels
        self.cells: dict[tuple[str, ...], Cell] = {}

    def cell(self, *key: str) -> Cell:
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = Cell()
        return cell

    def inc(self, key: tuple[str, ...], n: int = 1) -> None:
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = Cell()
        cell.value += n

    def samples(self) -> list[tuple[tuple[str, ...], float]]:
        return [(key, cell.value) for key, cell in list(self.cells.items())]


class Histogram:
    """Observations per tuple of label values, counted into fixed buckets: each series is a list
    of per-bucket counts (the last bucket is +Inf) followed by the sum of the observations."""

    kind = "histogram"

    def __init__(self, name: str, help: str, labels: tuple[str, ...], bounds: tuple[float, ...] = LATENCY_BUCKETS):
        self.name = PREFIX + name
        self.help = help
        self.labels = labels
        self.bounds = bounds
        self.cells: dict[tuple[str, ...], list[Any]] = {}
        self._empty = [0] * (len(bounds) + 1) + [0.0]

    def cell(self, *key: str) -> list[Any]:
        """The series for these label values (made if new), for a site that keeps it."""
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = self._empty[:]
        return cell

    def observe(self, key: tuple[str, ...], value: float) -> None:
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = self._empty[:]
        cell[bisect_left(self.bounds, value)] += 1    # le: a value equal to a bound is in its bucket
        cell[-1] += value

    def samples(self) -> list[tuple[tuple[str, ...], list[Any]]]:
        return [(key, cell[:]) for key, cell in list(self.cells.items())]


class Observed:
    """A gauge (or a counter another object keeps) read at scrape time: each watched object is
    read by `read(obj)` into (label values, value) pairs; pairs with equal labels are added up
    (many legacy sessions of one server each have a pending table). Objects are held weakly:
    a session that ends drops out."""

    def __init__(self, name: str, help: str, labels: tuple[str, ...] = (), kind: str = "gauge") -> None:
        self.name = PREFIX + name
        self.help = help
        self.labels = labels
        self.kind = kind
        self._watched: weakref.WeakKeyDictionary[Any, Callable[[Any], Iterable[tuple[tuple[str, ...], float]]]] = \
            weakref.WeakKeyDictionary()

    def watch(self, obj: Any, read: Callable[[Any], Iterable[tuple[tuple[str, ...], float]]]) -> None:
        self._watched[obj] = read

    def samples(self) -> list[tuple[tuple[str, ...], float]]:
        totals: dict[tuple[str, ...], float] = {}
        for obj, read in list(self._watched.items()):
            for key, value in read(obj):
                totals[key] = totals.get(key, 0) + value
        return list(totals.items())


@dataclass(frozen=True)
class Sample:
    """One instrument's state at a scrape: what an exposition turns into its own format."""
    name: str
    help: str
    kind: str                    # "counter", "gauge" or "histogram"
    labels: tuple[str, ...]
    values: list[tuple[tuple[str, ...], Any]]
    bounds: tuple[float, ...] = ()


class Metrics:
    """The gateway's instruments (docs/observability.md, "Metrics", is their catalogue)."""

    def __init__(self) -> None:
        self.on = True
        # Requests
        self.requests = Counter(
            "requests", "Requests to a server, by how they ended: ok, error (with the JSON-RPC code), timeout "
            "(the server's timeout passed), refused (answered by the gateway without the server: policy, "
            "overload, server unavailable), cancelled (by the client)", ("server", "method", "outcome", "code"))
        self.upstream_seconds = Histogram(
            "upstream_request_duration_seconds", "Time from a request's being written to the server until its "
            "answer was read", ("server", "method"))
        self.gateway_seconds = Histogram(
            "gateway_duration_seconds", "Time the gateway added to a request: from the client's frame arriving "
            "until it was written to the server (decoding, auth, policy chain, queueing), or until the gateway "
            "answered it itself", ("server", "method"))
        self.in_flight = Observed("in_flight_requests", "Requests written to a server and not answered yet",
                                  ("server",))
        # Fronts
        self.received_bytes = Counter("received_bytes", "Bytes read from clients", ("front",))
        self.sent_bytes = Counter("sent_bytes", "Bytes written to clients", ("front",))
        self.sessions = Observed("sessions", "Client sessions open (stdio: the one; HTTP: legacy sessions; the "
                                 "modern era has none)", ("front", "era"))
        # Upstreams
        self.starts = Counter("upstream_starts", "Server processes started", ("server",))
        self.exits = Counter("upstream_exits", "Server processes that ended (or failed to start) while the gateway "
                             "was not shutting down", ("server",))
        self.crash_loops = Counter("upstream_crash_loops", "Times a server entered its crash-loop cooldown",
                                   ("server",))
        self.reconnects = Counter("upstream_reconnects", "HTTP upstreams reached again after being unreachable, and "
                                  "upstream sessions re-established", ("server",))
        # Policy
        self.cache = Counter("cache_lookups", "Policy cache lookups, by cache (list, result) and result (hit, miss)",
                             ("server", "cache", "result"))
        self.blocks = Counter("policy_blocks", "Requests or answers the policy chain refused, by interceptor "
                              "(auth: a project's tool rules, filter, pinning, schema, guardrails)",
                              ("server", "interceptor"))
        # Auth
        self.auth_failures = Counter("auth_failures", "Callers refused by auth, by reason (no_credentials, "
                                     "invalid_credentials, forbidden, address_blocked, unavailable)", ("reason",))
        self.rate_limited = Counter("rate_limited", "Requests refused by a rate limit, by project", ("project",))
        # Dumps
        self.dump_dropped = Observed("dump_dropped_frames", "Frames the dump writer dropped (its queue was full)",
                                     (), kind="counter")
        self.instruments: list[Counter | Histogram | Observed] = [
            self.requests, self.upstream_seconds, self.gateway_seconds, self.in_flight, self.received_bytes,
            self.sent_bytes, self.sessions, self.starts, self.exits, self.crash_loops, self.reconnects, self.cache,
            self.blocks, self.auth_failures, self.rate_limited, self.dump_dropped]

    def bound(self) -> Metrics | None:
        """What an object binds at construction: these instruments, or None with metrics off."""
        return self if self.on else None

    def snapshot(self) -> list[Sample]:
        """Every instrument's current values (on the trio thread)."""
        out = []
        for inst in self.instruments:
            bounds = inst.bounds if isinstance(inst, Histogram) else ()
            out.append(Sample(inst.name, inst.help, inst.kind, inst.labels, list(inst.samples()), bounds))
        return out

    # ---- the per-request facts (the upstreams' books: upstream/answers.py) ---------------------------

    @staticmethod
    def arrive() -> None:
        """A front took in client frames: their requests arrived now (ARRIVED)."""
        ARRIVED.set(time.perf_counter())

    def series(self, server: str, method: str | None) -> Series:
        """The instruments of `server`'s requests of `method`, for the upstream's books to keep."""
        return Series(self, server, method_label(method))

    def ended(self, server: str, method: str | None, outcome: str, code: int | None = None) -> None:
        """A request that got no answer from the server: `outcome` is error (a gateway error, with
        its code), timeout, refused or cancelled."""
        self.requests.inc((server, method_label(method), outcome, "" if code is None else code_label(code)))

    def answered_here(self, server: str, method: str | None, outcome: str, code: int | None = None) -> None:
        """The gateway answered a request itself (a cache hit, a policy refusal): counted, and its
        whole time is the gateway's."""
        arrived = ARRIVED.get()
        if arrived:
            self.gateway_seconds.observe((server, method_label(method)), time.perf_counter() - arrived)
        self.ended(server, method, outcome, code)


class Series:
    """The per-request instruments of one server and method, found once (an upstream keeps one per
    method label): accounting for a request is then a few list and attribute updates, no lookup."""

    __slots__ = ("metrics", "server", "method", "gateway", "gateway_bounds", "upstream", "bounds", "ok")

    def __init__(self, metrics: Metrics, server: str, method: str) -> None:
        self.metrics = metrics
        self.server = server
        self.method = method
        self.gateway = metrics.gateway_seconds.cell(server, method)
        self.gateway_bounds = metrics.gateway_seconds.bounds
        self.upstream = metrics.upstream_seconds.cell(server, method)
        self.bounds = metrics.upstream_seconds.bounds
        self.ok = metrics.requests.cell(server, method, "ok", "")

    def forwarded(self) -> float:
        """A request is being written to the server: the gateway's time on it so far is observed (if a
        front stamped its arrival). Returns now, the start of its upstream time."""
        now = time.perf_counter()
        arrived = ARRIVED.get()
        if arrived:
            took = now - arrived
            cell = self.gateway
            cell[bisect_left(self.gateway_bounds, took)] += 1    # le: a value equal to a bound is in its bucket
            cell[-1] += took
        return now

    def answered(self, sent: float, error: Any) -> None:
        """The server answered: `error` is the answer's error member (None for a result)."""
        if sent:
            took = time.perf_counter() - sent
            cell = self.upstream
            cell[bisect_left(self.bounds, took)] += 1
            cell[-1] += took
        if error is None:
            self.ok.value += 1
        else:
            self.metrics.requests.inc((self.server, self.method, "error",
                                       code_label(error.get("code") if type(error) is dict else None)))


METRICS = Metrics()


def configure(enabled: bool) -> None:
    """`telemetry.metrics`: call before the fronts and upstreams are made (they bind at construction)."""
    METRICS.on = enabled
