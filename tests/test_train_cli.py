"""`captionkit train`: a run, an automatic resume of the same command, and one-line config errors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from _helpers import run_cli, save_tiny_model
from captionkit.config import load_train_config
from captionkit.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    scenes = write_synthetic_dataset(root / "scenes", 24, 4, 4, seed=0, image_size=32)
    path = root / "tiny.yaml"
    path.write_text(
        f"model:\n  preset: tiny\ntokenizer:\n  vocab_size: 300\n"
        f"data:\n  train: {scenes}\n  val: {scenes}\n  cache_images: true\n  first_caption_only: true\n"
        "train:\n  steps: 4\n  batch_size: 8\n  warmup_steps: 1\n  eval_every: 2\n  eval_images: 4\n"
        "  checkpoint_every: 2\n  threads: 1\n  tensorboard: false\n",
        encoding="utf-8",
    )
    return path


def test_train_then_the_same_command_resumes(recipe, tmp_path, capsys, single_thread):
    out = tmp_path / "run"
    code, stdout, err = run_cli(["train", recipe, "--output", out, "--no-progress"], capsys)
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["resumed_from"] is None and summary["interrupted"] is False
    assert summary["val_cider"] is not None and summary["unreadable_images"] == 0
    assert (out / "metrics.jsonl").is_file() and (out / "curves.png").is_file() and (out / "COMPLETE").is_file()
    # Caching images is announced and its progress logged (no progress bar in a non-terminal run).
    assert "captionkit: caching 24 images\n" in err and "captionkit: cached 24/24 images (" in err  # training
    assert "captionkit: caching 4 images\n" in err and "captionkit: cached 4/4 images (" in err  # validation
    assert "captionkit: cached 12/24 images" not in err  # a tenth is logged only when seconds have passed
    code, stdout, err = run_cli(["train", recipe, "--output", out, "--no-progress", "--set", "train.steps=5"], capsys)
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["steps"] == 5 and summary["resumed_from"].endswith("step-000004")
    code, _, err = run_cli(["train", recipe, "--output", out, "--no-progress", "--set", "train.lr=0.1"], capsys)
    assert code == 1
    assert "train.lr: differs from the run" in err


def test_a_run_that_skipped_unreadable_images_exits_2_and_says_where_they_are_listed(tmp_path, capsys, single_thread):
    """A model trained without some of its images is a partial result with its errors recorded, as `caption`'s."""
    scenes = write_synthetic_dataset(tmp_path / "scenes", 16, 4, 0, seed=0, image_size=32)
    broken = sorted((tmp_path / "scenes" / "images" / "train").glob("*.png"))[0]
    broken.write_bytes(b"not a png")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model:\n  preset: tiny\ntokenizer:\n  vocab_size: 300\ndata:\n  train: {scenes}\n  val_fraction: 0\n"
        "train:\n  steps: 2\n  batch_size: 16\n  eval_images: 0\n  threads: 1\n  tensorboard: false\n"
    )
    out = tmp_path / "run"
    code, stdout, err = run_cli(["train", recipe, "--output", out, "--no-progress"], capsys)
    assert code == 2, err
    assert json.loads(stdout.strip().splitlines()[-1])["unreadable_images"] == 1
    assert err.endswith(
        f"captionkit: skipped 1 training image that could not be read (unreadable_images in "
        f"{out / 'trainer_state.json'})\n"
    )
    assert list(json.loads((out / "trainer_state.json").read_text())["unreadable_images"]) == [str(broken)]


def test_an_interrupted_or_torchrun_run_with_unreadable_images_exits_0(recipe, tmp_path, capsys, monkeypatch):
    """SIGTERM's contract is exit 0 (the resumed run reports the images at its end); torchrun reports a nonzero
    exit as a crashed worker, so there rank 0's note alone says it."""
    import dataclasses

    from captionkit.training import loop

    finished = loop.train(load_train_config(recipe, ["train.steps=1", "train.eval_images=0"]), tmp_path / "run")
    result = dataclasses.replace(finished, unreadable_images=3)
    monkeypatch.setattr(loop, "train", lambda *_, **__: result)
    args = ["train", recipe, "--output", tmp_path / "run", "--no-progress"]
    note = f"captionkit: skipped 3 training images that could not be read (unreadable_images in {tmp_path / 'run'}"
    code, _, err = run_cli(args, capsys)
    assert code == 2 and note in err
    result = dataclasses.replace(result, interrupted=True)
    code, _, err = run_cli(args, capsys)
    assert code == 0 and note not in err
    result = dataclasses.replace(result, interrupted=False)
    for world, rank in (("1", "0"), ("2", "0"), ("2", "1")):
        monkeypatch.setenv("WORLD_SIZE", world)
        monkeypatch.setenv("RANK", rank)
        code, out, err = run_cli(args, capsys)
        assert code == 0 and (note in err) == (rank == "0") and (out != "") == (rank == "0")


