"""`captionkit evaluate`: caption a split, score it, write results and metrics."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest

from _helpers import run_cli, save_tiny_model
from captionkit.data.records import write_jsonl
from captionkit.data.sources import load_records
from captionkit.data.splits import split_by_image
from captionkit.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("scenes"), 20, 4, 6, seed=1, image_size=32)


@pytest.fixture(scope="module")
def model_dir(scenes, tmp_path_factory):
    captions = tuple(json.loads(line)["caption"] for line in scenes.read_text().splitlines())
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny", captions=captions)


def test_evaluate_writes_results_and_metrics(scenes, model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    code, stdout, _ = run_cli(
        [
            "evaluate",
            "--model",
            str(model_dir),
            "--data",
            str(scenes),
            "--split",
            "test",
            "--metrics",
            "BLEU,ROUGE_L,CIDEr",
            "--beams",
            "2",
            "--max-length",
            "6",
            "--output",
            str(out),
        ],
        capsys,
    )
    assert code == 0
    metrics = json.loads(stdout)
    assert metrics == json.loads((out / "metrics.json").read_text())
    for key in ("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr", "perplexity", "distinct_1", "length_mean"):
        assert key in metrics
    assert metrics["images"] == 6 and metrics["failed_images"] == 0
    # An untrained model over a 300-token vocabulary: perplexity is finite and far above 1.
    assert 10 < metrics["perplexity"] < 1000 and math.isfinite(metrics["perplexity"])
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(results) == 6
    assert all(set(r) == {"image", "image_id", "caption", "score", "references", "metrics"} for r in results)
    cider = [r["metrics"]["CIDEr"] for r in results]
    assert sum(cider) / len(cider) == pytest.approx(metrics["CIDEr"])


def broken_copy(scenes, root, broken: int):
    """The scenes' data beside copies of their images, the first ``broken`` test images overwritten with text."""
    shutil.copytree(scenes.parent / "images", root / "images")
    shutil.copy(scenes, root / scenes.name)
    for path in sorted((root / "images" / "test").iterdir())[:broken]:
        path.write_text("not an image")
    return root / scenes.name


def test_unreadable_images_are_recorded_and_the_rest_scored_exit_2(scenes, model_dir, tmp_path, capsys):
    data = broken_copy(scenes, tmp_path / "data", broken=2)
    out = tmp_path / "eval"
    args = ["evaluate", "--model", model_dir, "--data", data, "--split", "test", "--metrics", "CIDEr", "--output", out]
    code, stdout, err = run_cli([*args, "--beams", "1", "--max-length", "4"], capsys)
    assert code == 2, err
    metrics = json.loads(stdout)
    assert (metrics["images"], metrics["failed_images"]) == (6, 2)
    assert "captions" in metrics["computed_over"] and " of 4 images" in metrics["computed_over"]["captions"]
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    errors = [r for r in results if "error" in r]
    assert sorted(Path(r["image"]).name for r in errors) == sorted(p.name for p in data_images(data)[:2])
    assert all(r["error"].startswith("unsupported image format (text)") for r in errors)
    assert f"captionkit: 2 of 6 images could not be read: their errors are in {out / 'results.jsonl'}" in err


def test_an_evaluation_whose_every_image_is_unreadable_fails_in_one_line_and_keeps_the_errors(
    scenes, model_dir, tmp_path, capsys
):
    data = broken_copy(scenes, tmp_path / "data", broken=6)
    out = tmp_path / "eval"
    args = ["evaluate", "--model", model_dir, "--data", data, "--split", "test", "--output", out, "--beams", "1"]
    code, stdout, err = run_cli(args, capsys)
    assert (code, stdout) == (1, "")
    first = data_images(data)[0]
    line = f"captionkit: error: {data}: none of its 6 images could be read ({first}: unsupported image format (text)"
    assert err.strip().splitlines()[-1].startswith(line)
    assert err.strip().endswith(f"; every image's error is in {out / 'results.jsonl'}")
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(results) == 6 and all(set(r) == {"image", "image_id", "error"} for r in results)
    assert not (out / "metrics.json").exists()


