"""What the exact-resume tests share: a run's final weights, its log without timings, and a crash mid-run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from captionkit.config import TrainConfig
from captionkit.training.loop import train


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def untimed(history: list[dict]) -> list[dict]:
    """Log entries without their timings: everything else must repeat exactly."""
    return [
        {k: v for k, v in entry.items() if k not in ("seconds", "images_per_second", "step_seconds")}
        for entry in history
    ]


def crash_at(step: int, config: TrainConfig, out: Path) -> None:
    """Train until the log entry of ``step``, then raise inside the loop (an in-process crash)."""

    def crash(entry: dict) -> None:
        if entry["step"] == step:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, out, log=crash)
