"""Test helpers, once: the CLI runners (in this process, or in a new one), and tiny models of every registered family.

The family list comes from the registry (:func:`captionkit.models.registry.list_models`), so a new family is swept
by every test that parametrizes over :data:`FAMILIES` without editing a test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from captionkit.cli import main
from captionkit.images import Preprocessing
from captionkit.models.base import CaptionModel
from captionkit.models.registry import create_model, list_models, train_tokenizer
from captionkit.text import CaptionTokenizer
from captionkit.training.checkpoint import save_checkpoint

FAMILIES = tuple(list_models())
CAPTIONS = ("a dog runs on the grass", "a cat sits on a red couch")


def run_cli(args: list[Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``captionkit ARGS`` in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as done:
        main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return int(done.value.code or 0), captured.out, captured.err


def run_cli_process(
    args: list[Any], env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m captionkit.cli ARGS`` in a new process, where settings read at import time (HF_HUB_OFFLINE,
    HF_ENDPOINT) take effect: its exit code, stdout and stderr. ``env`` is added to this process's environment."""
    command = [sys.executable, "-m", "captionkit.cli", *map(str, args)]
    environment = os.environ | {"OMP_NUM_THREADS": "1"} | (env or {})
    return subprocess.run(
        command, capture_output=True, text=True, env=environment, cwd=cwd, timeout=timeout, check=False
    )


def tiny_model(family: str, seed: int = 0, tokenizer: CaptionTokenizer | None = None, **overrides: Any) -> CaptionModel:
    """``family``'s tiny preset with weights drawn from ``seed`` (ids from ``tokenizer`` when given)."""
    torch.manual_seed(seed)
    return create_model(family, "tiny", tokenizer, **overrides)


def save_tiny_model(
    directory: Path, family: str = "vit-gpt2", seed: int = 0, captions: tuple[str, ...] = CAPTIONS, **overrides: Any
) -> Path:
    """A tiny ``family`` checkpoint (32 px input) in ``directory``, its tokenizer (300 tokens) trained on ``captions``.

    The same ``seed`` gives the same weights every run: a comparison that passes once passes always.
    """
    tokenizer = train_tokenizer(family, list(captions) * 10, 300)
    model = tiny_model(family, seed, tokenizer, **overrides)
    return save_checkpoint(directory, model, tokenizer, Preprocessing.for_size(32, 32))


class UnsavedModel(CaptionModel):
    """Base of a test's scripted model (its own steps, no weights to keep): never saved or loaded."""

    def save_pretrained(self, directory: str | Path) -> None:
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, *, dtype: torch.dtype | None = None) -> CaptionModel:
        raise NotImplementedError

    @classmethod
    def from_saved_config(cls, directory: Path) -> CaptionModel:
        raise NotImplementedError


def unsearchable(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """What is in ``folder`` can be listed but not looked at (a folder without search permission, which root, who
    runs these tests, is never refused)."""
    stat = Path.stat

    def refusing(self: Path, **kwargs: Any) -> os.stat_result:
        if self.parent == folder:
            raise PermissionError(13, "Permission denied", str(self))
        return stat(self, **kwargs)

    monkeypatch.setattr(Path, "stat", refusing)
