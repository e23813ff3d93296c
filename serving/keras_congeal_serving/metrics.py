"""Hand-written Prometheus text exposition (format 0.0.4).

Why not prometheus-client: the service runs one process with a handful of
metrics, so ~100 lines cover counters, a gauge and histograms without another
dependency, without its global default registry (tests create several apps in
one process) and without its multiprocess mode, which a single uvicorn worker
does not need. Scale out with more processes/replicas, each scraped on its own.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

__all__ = ["Counter", "Gauge", "Histogram", "Registry", "ServiceMetrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()):
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict) -> tuple:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {sorted(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def header(self) -> list[str]:
        return [
            f"# HELP {self.name} {self.documentation}",
            f"# TYPE {self.name} {self.kind}",
        ]


class Counter(_Metric):
    """A monotonically increasing count, optionally labelled."""

    kind = "counter"

    def __init__(self, name, documentation, labelnames=()):
        super().__init__(name, documentation, labelnames)
        self._values: dict[tuple, float] = {} if labelnames else {(): 0.0}

    def inc(self, amount: float = 1, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels) -> float:
        return self._values.get(self._key(labels), 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [
            f"{self.name}{_labels(self.labelnames, key)} {_number(v)}" for key, v in items
        ]


class Gauge(Counter):
    """A value that goes up and down."""

    kind = "gauge"

    def set(self, value: float, **labels) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)


class Histogram(_Metric):
    """Cumulative buckets, `_sum` and `_count` (no labels)."""

    kind = "histogram"

    def __init__(self, name, documentation, buckets: Iterable[float]):
        super().__init__(name, documentation)
        self.buckets = tuple(sorted(set(float(b) for b in buckets))) + (math.inf,)
        self._counts = [0] * len(self.buckets)
        self._sum = 0.0
        self._count = 0

    def observe(self, value: float) -> None:
        with self._lock:
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    self._counts[i] += 1
                    break
            self._sum += value
            self._count += 1

    @property
    def count(self) -> int:
        return self._count

    def lines(self) -> list[str]:
        with self._lock:
            counts, total, count = list(self._counts), self._sum, self._count
        out = self.header()
        cumulative = 0
        for bound, c in zip(self.buckets, counts, strict=True):
            cumulative += c
            out.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {cumulative}')
        out.append(f"{self.name}_sum {_number(total)}")
        out.append(f"{self.name}_count {count}")
        return out


class Registry:
    """Holds metrics in registration order and renders them."""

    def __init__(self):
        self._metrics: list[_Metric] = []

    def register(self, metric: _Metric) -> _Metric:
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        lines = []
        for metric in self._metrics:
            lines.extend(metric.lines())
        return "\n".join(lines) + "\n"


# === The service's metrics ===


class ServiceMetrics:
    """The service's Prometheus metrics."""

    def __init__(self, max_batch: int):
        self.registry = Registry()
        r = self.registry.register
        self.requests = r(
            Counter(
                "keras_congeal_requests_total",
                "HTTP requests by handler and status.",
                ("handler", "status"),
            )
        )
        self.images = r(Counter("keras_congeal_images_total", "Images aligned and returned."))
        self.latency = r(
            Histogram(
                "keras_congeal_request_duration_seconds",
                "Latency of POST /v1/align (all statuses), seconds.",
                _LATENCY_BUCKETS,
            )
        )
        buckets = sorted({1, max_batch, *(2**i for i in range(max_batch.bit_length()))})
        self.batch_size = r(
            Histogram(
                "keras_congeal_batch_size",
                "Images per onnxruntime call (micro-batch size).",
                [b for b in buckets if b <= max_batch],
            )
        )
        self.inference = r(
            Histogram(
                "keras_congeal_inference_duration_seconds",
                "Duration of one onnxruntime call, seconds.",
                _LATENCY_BUCKETS,
            )
        )
        self.queued = r(Gauge("keras_congeal_queued_images", "Images waiting for the model."))
        self.info = r(
            Gauge(
                "keras_congeal_model_info",
                "The served model (value is always 1).",
                ("model_version", "model_sha256", "transform", "providers", "serving_version"),
            )
        )

    def render(self) -> str:
        return self.registry.render()
