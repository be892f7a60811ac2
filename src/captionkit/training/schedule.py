"""Learning-rate schedule: a pure function of the step (linear warm-up, then cosine decay)."""

from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    >>> lr_at(0, 1.0, 10, 100), lr_at(9, 1.0, 10, 100), lr_at(99, 1.0, 10, 100, 0.0)
    (0.1, 1.0, 0.0)
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    floor = base_lr * min_lr_ratio
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
