"""Resuming a run: which checkpoint to continue from, and what a training checkpoint holds beyond the model.

A training checkpoint holds the loop's position (:class:`LoopState`), the optimizer's moments, the gradient scaler,
every process's RNG states and the config. Restored, a run continues exactly where the saved one was.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from captionkit import __version__
from captionkit.config import TrainConfig
from captionkit.errors import ConfigError, InputError
from captionkit.training import checkpoint as ckpt
from captionkit.training.setup import Setup
from captionkit.training.state import load_optimizer_state, optimizer_state, restore_rng

logger = logging.getLogger("captionkit.training")

# Config keys a resumed run may change without being a different run.
RESUMABLE_CHANGES = (
    "train.steps",
    "train.max_seconds",
    "train.threads",
    "train.log_every",
    "train.patience",
    "train.eval_every",
    "train.eval_images",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.tensorboard",
    "train.device",
    "train.compile",
    "data.workers",
)
RngStates = list[tuple[dict[str, Any], dict[str, torch.Tensor]]]


@dataclass
class LoopState:
    """Where the loop is; saved in every checkpoint's trainer_state.json."""

    step: int = 0
    cursor: int = 0  # samples of the endless data stream consumed (sampling.py)
    running_loss: float = 0.0
    seconds: float = 0.0
    skipped: int = 0
    unreadable: dict[str, str] = field(default_factory=dict)  # image path -> reason
    best: float | None = None
    evals_since_best: int = 0
    val: dict[str, float | None] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    # SCST: running means of reward, reward_baseline, sample_length and entropy (like running_loss).
    scst: dict[str, float] = field(default_factory=dict)


def find_resume_checkpoint(config: TrainConfig, checkpoints: Path, resume: bool | None) -> Path | None:
    """The checkpoint to resume from: the newest COMPLETE one, if ``resume`` is None (auto) or True."""
    if resume is False:
        shutil.rmtree(checkpoints, ignore_errors=True)
        return None
    latest = ckpt.latest_checkpoint(checkpoints)
    if latest is None:
        if resume:
            raise InputError(checkpoints, "no complete checkpoint to resume from")
        return None
    saved = ckpt.read_training_state(latest)[0]["train_config"]
    changed = _changed_keys(saved, config.to_dict())
    if changed and not resume:
        raise ConfigError(
            changed[0],
            f"differs from the run in {checkpoints.parent}: pass --resume to continue it anyway, --no-resume to "
            "start over, or choose another output directory",
        )
    if changed:
        logger.info("resuming with changed settings: %s", ", ".join(changed))
    return latest


def _changed_keys(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        old, new = saved.get(key), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict) and key != "overrides":
            keys += _changed_keys(old, new, f"{name}.")
        elif old != new and name not in RESUMABLE_CHANGES:
            keys.append(name)
    return keys


def save_training_checkpoint(
    directory: Path,
    setup: Setup,
    config: TrainConfig,
    state: LoopState,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rng_states: RngStates,
) -> None:
    """A resumable checkpoint; ``rng_states`` holds every process's, in rank order."""
    # Rank 0's states under the plain names, those of other ranks (data parallel runs) under "rank{i}.".
    (rng, rng_tensors), others = rng_states[0], rng_states[1:]
    for rank, (_, tensors) in enumerate(others, start=1):
        rng_tensors = rng_tensors | {f"rank{rank}.{name}": value for name, value in tensors.items()}
    optimizer_plain, optimizer_tensors = optimizer_state(optimizer)
    trainer_state = {
        "loop": dataclasses.asdict(state),
        "rng": rng,
        "rng_other_ranks": [plain for plain, _ in others],
        "optimizer": optimizer_plain,
        "grad_scaler": scaler.state_dict(),
        "train_config": config.to_dict(),
        "captionkit_version": __version__,
    }
    was_training = setup.model.training
    setup.model.eval()
    ckpt.save_checkpoint(
        directory,
        setup.model,
        setup.tokenizer,
        setup.preprocessing,
        config.to_dict(),
        trainer_state,
        rng_tensors | optimizer_tensors,
    )
    setup.model.train(was_training)


def restore_training_checkpoint(
    directory: Path, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, rank: int = 0
) -> tuple[LoopState, Callable[[], None]]:
    """The loop state, with the optimizer and grad scaler restored; and the call that restores the RNG states,
    to be made last before the loop (building the data loader draws from torch's generator)."""
    saved, tensors = ckpt.read_training_state(directory)
    load_optimizer_state(optimizer, saved["optimizer"], tensors)
    if saved["grad_scaler"]:
        scaler.load_state_dict(saved["grad_scaler"])
    plain, rng_tensors = saved["rng"], tensors
    others = saved.get("rng_other_ranks", [])
    if 0 < rank <= len(others):
        prefix = f"rank{rank}."
        plain = others[rank - 1]
        rng_tensors = {name[len(prefix) :]: value for name, value in tensors.items() if name.startswith(prefix)}
    return LoopState(**saved["loop"]), lambda: restore_rng(plain, rng_tensors)


def broadcast_path(path: Path | None) -> Path | None:
    """Rank 0's ``path`` on every process."""
    import torch.distributed as dist

    holder: list[Any] = [str(path) if path is not None else None]
    dist.broadcast_object_list(holder, 0)
    return Path(holder[0]) if holder[0] is not None else None
