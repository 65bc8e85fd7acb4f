"""The service's Prometheus metrics, on `prometheus_client`.

Each app owns a `ServiceMetrics` with its own `CollectorRegistry` (never the global one), so
two apps in one process (tests) never see each other's numbers. The names and labels are the
ones dashboards already use:

    metaiqa_http_requests_total{route,method,status}      metaiqa_images_scored_total{model}
    metaiqa_http_request_duration_seconds{route}          metaiqa_scores{model}  (histograms)
    metaiqa_batch_size                                    metaiqa_queue_rejections_total
    metaiqa_client_aborts_total                           + the gauges the app adds (queue depth, ...)

plus what prometheus_client collects for free: `process_*` (CPU seconds, resident memory, open
file descriptors, start time; only where /proc exists, i.e. Linux), `python_info` and `python_gc_*`.
`/metrics` answers the Prometheus text format 0.0.4, or OpenMetrics when the scraper asks
for it in its Accept header.
"""

import logging
import math
from collections.abc import Callable, Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder

log = logging.getLogger("metaiqa.service.metrics")

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class _Labelled:
    """Keyword labels at the call site (`requests.inc(route=..., method=..., status=...)`) on a
    prometheus_client metric, so callers need not know the client's `.labels()` chaining."""

    def __init__(self, metric: Counter | Histogram):
        self.metric = metric

    def _child(self, labels: dict[str, str]):
        return self.metric.labels(**{k: str(v) for k, v in labels.items()}) if labels else self.metric


class _Counter(_Labelled):
    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._child(labels).inc(amount)


class _Histogram(_Labelled):
    def observe(self, value: float, **labels: str) -> None:
        self._child(labels).observe(value)


def _safe(name: str, fn: Callable[[], float]) -> Callable[[], float]:
    """A gauge read at scrape time; a failing callback reads NaN instead of breaking the scrape."""

    def read() -> float:
        try:
            return float(fn())
        except Exception as exc:  # any fault in a gauge callback
            log.warning("metric %s: callback failed (%s: %s); reporting NaN", name, type(exc).__name__, exc)
            return math.nan

    return read


class ServiceMetrics:
    """The service's metrics; the app creates one per instance."""

    def __init__(self, process_metrics: bool = True) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = self._counter(
            "metaiqa_http_requests", "HTTP requests by route template, method and status", ("route", "method", "status")
        )
        self.latency = _Histogram(Histogram("metaiqa_http_request_duration_seconds", "HTTP request latency",
                                            ("route",), buckets=LATENCY_BUCKETS, registry=r))
        self.scores = _Histogram(Histogram("metaiqa_scores", "predicted quality scores", ("model",),
                                           buckets=SCORE_BUCKETS, registry=r))
        self.images = self._counter("metaiqa_images_scored", "images scored", ("model",))
        self.batch_size = _Histogram(Histogram("metaiqa_batch_size", "images per model forward pass",
                                               buckets=BATCH_BUCKETS, registry=r))
        self.rejected = self._counter("metaiqa_queue_rejections", "requests refused because the queue was full")
        self.client_aborts = self._counter(
            "metaiqa_client_aborts", "requests abandoned by the client before its body arrived (status 499)"
        )
        if process_metrics:
            ProcessCollector(registry=r)  # yields nothing where the platform has no /proc
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    def _counter(self, name: str, doc: str, labelnames: Sequence[str] = ()) -> _Counter:
        return _Counter(Counter(name, doc, tuple(labelnames), registry=self.registry))

    def add_gauge(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        Gauge(name, doc, registry=self.registry).set_function(_safe(name, fn))

    def sample(self, name: str, **labels: str) -> float | None:
        """One sample's current value (e.g. `sample("metaiqa_images_scored_total", model="x")`), None if absent."""
        return self.registry.get_sample_value(name, labels)

    def render(self) -> str:
        """The text exposition format 0.0.4."""
        return generate_latest(self.registry).decode("utf-8")

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) in the format the scraper's Accept header asks for (0.0.4 by default)."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type
