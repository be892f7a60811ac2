"""The SCST training stage (``train.objective: scst``): starts from a cross-entropy model, trains on batches of images
rewarded against all their training references, logs reward statistics, resumes exactly, works for every family,
under data parallelism, and from the COCO recipe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _data import SHARED_DATA
from _recipes import scenes_run
from _resume import assert_same_training, assert_same_weights, crash_at, untimed, weights
from captionkit.config import load_train_config
from captionkit.data.splits import first_caption_per_image
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.errors import ConfigError, ModelLoadError
from captionkit.parts import CaptionerParts
from captionkit.training import checkpoint as ckpt
from captionkit.training.checks import check_overrides_kept
from captionkit.training.loop import train
from captionkit.training.sampling import SampleStream
from captionkit.training.setup import build_setup, drop_empty_captions, scst_reward

CHILD = Path(__file__).with_name("_train_child.py")
SCST_KEYS = {"reward", "reward_baseline", "sample_length", "entropy"}


def scst(scenes: Path, pretrained: Path, *extra: str) -> list[str]:
    return scenes_run(
        scenes,
        f"model.pretrained={pretrained}",
        "train.objective=scst",
        "train.batch_size=4",
        "train.steps=4",
        "train.scst.num_samples=3",
        "train.scst.max_new_tokens=8",
        *extra,
    )


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("scenes"), 24, 8, 0, seed=0, image_size=32)


@pytest.fixture(scope="module")
def xe_model(scenes, tmp_path_factory):
    """A tiny ViT-GPT2 after a few cross-entropy steps: the SCST stage's starting point."""
    before = torch.get_num_threads()
    out = tmp_path_factory.mktemp("xe") / "run"
    train(load_train_config(None, scenes_run(scenes, "train.steps=4", "data.first_caption_only=true")), out)
    torch.set_num_threads(before)
    return out


def test_scst_stage_trains_from_an_xe_model_and_logs_its_statistics(scenes, xe_model, tmp_path, single_thread):
    out = tmp_path / "scst"
    result = train(load_train_config(None, scst(scenes, xe_model)), out)
    assert result.steps == 4 and ckpt.is_complete(out)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in lines] == [1, 2, 3, 4]
    for entry in lines:
        assert set(entry) >= SCST_KEYS
        assert entry["reward"] >= 0.0 and 1.0 <= entry["sample_length"] <= 8.0 and entry["entropy"] > 0.0
    assert "val_cider" in lines[-1]
    before, after = weights(xe_model), weights(out)
    assert any(not torch.equal(before[name], after[name]) for name in before)
    # The tokenizer and preprocessing come along from the XE model: the output loads like any run directory.
    assert (out / "tokenizer.json").read_text() == (xe_model / "tokenizer.json").read_text()


def test_a_frozen_encoder_trains_from_cached_features(scenes, xe_model, tmp_path, single_thread):
    frozen = "train.stages=[{train: [embeddings, cross_attention, decoder]}]"
    result = train(load_train_config(None, scst(scenes, xe_model, frozen, "train.steps=2")), tmp_path / "run")
    assert result.steps == 2
    before, after = weights(xe_model), weights(tmp_path / "run")
    encoder = [name for name in before if ".encoder." in name or name.startswith("encoder.")]
    assert encoder and all(torch.equal(before[name], after[name]) for name in encoder)
    assert any(not torch.equal(before[name], after[name]) for name in before if name not in encoder)


def test_an_unreadable_training_image_is_skipped_and_counted(xe_model, tmp_path, single_thread):
    scenes = write_synthetic_dataset(tmp_path / "scenes", 8, 2, 0, seed=1, image_size=32)
    broken = sorted((tmp_path / "scenes" / "images" / "train").glob("*.png"))[0]
    broken.write_bytes(b"not an image")
    config = load_train_config(None, scst(scenes, xe_model, "train.steps=3"))
    result = train(config, tmp_path / "run")
    # Every draw of the broken image in the 3 steps is skipped: the seeded stream over the images says which those
    # are (SCST draws images, each rewarded against all its captions: one record an image).
    records = first_caption_per_image(drop_empty_captions(build_setup(config).train_records)[0])
    stream = SampleStream(len(records), config.train.batch_size, config.train.seed).batches(0)
    drawn = [index for _ in range(3) for index in next(stream)]
    expected = sum(records[index].image_path == broken for index in drawn)
    assert expected >= 1, "the seeded stream never drew the broken image: the test would check nothing"
    assert (result.steps, result.unreadable_images, result.skipped_samples) == (3, 1, expected)


