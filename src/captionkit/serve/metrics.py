"""Prometheus metrics through ``prometheus-client``, one registry per app (two apps in a process never collide).

``captionkit_http_requests_total{path,status}``, ``captionkit_http_request_duration_seconds{path}`` (histogram),
``captionkit_http_errors_total{path,status}`` (4xx and 5xx), ``captionkit_batch_size{model}`` (histogram of
images per model call), ``captionkit_batch_duration_seconds{model}``, ``captionkit_images_total{model}`` and
``captionkit_queue_images{model}`` (a gauge read when scraped), plus the client's standard ``process_*``,
``python_gc_*`` and ``python_info`` series. ``path`` is a route of this app or ``other``, so clients cannot grow the
label set by requesting random URLs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    """The server's metrics in their own registry; ``render()`` gives the ``/metrics`` body. The client's metrics
    are thread-safe (batches finish on threads)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # The process and Python collectors read this process's state: the default registry's instances serve as
        # well as new ones, and registering them again here keeps /metrics to this app's registry alone.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self.requests = Counter(
            "captionkit_http_requests", "HTTP requests by route and status.", ("path", "status"), registry=self.registry
        )
        self.errors = Counter(
            "captionkit_http_errors", "HTTP requests answered 4xx or 5xx.", ("path", "status"), registry=self.registry
        )
        self.latency = Histogram(
            "captionkit_http_request_duration_seconds",
            "Time to answer a request.",
            ("path",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.connection_refusals = Counter(
            "captionkit_http_connection_refusals",
            "Connections answered before any request reached the app: 400 (a request HTTP cannot parse), 408 (head "
            "not received in time), 503 (too many connections open).",
            ("status",),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "captionkit_batch_size", "Images per model call.", ("model",), buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.batch_time = Histogram(
            "captionkit_batch_duration_seconds",
            "Time of one model call.",
            ("model",),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter("captionkit_images", "Images captioned.", ("model",), registry=self.registry)
        self.queue = Gauge("captionkit_queue_images", "Images waiting per model.", ("model",), registry=self.registry)

    def watch_queue(self, model: str, read: Callable[[], int]) -> None:
        """Report ``read()`` as the model's queue length whenever /metrics is scraped."""
        self.queue.labels(model=model).set_function(read)

    def record_request(self, path: str, status: int, seconds: float) -> None:
        self.requests.labels(path=path, status=str(status)).inc()
        if status >= 400:
            self.errors.labels(path=path, status=str(status)).inc()
        self.latency.labels(path=path).observe(seconds)

    def record_batch(self, model: str, size: int, seconds: float) -> None:
        self.batch_size.labels(model=model).observe(size)
        self.batch_time.labels(model=model).observe(seconds)
        self.images.labels(model=model).inc(size)

    def render(self) -> str:
        return generate_latest(self.registry).decode("utf-8")


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
            self.metrics.record_request(self._label(_route_path(scope)), status, time.perf_counter() - started)

    def _label(self, path: str) -> str:
        if path in self.paths():
            return path
        return "/static" if path.startswith("/static/") else "other"


def _route_path(scope: Scope) -> str:
    """The request's path without the prefix a reverse proxy serves the app under (the ASGI ``root_path``, which
    ``path`` includes)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :]
    return path
