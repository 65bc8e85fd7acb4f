"""A small Prometheus registry (text exposition format 0.0.4), so the service needs no extra package.

Only what the service uses: labelled counters, histograms and callback gauges, thread-safe.
Each app owns its own `Registry`, so tests never see another app's numbers.
"""

import bisect
import math
import threading
from collections.abc import Callable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SCORE_BUCKETS = tuple(round(0.1 * i, 1) for i in range(1, 11))
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


class _Metric:
    kind = ""

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = ()):
        self.name, self.doc, self.labelnames = name, doc, tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels {sorted(labels)} != {sorted(self.labelnames)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.doc}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._values: dict[tuple[str, ...], float] = {} if self.labelnames else {(): 0.0}

    def header(self) -> list[str]:
        return [f"# HELP {self.name}_total {self.doc}", f"# TYPE {self.name}_total counter"]

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}_total{_labels(self.labelnames, k)} {_num(v)}" for k, v in items]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, doc: str, buckets: Sequence[float], labelnames: Sequence[str] = ()):
        super().__init__(name, doc, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[tuple[str, ...], list] = {}  # key -> [counts per bucket + inf, sum]

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        idx = bisect.bisect_left(self.buckets, value)
        with self._lock:
            series = self._series.setdefault(key, [[0] * (len(self.buckets) + 1), 0.0])
            series[0][idx] += 1
            series[1] += value

    def count(self, **labels: str) -> int:
        series = self._series.get(self._key(labels))
        return sum(series[0]) if series else 0

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            items = sorted((k, (list(v[0]), v[1])) for k, v in self._series.items())
        for key, (counts, total) in items:
            running = 0
            for bound, c in zip((*self.buckets, math.inf), counts, strict=True):
                running += c
                le = 'le="' + _num(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_num(total)}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {running}")
        return lines


class CallbackGauge(_Metric):
    """A gauge read at scrape time (queue depth, loaded models)."""

    kind = "gauge"

    def __init__(self, name: str, doc: str, fn: Callable[[], float]):
        super().__init__(name, doc)
        self.fn = fn

    def render(self) -> list[str]:
        try:
            value = float(self.fn())
        except Exception:  # a broken gauge must not break the scrape
            value = math.nan
        return self.header() + [f"{self.name} {_num(value) if not math.isnan(value) else 'NaN'}"]


class Registry:
    def __init__(self) -> None:
        self._metrics: list[_Metric] = []

    def add(self, metric: _Metric) -> _Metric:
        if any(m.name == metric.name for m in self._metrics):
            raise ValueError(f"metric {metric.name!r} registered twice")
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        return "\n".join(line for m in self._metrics for line in m.render()) + "\n"


class ServiceMetrics:
    """The service's metrics; the app creates one per instance."""

    def __init__(self) -> None:
        self.registry = Registry()
        r = self.registry
        self.requests = r.add(
            Counter("metaiqa_http_requests", "HTTP requests by route template, method and status", ("route", "method", "status"))
        )
        self.latency = r.add(
            Histogram("metaiqa_http_request_duration_seconds", "HTTP request latency", LATENCY_BUCKETS, ("route",))
        )
        self.scores = r.add(Histogram("metaiqa_scores", "predicted quality scores", SCORE_BUCKETS, ("model",)))
        self.images = r.add(Counter("metaiqa_images_scored", "images scored", ("model",)))
        self.batch_size = r.add(Histogram("metaiqa_batch_size", "images per model forward pass", BATCH_BUCKETS))
        self.rejected = r.add(Counter("metaiqa_queue_rejections", "requests refused because the queue was full"))
        self.client_aborts = r.add(
            Counter("metaiqa_client_aborts", "requests abandoned by the client before its body arrived (status 499)")
        )

    def add_gauge(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        self.registry.add(CallbackGauge(name, doc, fn))

    def render(self) -> str:
        return self.registry.render()
