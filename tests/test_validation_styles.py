"""Validation CIDEr-D of a run trained with styles (SentiCap's positive and negative, as in
the recipe senticap-vit-gpt2-from-parts; COCO's neutral beside them, as in the recipe senticap-style): its
validation captions the first images that have references in each style, from that style's start token, and scores
them against that style's references; `val_cider` is the mean over styles, and `evaluate --as-validation` recomputes
it."""

from __future__ import annotations

import contextlib
import json
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from _helpers import run_cli
from captionkit.api import Captioner
from captionkit.config import TrainConfig, from_dict
from captionkit.data.records import CaptionRecord, write_jsonl
from captionkit.data.sources import load_records
from captionkit.data.styles import validation_styles
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.decoding import DecodingConfig
from captionkit.errors import InputError
from captionkit.evaluation import evaluate_captions
from captionkit.model_evaluation import evaluate_as_validation
from captionkit.serve import ServeSettings, create_app
from captionkit.trained_on import TrainedOn
from captionkit.training.loop import train
from captionkit.training.validation import style_references

STYLES = {"positive": 0.5, "negative": 0.5}
EVAL_IMAGES = 6
# Validation images (by position) left without a negative caption: a style is scored on the first EVAL_IMAGES images
# that have its references (positive: images 0-5; negative: 0, 2, 3, 5, 6, 7).
NO_NEGATIVE = (1, 4)
VALIDATED_IMAGES = 8


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


def _validation(run) -> tuple[TrainedOn, list[CaptionRecord]]:
    trained = TrainedOn.read(run["model"])
    assert trained is not None
    return trained, trained.validation_records(load_records(run["data"]))


def _references(validation: list[CaptionRecord], images: list[str], style: str | None = None) -> tuple[dict, dict]:
    """Each of ``images``' captions (of ``style``; all of them when None) in ``validation``, and its path."""
    refs: dict[str, list[str]] = {}
    paths = {}
    for record in validation:
        if record.image_id in images and style in (None, record.style):
            refs.setdefault(record.image_id, []).append(record.caption)
            paths[record.image_id] = record.image_path
    return refs, paths


def _by_hand(run) -> dict[str, float]:
    """Per style: greedy captions in that style (Captioner.caption(style=...)) of the first EVAL_IMAGES validation
    images that have a caption of that style, CIDEr-D against the image's captions of that style."""
    _, validation = _validation(run)
    captioner = Captioner.from_pretrained(run["model"], device="cpu")
    budget = run["config"].data.max_length - 1
    figures = {}
    for style in STYLES:
        first = list(dict.fromkeys(r.image_id for r in validation if r.style == style))[:EVAL_IMAGES]
        refs, paths = _references(validation, first, style)
        ids = list(refs)
        found = captioner.caption([paths[i] for i in ids], style=style, num_beams=1, max_new_tokens=budget)
        candidates = {image_id: result.captions[0].caption for image_id, result in zip(ids, found, strict=True)}
        figures[style] = evaluate_captions(refs, candidates, metrics="CIDEr")["CIDEr"]
    assert len(figures) == 2
    return figures


def _plain_start_figure(run) -> float:
    """What validation logged before: captions from the plain start token (never trained here) against every
    caption of each image (it has no neutral one)."""
    _, validation = _validation(run)
    first = list(dict.fromkeys(r.image_id for r in validation))[:EVAL_IMAGES]
    refs, paths = _references(validation, first)
    captioner = Captioner.from_pretrained(run["model"], device="cpu")
    budget = run["config"].data.max_length - 1
    # caption_pil takes the config as given: caption() refuses neutral for this model (see the test below).
    images = captioner.load_images([paths[i] for i in first])
    found = captioner.caption_pil(images, DecodingConfig(num_beams=1, max_new_tokens=budget))
    candidates = {image_id: captions[0].caption for image_id, captions in zip(first, found, strict=True)}
    return evaluate_captions(refs, candidates, metrics="CIDEr")["CIDEr"]


