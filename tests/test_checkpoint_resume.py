"""Checkpoints that survive crashes: SIGKILL mid-run then resume equals an uninterrupted run, SIGTERM saves and
exits cleanly, incomplete checkpoints are never loaded, the newest K and the best are kept."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _resume import assert_same_weights, crash_at, untimed
from captionkit.config import load_train_config
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.errors import ConfigError, InputError
from captionkit.run_layout import latest_checkpoint
from captionkit.training import checkpoint as ckpt
from captionkit.training.loop import train

CHILD = Path(__file__).with_name("_train_child.py")
STEPS = 8


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("scenes"), 48, 8, 8, seed=0, image_size=32)


def assignments(scenes: Path, *extra: str) -> list[str]:
    return [
        f"data.train={scenes}",
        f"data.val={scenes}",
        "data.first_caption_only=true",
        "data.cache_images=true",
        "model.preset=tiny",
        "model.overrides={decoder_dropout: 0.1, encoder_dropout: 0.1}",  # dropout: the RNG state must resume too
        "tokenizer.vocab_size=300",
        f"train.steps={STEPS}",
        "train.batch_size=8",
        "train.warmup_steps=2",
        "train.eval_every=4",
        "train.eval_images=4",
        "train.log_every=1",
        "train.checkpoint_every=3",
        "train.keep_checkpoints=2",
        "train.lr=3e-3",
        "train.threads=1",
        "train.tensorboard=false",
        "train.deterministic=true",  # bitwise equal resumes on a GPU too (cuDNN and cuBLAS kernels)
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(scenes, tmp_path_factory):
    """The uninterrupted run."""
    before = torch.get_num_threads()
    out = tmp_path_factory.mktemp("reference") / "run"
    result = train(load_train_config(None, assignments(scenes)), out)
    torch.set_num_threads(before)
    return out, result


def run_child(signal_name: str, at_step: int, out: Path, scenes: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    command = [sys.executable, str(CHILD), signal_name, str(at_step), str(out), *assignments(scenes)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_reference_run_layout(reference):
    out, result = reference
    assert result.steps == STEPS and not result.interrupted
    assert ckpt.is_complete(out) and (out / "model.safetensors").is_file()
    # checkpoints at 3, 6 and the final 8; the newest two are kept, and the best by val_loss
    assert [p.name for p in ckpt.step_checkpoints(out / "checkpoints")] == ["step-000006", "step-000008"]
    assert ckpt.is_complete(out / "checkpoints" / "best")
    assert not [p.name for p in out.rglob(".*")]  # no staging directory left behind
    state = json.loads((out / "checkpoints" / "step-000008" / "trainer_state.json").read_text())
    assert {"loop", "rng", "optimizer", "grad_scaler", "train_config"} <= set(state)
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.bin"))  # never a pickle
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in lines] == list(range(1, STEPS + 1))
    assert {"val_loss", "val_perplexity", "val_cider"} <= set(lines[3])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # two Python start-ups with torch and transformers: ~20 s on a busy 2-core machine
def test_sigkill_mid_run_then_resume_equals_uninterrupted(reference, scenes, tmp_path, single_thread):
    out = tmp_path / "run"
    done = run_child("KILL", 5, out, scenes)  # killed after step 5: the checkpoint of step 3 is the newest
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    assert not ckpt.is_complete(out)  # no final model
    assert latest_checkpoint(out / "checkpoints").name == "step-000003"
    result = train(load_train_config(None, assignments(scenes)), out)
    assert result.resumed_from is not None and result.resumed_from.name == "step-000003"
    assert result.steps == STEPS
    assert_same_weights(reference[0], out)
    assert untimed(result.history) == untimed(reference[1].history)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, STEPS + 1))  # the killed run's entries after step 3 were replaced


@pytest.mark.slow
def test_sigterm_in_a_child_process_saves_a_checkpoint_and_exits_0(reference, scenes, tmp_path, single_thread):
    out = tmp_path / "run"
    done = run_child("TERM", 4, out, scenes)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"steps": 4, "interrupted": True, "group": False}
    assert latest_checkpoint(out / "checkpoints").name == "step-000004"
    assert not ckpt.is_complete(out)
    result = train(load_train_config(None, assignments(scenes)), out)
    assert result.steps == STEPS
    assert_same_weights(reference[0], out)


def test_incomplete_checkpoint_is_never_loaded(reference, scenes, tmp_path, single_thread):
    out = tmp_path / "run"
    shutil.copytree(reference[0] / "checkpoints" / "step-000006", out / "checkpoints" / "step-000006")
    # A newer checkpoint that a crash left without COMPLETE (garbage inside), and a staging leftover.
    broken = out / "checkpoints" / "step-000007"
    shutil.copytree(reference[0] / "checkpoints" / "step-000006", broken)
    (broken / ckpt.COMPLETE).unlink()
    (broken / "model.safetensors").write_bytes(b"not weights")
    (out / "checkpoints" / ".step-000007.tmp-1234").mkdir()
    result = train(load_train_config(None, assignments(scenes)), out)
    assert result.resumed_from is not None and result.resumed_from.name == "step-000006"
    assert_same_weights(reference[0], out)
    assert not (out / "checkpoints" / ".step-000007.tmp-1234").exists()


def test_sigterm_saves_a_checkpoint_and_returns_then_resume_equals_uninterrupted(
    reference, scenes, tmp_path, single_thread
):
    out = tmp_path / "run"

    def terminate(entry: dict) -> None:
        if entry["step"] == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = train(load_train_config(None, assignments(scenes)), out, log=terminate)
    assert stopped.interrupted and stopped.steps == 4
    assert latest_checkpoint(out / "checkpoints").name == "step-000004"
    assert not ckpt.is_complete(out)  # no final model: the run is not over
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed after the run
    resumed = train(load_train_config(None, assignments(scenes)), out)
    assert resumed.steps == STEPS and not resumed.interrupted
    assert_same_weights(reference[0], out)
    assert untimed(resumed.history) == untimed(reference[1].history)


def test_in_process_crash_then_resume_equals_uninterrupted(reference, scenes, tmp_path, single_thread):
    out = tmp_path / "run"
    crash_at(7, load_train_config(None, assignments(scenes)), out)
    assert latest_checkpoint(out / "checkpoints").name == "step-000006"
    train(load_train_config(None, assignments(scenes)), out)
    assert_same_weights(reference[0], out)


def test_resume_rules(reference, scenes, tmp_path, single_thread):
    out = tmp_path / "run"
    shutil.copytree(reference[0] / "checkpoints", out / "checkpoints")
    changed = load_train_config(None, assignments(scenes, "train.lr=1e-3"))
    with pytest.raises(ConfigError) as caught:
        train(changed, out)  # auto-resume refuses a different run
    assert caught.value.source == "train.lr"
    with pytest.raises(InputError, match="no complete checkpoint"):
        train(changed, tmp_path / "empty", resume=True)
    longer = train(load_train_config(None, assignments(scenes, "train.steps=9")), out)  # train longer: allowed
    assert longer.resumed_from is not None and longer.resumed_from.name == "step-000008"
    assert longer.steps == 9
    kept = [p.name for p in ckpt.step_checkpoints(out / "checkpoints")]
    refused = load_train_config(None, [*assignments(scenes, "train.steps=2"), f"data.train={tmp_path / 'gone.jsonl'}"])
    with pytest.raises(InputError):
        train(refused, out, resume=False)  # starting over, refused on the way: the old checkpoints stay
    assert [p.name for p in ckpt.step_checkpoints(out / "checkpoints")] == kept and kept
    fresh = train(load_train_config(None, assignments(scenes, "train.steps=2")), out, resume=False)
    assert fresh.resumed_from is None and fresh.steps == 2
    assert [p.name for p in ckpt.step_checkpoints(out / "checkpoints")] == ["step-000002"]


def other_families() -> list[str]:
    from captionkit.models.registry import list_models

    return sorted(name for name in list_models() if name != "vit-gpt2")


@pytest.mark.parametrize("family", other_families())
def test_every_family_resumes_exactly(family, scenes, tmp_path, single_thread):
    settings = [a for a in assignments(scenes) if not a.startswith("model.overrides=")]
    settings += [f"model.family={family}", "train.steps=4", "train.checkpoint_every=2", "train.eval_images=0"]
    settings.append("train.deterministic=true")  # on a GPU, cuDNN's ResNet convolutions differ run to run without it
    train(load_train_config(None, settings), tmp_path / "reference")
    crash_at(3, load_train_config(None, settings), tmp_path / "run")
    resumed = train(load_train_config(None, settings), tmp_path / "run")
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "step-000002"
    assert_same_weights(tmp_path / "reference", tmp_path / "run")


def test_publishing_moves_the_run_settings_before_the_model(tmp_path, monkeypatch):
    """A crash between two renames must not leave config.json without train_config.json: the directory would read
    as a model no run wrote, and the same command would refuse to go on."""
    staged, target = tmp_path / "staged", tmp_path / "run"
    staged.mkdir()
    target.mkdir()
    for name in ("config.json", "model.safetensors", "train_config.json", "a_first.json", ckpt.COMPLETE):
        (staged / name).write_text("{}")
    moved: list[str] = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda source, to: moved.append(Path(source).name) or replace(source, to))
    ckpt.publish_files(staged, target)
    assert moved[0] == "train_config.json" and moved[-1] == ckpt.COMPLETE
    assert moved.index("train_config.json") < moved.index("config.json")
