"""How many CPUs this process may use: what worker counts, thread checks and defaults are sized by."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity where the system has one (a container's or taskset's share,
    as torch's loader counts them), else every CPU of the machine."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1
