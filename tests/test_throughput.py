"""The Ray engine's progress line: images of the total, images/s since the start, errors; one every N seconds."""

from __future__ import annotations

from captionkit.jobs.throughput import Throughput


def test_a_line_every_interval_and_at_the_end_with_rate_and_errors():
    now = [100.0]
    throughput = Throughput(50, every=10.0, clock=lambda: now[0])
    now[0] = 104.0
    assert throughput.add(16, 0) is None  # 4 s: not due
    now[0] = 110.0
    assert throughput.add(16, 1) == "32/50 images, 3.2 images/s, 1 error"
    now[0] = 112.0
    assert throughput.add(16, 2) is None
    now[0] = 120.0
    assert throughput.add(2, 0) == "50/50 images, 2.5 images/s, 3 errors"  # the last batch: always a line