def test_reward_references_are_every_neutral_training_caption_of_an_image(scenes, single_thread):
    config = load_train_config(None, scenes_run(scenes, "train.objective=scst"))
    setup = build_setup(config)
    reward = scst_reward(config, setup.train_records)
    neutral: dict[str, int] = {}
    for record in setup.train_records:
        if record.style == "neutral":
            neutral[record.image_id] = neutral.get(record.image_id, 0) + 1
    assert set(reward.scorer.references) == set(neutral)
    assert all(len(reward.scorer.references[i]) == count for i, count in neutral.items())
    assert max(neutral.values()) > 1  # the paraphrases too, not only the canonical caption


def test_with_style_control_each_styles_references_are_its_distinct_captions(scenes, single_thread):
    styles = "data.styles={neutral: 0.5, positive: 0.25, negative: 0.25}"
    config = load_train_config(None, scenes_run(scenes, "train.objective=scst", styles))
    setup = build_setup(config)
    reward = scst_reward(config, setup.train_records)
    distinct: dict[str, dict[str, set[str]]] = {}
    for record in setup.train_records:  # style mixing repeats records; a reference must count once
        distinct.setdefault(record.style, {}).setdefault(record.image_id, set()).add(record.caption)
    assert len(setup.train_records) > len(set(setup.train_records))
    assert set(reward.by_style) == {"neutral", "positive", "negative"}
    for style, scorer in reward.by_style.items():  # (tokenized) references of the images with captions in the style
        got = {image_id: len(refs) for image_id, refs in scorer.scorer.references.items()}
        assert got == {image_id: len(refs) for image_id, refs in distinct[style].items()}, style
        assert scorer.scorer.num_documents == len(distinct[style])  # the style's own document frequencies


def test_a_crashed_scst_run_resumes_exactly(scenes, xe_model, tmp_path, single_thread):
    settings = scst(scenes, xe_model, "train.checkpoint_every=2", "train.scst.entropy_weight=0.01")
    reference = train(load_train_config(None, settings), tmp_path / "reference")
    crash_at(3, load_train_config(None, settings), tmp_path / "run")
    resumed = train(load_train_config(None, settings), tmp_path / "run")
    assert resumed.resumed_from is not None and resumed.resumed_from.name == "step-000002"
    assert_same_weights(tmp_path / "reference", tmp_path / "run")
    assert untimed(resumed.history) == untimed(reference.history)


def test_cnn_lstm_attention_with_accumulation_and_the_greedy_baseline(scenes, tmp_path, single_thread):
    family = ["model.family=cnn-lstm-attention", "train.eval_images=0"]
    xe = train(load_train_config(None, scenes_run(scenes, "train.steps=2", *family)), tmp_path / "xe")
    assert xe.steps == 2
    settings = scst(
        scenes,
        tmp_path / "xe",
        *family,
        "train.steps=2",
        "train.grad_accumulation=2",
        "train.scst.baseline=greedy",
        "train.scst.num_samples=2",
        "train.scst.unfinished_penalty=0.5",
    )
    result = train(load_train_config(None, settings), tmp_path / "scst")
    assert result.steps == 2
    assert all(set(entry) >= SCST_KEYS for entry in result.history)