def test_a_run_never_writes_over_a_model_it_starts_from_or_that_no_run_wrote(recipe, tmp_path, capsys):
    """The final model replaced the files of such a directory (a GPT-2 part as --output: its weights were lost)."""
    model = save_tiny_model(tmp_path / "model")
    other = save_tiny_model(tmp_path / "other", seed=1)
    weights = (model / "model.safetensors").read_bytes()
    args = ["train", recipe, "--no-progress", "--set", f"model.pretrained={model}", "--output"]
    code, out, err = run_cli([*args, model], capsys)
    assert (code, out) == (1, "")
    assert (
        err == f"captionkit: error: {model}: is model.pretrained, which this run starts from: train into another "
        "directory\n"
    )
    code, out, err = run_cli([*args, other], capsys)
    assert (code, out) == (1, "")
    assert (
        err == f"captionkit: error: {other}: holds a model that no training run wrote (config.json without "
        "train_config.json): train into a new or empty directory\n"
    )
    assert (model / "model.safetensors").read_bytes() == weights and not (other / "metrics.jsonl").exists()


def test_unknown_key_is_one_line_naming_the_closest_key(recipe, tmp_path, capsys):
    code, out, err = run_cli(["train", recipe, "--output", tmp_path / "run", "--set", "train.stpes=3"], capsys)
    assert code == 1 and out == ""
    assert "captionkit: error: --set train.stpes: unknown key (did you mean 'steps'?" in err and "tiny.yaml" not in err
    assert err.startswith("captionkit: error: ") and err.count("\n") == 1
    assert "Traceback" not in err


@pytest.mark.parametrize("command", ["train", "export"])
def test_a_model_directory_whose_path_is_not_utf8_is_refused_before_any_work(tmp_path, capsys, command):
    """The tokenizers library saves only to UTF-8 paths: a run would fail at its first checkpoint, after training,
    and an export after loading the model; both are one line naming --output, before anything is read."""
    output = Path(os.fsdecode(bytes(tmp_path) + b"/r\xe9sultat"))
    if command == "train":
        args = ["train", "scenes-xe", "--output", output]
    else:
        args = ["export", "int8", "--model", tmp_path / "no-model-needed", "--output", output]
    code, out, err = run_cli(args, capsys)
    reason = "the path is not valid UTF-8, and the model's tokenizer cannot be saved there"
    assert (code, out) == (1, "")
    assert err == f"captionkit: error: --output: {tmp_path}/r\\udce9sultat: {reason}\n"
    assert not output.exists()


def test_resuming_with_styles_the_run_has_no_tokens_for_is_refused_before_any_work(recipe, tmp_path, capsys):
    """--resume with data.styles added: the checkpoint's tokenizer has no <positive>, so the run trained on until its
    first validation, stopped there with a "style:" error and left its finished model without COMPLETE."""
    out = tmp_path / "run"
    code, _, err = run_cli(["train", recipe, "--output", out, "--no-progress"], capsys)
    assert code == 0, err
    weights = (out / "model.safetensors").read_bytes()
    args = ["--set", "data.styles={neutral: 0.5, positive: 0.5}", "--set", "train.steps=6", "--resume"]
    code, out_text, err = run_cli(["train", recipe, "--output", out, "--no-progress", *args], capsys)
    assert (code, out_text) == (1, "")
    assert err.endswith(
        f"captionkit: error: data.styles: positive has no start token in {out / 'checkpoints' / 'step-000004'}, which "
        "was trained without it: a resumed run cannot add styles (--no-resume to start over, or choose another "
        "output directory)\n"
    )
    assert (out / "COMPLETE").is_file() and (out / "model.safetensors").read_bytes() == weights
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [2, 4]