def test_a_length_the_model_cannot_take_names_the_flag_before_captioning(scenes, model_dir, tmp_path, capsys):
    from captionkit.api import Captioner

    limit = Captioner.from_pretrained(model_dir).model.max_positions
    out = tmp_path / "eval"
    args = ["evaluate", "--model", model_dir, "--data", scenes, "--output", out, "--max-length", limit + 1]
    code, stdout, err = run_cli(args, capsys)
    assert (code, stdout) == (1, "")
    assert err.splitlines()[-1] == (
        f"captionkit: error: --max-length: must be at most {limit} for this model, got {limit + 1}"
    )
    assert not out.exists()


def data_images(data):
    return sorted((data.parent / "images" / "test").iterdir())


def test_unknown_split_and_missing_data_exit_1(scenes, model_dir, capsys):
    code, _, err = run_cli(["evaluate", "--model", str(model_dir), "--data", str(scenes), "--split", "nope"], capsys)
    assert code == 1
    assert f"{scenes}: no captions in split 'nope' (its splits: test, train, val; --split all takes every" in err
    code, _, err = run_cli(["evaluate", "--model", str(model_dir), "--data", "/no/data"], capsys)
    assert code == 1
    assert "/no/data: no such file or directory" in err


@pytest.mark.parametrize("val_data", ["", "elsewhere.jsonl"])
def test_unsplit_data_is_split_as_the_models_training_run_split_it(scenes, model_dir, tmp_path, capsys, val_data):
    records = [dataclasses.replace(r, split=None) for r in load_records(scenes)]
    data = write_jsonl(records, tmp_path / "unsplit.jsonl")
    run_dir = tmp_path / "run"
    shutil.copytree(model_dir, run_dir)
    saved = {"data": {"val_fraction": 0.3, "val": val_data}, "train": {"seed": 3}}
    (run_dir / "train_config.json").write_text(json.dumps(saved))
    args = ["evaluate", "--model", str(run_dir), "--data", str(data), "--split", "val", "--beams", "1"]
    code, stdout, err = run_cli([*args, "--max-length", "4", "--metrics", "BLEU"], capsys)
    if val_data:  # that run held none of these images out: no split to reproduce
        assert code == 1 and "no captions in split 'val'" in err
        return
    assert code == 0, err
    _, held_out = split_by_image(records, 0.3, seed=3)
    assert 0 < len({r.image_id for r in held_out}) < len({r.image_id for r in records})
    assert json.loads(stdout)["images"] == len({r.image_id for r in held_out})
    assert "using the split of the model's training run (0.3 of the images held out as val, seed 3)" in err


def test_by_default_a_runs_own_unsplit_data_is_evaluated_on_the_images_it_held_out(scenes, model_dir, tmp_path, capsys):
    """The run trained on the other images: evaluating them all reported its training images' scores unasked. Data
    the run never read stays whole by default (the run's split means nothing there)."""
    records = [dataclasses.replace(r, split=None) for r in load_records(scenes)]
    data = write_jsonl(records, tmp_path / "unsplit.jsonl")
    other = write_jsonl(records, tmp_path / "other.jsonl")  # the same captions, but not the file the run read
    run_dir = tmp_path / "run"
    shutil.copytree(model_dir, run_dir)
    saved = {"data": {"train": str(data), "val_fraction": 0.3, "val": ""}, "train": {"seed": 3}}
    (run_dir / "train_config.json").write_text(json.dumps(saved))
    args = ["evaluate", "--model", str(run_dir), "--beams", "1", "--max-length", "4", "--metrics", "BLEU"]
    code, out, err = run_cli([*args, "--data", str(data)], capsys)
    assert code == 0, err
    held_out = len({r.image_id for r in split_by_image(records, 0.3, seed=3)[1]})
    assert json.loads(out)["images"] == held_out < 30
    assert f"evaluating the val split: {held_out} of 30 images (the data has no test split; its other images" in err
    code, out, err = run_cli([*args, "--data", str(other)], capsys)
    assert code == 0, err
    assert json.loads(out)["images"] == 30 and "evaluating all 30 images (the data has no test split) of" in err
    code, out, err = run_cli([*args, "--data", str(data), "--split", "all"], capsys)
    assert code == 0, err
    assert json.loads(out)["images"] == 30