def test_a_model_trained_without_neutral_writes_only_its_styles(run, capsys, tmp_path, single_thread):
    """Its plain start token was never trained, so neutral captions would be noise: the API, the CLI and the server
    refuse them in one line (asked for, or by default), and list only the styles it writes."""
    captioner = Captioner.from_pretrained(run["model"], device="cpu")
    assert captioner.styles == ["positive", "negative"]
    image = load_records(run["data"])[0].image_path
    refusal = (
        f"{run['model']} was trained on positive and negative captions only (its data.styles leave neutral out): "
        "ask for positive or negative"
    )
    for style in (None, "neutral", "Neutral"):
        with pytest.raises(InputError) as refused:
            captioner.caption(image, style=style)
        assert str(refused.value) == f"style: {refusal}"
    with pytest.raises(InputError, match="positive and negative captions only"):
        captioner.style_start_token("neutral")
    assert captioner.caption(image, style="negative", num_beams=1)[0].caption
    code, _, err = run_cli(["caption", image, "--model", run["model"]], capsys)
    assert code == 1 and err == f"captionkit: error: --style: {refusal}\n"
    code, out, err = run_cli(["caption", image, "--model", run["model"], "--style", "positive"], capsys)
    assert code == 0 and json.loads(out)["caption"], err
    code, _, err = run_cli(["evaluate", "--model", run["model"], "--data", run["data"], "--split", "val"], capsys)
    assert code == 1 and err.splitlines()[-1] == (
        f"captionkit: error: {run['model']} was trained on positive and negative captions only (its data.styles leave "
        "neutral out): evaluate it with --styles, each style against its references"
    )
    args = ["evaluate", "--model", run["model"], "--data", run["data"], "--split", "val", "--styles", "--beams", "1"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    table = json.loads(out)
    assert list(table["styles"]) == ["positive", "negative"] and table["failed_images"] == 0
    assert all(row["content_match"] is None for row in table["styles"].values())  # no neutral caption to compare
    with TestClient(create_app({"styled": captioner}, ServeSettings(max_wait_ms=0))) as client:
        assert client.get("/v1/models").json()["models"][0]["styles"] == ["positive", "negative"]
        files = {"image": ("a.png", image.read_bytes(), "image/png")}
        refused = client.post("/v1/captions", files=files, data={"num_beams": "1"})
        assert refused.status_code == 422
        served_refusal = refusal.replace(str(run["model"]), "model 'styled'", 1)
        assert refused.json()["detail"] == f"style: {served_refusal}"
        answered = client.post("/v1/captions", files=files, data={"num_beams": "1", "style": "positive"})
        assert answered.status_code == 200, answered.text


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
    assert metrics["images"] == VALIDATED_IMAGES and metrics["failed_images"] == 0
    results = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    # Per style the first 6 images with its references: images 0-5 positive, images 0, 2, 3, 5, 6, 7 negative.
    assert [sum(r["style"] == style for r in results) for style in STYLES] == [EVAL_IMAGES, EVAL_IMAGES]
    assert "each from its style's start token" in metrics["computed_over"]["captions"]
    assert "(6 positive, 6 negative)" in metrics["computed_over"]["captions"], metrics["computed_over"]
    # stderr says what val_cider is over: per style, their mean (it said "greedy neutral captions").
    assert (
        "CIDEr-D per style (positive, negative) of greedy captions, each from its style's start token, of the first 6 "
        "images (train.eval_images) with references in that style, against those references; val_cider the mean over "
        "styles" in err
    ), err
    assert "neutral" not in err.split("evaluating as the run's validation:")[1].splitlines()[0]


def test_as_validation_progress_counts_each_validation_image_once(run, single_thread):
    # 6 positive and 6 negative captions of 8 images: the CLI's bar, sized to 8 images, must end at 8 (it stopped
    # short when the captions were counted as whole images).
    trained, validation = _validation(run)
    captioner = Captioner.from_pretrained(run["model"], device="cpu")
    counted: list[int] = []
    evaluate_as_validation(captioner, validation, trained, "CIDEr", batch_size=4, on_progress=counted.append)
    assert sum(counted) == VALIDATED_IMAGES and min(counted) >= 0


def test_the_as_validation_progress_bar_is_sized_to_the_images_it_counts(run, capsys, monkeypatch, single_thread):
    # Each style's first 6 images make 8 images in all: the CLI's bar is sized to 8 and ends there (it was sized to
    # train.eval_images, 6, and ran past its end).
    bars: list[list[int]] = []

    @contextlib.contextmanager
    def recording(description: str, total: int) -> Iterator[Callable[[int], None]]:
        counted = [total]
        bars.append(counted)
        yield counted.append

    monkeypatch.setattr("captionkit.cli.evaluate.progress_bar", recording)
    args = ["evaluate", "--model", run["model"], "--data", run["data"], "--as-validation", "--metrics", "CIDEr"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    ((total, *advances),) = bars
    assert total == sum(advances) == VALIDATED_IMAGES


@pytest.mark.parametrize("kind", ["int8", "onnx"])
def test_an_export_of_a_model_without_neutral_writes_only_its_styles_too(run, kind, tmp_path, single_thread):
    """The export keeps the run's settings (train_config.json), which say the model writes positive and negative
    only: it refuses neutral captions as the checkpoint does (it wrote noise from the untrained start token)."""
    from captionkit.export.int8 import export_int8
    from captionkit.export.onnx import export_onnx

    (export_int8 if kind == "int8" else export_onnx)(run["model"], tmp_path / kind)
    exported = Captioner.from_pretrained(tmp_path / kind)
    assert exported.styles == ["positive", "negative"]
    image = load_records(run["data"])[0].image_path
    with pytest.raises(InputError, match="positive and negative captions only"):
        exported.caption(image)
    assert exported.caption(image, style="positive", num_beams=1)[0].caption


def test_the_validation_description_names_what_val_cider_is_over():
    def described(styles: dict) -> str:
        saved = {"data": {"val_fraction": 0.1, "styles": styles}, "train": {"seed": 0, "eval_images": 4}}
        return TrainedOn.read_config(saved).describe_validation()

    assert described({}).endswith(
        "CIDEr-D of greedy neutral captions of the first 4 images (train.eval_images) against their neutral references"
    )
    styled = described({"negative": 0.25, "positive": 0.25, "neutral": 0.5})
    assert "CIDEr-D per style (neutral, positive, negative) of greedy captions" in styled
    assert described({"negative": 1.0}).endswith(
        "CIDEr-D per style (negative) of greedy captions, each from its style's start token, of the first 4 images "
        "(train.eval_images) with references in that style, against those references; val_cider the mean over styles"
    )


def test_which_styles_validation_captions_in():
    assert validation_styles({}) == ("neutral",)
    assert validation_styles({"neutral": 0.5, "positive": 0.25, "negative": 0.25}) == (
        "neutral",
        "positive",
        "negative",
    )
    assert validation_styles({"negative": 0.5, "positive": 0.25, "neutral": 0.25}) == (
        "neutral",
        "positive",
        "negative",
    )
    assert validation_styles({"neutral": 1.0}) == ("neutral",)
    assert validation_styles({"positive": 0.5, "negative": 0.5}) == ("positive", "negative")
    assert validation_styles({"negative": 0.5, "positive": 0.5}) == ("positive", "negative")  # one order
    assert validation_styles(("negative",)) == ("negative",)


def test_each_style_is_validated_on_the_first_images_that_have_its_references():
    """COCO's neutral images first, SentiCap's styled ones after them (the recipe senticap-style): every style is
    measured on train.eval_images images of its own, not only those among the data's first images."""
    records = [CaptionRecord(Path(f"coco{i}.jpg"), f"neutral {i}", image_id=f"coco{i}") for i in range(5)]
    for i in range(3):
        for style in ("positive", "negative"):
            records.append(CaptionRecord(Path(f"senti{i}.jpg"), f"{style} {i}", style, image_id=f"senti{i}"))
    records.append(CaptionRecord(Path("senti0.jpg"), "positive again", "positive", image_id="senti0"))
    found = style_references(records, {"neutral": 0.5, "positive": 0.25, "negative": 0.25}, max_images=2)
    assert {style: list(images) for style, images in found.items()} == {
        "neutral": ["coco0", "coco1"],
        "positive": ["senti0", "senti1"],
        "negative": ["senti0", "senti1"],
    }
    assert [r.caption for r in found["positive"]["senti0"]] == ["positive 0", "positive again"]  # all its captions
    # Without styles: the first images, each against its neutral captions (all of them where it has none).
    plain = style_references(records, {}, max_images=2)
    assert {style: list(images) for style, images in plain.items()} == {"neutral": ["coco0", "coco1"]}


def test_a_run_with_neutral_among_its_styles_validates_every_style(tmp_path, single_thread):
    # Each style, neutral too, captioned from its start token and scored against its references; val_cider their
    # mean (tests/test_evaluate_as_validation.py checks the figures against evaluate --as-validation).
    data_file = write_synthetic_dataset(tmp_path / "scenes", 8, 4, 0, seed=3, image_size=32)
    data = {"train": str(data_file), "val": str(data_file), "cache_images": True, "first_caption_only": True}
    styles = {"neutral": 0.5, "positive": 0.25, "negative": 0.25}
    config = _config(data | {"styles": styles}, steps=2, eval_every=2, eval_images=2)
    result = train(config, tmp_path / "run", resume=False)
    logged = [entry for entry in result.history if "val_loss" in entry][-1]
    per_style = [logged[f"val_cider_{style}"] for style in ("neutral", "positive", "negative")]
    assert logged["val_cider"] == pytest.approx(statistics.mean(per_style), abs=1e-5)