def test_a_finished_model_without_checkpoints_is_not_replaced_by_another_recipe(recipe, tmp_path, capsys):
    """A run's checkpoints/best (or a run whose checkpoints/ were pruned) given as --output: with nothing to resume,
    a run of a changed recipe wrote over the finished model, unasked. Refused as a changed checkpoint is;
    --no-resume replaces it."""
    out = tmp_path / "run"
    code, _, err = run_cli(["train", recipe, "--output", out, "--no-progress"], capsys)
    assert code == 0, err
    best = out / "checkpoints" / "best"
    weights = (best / "model.safetensors").read_bytes()
    code, stdout, err = run_cli(["train", recipe, "--output", best, "--no-progress", "--set", "train.lr=0.01"], capsys)
    assert (code, stdout) == (1, "")
    assert err == (
        f"captionkit: error: train.lr: differs from the finished model in {best}, which has no checkpoint to resume "
        "from: pass --no-resume to replace it, or choose another output directory\n"
    )
    assert (best / "COMPLETE").is_file() and (best / "model.safetensors").read_bytes() == weights
    args = ["train", recipe, "--output", best, "--no-progress", "--set", "train.lr=0.01", "--no-resume"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert (best / "model.safetensors").read_bytes() != weights


def test_resume_and_no_resume_together_are_refused_before_anything_is_read(tmp_path, capsys):
    # One keeps the checkpoints, the other discards them: the last flag won, and --no-resume threw a run away.
    args = ["train", str(tmp_path / "no-such-recipe.yaml"), "--output", tmp_path / "run", "--resume", "--no-resume"]
    code, stdout, err = run_cli(args, capsys)
    assert (code, stdout) == (1, "")
    assert err == (
        "captionkit: error: --no-resume: not with --resume: --resume continues the run in OUTPUT, --no-resume "
        "discards it\n"
    )


def test_a_run_that_max_seconds_ended_stays_ended_when_run_again(recipe, tmp_path, capsys):
    """train.max_seconds counts the whole run's seconds: a run past it, run again, trained one more step each time
    (and rewrote its model); now it says why there is nothing to train, as a run that early stopping ended does."""
    out = tmp_path / "run"
    code, _, err = run_cli(["train", recipe, "--output", out, "--no-progress", "--set", "train.steps=2"], capsys)
    assert code == 0, err
    limit = ["--set", "train.steps=4", "--set", "train.max_seconds=1e-6"]
    code, stdout, err = run_cli(["train", recipe, "--output", out, "--no-progress", *limit], capsys)
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["already_complete"] is True
    said = r"captionkit: already stopped at step 2 by train.max_seconds 1e-06 \(\d+\.\d s trained\): nothing to train"
    assert re.search(said + r" \(raise train.max_seconds to go on\)\n", err), err


def test_resuming_with_a_changed_model_says_the_change_is_not_applied(recipe, tmp_path, capsys):
    """--resume with model.* or tokenizer.* changed continues the checkpoint's model: the run listed the change among
    its "changed settings" as if it were applied, and trained the old model."""
    out = tmp_path / "run"
    code, _, err = run_cli(["train", recipe, "--output", out, "--no-progress"], capsys)
    assert code == 0, err
    changes = ["--set", "model.preset=small", "--set", "train.lr=1e-3", "--set", "train.steps=5", "--resume"]
    code, _, err = run_cli(["train", recipe, "--output", out, "--no-progress", *changes], capsys)
    assert code == 0, err
    assert err.startswith(
        "captionkit: resuming with changed settings: model.preset, train.lr\n"
        "captionkit: model.preset: not applied: a resumed run keeps the checkpoint's model and tokenizer "
        "(--no-resume starts over with the new values)\n"
    )
    assert "241,664 parameters" in err  # the tiny model, not the small one


def test_a_resumed_run_records_the_model_and_tokenizer_it_kept(recipe, tmp_path, capsys):
    """--resume with model.*/tokenizer.* changed trains the checkpoint's model: its saved configs (checkpoints and
    the final model's train_config.json) recorded the new values, a vit-gpt2 model claiming to be a cnn-lstm."""
    out = tmp_path / "run"
    code, _, err = run_cli(["train", recipe, "--output", out, "--no-progress"], capsys)
    assert code == 0, err
    changes = ["--set", "model.family=cnn-lstm", "--set", "tokenizer.vocab_size=200", "--set", "train.steps=6"]
    code, _, err = run_cli(["train", recipe, "--output", out, "--no-progress", "--resume", *changes], capsys)
    assert code == 0, err
    assert "model.family, tokenizer.vocab_size: not applied" in err
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["captionkit"]["family"] == "vit-gpt2"
    for saved in (out, out / "checkpoints" / "step-000006", out / "checkpoints" / "best"):
        config = json.loads((saved / "train_config.json").read_text(encoding="utf-8"))
        assert config["model"]["family"] == "vit-gpt2" and config["tokenizer"]["vocab_size"] == 300, saved
        assert config["train"]["steps"] == 6  # the settings a resumed run does apply are the new ones
    # The same command again is the same run (not a changed one to refuse).
    code, stdout, err = run_cli(["train", recipe, "--output", out, "--no-progress", "--set", "train.steps=6"], capsys)
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["already_complete"] is True


def test_unreadable_validation_images_are_said_counted_and_exit_2(tmp_path, capsys, single_thread):
    """Validation left an unreadable image out of its loss and CIDEr-D without a word; now it is said once, listed in
    trainer_state.json and the summary, and the run exits 2 as for training images."""
    scenes = write_synthetic_dataset(tmp_path / "scenes", 16, 4, 0, seed=0, image_size=32)
    broken = sorted((tmp_path / "scenes" / "images" / "val").glob("*.png"))[1]
    broken.write_bytes(b"not a png")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"model:\n  preset: tiny\ntokenizer:\n  vocab_size: 300\ndata:\n  train: {scenes}\n  val: {scenes}\n"
        "train:\n  steps: 4\n  batch_size: 16\n  eval_every: 2\n  eval_images: 4\n  threads: 1\n"
        "  tensorboard: false\n"
    )
    out = tmp_path / "run"
    code, stdout, err = run_cli(["train", recipe, "--output", out, "--no-progress"], capsys)
    assert code == 2, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["unreadable_validation_images"] == 1 and summary["unreadable_images"] == 0
    assert err.count(f"captionkit: skipping unreadable validation image {broken}: ") == 1  # two evaluations, once
    assert err.endswith(
        f"captionkit: skipped 1 validation image that could not be read (unreadable_validation_images in "
        f"{out / 'trainer_state.json'})\n"
    )
    state = json.loads((out / "trainer_state.json").read_text())
    assert list(state["unreadable_validation_images"]) == [str(broken)] and state["unreadable_images"] == {}


