"""The service's numbers in the Prometheus text exposition format (version 0.0.4).

Written here rather than taken from ``prometheus_client``: the service needs three kinds of
series (counters, histograms, one info gauge), all updated from the event loop's thread, and
the format is a few lines of text; a dependency would bring a global registry and
multiprocess machinery this service does not use. With ``--workers N`` each worker process
keeps its own numbers, and a scrape of ``/metrics`` sees the process that answered it.

Example:
    >>> m = ServiceMetrics()
    >>> m.requests.inc(endpoint="/v1/predict", method="POST", status="200")
    >>> 'imrec_requests_total{endpoint="/v1/predict",method="POST",status="200"} 1' in m.render()
    True
"""

from __future__ import annotations

import bisect
import math

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Request latency in seconds: fine steps where the service should live (1 to 50 ms).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return str(int(x)) if float(x).is_integer() else repr(float(x))


class Counter:
    """A monotonically increasing count per label combination.

    Example:
        >>> c = Counter("x_total", "Things.", ("kind",))
        >>> c.inc(kind="a"); c.inc(2, kind="a")
        >>> c.value(kind="a")
        3
    """

    kind = "counter"

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...] = ()):
        self.name, self.help, self.labelnames = name, help, labelnames
        self._values: dict[tuple[str, ...], float] = {} if labelnames else {(): 0}

    def _key(self, labels: dict[str, object]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def inc(self, amount: float = 1, **labels: object) -> None:
        """Add ``amount`` (>= 0) to the series named by ``labels``."""
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0) + amount

    def value(self, **labels: object) -> float:
        """The current count of one series (0 if it was never touched)."""
        return self._values.get(self._key(labels), 0)

    def samples(self) -> list[str]:
        return [
            f"{self.name}{_labels(self.labelnames, key)} {_number(v)}"
            for key, v in sorted(self._values.items())
        ]


class Gauge(Counter):
    """A value that can go up and down (requests in flight; 1 for the model's info labels)."""

    kind = "gauge"

    def set(self, value: float, **labels: object) -> None:
        """Set the series named by ``labels`` to ``value``."""
        self._values[self._key(labels)] = value

    def dec(self, amount: float = 1, **labels: object) -> None:
        """Subtract ``amount`` from the series named by ``labels``."""
        self.inc(-amount, **labels)


class Histogram:
    """Observations counted into cumulative ``le`` buckets, with their sum and count.

    Example:
        >>> h = Histogram("t_seconds", "Time.", (0.1, 1.0))
        >>> h.observe(0.5)
        >>> h.samples()[:2]
        ['t_seconds_bucket{le="0.1"} 0', 't_seconds_bucket{le="1"} 1']
    """

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: tuple[float, ...], labelnames=()):
        self.name, self.help, self.labelnames = name, help, tuple(labelnames)
        self.bounds = tuple(sorted(buckets)) + (math.inf,)
        # Per series: [count in each bucket (not cumulative), sum of observations].
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: object) -> None:
        """Count one observation into its bucket."""
        key = tuple(str(labels[n]) for n in self.labelnames)
        counts, total = self._series.setdefault(key, ([0] * len(self.bounds), [0.0]))
        counts[bisect.bisect_left(self.bounds, value)] += 1  # first bound >= value
        total[0] += value

    def count(self, **labels: object) -> int:
        """How many observations one series holds."""
        counts, _ = self._series.get(tuple(str(labels[n]) for n in self.labelnames), ([0], [0]))
        return sum(counts)

    def samples(self) -> list[str]:
        lines = []
        for key, (counts, total) in sorted(self._series.items()):
            running = 0
            for bound, n in zip(self.bounds, counts, strict=True):
                running += n
                le = f'le="{_number(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.labelnames, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.labelnames, key)} {_number(total[0])}")
            lines.append(f"{self.name}_count{_labels(self.labelnames, key)} {running}")
        return lines


class ServiceMetrics:
    """Everything ``GET /metrics`` reports. Updated only from the event loop's thread."""

    def __init__(self):
        self.requests = Counter(
            "imrec_requests_total", "HTTP requests by endpoint, method and status code.",
            ("endpoint", "method", "status"),
        )  # fmt: skip
        self.latency = Histogram(
            "imrec_request_duration_seconds", "Time from request start to response end.",
            LATENCY_BUCKETS, ("endpoint",),
        )  # fmt: skip
        self.in_flight = Gauge(
            "imrec_requests_in_flight", "Requests being handled now, by endpoint.", ("endpoint",)
        )
        self.errors = Counter("imrec_errors_total", "Error responses by kind.", ("kind",))
        self.batch_size = Histogram("imrec_batch_size", "Images per model call.", BATCH_BUCKETS)
        self.images = Counter("imrec_images_predicted_total", "Images the model predicted.")
        self.info = Gauge("imrec_model_info", "The model served.", ("name", "version", "task", "backend"))  # fmt: skip

    def render(self) -> str:
        """The exposition text of every metric, ending with a newline."""
        lines = []
        for metric in (self.requests, self.latency, self.in_flight, self.errors, self.batch_size, self.images,
                       self.info):  # fmt: skip
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            lines.extend(metric.samples())
        return "\n".join(lines) + "\n"
