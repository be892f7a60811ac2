"""Learning-rate schedule: a pure function of the step (linear warm-up, then cosine, linear or no decay).

Being a function of the step alone, the schedule needs no state of its own: a resumed run recomputes it exactly.
"""

from __future__ import annotations

import math


def lr_at(
    step: int,
    base_lr: float,
    warmup_steps: int,
    total_steps: int,
    min_lr_ratio: float = 0.1,
    kind: str = "cosine",
) -> float:
    """Learning rate for optimizer step ``step`` (0-based); ``kind`` is "cosine", "linear" or "constant".

    >>> lr_at(0, 1.0, 10, 100), lr_at(9, 1.0, 10, 100), lr_at(99, 1.0, 10, 100, 0.0)
    (0.1, 1.0, 0.0)
    >>> lr_at(55, 1.0, 10, 101, 0.0, kind="linear")
    0.5
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return base_lr
    decay_steps = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    floor = base_lr * min_lr_ratio
    if kind == "linear":
        return floor + (base_lr - floor) * (1.0 - progress)
    if kind == "cosine":
        return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {kind!r} (known: cosine, linear, constant)")
