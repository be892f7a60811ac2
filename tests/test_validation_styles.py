"""Validation CIDEr-D of a run trained with styles that leave neutral out (SentiCap's positive and negative, as in
configs/senticap-vit-gpt2-from-parts.yaml): such a run never trains the plain start token, so its validation captions
each style from that style's start token and scores them against that style's references; `val_cider` is the mean
over styles, and `evaluate --as-validation` recomputes it."""

from __future__ import annotations

import json
import statistics

import pytest

from _helpers import run_cli
from captionkit.api import Captioner
from captionkit.config import TrainConfig, from_dict
from captionkit.data.records import write_jsonl
from captionkit.data.sources import load_records
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.evaluation import evaluate_captions
from captionkit.model_evaluation import evaluate_as_validation
from captionkit.trained_on import TrainedOn
from captionkit.training.loop import train
from captionkit.training.validation import validation_styles

STYLES = {"positive": 0.5, "negative": 0.5}
EVAL_IMAGES = 6
# Validation images (by position) left without a negative caption: a style is scored on the images that have its
# references.
NO_NEGATIVE = (1, 4)


def _config(data: dict, **train_settings: object) -> TrainConfig:
    settings = {"batch_size": 8, "warmup_steps": 1, "threads": 1, "device": "cpu", "tensorboard": False}
    return from_dict(
        TrainConfig,
        {
            "model": {"preset": "tiny"},
            "tokenizer": {"vocab_size": 300},
            "data": data,
            "train": settings | train_settings,
        },
    )


def _data_file(root):
    """Synthetic scenes (each image: neutral, positive and negative captions), two validation images' negative
    captions removed."""
    records = load_records(write_synthetic_dataset(root / "scenes", 24, 12, 4, seed=0, image_size=32))
    val_images = list(dict.fromkeys(r.image_id for r in records if r.split == "val"))
    dropped = {val_images[i] for i in NO_NEGATIVE}
    kept = [r for r in records if not (r.image_id in dropped and r.style == "negative")]
    return write_jsonl(kept, root / "styled.jsonl")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A positive/negative style model (100 steps, a few seconds on one CPU thread), validated at its last step."""
    root = tmp_path_factory.mktemp("style-validation")
    data_file = _data_file(root)
    data = {"train": str(data_file), "val": str(data_file), "cache_images": True, "first_caption_only": True}
    config = _config(data | {"styles": STYLES}, steps=100, lr=2e-3, eval_every=100, eval_images=EVAL_IMAGES)
    result = train(config, root / "run", resume=False)
    logged = [entry for entry in result.history if "val_loss" in entry][-1]
    return {"model": result.output_dir, "data": data_file, "logged": logged, "config": config}


def _by_hand(run) -> dict[str, float]:
    """Per style: greedy captions in that style (Captioner.caption(style=...)) of the first EVAL_IMAGES validation
    images that have a caption of that style, CIDEr-D against the image's captions of that style."""
    trained = TrainedOn.read(run["model"])
    assert trained is not None
    validation = trained.validation_records(load_records(run["data"]))
    first = list(dict.fromkeys(r.image_id for r in validation))[:EVAL_IMAGES]
    captioner = Captioner.from_pretrained(run["model"], device="cpu")
    budget = run["config"].data.max_length - 1
    figures = {}
    for style in STYLES:
        refs: dict[str, list[str]] = {}
        paths = {}
        for record in validation:
            if record.image_id in first and record.style == style:
                refs.setdefault(record.image_id, []).append(record.caption)
                paths[record.image_id] = record.image_path
        ids = list(refs)
        found = captioner.caption([paths[i] for i in ids], style=style, num_beams=1, max_new_tokens=budget)
        candidates = {image_id: result.captions[0].caption for image_id, result in zip(ids, found, strict=True)}
        figures[style] = evaluate_captions(refs, candidates, metrics="CIDEr")["CIDEr"]
    assert len(figures) == 2
    return figures


def _plain_start_figure(run) -> float:
    """What validation logged before: captions from the plain start token (never trained here) against every
    caption of each image (it has no neutral one)."""
    trained = TrainedOn.read(run["model"])
    assert trained is not None
    validation = trained.validation_records(load_records(run["data"]))
    first = list(dict.fromkeys(r.image_id for r in validation))[:EVAL_IMAGES]
    refs: dict[str, list[str]] = {}
    paths = {}
    for record in validation:
        if record.image_id in first:
            refs.setdefault(record.image_id, []).append(record.caption)
            paths[record.image_id] = record.image_path
    captioner = Captioner.from_pretrained(run["model"], device="cpu")
    budget = run["config"].data.max_length - 1
    found = captioner.caption([paths[i] for i in first], num_beams=1, max_new_tokens=budget)
    candidates = {image_id: result.captions[0].caption for image_id, result in zip(first, found, strict=True)}
    return evaluate_captions(refs, candidates, metrics="CIDEr")["CIDEr"]


