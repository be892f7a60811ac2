"""The progress line of a job that reports by lines rather than a bar (the Ray engine): images done of the total,
images per second since the start, and errors so far; at most one line every ``every`` seconds, and the last."""

from __future__ import annotations

import time
from collections.abc import Callable


class Throughput:
    """Counts images and errors; :meth:`add` gives the line when one is due."""

    def __init__(self, total: int, every: float = 10.0, clock: Callable[[], float] = time.perf_counter) -> None:
        self.total = total
        self.every = every
        self.clock = clock
        self.started = self.last = clock()
        self.images = 0
        self.errors = 0

    def add(self, images: int, errors: int) -> str | None:
        """Count a batch; the line when ``every`` seconds passed since the last one or the job is done."""
        self.images += images
        self.errors += errors
        now = self.clock()
        if self.images < self.total and now - self.last < self.every:
            return None
        self.last = now
        rate = self.images / max(now - self.started, 1e-9)
        errors_seen = f"{self.errors} error{'' if self.errors == 1 else 's'}"
        return f"{self.images}/{self.total} images, {rate:.1f} images/s, {errors_seen}"
