"""A training run's directory as its readers see it, without torch: where its checkpoints are, which of them are
complete (a directory without ``COMPLETE`` is never loaded), and the latest. The trainer writes them
(:mod:`captionkit.training.checkpoint`); a loader names the latest when given a run that has no final model yet."""

from __future__ import annotations

import re
from pathlib import Path

CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"
_STEP_NAME = re.compile(r"step-(\d+)")


def is_complete(directory: str | Path) -> bool:
    return (Path(directory) / COMPLETE).is_file()


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def step_of(checkpoint: str | Path) -> int | None:
    """The step a ``step-N`` checkpoint's name says it was written at; None for another name."""
    match = _STEP_NAME.fullmatch(Path(checkpoint).name)
    return int(match.group(1)) if match else None


def step_checkpoints(root: str | Path) -> list[Path]:
    """The COMPLETE ``step-N`` checkpoints under ``root``, oldest first (by step); incomplete ones are left out."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        step = step_of(path)
        if step is not None and path.is_dir() and is_complete(path):
            found.append((step, path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    found = step_checkpoints(root)
    return found[-1] if found else None