def test_the_data_train_of_a_run_with_its_own_data_val_is_said_to_be_training_images(
    scenes, model_dir, tmp_path, capsys
):
    """That run held none of data.train out: evaluating it by default scored training images without a word."""
    records = [dataclasses.replace(r, split=None) for r in load_records(scenes)]
    data = write_jsonl(records, tmp_path / "unsplit.jsonl")
    run_dir = tmp_path / "run"
    shutil.copytree(model_dir, run_dir)
    saved = {"data": {"train": str(data), "val": str(scenes), "val_fraction": 0.05}, "train": {"seed": 3}}
    (run_dir / "train_config.json").write_text(json.dumps(saved))
    args = ["evaluate", "--model", str(run_dir), "--beams", "1", "--max-length", "4", "--metrics", "BLEU"]
    note = f"captionkit: note: {data} is the data.train of the model's training run, which validated on its data.val"
    code, _, err = run_cli([*args, "--data", str(data)], capsys)
    assert code == 0 and note in err, err
    code, _, err = run_cli([*args, "--data", str(scenes)], capsys)  # its data.val: a test split, not trained on
    assert code == 0 and "is the data.train" not in err, err


def test_by_default_data_labelled_train_and_val_without_test_is_evaluated_on_val(scenes, model_dir, tmp_path, capsys):
    records = [r for r in load_records(scenes) if r.split != "test"]
    data = write_jsonl(records, tmp_path / "train-val.jsonl")
    args = ["evaluate", "--model", model_dir, "--data", data, "--beams", "1", "--max-length", "4", "--metrics", "BLEU"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    val = len({r.image_id for r in records if r.split == "val"})
    assert json.loads(out)["images"] == val and f"evaluating the val split: {val} of 24 images" in err
    train_only = write_jsonl([r for r in records if r.split == "train"], tmp_path / "train.jsonl")
    code, out, err = run_cli([*args[:4], train_only, *args[5:]], capsys)
    assert code == 0, err
    trained = len({r.image_id for r in records if r.split == "train"})
    assert f"evaluating all {trained} images (the data has no test split; {trained} of them are in its train" in err


def test_unsplit_data_without_the_runs_settings_names_the_splits(scenes, model_dir, tmp_path, capsys):
    data = write_jsonl([dataclasses.replace(r, split=None) for r in load_records(scenes)], tmp_path / "u.jsonl")
    code, _, err = run_cli(["evaluate", "--model", str(model_dir), "--data", str(data), "--split", "val"], capsys)
    assert code == 1
    assert f"{data}: no captions in split 'val' (it has no split labels; --split all takes every caption)" in err


def test_the_default_split_evaluates_unsplit_data_whole_and_says_so(scenes, model_dir, tmp_path, capsys):
    records = [dataclasses.replace(r, split=None) for r in load_records(scenes)]
    data = write_jsonl(records, tmp_path / "unsplit.jsonl")
    args = ["evaluate", "--model", model_dir, "--data", data, "--beams", "1", "--max-length", "4", "--metrics", "BLEU"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    images = len({r.image_id for r in records})
    assert json.loads(out)["images"] == images == 30
    assert f"captionkit: evaluating all 30 images (the data has no test split) of {data}" in err
    args[4] = scenes  # data with split labels: the default is its test split
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert json.loads(out)["images"] == 6 and "evaluating the test split: 6 of 30 images" in err


def test_the_scores_are_a_table_on_stderr_as_score_prints_them(scenes, model_dir, capsys):
    """The JSON on stdout is for programs; a person reading the terminal gets the table `score` prints."""
    args = ["evaluate", "--model", model_dir, "--data", scenes, "--beams", "1", "--max-length", "4"]
    code, out, err = run_cli([*args, "--metrics", "BLEU,CIDEr"], capsys)
    assert code == 0, err
    metrics = json.loads(out)
    rows = [line.split() for line in err.splitlines() if line.startswith("  ")]
    assert [name for name, _ in rows[:6]] == ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr", "perplexity"]
    assert {name: value for name, value in rows[:6]} == {name: f"{metrics[name]:.4f}" for name, _ in rows[:6]}


def test_a_metric_asked_for_and_left_out_is_a_note_on_stderr_and_exit_2(scenes, model_dir, monkeypatch, capsys):
    """`evaluate --metrics CIDEr,SPICE` without Java exited 0, and why SPICE was missing was only inside the JSON
    (after a false "SPICE runs in Java" note); `score` says it on stderr and exits 2, and so does evaluate now."""
    from captionkit.evaluation import external

    monkeypatch.setattr(external.shutil, "which", lambda name: None)  # no java on PATH
    args = ["evaluate", "--model", model_dir, "--data", scenes, "--beams", "1", "--max-length", "4"]
    code, out, err = run_cli([*args, "--metrics", "CIDEr,SPICE"], capsys)
    assert code == 2, err
    metrics = json.loads(out)
    assert "CIDEr" in metrics and "SPICE" not in metrics
    note = "SPICE left out: SPICE needs Java on PATH (java not found)"
    assert note in metrics["notes"]
    assert [line for line in err.splitlines() if "SPICE" in line] == [f"captionkit: note: {note}"]


def test_ctrl_c_while_captioning_exits_130_saying_nothing_was_written(scenes, model_dir, tmp_path, monkeypatch, capsys):
    """typer's own answer to Ctrl-C was a silent exit 130, as compare's and merge's were before they said it."""

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("captionkit.model_evaluation.evaluate_model", interrupted)
    out = tmp_path / "eval"
    args = ["evaluate", "--model", model_dir, "--data", scenes, "--metrics", "CIDEr", "--output", out]
    code, stdout, err = run_cli(args, capsys)
    assert (code, stdout) == (130, "")
    assert err.endswith("captionkit: interrupted: nothing written (results come once every image is scored)\n")
    assert not out.exists()


def test_empty_captions_of_the_model_are_scored_and_counted_in_a_note(scenes, model_dir, monkeypatch, capsys):
    """The README: an empty caption scores 0 on its image and a note counts them; evaluate said nothing."""
    from captionkit.api import Captioner

    captioned = Captioner.caption_pil

    def first_empty(self, images, config, *args, **kwargs):
        found = captioned(self, images, config, *args, **kwargs)
        return [[dataclasses.replace(found[0][0], caption="")], *found[1:]]  # each batch's first image

    monkeypatch.setattr(Captioner, "caption_pil", first_empty)
    args = ["evaluate", "--model", model_dir, "--data", scenes, "--beams", "1", "--max-length", "4"]
    code, out, err = run_cli([*args, "--metrics", "CIDEr", "--batch-size", "4"], capsys)
    assert code == 0, err
    assert json.loads(out)["images"] == 6
    assert "captionkit: note: 2 of the 6 captions are empty, scored as captions (0 on their images)\n" in err


def test_an_unknown_metric_fails_naming_the_flag_before_any_model_loads(scenes, tmp_path, capsys):
    missing = tmp_path / "no-model"  # never read: the metric is checked first
    args = ["evaluate", "--model", str(missing), "--data", str(scenes), "--metrics", "BLEU,WER"]
    code, out, err = run_cli(args, capsys)
    assert code == 1 and out == ""
    known = "BLEU, METEOR, ROUGE_L, CIDEr, SPICE, CLIPScore"
    assert err == f"captionkit: error: --metrics: unknown metric 'WER' (known: {known})\n"


@pytest.mark.parametrize("option", [["--metrics", "BLEU,METEOR"], ["--meteor", "java"]])
def test_metric_options_with_styles_are_refused_not_ignored(scenes, tmp_path, capsys, option):
    """--styles prints its fixed style table: a --metrics list (or METEOR engine) was silently ignored, exit 0."""
    missing = tmp_path / "no-model"  # never read: the options are checked first
    code, out, err = run_cli(["evaluate", "--model", missing, "--data", scenes, "--styles", *option], capsys)
    assert code == 1 and out == ""
    table = "its table is style accuracy, CIDEr-D and content match, for every style"
    assert err == f"captionkit: error: {option[0]}: not with --styles ({table})\n"


def test_a_report_or_results_file_that_would_replace_an_input_is_refused_before_captioning(
    scenes, model_dir, tmp_path, capsys
):
    """--report used to overwrite the data's caption file (or an image) with the HTML page, exit 0."""
    data = tmp_path / "data"
    shutil.copytree(scenes.parent, data)
    captions = data / scenes.name
    image = sorted(data.rglob("*.png"))[0]
    kept = {path: path.read_bytes() for path in (captions, image)}
    args = ["evaluate", "--model", model_dir, "--data", captions, "--split", "test", "--metrics", "CIDEr"]
    for report in (captions, image):
        code, out, err = run_cli([*args, "--report", report], capsys)
        assert (code, out) == (1, "")
        assert err == f"captionkit: error: --report: {report} is also an input; write the results to a new file\n"
    code, out, err = run_cli(
        [*args, "--output", tmp_path / "eval", "--report", tmp_path / "eval" / "metrics.json"], capsys
    )
    assert (code, out) == (1, "")
    written = tmp_path / "eval" / "metrics.json"
    assert err == f"captionkit: error: --report: {written} is also written by --output; write each to its own file\n"
    assert {path: path.read_bytes() for path in kept} == kept


def test_a_report_page_the_disk_refuses_is_one_line_naming_its_flag(scenes, model_dir, tmp_path, monkeypatch, capsys):
    """A --report page that failed to write after the scoring said "FILE: cannot write (...)" without "--report:",
    which --output's errors (and score's --per-image) carry; the results and metrics are written first."""
    import os

    real_replace = os.replace

    def full_disk(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        if Path(target).name == "r.html":
            raise OSError(28, "No space left on device", os.fspath(source))
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", full_disk)
    report, out = tmp_path / "r.html", tmp_path / "eval"
    args = ["evaluate", "--model", model_dir, "--data", scenes, "--split", "test", "--metrics", "CIDEr"]
    code, _, err = run_cli([*args, "--max-length", "4", "--output", out, "--report", report], capsys)
    assert code == 1
    assert err.splitlines()[-1] == f"captionkit: error: --report: {report}: cannot write (No space left on device)"
    assert sorted(path.name for path in out.iterdir()) == ["metrics.json", "results.jsonl"]


@pytest.mark.parametrize(
    ("flag", "value", "metric"), [("--clip-model", "my-clip", "CLIPScore"), ("--meteor", "java", "METEOR")]
)
def test_a_metric_option_without_its_metric_is_refused_before_any_model_loads(
    scenes, tmp_path, capsys, flag, value, metric
):
    """--clip-model (or --meteor java) with metrics that leave its metric out was ignored without a word, exit 0."""
    args = ["evaluate", "--model", tmp_path / "no-model", "--data", scenes, "--metrics", "CIDEr"]
    code, out, err = run_cli([*args, flag, value], capsys)
    assert (code, out) == (1, "")
    assert err == f"captionkit: error: {flag}: only with --metrics naming {metric}: nothing else reads it\n"


def test_evaluating_torn_shards_says_samples_were_lost(scenes, model_dir, tmp_path, capsys):
    """A torn shard's samples past the cut were in no figure, and evaluate said nothing of it (exit 0)."""
    import tarfile

    from captionkit.shards import writing

    records = load_records(scenes)[:4]
    samples = [writing.Sample(f"k{i}", Path(r.image_path).read_bytes(), r.caption) for i, r in enumerate(records)]
    shards = writing.write_webdataset(samples, tmp_path / "shards", per_shard=2)
    with tarfile.open(shards[1]) as archive:
        member = archive.getmember("k3.jpg")  # the writer names every image .jpg; its bytes are read as they are
    cut = member.offset_data + member.size // 2
    shards[1].write_bytes(shards[1].read_bytes()[:cut])
    args = ["evaluate", "--model", model_dir, "--data", tmp_path / "shards", "--split", "all", "--metrics", "CIDEr"]
    code, out, err = run_cli([*args, "--max-length", "4"], capsys)
    assert code == 0 and json.loads(out)["images"] == 3
    damage = f"{shards[1]}: torn tar: cut at byte {cut}, inside k3.jpg"
    assert (
        f"captionkit: note: {tmp_path / 'shards'}: 1 damaged shard (first: {damage}); the samples lost there are in "
        "no figure (captionkit data check lists every damage)\n" in err
    )
