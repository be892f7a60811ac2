"""What `captionkit train` says about the run it starts: the summary (data, validation, model, tokenizer, device,
batch), where a resumed run picks up, each stage switch, the train perplexity, an early-stopping error that says why
data.val_fraction held out nothing, and torch's worker-count warning said once in captionkit's words."""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from _helpers import run_cli
from captionkit.config import load_train_config
from captionkit.data.dataset import CaptionDataset, collate
from captionkit.data.splits import split_by_image
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.errors import ConfigError
from captionkit.training.loop import train
from captionkit.training.loss import caption_loss_total, token_nll
from captionkit.training.setup import build_setup, seed_everything
from captionkit.training.steps import CrossEntropyStep


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("scenes"), 24, 4, 4, seed=0, image_size=32)


def config_for(scenes, *extra: str):
    return load_train_config(
        None,
        [
            "train.device=cpu",
            f"data.train={scenes}",
            f"data.val={scenes}",
            "data.first_caption_only=true",
            "model.preset=tiny",
            "tokenizer.vocab_size=300",
            "train.steps=4",
            "train.batch_size=8",
            "train.warmup_steps=1",
            "train.eval_every=100",
            "train.eval_images=0",
            "train.log_every=2",
            "train.threads=1",
            "train.tensorboard=false",
            *extra,
        ],
    )


def messages(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name.startswith("captionkit.training")]


def test_the_cli_says_what_it_trains_where_it_resumes_and_when_it_is_already_done(scenes, tmp_path, capsys):
    recipe = tmp_path / "staged.yaml"
    recipe.write_text(
        f"model:\n  preset: tiny\ntokenizer:\n  vocab_size: 300\ndata:\n  train: {scenes}\n  val: {scenes}\n"
        "  first_caption_only: true\ntrain:\n  device: cpu\n  steps: 4\n  batch_size: 4\n  grad_accumulation: 2\n"
        "  warmup_steps: 1\n  eval_images: 0\n  checkpoint_every: 2\n  threads: 1\n  tensorboard: false\n"
        "  stages:\n    - {until_step: 2, train: [decoder]}\n    - {train: [all]}\n",
        encoding="utf-8",
    )
    out = tmp_path / "run"
    code, _, err = run_cli(["train", recipe, "--output", out, "--no-progress"], capsys)
    assert code == 0, err
    lines = err.splitlines()
    assert "captionkit: train data: 24 images, 24 captions" in lines
    assert "captionkit: validation: 4 images, 4 captions, from data.val" in lines
    assert "captionkit: cpu, fp32; 4 steps (1.33 epochs), 8 captions a step (batch 4 x 2 accumulated)" in lines
    model = next(line for line in lines if line.startswith("captionkit: model: "))
    assert model.startswith("captionkit: model: vit-gpt2, ") and model.endswith(" trainable in stage 1 of 2 (decoder)")
    total = int(model.split(", ")[1].split()[0].replace(",", ""))
    first = int(model.split(", ")[2].split()[0].replace(",", ""))
    assert 0 < first < total
    assert f"captionkit: step 2: stage 2 of 2 trains everything ({total:,} parameters)" in lines
    assert not any("resuming" in line or "already complete" in line for line in lines)

    code, stdout, err = run_cli(["train", recipe, "--output", out, "--no-progress"], capsys)
    assert code == 0, err
    assert "captionkit: already complete (step 4 of 4): nothing to train; raise train.steps to go on" in err
    assert json.loads(stdout.splitlines()[-1])["already_complete"] is True

    code, stdout, err = run_cli(["train", recipe, "--output", out, "--no-progress", "--set", "train.steps=6"], capsys)
    assert code == 0, err
    checkpoint = out / "checkpoints" / "step-000004"
    assert (
        f"captionkit: resuming from step 4 of 6 ({checkpoint}): the run ended at train.steps 4 and now continues "
        "past its old end"
    ) in err.splitlines()
    assert f"captionkit: step 4: stage 2 of 2 trains everything ({total:,} parameters)" in err.splitlines()
    model = next(line for line in err.splitlines() if line.startswith("captionkit: model: "))
    assert model.endswith(f"{total:,} trainable in stage 2 of 2 (everything)"), model  # the stage it resumes in
    summary = json.loads(stdout.splitlines()[-1])
    assert summary["steps"] == 6 and summary["already_complete"] is False


