"""The metrics in Prometheus' text format, for `GET /metrics` on the admin port.

prometheus-client writes the format (escaping, `_total`, `_bucket`/`le`, `# HELP`/`# TYPE`); the
gateway's instruments stay its own cheap ones (telemetry/metrics.py). A custom `Collector` turns
them into metric families at scrape time, on a private registry, so nothing of prometheus-client's
runs on the hot path and its process-wide default registry is left alone.
"""
from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from wire_gateway.telemetry.metrics import METRICS, Metrics

CONTENT_TYPE = CONTENT_TYPE_LATEST


class GatewayCollector:
    """A prometheus-client collector reading `metrics` when it is scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for sample in self.metrics.snapshot():
            labels = list(sample.labels)
            family: Metric
            if sample.kind == "histogram":
                hist = HistogramMetricFamily(sample.name, sample.help, labels=labels)
                les = [floatToGoString(b) for b in sample.bounds] + ["+Inf"]
                for key, cell in sample.values:
                    buckets, running = [], 0
                    for le, count in zip(les, cell):
                        running += count
                        buckets.append((le, running))
                    hist.add_metric(list(key), buckets, cell[-1])
                family = hist
            elif sample.kind == "counter":
                family = CounterMetricFamily(sample.name, sample.help, labels=labels)
                for key, value in sample.values:
                    family.add_metric(list(key), value)
            else:
                family = GaugeMetricFamily(sample.name, sample.help, labels=labels)
                for key, value in sample.values:
                    family.add_metric(list(key), value)
            yield family


def make_registry(metrics: Metrics = METRICS) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(metrics))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text a scrape gets (call on the trio thread: the instruments are read here)."""
    return generate_latest(registry)
