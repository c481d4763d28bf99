"""`telemetry.otlp_metrics`: the same metrics pushed over OTLP by the OpenTelemetry SDK.

A `MeterProvider` with a `PeriodicExportingMetricReader` and the OTLP/HTTP exporter, both
configured by the standard environment variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, `..._HEADERS`, `OTEL_METRIC_EXPORT_INTERVAL`, ...). Its
instruments are observable ones whose callbacks read the gateway's own (telemetry/metrics.py),
so the hot path is the same with or without OTLP.

The reader calls back from its own thread, and the instruments belong to the trio thread: the
first callback of an export asks the trio thread for a snapshot (`trio.from_thread`), the others
of that export read the same one. The OTel API has no observable histogram, so a histogram goes
out as Prometheus does it: observable counters `<name>_bucket` (with `le`, cumulative),
`<name>_sum` and `<name>_count`.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import trio
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from wire_gateway.telemetry.metrics import METRICS, Metrics, Sample

log = logging.getLogger("wire_gateway.telemetry")

FRESH = 1.0     # seconds a snapshot serves the callbacks of one export


class _Snapshots:
    """The instruments' values for the exporter's thread, taken on the trio thread."""

    def __init__(self, metrics: Metrics, token: trio.lowlevel.TrioToken | None) -> None:
        self.metrics = metrics
        self.token = token
        self._trio_thread = threading.get_ident()    # made on the trio thread
        self._lock = threading.Lock()
        self._taken = float("-inf")
        self._by_name: dict[str, Sample] = {}

    def get(self, name: str) -> Sample | None:
        with self._lock:
            now = time.monotonic()
            if now - self._taken > FRESH:
                self._by_name = {s.name: s for s in self._take()}
                self._taken = now
            return self._by_name.get(name)

    def _take(self) -> list[Sample]:
        if self.token is not None and threading.get_ident() != self._trio_thread:
            try:
                return trio.from_thread.run_sync(self.metrics.snapshot, trio_token=self.token)
            except trio.RunFinishedError:   # the final export at shutdown: nothing updates them any more
                self.token = None
        return self.metrics.snapshot()


def _attrs(labels: tuple[str, ...], key: tuple[str, ...]) -> dict[str, str]:
    return dict(zip(labels, key))


class OtlpMetrics:
    """The provider and its reader; `shutdown()` sends a last export."""

    def __init__(self, token: trio.lowlevel.TrioToken | None, metrics: Metrics = METRICS,
                 exporter: Any = None) -> None:
        self.snapshots = _Snapshots(metrics, token)
        reader = PeriodicExportingMetricReader(exporter if exporter is not None else OTLPMetricExporter())
        self.provider = MeterProvider(metric_readers=[reader],
                                      resource=Resource.create({"service.name": "wire-gateway"}))
        meter = self.provider.get_meter("wire_gateway")
        for inst in metrics.instruments:
            name, desc = inst.name, inst.help
            if inst.kind == "histogram":
                meter.create_observable_counter(name + "_bucket", [self._buckets(name)], description=desc)
                meter.create_observable_counter(name + "_sum", [self._field(name, -1)], unit="s", description=desc)
                meter.create_observable_counter(name + "_count", [self._field(name, None)], description=desc)
            elif inst.kind == "counter":
                meter.create_observable_counter(name + "_total", [self._values(name)], description=desc)
            else:
                meter.create_observable_gauge(name, [self._values(name)], description=desc)

    def _values(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def read(_options: CallbackOptions) -> Iterable[Observation]:
            sample = self.snapshots.get(name)
            if sample is None:
                return []
            return [Observation(value, _attrs(sample.labels, key)) for key, value in sample.values]
        return read

    def _field(self, name: str, index: int | None) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """A histogram's sum (index -1) or count (None: the buckets added up)."""
        def read(_options: CallbackOptions) -> Iterable[Observation]:
            sample = self.snapshots.get(name)
            if sample is None:
                return []
            return [Observation(cell[index] if index is not None else sum(cell[:-1]), _attrs(sample.labels, key))
                    for key, cell in sample.values]
        return read

    def _buckets(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def read(_options: CallbackOptions) -> Iterable[Observation]:
            sample = self.snapshots.get(name)
            if sample is None:
                return []
            out = []
            les = [repr(b) for b in sample.bounds] + ["+Inf"]
            for key, cell in sample.values:
                running = 0
                attrs = _attrs(sample.labels, key)
                for le, count in zip(les, cell):
                    running += count
                    out.append(Observation(running, {**attrs, "le": le}))
            return out
        return read

    def shutdown(self) -> None:
        try:
            self.provider.shutdown()
        except Exception:      # an exporter that cannot reach its collector must not fail the exit
            log.warning("OTLP metrics: the last export failed", exc_info=True)


def start(enabled: bool) -> OtlpMetrics | None:
    """`telemetry.otlp_metrics`: call from inside the trio run (its token is how the exporter's
    thread reads the instruments)."""
    if not enabled or not METRICS.on:
        return None
    return OtlpMetrics(trio.lowlevel.current_trio_token())