def test_a_stopped_run_resumed_says_the_step_of_how_many(scenes, tmp_path, caplog):
    config = config_for(scenes, "train.checkpoint_every=2")
    train(config_for(scenes, "train.checkpoint_every=2", "train.steps=2"), tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="captionkit.training"):
        result = train(config, tmp_path / "run", resume=True)  # train.steps 2 -> 4 is a change resume allows
    assert result.steps == 4
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000002"
    said = [m for m in messages(caplog) if m.startswith("resuming")]
    assert said == [f"resuming from step 2 of 4 ({checkpoint}): the run ended at train.steps 2 and now continues "
                    "past its old end"]  # fmt: skip
    # A run cut short (its own train.steps not reached) just resumes.
    config = config_for(scenes, "train.checkpoint_every=2", "train.steps=6")
    trained = train(config_for(scenes, "train.checkpoint_every=2", "train.steps=6", "train.max_seconds=1e-9"),
                    tmp_path / "cut")  # fmt: skip
    assert trained.steps == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="captionkit.training"):
        train(config, tmp_path / "cut", resume=True)
    assert [m for m in messages(caplog) if m.startswith("resuming")] == [
        f"resuming from step 1 of 6 ({tmp_path / 'cut' / 'checkpoints' / 'step-000001'})"
    ]


def test_the_summary_names_each_dataset_what_was_dropped_and_the_held_out_share(scenes, tmp_path, caplog):
    other = write_synthetic_dataset(tmp_path / "other", 8, 0, 0, seed=3, image_size=32)
    lines = other.read_text(encoding="utf-8").splitlines()
    blank = json.dumps(json.loads(lines[0]) | {"caption": " "})
    other.write_text("\n".join([*lines, blank]) + "\n", encoding="utf-8")
    config = config_for(
        scenes, f"data.train=[{scenes}, {other}]", "data.val=''", "data.val_fraction=0.25", "train.steps=1"
    )
    with caplog.at_level(logging.INFO, logger="captionkit.training"):
        train(config, tmp_path / "run")
    said = messages(caplog)
    data = next(m for m in said if m.startswith("train data: "))
    setup = build_setup(config)
    held_out = {r.image_path for r in setup.val_records}
    images = len({r.image_path for r in setup.train_records})
    assert data.startswith(f"train data: {images} images, {images} captions ({scenes}: ")
    assert f"; {other}: " in data and data.endswith("; dropped 1 x empty caption")
    # Both datasets carry splits (the scenes' val split validates): data.val_fraction holds nothing out.
    assert f"validation: {len(held_out)} images, {len(held_out)} captions, from data.train's own val split" in said


def test_a_tokenizer_smaller_than_asked_says_why(scenes, tmp_path, caplog):
    for family, why in (
        ("vit-gpt2", "byte-level BPE found only {} merges of pairs seen at least twice in the training captions"),
        ("cnn-lstm", "the training captions hold only {} distinct words"),
    ):
        config = config_for(scenes, f"model.family={family}", "tokenizer.vocab_size=5000", "train.steps=1")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="captionkit.training"):
            train(config, tmp_path / family)
        size = build_setup(config).tokenizer.vocab_size
        extra = size - (259 if family == "vit-gpt2" else 4)
        expected = f"tokenizer: {size:,} tokens, fewer than tokenizer.vocab_size 5,000: {why.format(extra)}"
        assert expected in messages(caplog)
        assert 0 < extra < 5000


def test_train_perplexity_is_logged_from_the_unsmoothed_nll_over_the_window(scenes, tmp_path):
    result = train(config_for(scenes, "train.label_smoothing=0.1", "train.checkpoint_every=2"), tmp_path / "run")
    assert [e["step"] for e in result.history] == [2, 4]
    assert all(e["perplexity"] > 1 for e in result.history)
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text(encoding="utf-8"))
    assert [e["perplexity"] for e in state["history"]] == [e["perplexity"] for e in result.history]
    assert state["train_perplexity"] == result.history[-1]["perplexity"] == result.train_perplexity
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["perplexity"] for e in metrics] == [e["perplexity"] for e in result.history]


def test_a_step_gives_the_unsmoothed_nll_beside_the_smoothed_loss(scenes):
    config = config_for(scenes, "train.label_smoothing=0.1")
    seed_everything(0)
    setup = build_setup(config)
    model = setup.model.eval()  # no dropout: the step's forward and the reference see the same logits
    data = CaptionDataset(setup.train_records[:8], setup.tokenizer, setup.preprocessing, config.data.max_length)
    batch = collate([data[i] for i in range(8)], pad_token_id=setup.tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(batch.pixel_values, batch.input_ids, batch.attention_mask)
    nll, tokens = token_nll(logits, batch.input_ids, batch.attention_mask)
    smoothed, unsmoothed = caption_loss_total(logits, batch.input_ids, batch.attention_mask, 0.1)
    labels = torch.where(batch.attention_mask[:, 1:] == 0, -100, batch.input_ids[:, 1:])
    reference = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1), label_smoothing=0.1, reduction="sum"
    )
    assert float(smoothed) == pytest.approx(float(reference), rel=1e-6)
    assert float(unsmoothed) == pytest.approx(nll, rel=1e-6) and float(smoothed) > nll
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    output = CrossEntropyStep(model, optimizer, config.train, torch.device("cpu"))([batch], 0)
    assert output is not None and output.tokens == tokens
    assert float(output.nll_sum) == pytest.approx(nll, rel=1e-6)
    assert float(output.loss) == pytest.approx(float(reference) / tokens, rel=1e-6)
    assert math.exp(float(output.nll_sum) / output.tokens) < math.exp(float(output.loss))