def test_bad_scst_settings_name_the_key():
    with pytest.raises(ConfigError) as caught:
        load_train_config(None, ["train.objective=rl"])
    assert caught.value.source == "--set train.objective"
    with pytest.raises(ConfigError) as caught:
        load_train_config(None, ["train.objective=scst", "train.scst.num_samples=1"])
    assert caught.value.source == "--set train.scst.num_samples"
    greedy = load_train_config(None, ["train.scst.num_samples=1", "train.scst.baseline=greedy"])
    assert greedy.train.scst.num_samples == 1
    for key, value in (("baseline", "best"), ("temperature", "0"), ("max_new_tokens", "0"), ("entropy_weight", "-1")):
        with pytest.raises(ConfigError) as caught:
            load_train_config(None, [f"train.scst.{key}={value}"])
        assert caught.value.source == f"--set train.scst.{key}"


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("temperature", ".inf", "must be a finite number > 0, got inf"),  # before: accepted, uniform samples
        ("temperature", ".nan", "must be a finite number > 0, got nan"),  # before: accepted, NaN logits
        ("temperature", "-0.5", "must be a finite number > 0, got -0.5"),
        ("temperature", "0", "must be a finite number > 0, got 0.0"),
        ("unfinished_penalty", ".nan", "must be a finite number >= 0, got nan"),
        ("entropy_weight", ".inf", "must be a finite number >= 0, got inf"),
    ],
)
def test_scst_numbers_that_sampling_cannot_use_are_one_config_error(tmp_path, key, value, reason):
    with pytest.raises(ConfigError) as caught:
        load_train_config(None, [f"train.scst.{key}={value}"])
    assert (caught.value.source, caught.value.reason) == (f"--set train.scst.{key}", reason)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"train:\n  scst:\n    {key}: {value}\n")
    with pytest.raises(ConfigError) as caught:
        load_train_config(recipe)
    assert (caught.value.source, caught.value.reason) == (f"{recipe}: train.scst.{key}", reason)


COCO_SUBSET = SHARED_DATA / "coco" / "captions_val2017_subset.json"