def test_validation_cider_is_the_mean_of_each_styles_cider_against_its_own_references(run, single_thread):
    logged = run["logged"]
    figures = _by_hand(run)
    assert min(figures.values()) > 0.1  # captions that score: a comparison that means something
    assert logged["val_cider_positive"] == round(figures["positive"], 5)
    assert logged["val_cider_negative"] == round(figures["negative"], 5)
    assert logged["val_cider"] == round(statistics.mean(figures.values()), 5)
    # The figure it replaces: captions from a start token the run never trained.
    assert abs(logged["val_cider"] - _plain_start_figure(run)) > 1e-3


def test_as_validation_recomputes_a_style_runs_validation_cider(run, capsys, tmp_path, single_thread):
    logged = run["logged"]
    args = ["evaluate", "--model", run["model"], "--data", run["data"], "--as-validation", "--metrics", "CIDEr"]
    code, out, err = run_cli([*args, "--output", tmp_path], capsys)
    assert code == 0, err
    metrics = json.loads(out)
    assert round(metrics["CIDEr"], 5) == logged["val_cider"]
    for style in STYLES:
        assert round(metrics["styles"][style]["CIDEr"], 5) == logged[f"val_cider_{style}"]
    assert round(metrics["perplexity"], 4) == logged["val_perplexity"]
    assert metrics["images"] == EVAL_IMAGES and metrics["failed_images"] == 0
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    # Each image once per style it has references of: 6 positive, 4 negative.
    assert [sum(r["style"] == style for r in results) for style in STYLES] == [EVAL_IMAGES, EVAL_IMAGES - 2]
    assert "each from its style's start token" in metrics["computed_over"]["captions"]
    assert "(6 positive, 4 negative)" in metrics["computed_over"]["captions"], metrics["computed_over"]
    # stderr says what val_cider is over: per style, their mean (it said "greedy neutral captions").
    assert (
        "CIDEr-D per style (positive, negative) of greedy captions of the first 6 images (train.eval_images) in that "
        "style, each from its style's start token, against the image's references in that style (images without one "
        "left out); val_cider the mean over styles" in err
    ), err
    assert "neutral" not in err.split("evaluating as the run's validation:")[1].splitlines()[0]


def test_as_validation_progress_counts_each_validation_image_once(run, single_thread):
    # 6 positive and 4 negative captions of 6 images: the CLI's bar, sized to 6 images, must end at 6 (it stopped
    # at 5, the 10 captions halved).
    trained = TrainedOn.read(run["model"])
    assert trained is not None
    validation = trained.validation_records(load_records(run["data"]))
    captioner = Captioner.from_pretrained(run["model"], device="cpu")
    counted: list[int] = []
    evaluate_as_validation(captioner, validation, trained, "CIDEr", batch_size=4, on_progress=counted.append)
    assert sum(counted) == EVAL_IMAGES and min(counted) >= 0


def test_the_validation_description_names_what_val_cider_is_over():
    def described(styles: dict) -> str:
        saved = {"data": {"val_fraction": 0.1, "styles": styles}, "train": {"seed": 0, "eval_images": 4}}
        return TrainedOn.read_config(saved).describe_validation()

    neutral = "CIDEr-D of greedy neutral captions of the first 4 images (train.eval_images) against their neutral"
    assert neutral in described({}) and neutral in described({"neutral": 0.5, "positive": 0.5})
    styled = described({"negative": 0.5, "positive": 0.5})
    assert "CIDEr-D per style (positive, negative) of greedy captions" in styled and "neutral" not in styled
    assert described({"negative": 1.0}).endswith(
        "CIDEr-D per style (negative) of greedy captions of the first 4 images (train.eval_images) in that style, "
        "each from its style's start token, against the image's references in that style (images without one left "
        "out); val_cider the mean over styles"
    )


def test_which_styles_validation_captions_in():
    assert validation_styles({}) == ("neutral",)
    assert validation_styles({"neutral": 0.5, "positive": 0.25, "negative": 0.25}) == ("neutral",)
    assert validation_styles({"neutral": 1.0}) == ("neutral",)
    assert validation_styles({"positive": 0.5, "negative": 0.5}) == ("positive", "negative")
    assert validation_styles({"negative": 0.5, "positive": 0.5}) == ("positive", "negative")  # one order
    assert validation_styles(("negative",)) == ("negative",)


def test_a_run_with_neutral_among_its_styles_logs_one_neutral_figure(tmp_path, single_thread):
    # Neutral captions start from the plain start token, which such a run trains: validation captions neutral, as
    # before, with no per-style keys (tests/test_evaluate_as_validation.py checks the figure against evaluate).
    data_file = write_synthetic_dataset(tmp_path / "scenes", 8, 4, 0, seed=3, image_size=32)
    data = {"train": str(data_file), "val": str(data_file), "cache_images": True, "first_caption_only": True}
    styles = {"neutral": 0.5, "positive": 0.25, "negative": 0.25}
    config = _config(data | {"styles": styles}, steps=2, eval_every=2, eval_images=2)
    result = train(config, tmp_path / "run", resume=False)
    logged = [entry for entry in result.history if "val_loss" in entry][-1]
    assert "val_cider" in logged and not any(key.startswith("val_cider_") for key in logged)