def test_val_fraction_that_holds_out_none_of_a_tiny_set_says_so_and_what_would(tmp_path):
    scenes = write_synthetic_dataset(tmp_path / "six", 6, 0, 0, seed=0, image_size=32)
    unsplit = [json.loads(line) for line in scenes.read_text(encoding="utf-8").splitlines()]
    six = scenes.with_name("unsplit.jsonl")  # without the scenes' own "train" split: val_fraction decides
    six.write_text("".join(json.dumps(entry | {"split": None}) + "\n" for entry in unsplit), encoding="utf-8")
    config = load_train_config(
        None, [f"data.train={six}", "data.val_fraction=0.05", "train.patience=2", "train.seed=1", "model.preset=tiny"]
    )
    with pytest.raises(ConfigError) as raised:
        train(config, tmp_path / "run")
    message = str(raised.value)
    assert message.startswith("train.patience: early stopping needs validation captions")
    assert "data.val_fraction 0.05 of 6 images holds out none (each image goes with that chance)" in message
    suggested = float(message.split("set data.val_fraction to ")[1].split()[0])
    records = build_setup(config).train_records
    assert split_by_image(records, suggested, 1)[1] and not split_by_image(records, suggested - 0.01, 1)[1]
    assert message.endswith("or more, or set train.patience: 0")
    with pytest.raises(ConfigError) as raised:  # the scenes' own splits: every image is a training one
        train(load_train_config(None, [f"data.train={scenes}", "train.patience=2", "model.preset=tiny"]), tmp_path)
    assert str(raised.value).endswith(
        "the data's own splits put all 6 images in training (data.val_fraction applies to none); give data.val, "
        "or set train.patience: 0"
    )


def test_more_data_workers_than_cpus_is_said_once_without_torchs_warning(scenes, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO, logger="captionkit.training"):
        warnings.simplefilter("always")
        result = train(config_for(scenes, "data.workers=2", "train.steps=2"), tmp_path / "run")
    assert result.steps == 2
    assert not [w for w in caught if "worker processes in total" in str(w.message)]
    said = [m for m in messages(caplog) if "data.workers" in m]
    assert said == ["cpu, fp32; 2 steps (0.667 epochs), 8 captions a step; 2 data.workers on 1 CPU"]


def test_two_equal_captions_of_an_image_count_twice_a_record_repeated_by_style_mixing_once():
    from captionkit.data.records import CaptionRecord
    from captionkit.training.summary import _images_captions

    first, second = (CaptionRecord(Path("a.jpg"), "a dog", image_id="a") for _ in range(2))
    other = CaptionRecord(Path("b.jpg"), "a cat", image_id="b")
    assert first == second
    assert _images_captions([first, second, other, first, other]) == "2 images, 3 captions"


def test_one_of_a_thing_is_singular_and_the_result_has_the_logged_val_perplexity(scenes, tmp_path, caplog):
    """The summary said "1 steps (1 epochs)" and "1 images, 1 captions"; the result's val_perplexity was exp of the
    rounded val_loss, unrounded (232.18164084277976), beside the log's 4 places."""
    first = json.loads(Path(scenes).read_text(encoding="utf-8").splitlines()[0])
    one = tmp_path / "one.jsonl"
    image = str(Path(scenes).parent / first["image"])
    one.write_text(json.dumps(first | {"image": image, "split": None}) + "\n", encoding="utf-8")
    config = config_for(scenes, "train.steps=1", "train.batch_size=23", f"data.val={one}")
    with caplog.at_level(logging.INFO, logger="captionkit.training"):
        result = train(config, tmp_path / "run")
    said = messages(caplog)
    assert "validation: 1 image, 1 caption, from data.val" in said
    assert "cpu, fp32; 1 step (1 epoch), 23 captions a step" in said  # one of the 24 images validates
    logged = result.history[-1]["val_perplexity"]
    assert result.val_perplexity == logged == round(logged, 4)
