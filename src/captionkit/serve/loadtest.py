"""A small, bounded load generator for ``POST /v1/captions``: latency percentiles, error rate, throughput.

Used by ``benchmarks/bench_serve.py`` and the smoke test; it sends exactly ``requests`` requests with
``concurrency`` in flight and gives up on any one after ``timeout_s``, so a run is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class LoadReport:
    requests: int
    concurrency: int
    errors: int
    statuses: dict[int, int]
    p50_ms: float
    p95_ms: float
    seconds: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def throughput(self) -> float:
        """Successful requests per second."""
        return (self.requests - self.errors) / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (
            f"{self.requests} requests at concurrency {self.concurrency}: p50 {self.p50_ms:.1f} ms, "
            f"p95 {self.p95_ms:.1f} ms, errors {self.error_rate:.1%}, {self.throughput:.1f} req/s"
        )


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in [0, 1]); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def run_load(
    url: str,
    image: bytes,
    params: dict[str, str] | None = None,
    requests: int = 64,
    concurrency: int = 8,
    timeout_s: float = 30.0,
) -> LoadReport:
    """Send ``requests`` single-image captioning requests to ``url`` (the server's base URL)."""
    return asyncio.run(_run(url.rstrip("/") + "/v1/captions", image, params or {}, requests, concurrency, timeout_s))


async def _run(
    endpoint: str, image: bytes, params: dict[str, str], requests: int, concurrency: int, timeout_s: float
) -> LoadReport:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    todo = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        for _ in todo:  # a shared iterator: each request is sent by exactly one loop
            started = time.perf_counter()
            try:
                response = await client.post(endpoint, files={"image": ("load.jpg", image)}, data=params)
                status = response.status_code
            except httpx.HTTPError:
                status = 0  # no answer: connection refused, reset or timed out
            statuses[status] += 1
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    errors = sum(count for status, count in statuses.items() if status != 200)
    return LoadReport(
        requests=requests,
        concurrency=concurrency,
        errors=errors,
        statuses=dict(statuses),
        p50_ms=percentile(latencies, 0.50),
        p95_ms=percentile(latencies, 0.95),
        seconds=seconds,
    )
