"""Captioner.save_pretrained() writes through a staging directory, as exports do: a failure or Ctrl-C midway leaves
the target as it was (absent, or the checkpoint that was there) and no staging directory behind.

It wrote straight into the target: stopped after the weights, a new directory held weights without a tokenizer, and
an existing checkpoint held the new model's weights beside the old model's tokenizer and config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from _helpers import save_tiny_model
from captionkit.api import Captioner
from captionkit.config import TrainConfig
from captionkit.errors import InputError
from captionkit.export.staging import STAGING_PREFIX

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def captioner(tmp_path_factory: pytest.TempPathFactory) -> Captioner:
    return Captioner.from_pretrained(save_tiny_model(tmp_path_factory.mktemp("m") / "tiny"), device="cpu")


def _contents(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (hidden ones included), by its relative path, with its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _run_settings(*styles: str) -> str:
    """A training run's train_config.json that trained ``styles``."""
    saved = TrainConfig().to_dict()
    saved["data"]["styles"] = list(styles)
    return json.dumps(saved)


def _fail_after_the_weights(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> list[str]:
    """Make the tokenizer's write (after the model's weights) raise ``error``; the list gets the directory it was
    asked to write into."""
    asked: list[str] = []

    def failing(_: object, directory: str | Path) -> None:
        asked.append(str(directory))
        assert (Path(directory) / "model.safetensors").is_file()  # midway: the weights are written
        raise error

    monkeypatch.setattr("captionkit.text.tokenizer.CaptionTokenizer.save", failing)
    return asked


@pytest.mark.parametrize(
    "error", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=["full-disk", "ctrl-c"]
)
def test_a_failure_midway_leaves_an_existing_checkpoint_as_it_was(
    captioner: Captioner, error: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = save_tiny_model(tmp_path / "model", seed=1)  # another model's checkpoint, COMPLETE included
    before = _contents(target)
    asked = _fail_after_the_weights(monkeypatch, error)
    expected = InputError if isinstance(error, OSError) else KeyboardInterrupt
    with pytest.raises(expected) as caught:
        captioner.save_pretrained(target)
    if isinstance(error, OSError):
        assert str(caught.value) == f"{target}: cannot save the checkpoint here (No space left on device)"
    assert _contents(target) == before
    assert asked and Path(asked[0]) != target  # the write went to a staging directory
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]


def test_a_failure_midway_leaves_no_new_directory(
    captioner: Captioner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fail_after_the_weights(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        captioner.save_pretrained(tmp_path / "new" / "model")
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["new"]  # its parent is made, nothing in it


def test_saving_over_another_checkpoint_replaces_its_model_and_its_runs_settings(
    captioner: Captioner, tmp_path: Path
) -> None:
    """As documented (a save into a checkpoint's directory replaces it, and loads): the files are the new model's.
    The other run's train_config.json goes (it would lend this model that run's styles); its COMPLETE stays."""
    target = save_tiny_model(tmp_path / "model", seed=1)
    (target / "train_config.json").write_text(_run_settings("positive"), encoding="utf-8")
    assert Captioner.from_pretrained(target, device="cpu").trained_styles == ("positive",)
    captioner.save_pretrained(tmp_path / "fresh")
    captioner.save_pretrained(target)
    fresh = _contents(tmp_path / "fresh")
    assert {name: data for name, data in _contents(target).items() if name in fresh} == fresh
    assert sorted(set(_contents(target)) - set(fresh)) == ["COMPLETE"]
    assert not [path for path in [*tmp_path.iterdir(), *target.iterdir()] if STAGING_PREFIX in path.name]
    again = Captioner.from_pretrained(target, device="cpu")
    assert again.trained_styles == ()
    loaded, saved = again.model.state_dict(), captioner.model.state_dict()
    assert loaded.keys() == saved.keys() and all(loaded[name].equal(saved[name]) for name in saved)


def test_a_saved_copy_keeps_the_styles_its_run_trained(tmp_path: Path) -> None:
    """A model loaded from a training run's directory, saved elsewhere, still knows the styles it trained (its
    train_config.json goes along, as into an export): they were forgotten, and a style it never trained passed."""
    run = save_tiny_model(tmp_path / "run")
    settings = _run_settings("positive", "negative")
    (run / "train_config.json").write_text(settings, encoding="utf-8")
    loaded = Captioner.from_pretrained(run, device="cpu")
    loaded.save_pretrained(tmp_path / "copy")
    assert (tmp_path / "copy" / "train_config.json").read_text(encoding="utf-8") == settings
    assert Captioner.from_pretrained(tmp_path / "copy", device="cpu").trained_styles == ("positive", "negative")
    loaded.save_pretrained(run)  # into its own directory: its settings stay
    assert (run / "train_config.json").read_text(encoding="utf-8") == settings


def test_the_next_save_removes_what_a_killed_save_left(
    captioner: Captioner, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A save killed outright (SIGKILL) runs no cleanup: its staging directory, named with its process number, is
    removed by the next save of the same directory (a number no process has now; this process's own counts)."""
    target = tmp_path / "model"
    captioner.save_pretrained(target)
    left = target / f"{STAGING_PREFIX}{os.getpid()}-0badc0de"
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"cut short")
    captioner.save_pretrained(target)
    assert capsys.readouterr().err == (
        f"{target}: removed {left.name}, left by a save_pretrained that was killed while writing it\n"
    )
    assert not left.exists()


def test_saving_another_family_over_a_checkpoint_leaves_none_of_its_files(tmp_path: Path) -> None:
    """A CNN + LSTM has no generation settings: saved over a ViT + GPT-2 checkpoint, that model's
    generation_config.json stayed behind, beside a model it does not describe (as the docstring says, a checkpoint
    there is replaced)."""
    target = save_tiny_model(tmp_path / "model", family="vit-gpt2")
    lstm = Captioner.from_pretrained(save_tiny_model(tmp_path / "lstm", family="cnn-lstm"), device="cpu")
    lstm.save_pretrained(target)
    lstm.save_pretrained(tmp_path / "fresh")
    assert sorted(_contents(target)) == sorted([*_contents(tmp_path / "fresh"), "COMPLETE"])
    assert Captioner.from_pretrained(target, device="cpu").model.family == "cnn-lstm"