def _ctrl_c(*_: object, **__: object) -> None:
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("target", "said"),
    [
        (
            "captionkit.training.run.prepared_setup",
            "while setting up the run in {out} (reading the data, building the model and tokenizer), before its "
            "first step: no checkpoint or model written",
        ),
        (
            "captionkit.training.loop._loop",
            "a second Ctrl-C stopped the run at step 0 without saving it: the same command resumes from the newest "
            "checkpoint in {out}/checkpoints, if there is one",
        ),
        (
            "captionkit.training.loop.finish",
            "while saving the run at step 4 (its last checkpoint or final model): the same command resumes from the "
            "newest complete checkpoint in {out}/checkpoints, if there is one",
        ),
        ("captionkit.config.load_recipe", "before training began: nothing written to {out}"),
    ],
)
def test_ctrl_c_that_training_cannot_answer_with_a_checkpoint_says_what_it_stopped(
    recipe, tmp_path, capsys, monkeypatch, target, said
):
    """Ctrl-C while the run was set up (the data read, the tokenizer built), or a second one in the loop, exited 130
    with nothing on stderr."""
    monkeypatch.setattr(target, _ctrl_c)
    out = tmp_path / "run"
    code, stdout, err = run_cli(["train", recipe, "--output", out, "--no-progress"], capsys)
    assert code == 130 and stdout == ""
    assert err.splitlines()[-1] == "captionkit: interrupted: " + said.format(out=out)
    assert not (out / "COMPLETE").exists()
    if "finish" not in target:
        assert not (out / "checkpoints").exists()


