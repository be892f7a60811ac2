"""Checkpoint directories, written so that a crash never leaves a half-written one behind.

Layout: the model's own files (``config.json``, ``model.safetensors``, ...), tokenizer files,
``preprocessor_config.json``, ``train_config.json``, ``trainer_state.json``, for resumable training checkpoints
``training_state.safetensors`` (optimizer moments, RNG states), and, last, an empty ``COMPLETE`` file.
Everything is written into a temporary sibling directory, fsynced, marked COMPLETE, then renamed into place. Files get
the mode a plain new file gets (0644 under the usual umask), the weights too.

A run directory keeps its resumable checkpoints under ``checkpoints/``: ``step-000500``, ``step-001000``, ...
(the newest ``keep`` of them) and ``best``. A directory without ``COMPLETE`` is never loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from captionkit.errors import InputError
from captionkit.files import honour_umask
from captionkit.images import Preprocessing
from captionkit.jsontext import parse_json
from captionkit.models.base import CaptionModel
from captionkit.quiet import no_transformers_progress_bars
from captionkit.run_layout import COMPLETE, is_complete, step_checkpoints
from captionkit.text import CaptionTokenizer
from captionkit.trained_on import TRAIN_CONFIG

# What to do about a checkpoint that cannot be read, when resuming from it.
DAMAGED_CHECKPOINT_HINT = "remove this checkpoint to resume from an earlier one, or pass --no-resume to start over"

TRAINING_STATE = "training_state.safetensors"
TRAINER_STATE = "trainer_state.json"
BEST = "best"


def save_checkpoint(
    directory: str | Path,
    model: CaptionModel,
    tokenizer: CaptionTokenizer,
    preprocessing: Preprocessing,
    train_config: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a complete checkpoint at ``directory`` atomically (replacing one that is there).

    ``tensors`` (optimizer moments, RNG states) go to ``training_state.safetensors``.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        with no_transformers_progress_bars():  # a short write; the bars would leak into train()'s output
            model.save_pretrained(staging)
        tokenizer.save(staging)
        preprocessing.save(staging)
        if train_config is not None:
            _write_json(staging / TRAIN_CONFIG, train_config)
        if trainer_state is not None:
            _write_json(staging / TRAINER_STATE, trainer_state)
        if tensors is not None:
            save_file(tensors, str(staging / TRAINING_STATE))
        honour_umask(staging)
        (staging / COMPLETE).touch()
        _fsync_tree(staging)
        _replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def prune_checkpoints(root: str | Path, keep: int) -> None:
    """Remove all but the newest ``keep`` step checkpoints, and staging leftovers of a crashed save."""
    root = Path(root)
    for path in step_checkpoints(root)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    for path in root.glob(".*"):
        if ".tmp-" in path.name or ".old-" in path.name:
            shutil.rmtree(path, ignore_errors=True)


def read_training_state(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(trainer_state.json, training_state.safetensors) of a complete checkpoint."""
    directory = Path(directory)
    if not is_complete(directory):
        raise ValueError(f"{directory}: not a COMPLETE checkpoint")
    state_file = directory / TRAINER_STATE
    state = parse_json(state_file.read_text(encoding="utf-8"), state_file, non_finite=True)
    if not isinstance(state, dict):
        raise InputError(state_file, "is not a JSON object")
    tensors_file = directory / TRAINING_STATE
    try:
        return state, load_file(str(tensors_file))
    except (SafetensorError, OSError) as error:  # a copy cut short, a full disk, a file removed by hand
        reason = "no such file" if isinstance(error, FileNotFoundError) else str(error)
        raise InputError(tensors_file, f"cannot be read ({reason}); {DAMAGED_CHECKPOINT_HINT}") from None


def publish_files(directory: str | Path, target: str | Path) -> None:
    """Move the files of a complete checkpoint ``directory`` into ``target`` (a run directory that holds other
    things too), each by an atomic rename, ``train_config.json`` first (a crash after ``config.json`` must leave a
    directory that reads as a run's, which the same command resumes) and ``COMPLETE`` last, then remove
    ``directory``."""
    directory, target = Path(directory), Path(target)
    (target / COMPLETE).unlink(missing_ok=True)
    for path in sorted(directory.iterdir(), key=lambda path: (path.name != TRAIN_CONFIG, path.name)):
        if path.name != COMPLETE:
            os.replace(path, target / path.name)
    os.replace(directory / COMPLETE, target / COMPLETE)
    _fsync_dir(target)
    shutil.rmtree(directory, ignore_errors=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _fsync_tree(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_file():
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an old ``target`` is moved aside first and removed after."""
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        target.rename(old)
    staging.rename(target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
