"""`captionkit evaluate --as-validation`: a training run's logged validation figures, recomputed from its model and
data, when the run validated on part of its validation data (`train.eval_batches`, `train.eval_images`); and the
validation captions `evaluate` finds are the ones the run found."""

from __future__ import annotations

import dataclasses
import json
import math
import shlex

import pytest

from _helpers import run_cli
from captionkit.config import TrainConfig, from_dict
from captionkit.data.records import write_jsonl
from captionkit.data.sources import load_records
from captionkit.data.splits import select_split, split_by_image
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.trained_on import TrainedOn
from captionkit.training.loop import train
from captionkit.training.setup import build_setup

STYLES = {"neutral": 0.5, "positive": 0.25, "negative": 0.25}


def _config(data: dict, **train_settings: object) -> TrainConfig:
    settings = {"batch_size": 8, "warmup_steps": 1, "threads": 1, **train_settings}
    return from_dict(
        TrainConfig,
        {"model": {"preset": "tiny"}, "tokenizer": {"vocab_size": 300}, "data": data, "train": settings},
    )


def _trained(root, styles: dict) -> dict:
    """A model validated on 2 batches of 8 of its validation captions and on 5 of its 12 validation images (100
    steps, about 3 s on one CPU thread): enough for captions that share words with the references."""
    data_file = write_synthetic_dataset(root / "scenes", 24, 12, 4, seed=0, image_size=32)
    data = {"train": str(data_file), "val": str(data_file), "cache_images": True, "first_caption_only": True}
    config = _config(data | {"styles": styles}, steps=100, lr=2e-3, eval_every=50, eval_batches=2, eval_images=5)
    result = train(config, root / "run", resume=False)
    logged = [entry for entry in result.history if "val_loss" in entry][-1]
    return {"model": result.output_dir, "data": data_file, "logged": logged}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A style model (neutral, positive, negative): 36 validation captions."""
    return _trained(tmp_path_factory.mktemp("as-validation"), STYLES)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """A model trained without styles."""
    return _trained(tmp_path_factory.mktemp("as-validation-plain"), {})


VALIDATION_NOTE = (
    "evaluating as the run's validation: validation data data.val (its val split, or all); perplexity over the "
    "first 16 (train.eval_batches 2 × train.batch_size 8) of its captions; "
)
COMPUTED_OVER = {
    "plain_run": {
        "captions": "one neutral caption per image (greedy search, at most 39 new tokens) of 5 images: the first 5 "
        "(train.eval_images) of the run's validation images",
        "references": "5 neutral reference captions of those images (all of an image's captions where it has no "
        "neutral one)",
        "perplexity": "the run's 12 validation captions (all: train.eval_batches 2 × train.batch_size 8 hold more) "
        "(neutral), teacher forced, each from its style's start token, cut to 40 tokens",
    },
    "run": {
        "captions": "one caption per image in each of the run's styles (greedy search, at most 39 new tokens), each "
        "from its style's start token, of the first 5 (train.eval_images) of the run's validation images with "
        "references in that style (5 neutral, 5 positive, 5 negative); each metric the mean over styles (each "
        "style's under styles)",
        "references": "each style's references of those images (5 neutral, 5 positive, 5 negative reference captions)",
        "perplexity": "the first 16 (train.eval_batches 2 × train.batch_size 8) of the run's 36 validation captions "
        "(negative, neutral, positive), teacher forced, each from its style's start token, cut to 40 tokens",
        "counts": "integers, not means: num_images the images captioned in some style, length_min and length_max "
        "over every style's captions; vocab_size and unique_captions under styles only (a word or caption may be "
        "in several styles)",
    },
}
CIDER_NOTE = {
    "plain_run": "CIDEr-D of greedy neutral captions of the first 5 images (train.eval_images) against their neutral "
    "references",
    "run": "CIDEr-D per style (neutral, positive, negative) of greedy captions, each from its style's start token, of "
    "the first 5 images (train.eval_images) with references in that style, against those references; val_cider the "
    "mean over styles",
}


@pytest.mark.parametrize("which", ["plain_run", "run"])
def test_as_validation_recomputes_the_logged_validation(request, which, capsys, tmp_path, single_thread):
    trained = request.getfixturevalue(which)
    logged = trained["logged"]
    assert logged["step"] == 100 and logged["val_cider"] > 0.1  # captions that score: a comparison that means something
    args = ["evaluate", "--model", trained["model"], "--data", trained["data"], "--as-validation", "--metrics", "CIDEr"]
    code, out, err = run_cli([*args, "--output", tmp_path], capsys)
    assert code == 0, err
    metrics = json.loads(out)
    # The log keeps 5 decimals of CIDEr-D and of the loss, 4 of the perplexity: equal to what it could hold.
    assert round(metrics["CIDEr"], 5) == logged["val_cider"]
    assert round(math.log(metrics["perplexity"]), 5) == logged["val_loss"]
    assert metrics["perplexity"] == pytest.approx(logged["val_perplexity"], abs=5e-5 + 1e-12)
    kept = ("step", "val_loss", "val_perplexity", "val_cider")
    assert metrics["logged_validation"] == {key: value for key, value in logged.items() if key in kept}
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert metrics["images"] == 5
    over = metrics["computed_over"]
    assert over == COMPUTED_OVER[which]
    if which == "run":
        for style in STYLES:
            assert round(metrics["styles"][style]["CIDEr"], 5) == logged[f"val_cider_{style}"]
    assert VALIDATION_NOTE + CIDER_NOTE[which] in err
    assert f"the run logged at step 100: val_perplexity {logged['val_perplexity']} (evaluate: " in err


def test_as_validation_with_styles_keeps_counts_integers_and_averages_only_the_scores(run, capsys, single_thread):
    """Every figure used to be the mean over styles: vocab_size 3.33, num_images 5.0, length_min 4.67."""
    args = ["evaluate", "--model", run["model"], "--data", run["data"], "--as-validation", "--metrics", "BLEU,CIDEr"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    metrics = json.loads(out)
    styles = metrics["styles"]
    for score in ("Bleu_4", "CIDEr", "distinct_1", "unique_share", "length_mean"):
        assert metrics[score] == pytest.approx(sum(styles[s][score] for s in STYLES) / len(STYLES), abs=1e-12)
    assert metrics["num_images"] == metrics["images"] == 5 and type(metrics["num_images"]) is int
    assert metrics["length_min"] == min(styles[s]["length_min"] for s in STYLES)
    assert metrics["length_max"] == max(styles[s]["length_max"] for s in STYLES)
    assert "vocab_size" not in metrics and "unique_captions" not in metrics
    assert all(type(styles[s][count]) is int for s in STYLES for count in ("vocab_size", "unique_captions"))
    assert "captionkit: counts: integers, not means" in err


def test_the_val_split_is_not_the_subset_and_evaluate_says_how_to_reproduce_it(run, capsys, single_thread):
    args = ["evaluate", "--model", run["model"], "--data", run["data"], "--split", "val", "--beams", "1"]
    code, out, err = run_cli([*args, "--max-length", "39", "--metrics", "CIDEr"], capsys)
    assert code == 0, err
    metrics, logged = json.loads(out), run["logged"]
    assert metrics["images"] == 12 and "logged_validation" not in metrics
    # Over all 36 captions rather than the first 16: another figure (the reason --as-validation exists).
    assert abs(metrics["perplexity"] - logged["val_perplexity"]) > 1e-3
    command = shlex.join(["captionkit", "evaluate", "--model", str(run["model"]), "--data", str(run["data"])])
    assert f"`{command} --as-validation` recomputes them" in err
    note = f"note: the run's last validation (step 100) logged val_perplexity {logged['val_perplexity']}, val_cider"
    assert note in " ".join(err.split())


def test_as_validation_refuses_flags_that_would_change_the_figures(run, capsys, tmp_path):
    base = ["evaluate", "--model", run["model"], "--data", run["data"], "--as-validation"]
    for extra, flag in ((["--beams", "3"], "--beams"), (["--split", "val"], "--split"), (["--styles"], "--styles")):
        code, _, err = run_cli([*base, *extra], capsys)
        assert code == 1 and err.count("\n") == 1
        assert f"{flag}: not with --as-validation (it evaluates as the run's validation did)" in err
    code, _, err = run_cli(["evaluate", "--model", tmp_path, "--data", run["data"], "--as-validation"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "--as-validation needs a training run's model directory (with a readable train_config.json)" in err


@pytest.mark.parametrize("styles", [{}, STYLES])
@pytest.mark.parametrize("held_out", [True, False])
def test_evaluate_finds_the_validation_captions_the_run_found(tmp_path, held_out, styles):
    """Unlabelled data, some images labelled val or test: the held-out images (seeded), or a separate data.val's
    records in a val split or without one; the first caption of each image and style, of the run's styles."""
    records = load_records(write_synthetic_dataset(tmp_path / "scenes", 12, 4, 4, seed=2, image_size=32))
    unlabelled = [dataclasses.replace(r, split=None) if r.split == "train" else r for r in records]
    data_file = write_jsonl(unlabelled, tmp_path / "mixed.jsonl")
    data = {"train": str(data_file), "val_fraction": 0.3, "first_caption_only": True, "styles": styles}
    config = _config(data | ({} if held_out else {"val": str(data_file)}), seed=5)
    expected = build_setup(config).val_records
    saved = TrainedOn.read_config(config.to_dict())
    assert saved is not None and saved.held_out_val == held_out
    found = saved.validation_records(load_records(data_file))
    assert found == expected and len({r.image_id for r in found}) > 4  # unlabelled images among them
    if held_out:  # `--split val` holds the same images, as `data check` shows them
        val_images = {r.image_id for r in select_split(saved.split(load_records(data_file)), "val")}
        assert val_images == {r.image_id for r in split_by_image(unlabelled, 0.3, seed=5)[1]}
        assert val_images == {r.image_id for r in found}
