"""The service's numbers, kept by ``prometheus_client`` and served by ``GET /metrics``.

Each :class:`ServiceMetrics` registers its series in a ``CollectorRegistry`` of its own (never
the library's global default registry), so that two apps built in one process (tests, a program
that embeds the service) keep separate numbers. ``/metrics`` answers in the Prometheus text
format 0.0.4.

With ``imrec serve --workers N`` (N > 1) each worker is a process of its own, and a scrape is
answered by whichever worker accepts the connection. The service then runs prometheus_client's
multiprocess mode: before the workers start, the parent creates a private temporary folder and
names it in ``$PROMETHEUS_MULTIPROC_DIR`` (:func:`multiprocess_dir`); each worker's metrics
write their values to memory-mapped files there, and :meth:`ServiceMetrics.render` merges the
files of all workers with ``MultiProcessCollector`` into a fresh registry at every scrape, so
that any worker reports the service's totals. Counters and histograms add up every worker that
ever ran (a replaced worker's requests still count); requests in flight add up the live workers
(``livesum``); the model info gauge is the largest over live workers (``livemax``: one series
with the same labels as with one process). The parent marks each worker that ends as dead and
removes the folder when the service stops (:mod:`imrec.serve.server`).

Example:
    >>> m = ServiceMetrics()
    >>> m.requests.labels(endpoint="/v1/predict", method="POST", status="200").inc()
    >>> m.value("imrec_requests_total", endpoint="/v1/predict", method="POST", status="200")
    1.0
    >>> 'imrec_requests_total{endpoint="/v1/predict",method="POST",status="200"} 1.0' in m.render()
    True
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector

# What generate_latest writes (prometheus_client's CONTENT_TYPE_LATEST names a newer version).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Request latency in seconds: fine steps where the service should live (1 to 50 ms).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class ServiceMetrics:
    """Everything ``GET /metrics`` reports, in a registry of its own.

    In multiprocess mode (``$PROMETHEUS_MULTIPROC_DIR`` set when prometheus_client was first
    imported, as in each worker of ``imrec serve --workers N``), :meth:`render` reports the
    totals of all the processes that write into that folder.

    Example:
        >>> a, b = ServiceMetrics(), ServiceMetrics()  # no clash: one registry each
        >>> a.errors.labels(kind="not_an_image").inc(2)
        >>> [m.value("imrec_errors_total", kind="not_an_image") for m in (a, b)]
        [2.0, 0.0]
    """

    def __init__(self):
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        if self.multiprocess_dir and values.ValueClass is values.MutexValue:
            raise RuntimeError(
                f"${MULTIPROC_ENV} was set after prometheus_client was imported: the metrics "
                "would stay in this process; set it before the process starts"
            )
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "imrec_requests_total", "HTTP requests by endpoint, method and status code.",
            ("endpoint", "method", "status"), registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "imrec_request_duration_seconds", "Time from request start to response end.",
            ("endpoint",), buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "imrec_requests_in_flight", "Requests being handled now, by endpoint.", ("endpoint",),
            multiprocess_mode="livesum", registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "imrec_errors_total", "Error responses by kind.", ("kind",), registry=r
        )
        self.rejected = Counter(
            "imrec_rejected_requests_total",
            "Requests refused before the model by reason: unauthorized, invalid_token, "
            "token_in_query, rate_limited, upload_too_large, too_many_files, image_too_large.",
            ("reason",), registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "imrec_batch_size", "Images per model call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.images = Counter(
            "imrec_images_predicted_total", "Images the model predicted.", registry=r
        )
        self.info = Gauge(
            "imrec_model_info", "The model served.", ("name", "version", "task", "backend"),
            multiprocess_mode="livemax", registry=r,
        )  # fmt: skip

    def reject(self, reason: str) -> None:
        """Count a refused request (also an error response of that kind)."""
        self.rejected.labels(reason=reason).inc()
        self.errors.labels(kind=reason).inc()

    def render(self) -> str:
        """The exposition text of every metric (all workers' totals in multiprocess mode)."""
        registry = self.registry
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry).decode("utf-8")

    def value(self, name: str, **labels: object) -> float:
        """This process's value of one sample, e.g. ``imrec_batch_size_count`` (0 if unseen).

        Example:
            >>> ServiceMetrics().value("imrec_requests_in_flight", endpoint="/v1/predict")
            0.0
        """
        found = self.registry.get_sample_value(name, {k: str(v) for k, v in labels.items()})
        return 0.0 if found is None else found


@contextlib.contextmanager
def multiprocess_dir() -> Iterator[str]:
    """A fresh private folder for the workers' metric files, named in ``$PROMETHEUS_MULTIPROC_DIR``
    while the block runs (start the worker processes inside it); removed after, and the variable
    restored.

    Example:
        >>> with multiprocess_dir() as path:
        ...     os.environ[MULTIPROC_ENV] == path and os.path.isdir(path)
        True
        >>> os.path.exists(path)
        False
    """
    path = tempfile.mkdtemp(prefix="imrec-metrics-")  # readable by this user only
    before = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        if before is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = before
        shutil.rmtree(path, ignore_errors=True)
