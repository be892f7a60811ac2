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


def assert_same_training(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor]) -> None:
    """The weights of two runs that took the same optimizer steps, one summing its batch in another order (two half
    batches and gloo's all-reduce). Rounding moves a weight by about 1e-9, except where AdamW divides a gradient that
    is itself rounding noise by its own size: such a weight may move by up to the learning rate, and how many there
    are depends on the CPU's kernels (1 in 241,664 in the tiny DDP test here, more elsewhere). A run whose ranks skip
    the all-reduce differs by about the learning rate in 96 % of its weights: a per-weight tolerance is not the test."""
    assert one.keys() == two.keys()
    differences = torch.cat([(one[name] - two[name]).abs().flatten() for name in one])
    apart = int((differences > 1e-5).sum())
    assert apart <= differences.numel() // 10_000, f"{apart} of {differences.numel()} weights differ by > 1e-5"
    assert differences.mean() < 1e-7, f"mean difference {differences.mean():.2e}"


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
