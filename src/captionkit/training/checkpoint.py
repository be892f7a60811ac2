"""Checkpoint directories, written so that a crash never leaves a half-written one behind.

Layout: the model's own files (``config.json``, ``model.safetensors``, ...), tokenizer files,
``preprocessor_config.json``, ``train_config.json``, ``trainer_state.json`` and, last, an empty ``COMPLETE`` file.
Everything is written into a temporary sibling directory, fsynced, marked COMPLETE, then renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from captionkit.images import Preprocessing
from captionkit.models.base import CaptionModel
from captionkit.text import CaptionTokenizer

COMPLETE = "COMPLETE"


def save_checkpoint(
    directory: str | Path,
    model: CaptionModel,
    tokenizer: CaptionTokenizer,
    preprocessing: Preprocessing,
    train_config: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint at ``directory`` atomically (replacing one that is there)."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        model.save_pretrained(staging)
        tokenizer.save(staging)
        preprocessing.save(staging)
        if train_config is not None:
            _write_json(staging / "train_config.json", train_config)
        if trainer_state is not None:
            _write_json(staging / "trainer_state.json", trainer_state)
        (staging / COMPLETE).touch()
        _fsync_tree(staging)
        _replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def is_complete(directory: str | Path) -> bool:
    return (Path(directory) / COMPLETE).is_file()


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