def test_coco_recipe_offline_fails_with_the_hubs_message(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    config = load_train_config("coco-scst", [f"data.train={COCO_SUBSET}"])
    assert config.train.objective == "scst" and config.model.pretrained == "nlpconnect/vit-gpt2-image-captioning"
    with pytest.raises(ModelLoadError, match=r"nlpconnect/vit-gpt2-image-captioning.*HF_HUB_OFFLINE"):
        build_setup(config)


def test_coco_recipe_in_a_tiny_form(scenes, xe_model, tmp_path, single_thread):
    overrides = [
        f"model.pretrained={xe_model}",
        f"data.train={COCO_SUBSET}",
        "data.workers=0",
        "data.cache_images=true",
        "train.steps=2",
        "train.batch_size=4",
        "train.precision=fp32",
        "train.eval_every=2",
        "train.eval_images=4",
        "train.eval_batches=1",
        "train.warmup_steps=1",
        "train.scst.max_new_tokens=8",
        "train.threads=1",
        "train.tensorboard=false",
    ]
    config = load_train_config("coco-scst", overrides)
    result = train(config, tmp_path / "coco")
    assert result.steps == 2 and result.val_cider is not None
    assert all(set(entry) >= SCST_KEYS for entry in result.history)


def test_fine_tuning_takes_overrides_equal_to_the_checkpoints_and_refuses_others(scenes, xe_model, tmp_path):
    """model.overrides with model.pretrained are not applied: equal ones (a recipe's _base_ carries the ones its
    checkpoint was trained with) pass, one that differs or that the family lacks is refused before any training."""
    model = CaptionerParts.load(xe_model).model
    layers, dropout, bos = model.config.decoder_layers, model.config.decoder_dropout, model.bos_token_id
    same = f"model.overrides={{decoder_layers: {layers}, decoder_dropout: {dropout}, bos_token_id: {bos}}}"
    check_overrides_kept(load_train_config(None, scst(scenes, xe_model, same)), model)
    for override, reason in (
        (f"{{decoder_layers: {layers + 1}}}", f"decoder_layers: is {layers + 1}, but {xe_model} has {layers}:"),
        ("{decoder_dropout: 0.3}", f"decoder_dropout: is 0.3, but {xe_model} has {dropout}:"),
        ("{bos_token_id: 99}", f"bos_token_id: is 99, but {xe_model} has {bos}:"),
        ("{hidden_size: 8}", f"hidden_size: {xe_model} is a vit-gpt2 model, which has no hidden_size"),
    ):
        config = load_train_config(None, scst(scenes, xe_model, f"model.overrides={override}"))
        with pytest.raises(ConfigError) as error:
            train(config, tmp_path / "never")
        assert str(error.value).startswith(f"model.overrides.{reason}"), str(error.value)
    assert not (tmp_path / "never" / "model.safetensors").exists()


def test_an_override_equal_to_the_checkpoints_as_a_list_passes():
    """A recipe writes a list, a saved config holds a tuple: equal all the same."""
    from types import SimpleNamespace

    model = SimpleNamespace(
        family="cnn-lstm", config=SimpleNamespace(sizes=(16, 32)), bos_token_id=1, training_settings=frozenset()
    )
    config = SimpleNamespace(model=SimpleNamespace(pretrained="run", overrides={"sizes": [16, 32]}))
    check_overrides_kept(config, model)  # type: ignore[arg-type]
    config.model.overrides = {"sizes": [16, 64]}
    with pytest.raises(ConfigError, match=r"^model\.overrides\.sizes: is \[16, 64\], but run has \(16, 32\)"):
        check_overrides_kept(config, model)  # type: ignore[arg-type]


def test_scenes_recipes_load(xe_model):
    xe = load_train_config("scenes-xe")
    # XE on every neutral reference of a scene, as COCO models train on all five; no style control.
    assert xe.train.objective == "xe" and not xe.data.first_caption_only and xe.data.styles == {"neutral": 1.0}
    config = load_train_config("scenes-xe-scst", [f"model.pretrained={xe_model}"])
    assert config.train.objective == "scst" and not config.data.first_caption_only
    assert config.data.styles == xe.data.styles and config.model.overrides == xe.model.overrides
    assert config.train.scst.max_new_tokens < config.data.max_length


@pytest.mark.slow  # three Python start-ups with torch and transformers
def test_two_gloo_processes_match_one_process_with_the_same_images(scenes, xe_model, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")

    def settings(batch_size: int) -> list[str]:
        return scst(scenes, xe_model, "train.steps=3", f"train.batch_size={batch_size}", "train.eval_images=0")

    single = [sys.executable, str(CHILD), "KILL", "0", str(tmp_path / "one"), *settings(4)]
    done = subprocess.run(single, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29537"]
    double = [*launcher, str(CHILD), "KILL", "0", str(tmp_path / "two"), *settings(2)]
    done = subprocess.run(double, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_training(weights(tmp_path / "one"), weights(tmp_path / "two"))
    log = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    log_two = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    # The same samples: each process drew its images' captions from their global positions' seeds. Step 1 starts
    # from the same weights; later steps' samples may differ where AdamW moved a weight by rounding noise.
    assert len(log) == len(log_two) == 3
    assert (log[0]["reward"], log[0]["sample_length"]) == pytest.approx(
        (log_two[0]["reward"], log_two[0]["sample_length"]), abs=1e-5
    )


def test_a_fine_tune_may_change_a_familys_training_settings_only():
    """An SCST stage after XE could not turn a cnn-lstm's scheduled sampling or attention penalty off: every override
    that differed from the checkpoint was refused. Those two shape training alone, so they are taken (and checked)."""
    from types import SimpleNamespace

    from _helpers import tiny_model

    model = tiny_model("cnn-lstm-attention")
    assert (model.config.teacher_forcing_ratio, model.config.attention_penalty) == (1.0, 1.0)
    overrides = {"teacher_forcing_ratio": 0.5, "attention_penalty": 0.0, "hidden_size": model.config.hidden_size}
    config = SimpleNamespace(model=SimpleNamespace(pretrained="run", overrides=overrides))
    check_overrides_kept(config, model)  # type: ignore[arg-type]
    assert (model.config.teacher_forcing_ratio, model.config.attention_penalty) == (0.5, 0.0)
    config.model.overrides = {"attention_penalty": -1.0}
    with pytest.raises(ConfigError) as error:
        check_overrides_kept(config, model)  # type: ignore[arg-type]
    assert str(error.value) == "model.overrides.attention_penalty: must be >= 0, got -1.0"
    assert model.config.attention_penalty == 0.0
    config.model.overrides = {"hidden_size": model.config.hidden_size + 1}  # builds a layer: the checkpoint's stays
    with pytest.raises(ConfigError, match=r"^model\.overrides\.hidden_size: is \d+, but run has \d+: fine-tuning"):
        check_overrides_kept(config, model)  # type: ignore[arg-type]
