"""Prometheus metrics in the text exposition format (version 0.0.4), kept by hand: a few counters and histograms
need no client library.

``captionkit_http_requests_total{path,status}``, ``captionkit_http_request_duration_seconds{path}`` (histogram),
``captionkit_http_errors_total{path,status}`` (4xx and 5xx), ``captionkit_batch_size{model}`` (histogram of
images per model call), ``captionkit_batch_duration_seconds{model}``, ``captionkit_images_total{model}`` and
``captionkit_queue_images{model}`` (a gauge read when scraped). ``path`` is a route of this app or ``other``, so
clients cannot grow the label set by requesting random URLs.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

Labels = tuple[tuple[str, str], ...]


class Counter:
    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self.values: dict[Labels, float] = defaultdict(float)

    def inc(self, labels: Labels, amount: float = 1.0) -> None:
        self.values[labels] += amount

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(labels)} {_value(value)}"


class Histogram:
    def __init__(self, name: str, help: str, buckets: tuple[float, ...]) -> None:
        self.name, self.help, self.buckets = name, help, buckets
        self.counts: dict[Labels, list[int]] = defaultdict(lambda: [0] * (len(buckets) + 1))
        self.sums: dict[Labels, float] = defaultdict(float)

    def observe(self, labels: Labels, value: float) -> None:
        self.counts[labels][bisect.bisect_left(self.buckets, value)] += 1
        self.sums[labels] += value

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, counts in sorted(self.counts.items()):
            total = 0
            for bound, count in zip((*self.buckets, math.inf), counts, strict=True):
                total += count
                yield f"{self.name}_bucket{_labels((*labels, ('le', _value(bound))))} {total}"
            yield f"{self.name}_sum{_labels(labels)} {_value(self.sums[labels])}"
            yield f"{self.name}_count{_labels(labels)} {total}"


class Metrics:
    """The server's metrics; ``render()`` gives the ``/metrics`` body. Thread-safe (batches finish on threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = Counter("captionkit_http_requests_total", "HTTP requests by route and status.")
        self.errors = Counter("captionkit_http_errors_total", "HTTP requests answered 4xx or 5xx.")
        self.latency = Histogram(
            "captionkit_http_request_duration_seconds", "Time to answer a request.", LATENCY_BUCKETS
        )
        self.batch_size = Histogram("captionkit_batch_size", "Images per model call.", BATCH_BUCKETS)
        self.batch_time = Histogram("captionkit_batch_duration_seconds", "Time of one model call.", LATENCY_BUCKETS)
        self.images = Counter("captionkit_images_total", "Images captioned.")
        self.queue_gauges: dict[str, Callable[[], int]] = {}

    def record_request(self, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests.inc((("path", path), ("status", str(status))))
            if status >= 400:
                self.errors.inc((("path", path), ("status", str(status))))
            self.latency.observe((("path", path),), seconds)

    def record_batch(self, model: str, size: int, seconds: float) -> None:
        with self._lock:
            self.batch_size.observe((("model", model),), size)
            self.batch_time.observe((("model", model),), seconds)
            self.images.inc((("model", model),), size)

    def render(self) -> str:
        with self._lock:
            lines = [
                line
                for metric in (self.requests, self.errors, self.latency, self.batch_size, self.batch_time, self.images)
                for line in metric.lines()
            ]
        lines += ["# HELP captionkit_queue_images Images waiting per model.", "# TYPE captionkit_queue_images gauge"]
        lines += [
            f"captionkit_queue_images{_labels((('model', m),))} {read()}" for m, read in self.queue_gauges.items()
        ]
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """ASGI middleware timing every HTTP request and counting its status under a bounded ``path`` label."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: Callable[[], frozenset[str]]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.record_request(self._label(scope["path"]), status, time.perf_counter() - started)

    def _label(self, path: str) -> str:
        if path in self.paths():
            return path
        return "/static" if path.startswith("/static/") else "other"


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    escaped = (f'{key}="{_escape(value)}"' for key, value in labels)
    return "{" + ",".join(escaped) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(number: float) -> str:
    if number == math.inf:
        return "+Inf"
    return str(int(number)) if float(number).is_integer() else repr(float(number))