def test_an_interrupted_run_says_where_it_saved_and_how_to_go_on(recipe, tmp_path, capsys, monkeypatch):
    """SIGTERM or Ctrl-C saved a checkpoint and exited 0 with nothing on stderr to say so: only the summary's
    "interrupted": true told the run from a finished one."""
    import signal

    from captionkit.training.run_log import RunLog

    write = RunLog.write

    def write_then_stop(self: RunLog, entry: dict) -> None:
        write(self, entry)
        if entry["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(RunLog, "write", write_then_stop)
    out = tmp_path / "run"
    code, stdout, err = run_cli(["train", recipe, "--output", out, "--no-progress"], capsys)
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["interrupted"] is True
    checkpoint = out / "checkpoints" / "step-000002"
    assert err.endswith(f"captionkit: interrupted at step 2: saved {checkpoint}; run the same command to continue\n")
    assert (checkpoint / "COMPLETE").is_file()


def test_a_finished_run_run_again_with_fewer_steps_keeps_its_settings(recipe, tmp_path, capsys):
    """Nothing is trained when a run is resumed past its end, but its final model was written again with the new
    command's settings: a model trained for 4 steps recorded train.steps 2."""
    out = tmp_path / "run"
    code, _, err = run_cli(["train", recipe, "--output", out, "--no-progress"], capsys)
    assert code == 0, err
    code, stdout, err = run_cli(["train", recipe, "--output", out, "--no-progress", "--set", "train.steps=2"], capsys)
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["already_complete"] is True
    assert json.loads((out / "train_config.json").read_text(encoding="utf-8"))["train"]["steps"] == 4
    assert json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))["step"] == 4


def test_a_run_stopped_early_says_why_and_where_its_best_checkpoint_is(recipe, tmp_path, capsys):
    """Early stopping ended a run before train.steps with exit 0 and nothing on stderr: only the last log entry's
    "stopped_early" said so. lr 0: no evaluation improves on the first, so patience 1 stops at the second (step 4)."""
    out = tmp_path / "run"
    settings = ["--set", "train.steps=10", "--set", "train.lr=0", "--set", "train.patience=1"]
    code, stdout, err = run_cli(["train", recipe, "--output", out, "--no-progress", *settings], capsys)
    assert code == 0, err
    assert json.loads(stdout.strip().splitlines()[-1])["stopped_early"] is True
    best = out / "checkpoints" / "best"
    assert err.endswith(
        f"captionkit: stopped early at step 4 of 10: 1 evaluation without a better val_loss (train.patience); "
        f"the best one's checkpoint is {best}\n"
    )
    assert (best / "COMPLETE").is_file()
    code, _, err = run_cli(["train", recipe, "--output", out, "--no-progress", *settings], capsys)
    assert code == 0 and "captionkit: stopped early at step" not in err  # its own line: "already stopped early"


STYLED = ["--set", "data.styles={neutral: 0.5, positive: 0.5}"]
UNLEARNT = (
    "captionkit: error: data.styles: positive would not be learnt: no stage of this run trains the decoder, the only "
    "part that reads a style's start token (unfreeze it, e.g. model.overrides.freeze_decoder=false, or a stage that "
    "trains it)\n"
)


@pytest.mark.parametrize(
    "settings",
    [
        # ClipCap's transformer recipe freezes GPT-2: the style's start token is a row of its frozen token table.
        ["--set", "model.family=prefix-gpt2", "--set", "model.overrides={freeze_decoder: true}"],
        ["--set", "train.stages=[{until_step: 2, train: [encoder]}, {train: [encoder]}]"],
    ],
    ids=["frozen-decoder", "stages-without-the-decoder"],
)
def test_styles_a_run_cannot_learn_are_refused_before_any_work(recipe, tmp_path, capsys, settings):
    """It trained, and every style wrote the same captions: the new start tokens stayed random."""
    out = tmp_path / "run"
    code, out_text, err = run_cli(["train", recipe, "--output", out, "--no-progress", *STYLED, *settings], capsys)
    assert (code, out_text) == (1, "")
    assert err.endswith(UNLEARNT)
    assert not (out / "model.safetensors").exists() and not (out / "checkpoints").exists()


def test_styles_are_learnt_when_a_later_stage_trains_the_decoder(recipe, tmp_path, capsys, single_thread):
    stages = ["--set", "train.stages=[{until_step: 2, train: [encoder]}, {train: [decoder]}]"]
    code, _, err = run_cli(["train", recipe, "--output", tmp_path / "run", "--no-progress", *STYLED, *stages], capsys)
    assert code == 0, err
