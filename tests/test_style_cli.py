"""Styles from the command line: `caption --style`, `evaluate --styles` and `compare`, on a model trained with style
control (a few steps on the synthetic scenes) beside one trained without."""

from __future__ import annotations

import json
import shutil

import pytest

from _data import SHARED_DATA
from _helpers import run_cli
from captionkit.api import Captioner
from captionkit.config import TrainConfig, from_dict
from captionkit.data.synthetic import NEGATIVE_WORDS, POSITIVE_WORDS, write_synthetic_dataset
from captionkit.training.loop import train

STYLE_WORDS = {"neutral": POSITIVE_WORDS + NEGATIVE_WORDS, "positive": POSITIVE_WORDS, "negative": NEGATIVE_WORDS}


def _train(root, data_file, styles):
    """``styles``: 100 steps at lr 2e-3, enough for the tiny model to learn the styles' words (12 s on one CPU);
    without: 3 steps, a model that only has to load and caption."""
    data = {"train": str(data_file), "val": str(data_file), "cache_images": True, "first_caption_only": True}
    steps = {"steps": 100, "lr": 2e-3} if styles else {"steps": 3}
    if styles:
        data["styles"] = {"neutral": 0.5, "positive": 0.25, "negative": 0.25}
    config = from_dict(
        TrainConfig,
        {
            "model": {"preset": "tiny"},
            "tokenizer": {"vocab_size": 300},
            "data": data,
            "train": {**steps, "batch_size": 8, "warmup_steps": 1, "eval_images": 4 if styles else 0, "threads": 1},
        },
    )
    return train(config, root, resume=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("styles")
    data_file = write_synthetic_dataset(root / "scenes", 24, 4, 4, seed=0, image_size=32)
    styled = _train(root / "styled", data_file, styles=True)
    return {
        "styled": styled.output_dir,
        "styled_run": styled,
        "plain": _train(root / "plain", data_file, styles=False).output_dir,
        "data": data_file,
        "images": root / "scenes" / "images" / "test",
    }


def test_caption_with_a_style_uses_the_style_start_token(models, capsys, single_thread):
    captioner = Captioner.from_pretrained(models["styled"], device="cpu")
    assert captioner.styles == ["neutral", "positive", "negative"]
    images = sorted(models["images"].iterdir())
    expected = [r.caption for r in captioner.caption(images, style="negative", num_beams=1)]
    code, out, _ = run_cli(
        ["caption", models["images"], "--model", models["styled"], "--beams", "1", "--style", "negative"], capsys
    )
    assert code == 0
    got = {json.loads(line)["image"]: json.loads(line)["caption"] for line in out.splitlines()}
    assert [got[str(path)] for path in images] == expected


def test_a_style_changes_the_caption_and_brings_its_words(models, single_thread):
    captioner = Captioner.from_pretrained(models["styled"], device="cpu")
    images = sorted(models["images"].iterdir())
    captions = {s: [r.caption for r in captioner.caption(images, style=s, num_beams=1)] for s in STYLE_WORDS}
    for style, words in STYLE_WORDS.items():
        for caption, neutral in zip(captions[style], captions["neutral"], strict=True):
            assert (caption != neutral) == (style != "neutral"), (style, caption)
            assert any(word in caption.split() for word in words) == (style != "neutral"), (style, caption)


def test_style_requests_the_model_cannot_serve_fail_in_one_line(models, capsys, single_thread):
    code, _, err = run_cli(["caption", models["images"], "--model", models["plain"], "--style", "positive"], capsys)
    assert code == 1 and err.count("\n") == 1
    assert "was trained without styles: it cannot write positive captions" in err
    code, _, err = run_cli(["caption", models["images"], "--model", models["styled"], "--style", "happy"], capsys)
    assert code == 1 and "--style: unknown style 'happy'" in err


def test_evaluate_styles_prints_the_style_table(models, capsys, tmp_path, single_thread):
    args = ["evaluate", "--model", models["styled"], "--data", models["data"], "--styles", "--beams", "1"]
    code, out, err = run_cli([*args, "--output", tmp_path], capsys)
    assert code == 0, err
    table = json.loads(out.strip().splitlines()[-1])
    assert set(table["styles"]) == {"neutral", "positive", "negative"} and table["failed_images"] == 0
    for row in table["styles"].values():
        assert row["count"] == table["images"] == 4
        # The model learnt the styles (see test_a_style_changes_the_caption_and_brings_its_words): every caption is
        # read as its style, keeps the scene's content, and scores CIDEr-D 0.62-0.76 against the styled references.
        assert row["style_accuracy"] == 1.0 and row["content_match"] == 1.0
        assert row["cider_d"] > 0.4
    assert json.loads((tmp_path / "styles.json").read_text()) == table
    assert "CIDEr" in err and "negative" in err  # the rich table


def test_evaluate_styles_of_unreadable_images_fails_in_one_line(models, capsys, tmp_path, single_thread):
    data = tmp_path / "scenes"
    shutil.copytree(models["data"].parent, data)
    for image in (data / "images").rglob("*.png"):
        image.write_text("not an image")
    args = ["evaluate", "--model", models["styled"], "--data", data / models["data"].name, "--styles", "--beams", "1"]
    code, out, err = run_cli(args, capsys)
    assert (code, out) == (1, "")
    line = f"captionkit: error: {data / models['data'].name}: none of its 4 images could be read ("
    assert err.strip().splitlines()[-1].startswith(line)


def test_compare_shows_models_side_by_side(models, capsys, tmp_path, single_thread):
    out_file = tmp_path / "compare.jsonl"
    specs = [f"plain={models['plain']}", f"happy={models['styled']}@positive"]
    args = ["compare", models["images"], *[x for spec in specs for x in ("--model", spec)], "--beams", "1"]
    code, _, err = run_cli([*args, "--output", out_file], capsys)
    assert code == 0, err
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(records) == 4 and all(set(r["captions"]) == {"plain", "happy"} for r in records)
    styled = Captioner.from_pretrained(models["styled"], device="cpu")
    first = sorted(models["images"].iterdir())[0]
    expected = styled.caption([first], style="positive", num_beams=1)[0].caption
    assert next(r for r in records if r["image"] == str(first))["captions"]["happy"] == expected
    # The table names each image by its path under the shared folder, whole (never cut to a common prefix). A title
    # wider than the terminal folds, inside the path too: compared without the whitespace.
    assert f"imagesin{models['images']}" in "".join(err.split())
    assert all(path.name in err for path in models["images"].iterdir()) and "…" not in err
    code, _, err = run_cli(["compare", models["images"], "--model", str(models["plain"])], capsys)
    assert code == 1 and "at least two models" in err


def test_evaluate_agrees_with_the_training_runs_validation(models, capsys, tmp_path, single_thread):
    """The same model on the same split: evaluate's perplexity and CIDEr-D are the run's last validation figures
    (its greedy neutral captions against the neutral references: val_cider_neutral, one of the styles whose mean is
    val_cider; perplexity over every style's caption)."""
    run = models["styled_run"]
    args = ["evaluate", "--model", models["styled"], "--data", models["data"], "--split", "val", "--beams", "1"]
    code, out, err = run_cli([*args, "--max-length", "39", "--metrics", "CIDEr"], capsys)  # data.max_length - 1
    assert code == 0, err
    metrics = json.loads(out)
    assert run.val_cider is not None and run.val_perplexity is not None
    logged = [entry for entry in run.history if "val_loss" in entry][-1]
    assert metrics["CIDEr"] == pytest.approx(logged["val_cider_neutral"], abs=1e-5)
    per_style = [logged[f"val_cider_{style}"] for style in ("neutral", "positive", "negative")]
    assert run.val_cider == pytest.approx(sum(per_style) / 3, abs=1e-5)
    assert metrics["perplexity"] == pytest.approx(run.val_perplexity, rel=1e-4)
    assert metrics["images"] == 4
    assert metrics["computed_over"] == {
        "captions": "one neutral caption per image (greedy search, at most 39 new tokens) of 4 images",
        "references": "4 neutral reference captions of those images (all of an image's captions where it has no "
        "neutral one)",
        "perplexity": "12 reference captions of those images (negative, neutral, positive), teacher forced, each "
        "from its style's start token, cut to 40 tokens",
    }
    assert "evaluating the val split: 4 of 32 images" in err
    assert "data: the first caption of each image and style in the styles negative, neutral, positive (as the" in err


def test_first_caption_only_holds_on_the_runs_own_data_only(models, capsys, tmp_path, single_thread):
    """A run with data.first_caption_only scored on its own data (by any spelling of its path) counts the first
    caption of each image, as its validation did; on other data, every caption of an image is a reference."""
    copy = tmp_path / "copy"
    shutil.copytree(models["data"].parent, copy)
    neutral = [json.loads(line) for line in models["data"].read_text().splitlines()]
    val_images = {r["image_id"] for r in neutral if r["split"] == "val" and r["style"] == "neutral"}
    every = sum(r["split"] == "val" and r["style"] == "neutral" for r in neutral)
    assert every > len(val_images)  # several neutral captions per image: the two readings differ
    base = ["evaluate", "--model", models["plain"], "--split", "val", "--beams", "1", "--max-length", "3"]
    folder = models["data"].parent
    spellings = {
        "own": [folder / ".." / folder.name / models["data"].name, folder],  # the file the run named, its folder
        "other": [copy / models["data"].name, copy],
    }
    for which, specs in spellings.items():
        for data in specs:
            code, out, err = run_cli([*base, "--data", str(data), "--metrics", "CIDEr"], capsys)
            assert code == 0, err
            references = json.loads(out)["computed_over"]["references"]
            if which == "own":
                assert references.startswith(f"{len(val_images)} neutral reference captions"), (data, references)
                assert "data: the first caption of each image (as the model's training run)" in err
            else:
                assert references.startswith(f"{every} neutral reference captions"), (data, references)
                said = "data: every caption (the model's training run kept the first caption of each image of its own"
                assert said in err


def test_a_run_that_named_a_folder_reads_a_file_of_it_as_its_own_data(tmp_path):
    """The run named the folder, evaluate names the captions file its reader read: one dataset. Another file in the
    folder, which the reader did not read, is other data."""
    from captionkit.data.sources import load_dataset
    from captionkit.trained_on import TrainedOn

    data_file = write_synthetic_dataset(tmp_path / "scenes", 4, 2, 2, seed=0, image_size=32)
    folder = data_file.parent
    run = TrainedOn(0.0, 0, False, True, (), 40, run_data=(str(folder),))
    assert run.read_data(str(data_file), load_dataset(data_file).files)
    assert run.read_data(str(folder), load_dataset(folder).files)
    other = folder / "images" / "other.jsonl"
    other.write_text(data_file.read_text().replace('"images/', '"../images/'))
    assert not run.read_data(str(other), load_dataset(other).files)
    assert not TrainedOn(0.0, 0, False, True, (), 40).read_data(str(data_file), [data_file])  # no data recorded


def test_style_names_in_any_case_ask_for_the_same_captions(models, capsys, single_thread):
    """The data readers take a style column in any case; the CLI, compare's MODEL@STYLE and the API take the style
    asked for the same way (they answered "unknown style 'Negative'")."""
    captioner = Captioner.from_pretrained(models["styled"], device="cpu")
    images = sorted(models["images"].iterdir())
    expected = [r.caption for r in captioner.caption(images, style="negative", num_beams=1)]
    assert [r.caption for r in captioner.caption(images, style="Negative", num_beams=1)] == expected
    code, out, err = run_cli(
        ["caption", models["images"], "--model", models["styled"], "--beams", "1", "--style", "NEGATIVE"], capsys
    )
    assert code == 0, err
    got = {json.loads(line)["image"]: json.loads(line)["caption"] for line in out.splitlines()}
    assert [got[str(path)] for path in images] == expected
    specs = [f"plain={models['plain']}", f"sad={models['styled']}@Negative"]
    args = ["compare", images[0], *[x for spec in specs for x in ("--model", spec)], "--beams", "1"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["captions"]["sad"] == expected[0]


def test_evaluate_styles_of_a_model_trained_without_styles_fails_in_one_line(models, capsys, single_thread):
    """As `caption --style`: a table of neutral captions alone would pass for a style evaluation."""
    args = ["evaluate", "--model", models["plain"], "--data", models["data"], "--styles", "--beams", "1"]
    code, out, err = run_cli(args, capsys)
    assert (code, out) == (1, "")
    assert err.strip().splitlines()[-1] == (
        f"captionkit: error: --styles: {models['plain']} was trained without styles: it writes neutral captions "
        "only (evaluate without --styles scores them)"
    )


def test_evaluate_styles_on_senticap_alone_has_no_neutral_style_accuracy(models, capsys, single_thread):
    """The README's command: SentiCap's captions train the classifier on positive and negative only, so the neutral
    row has no style accuracy (it was 0.000, every neutral caption counted wrong) and no references."""
    senticap = SHARED_DATA / "senticap" / "senticap_subset.json"
    data = f"{senticap}?images={SHARED_DATA / 'coco' / 'val2017'}&images={SHARED_DATA / 'senticap' / 'images'}"
    args = ["evaluate", "--model", models["styled"], "--data", data, "--split", "train", "--styles", "--beams", "1"]
    code, out, err = run_cli([*args, "--lexicon", SHARED_DATA / "senticap" / "senticap.json"], capsys)
    assert code == 0, err
    table = json.loads(out.strip().splitlines()[-1])
    assert table["images"] == 4 and table["failed_images"] == 0
    assert table["styles"]["neutral"]["style_accuracy"] is None and table["styles"]["neutral"]["cider_d"] is None
    assert all(isinstance(table["styles"][s]["style_accuracy"], float) for s in ("positive", "negative"))


def test_evaluate_styles_says_why_the_data_cannot_train_its_style_classifier(models, capsys, tmp_path, single_thread):
    coco = SHARED_DATA / "coco" / "captions_val2017_subset.json"
    code, out, err = run_cli(["evaluate", "--model", models["styled"], "--data", coco, "--styles"], capsys)
    assert (code, out) == (1, "")
    assert err.strip().splitlines()[-1] == (
        f"captionkit: error: {coco}: --styles trains its style classifier on the train-split captions of two styles "
        "or more: they are all neutral"
    )
    test_only = tmp_path / "test-only.csv"  # every caption in the test split: no train captions at all
    photo = next((SHARED_DATA / "coco" / "val2017").iterdir())
    test_only.write_text(f"image,caption,style,split\n{photo},a nice dog,positive,test\n{photo},a dog,neutral,test\n")
    code, out, err = run_cli(["evaluate", "--model", models["styled"], "--data", test_only, "--styles"], capsys)
    assert (code, out) == (1, "")
    assert err.strip().splitlines()[-1].endswith("on the train-split captions of two styles or more: it has none")


def test_a_style_token_the_weights_lack_is_blamed_on_the_style(tmp_path, capsys, single_thread):
    """Style tokens added to a checkpoint's tokenizer but not to its weights: one line naming --style, before any
    image is captioned (it was `start_token_id: must be a token id of this model` from the first decoding step)."""
    from _helpers import save_tiny_model
    from captionkit.errors import InputError
    from captionkit.text import CaptionTokenizer
    from captionkit.text.styles import add_style_tokens

    directory = save_tiny_model(tmp_path / "model")
    tokenizer = CaptionTokenizer.load(directory)
    rows = tokenizer.vocab_size
    assert add_style_tokens(tokenizer)["positive"] == rows
    tokenizer.save(directory)
    photo = next((SHARED_DATA / "coco" / "val2017").iterdir())
    code, out, err = run_cli(["caption", photo, "--model", directory, "--style", "positive"], capsys)
    assert (code, out) == (1, "")
    assert err == (
        f"captionkit: error: --style: {directory}'s tokenizer has <positive> (id {rows}) but its weights have {rows} "
        "token rows: its tokenizer and weights do not match\n"
    )
    captioner = Captioner.from_pretrained(directory, device="cpu")
    with pytest.raises(InputError, match=r"^style: .* tokenizer has <positive> \(id \d+\) but its weights have"):
        captioner.caption([photo], style="Positive")


def test_compare_blames_a_style_the_model_lacks_on_its_model_spec(models, capsys, single_thread):
    spec = f"mine={models['plain']}@negative"
    args = ["compare", models["images"], "--model", f"plain={models['plain']}", "--model", spec, "--beams", "1"]
    code, out, err = run_cli(args, capsys)
    assert (code, out) == (1, "")
    assert err == (
        f"captionkit: error: --model {spec}: {models['plain']} was trained without styles: it cannot write negative "
        "captions\n"
    )
    code, _, err = run_cli([*args[:-4], "--model", f"mine={models['styled']}@sarcastic"], capsys)
    assert code == 1
    assert err.endswith("@sarcastic: unknown style 'sarcastic' (known: neutral, positive, negative)\n")
