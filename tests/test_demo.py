"""The demo in a short form: scenes drawn, a model trained, unseen scenes captioned, metrics and report written."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest

from _helpers import run_cli
from captionkit import demo
from captionkit.config import load_train_config, resolve_recipe
from captionkit.demo import demo_config, demo_recipe_path, remove_old_scenes, score_captions, word_accuracy
from captionkit.training import loop


def test_short_demo_writes_metrics_and_a_self_contained_report(tmp_path, capsys):
    out = tmp_path / "demo"
    settings = ["--steps", "4", "--train-scenes", "64", "--test-scenes", "10", "--seed", "3"]
    overrides = ["--set", "model.preset=tiny", "--set", "train.batch_size=16", "--set", "train.eval_every=2"]
    code, stdout, err = run_cli(["demo", "--output", out, *settings, *overrides], capsys)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads(stdout) == metrics
    assert metrics["train_steps"] == 4
    assert metrics["test_images"] == 10
    assert metrics["seed"] == 3  # --seed seeds the scenes and the training run
    assert json.loads((out / "model" / "train_config.json").read_text())["train"]["seed"] == 3
    assert 0.0 <= metrics["exact_match"] <= metrics["token_accuracy"] <= 1.0
    for key in ("train_seconds", "data_seconds", "caption_seconds", "model_parameters", "val_loss"):
        assert key in metrics
    # The recipe trains style control: each test scene is captioned in every style and the styles are measured.
    assert set(metrics["style_accuracy"]) == {"neutral", "positive", "negative"}
    assert set(metrics["style_content_exact_match"]) == {"positive", "negative"}
    assert all(
        0.0 <= v <= 1.0 for v in [*metrics["style_accuracy"].values(), *metrics["style_content_exact_match"].values()]
    )
    page = (out / "report.html").read_text()
    assert "<th>positive</th><th>negative</th>" in page
    assert page.count('<img class="thumb" src="data:image/png;base64,') == 10
    # Style metrics as a table with one row per style, not Python dicts; the curves inlined; failures first.
    assert "{" not in page.split("<body>")[1] and "style_accuracy</th>" not in page
    for style in ("positive", "negative"):
        accuracy, content = metrics["style_accuracy"][style], metrics["style_content_exact_match"][style]
        assert f'<tr><th>{style}</th><td class="number">{accuracy:.4f}</td><td class="number">{content:.4f}' in page
    assert page.count('<figure><img src="data:image/png;base64,') == 1
    marks = re.findall(r'<tr class="(ok|bad)">', page)
    assert len(marks) == 10 and marks == sorted(marks)  # "bad" sorts before "ok"
    assert marks.count("ok") == round(metrics["exact_match"] * 10)
    assert "http://" not in page and "https://" not in page  # self-contained
    assert "exact match" in err
    assert (out / "model" / "COMPLETE").is_file()


def test_demo_recipe_is_the_packaged_recipe_named_demo(tmp_path):
    # `captionkit train demo` trains exactly what the demo trains.
    data_file = tmp_path / "captions.jsonl"
    assert resolve_recipe("demo") == demo_recipe_path()
    via_name = load_train_config("demo", [f"data.train={data_file}", f"data.val={data_file}"])
    assert via_name == demo_config(data_file)


def test_scores():
    assert word_accuracy("a red circle", "a red circle") == 1.0
    assert word_accuracy("a red square", "a red circle") == pytest.approx(2 / 3)
    assert word_accuracy("a red", "a red circle") == pytest.approx(2 / 3)
    assert word_accuracy("", "") == 1.0
    assert score_captions([("a b", "a b"), ("a c", "a b")]) == {"exact_match": 0.5, "token_accuracy": 0.75}


def test_bad_demo_arguments_exit_1(tmp_path, capsys):
    code, _, err = run_cli(["demo", "--output", tmp_path, "--steps", "0"], capsys)
    assert code == 1 and "--steps" in err
    args = ["demo", "--output", tmp_path, "--set", "train.nonsense=1", "--train-scenes", "4", "--test-scenes", "2"]
    code, _, err = run_cli(args, capsys)
    assert code == 1 and "--set train.nonsense: unknown key" in err


@pytest.mark.parametrize(
    ("seed", "message"),
    [(-1, "--seed: must be in [0, 4294967295], got -1"), (2**32, "--seed: must be in [0, 4294967295], got 4294967296")],
)
def test_a_seed_numpy_cannot_take_exits_1_in_one_line(tmp_path, capsys, seed, message):
    args = ["demo", "--output", tmp_path / "out", "--seed", seed, "--train-scenes", "4", "--test-scenes", "2"]
    code, out, err = run_cli(args, capsys)
    assert (code, out, err) == (1, "", f"captionkit: error: {message}\n")
    assert not (tmp_path / "out").exists()


def test_an_output_that_is_a_file_exits_1_before_drawing(tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    for output, reason in (
        (taken, f"{taken} is a file, not a directory"),
        (taken / "x", f"{taken} is not a directory"),
    ):
        args = ["demo", "--output", output, "--steps", "1", "--train-scenes", "4", "--test-scenes", "2"]
        code, out, err = run_cli(args, capsys)
        assert code == 1 and out == ""
        assert err.endswith(f"{reason}\n") and err.startswith("captionkit: error: --output: ") and err.count("\n") == 1
    assert taken.read_text() == "mine"


def test_a_bad_override_fails_before_any_scene_is_drawn(tmp_path, capsys):
    args = ["demo", "--output", tmp_path / "out", "--set", "train.lr=abc", "--train-scenes", "4", "--test-scenes", "2"]
    code, _, err = run_cli(args, capsys)
    assert code == 1 and err == "captionkit: error: --set train.lr: expected a number, got 'abc'\n"
    assert not (tmp_path / "out").exists()


def test_remove_old_scenes_deletes_only_scene_images(tmp_path):
    for split in ("train", "val", "test"):
        (tmp_path / "images" / split).mkdir(parents=True)
        for name in (f"{split}-000000.png", f"{split}-000123.png"):
            (tmp_path / "images" / split / name).write_bytes(b"old")
    kept = [tmp_path / "images" / "test" / name for name in ("notes.txt", "test-1.png", "mine.png", "train-000000.png")]
    for path in kept:
        path.write_bytes(b"mine")
    assert remove_old_scenes(tmp_path) == 6
    assert sorted(path.name for path in (tmp_path / "images").rglob("*")) == sorted(
        ["train", "val", "test", *(path.name for path in kept)]
    )
    assert remove_old_scenes(tmp_path / "nothing-here") == 0


def test_a_smaller_demo_in_an_old_demos_directory_leaves_no_stale_scenes(tmp_path, capsys):
    out = tmp_path / "demo"
    old_test = out / "data" / "images" / "test"
    old_test.mkdir(parents=True)
    for index in range(5):  # an earlier run's test scenes, more than this run draws
        (old_test / f"test-{index:06d}.png").write_bytes(b"stale")
    settings = ["--steps", "1", "--train-scenes", "4", "--test-scenes", "1"]
    overrides = ["--set", "model.preset=tiny", "--set", "train.batch_size=4"]
    code, _, err = run_cli(["demo", "--output", out, *settings, *overrides], capsys)
    assert code == 0, err
    assert sorted(path.name for path in old_test.iterdir()) == ["test-000000.png"]
    assert (old_test / "test-000000.png").read_bytes().startswith(b"\x89PNG")
    assert len(list((out / "data" / "images" / "train").iterdir())) == 4
    # One scene and one step are counted in the singular.
    assert re.search(r"exact match \d+\.\d% on 1 unseen scene after 1 step \(\d+ s\); report: ", err), err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--train-scenes", "0"], "--train-scenes: must be at least 1, got 0"),
        (["--test-scenes", "-2"], "--test-scenes: must be at least 1, got -2"),
    ],
)
def test_a_bad_scene_count_is_named_with_its_value(tmp_path, capsys, flags, message):
    code, out, err = run_cli(["demo", "--output", tmp_path / "out", *flags], capsys)
    assert (code, out, err) == (1, "", f"captionkit: error: {message}\n")
    assert not (tmp_path / "out").exists()


def test_an_output_path_that_is_not_utf8_exits_1_before_drawing(tmp_path, capsys):
    # Linux hands such a name to Python with a lone surrogate; the tokenizer library cannot save a model there.
    output = Path(os.fsdecode(bytes(tmp_path) + b"/d\xe9mo"))
    args = ["demo", "--output", output, "--steps", "1", "--train-scenes", "4", "--test-scenes", "2"]
    code, out, err = run_cli(args, capsys)
    assert (code, out) == (1, "")
    reason = "the path is not valid UTF-8, and the model's tokenizer cannot be saved there"
    assert err == f"captionkit: error: --output: {tmp_path}/d\\udce9mo: {reason}\n"
    assert not output.exists()


@pytest.mark.parametrize("key", ["data.train", "data.val", " data.train "])
def test_an_override_of_the_demos_own_data_exits_1_before_drawing(tmp_path, capsys, key):
    # Training on other data and then scoring the drawn scenes would report a model that never saw them.
    args = ["demo", "--output", tmp_path / "out", "--set", f"{key}=my.csv", "--train-scenes", "4", "--test-scenes", "2"]
    code, out, err = run_cli(args, capsys)
    assert (code, out) == (1, "")
    name = key.strip()
    assert err == (
        f"captionkit: error: --set {name}: the demo trains on the scenes it draws; to train its recipe on other data, "
        f"run `captionkit train demo --output DIR --set {name}=...`\n"
    )
    assert not (tmp_path / "out").exists()


def test_styles_without_neutral_exit_1_before_drawing(tmp_path, capsys):
    # The demo's exact match is over neutral captions; a model trained without them once failed after training.
    styles = "data.styles={positive: 0.5, negative: 0.5}"
    args = ["demo", "--output", tmp_path / "out", "--set", styles, "--train-scenes", "4", "--test-scenes", "2"]
    code, out, err = run_cli(args, capsys)
    assert (code, out) == (1, "")
    assert err == (
        "captionkit: error: --set data.styles: the demo scores neutral captions: keep neutral among the styles, or "
        "turn style control off with data.styles={}\n"
    )
    assert not (tmp_path / "out").exists()


class _CtrlCAtOnce:
    """The training loop's StopSignal as if Ctrl-C came before the first step."""

    def __enter__(self) -> SimpleNamespace:
        return SimpleNamespace(received=signal.SIGINT)

    def __exit__(self, *exc_info: object) -> None:
        return None


def test_ctrl_c_in_training_exits_130_in_one_line_without_results(tmp_path, capsys, monkeypatch):
    """Training answers Ctrl-C by saving a checkpoint and returning; the demo then tried to load a final model that
    was never written and exited 1 with "no config.json ... resume the run", which the demo cannot do."""
    monkeypatch.setattr(loop, "StopSignal", _CtrlCAtOnce)
    out = tmp_path / "demo"
    settings = ["--steps", "3", "--train-scenes", "4", "--test-scenes", "1", "--set", "model.preset=tiny"]
    code, stdout, err = run_cli(["demo", "--output", out, *settings, "--set", "train.batch_size=4"], capsys)
    assert (code, stdout) == (130, "")
    lost = f"no metrics.json or report.html written to {out}"
    assert err.splitlines()[-1] == f"captionkit: interrupted: training stopped at step 0 of 3: {lost}"
    assert "error" not in err
    assert not (out / "metrics.json").exists() and not (out / "report.html").exists()


def test_ctrl_c_while_drawing_exits_130_and_leaves_no_earlier_results(tmp_path, capsys, monkeypatch):
    """typer's silent exit 130 said nothing, and an earlier demo's metrics.json and report.html stayed beside the
    new run's scenes as if they were its results."""

    def stopped(*_args: object) -> Path:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "write_synthetic_dataset", stopped)
    out = tmp_path / "demo"
    out.mkdir()
    for name in ("metrics.json", "report.html", "notes.txt"):
        (out / name).write_text("earlier")
    args = ["demo", "--output", out, "--steps", "1", "--train-scenes", "4", "--test-scenes", "1"]
    code, stdout, err = run_cli(args, capsys)
    assert (code, stdout) == (130, "")
    assert err.splitlines() == [
        "drawing 205 scenes (4 train, 200 validation, 1 test)",
        f"captionkit: interrupted: no metrics.json or report.html written to {out}",
    ]
    assert sorted(path.name for path in out.iterdir()) == ["notes.txt"]


def test_a_directory_where_a_result_goes_exits_1_before_drawing(tmp_path, capsys):
    """metrics.json (or report.html) as a directory failed only after the whole run, when it was written."""
    out = tmp_path / "demo"
    (out / "report.html").mkdir(parents=True)
    args = ["demo", "--output", out, "--steps", "1", "--train-scenes", "4", "--test-scenes", "1"]
    code, stdout, err = run_cli(args, capsys)
    assert (code, stdout) == (1, "")
    report = out / "report.html"
    assert err == f"captionkit: error: --output: {report} is a directory; the demo writes its report.html there\n"
    assert sorted(path.name for path in out.iterdir()) == ["report.html"]


def test_stderr_shows_the_stages_and_only_validation_entries(tmp_path, capsys):
    """Drawing 20,000 scenes went by without a word, and training printed every log entry as JSON beside no
    progress line; as in `captionkit train`, the progress line shows training and only validation entries print."""
    out = tmp_path / "demo"
    settings = ["--steps", "3", "--train-scenes", "8", "--test-scenes", "2", "--set", "model.preset=tiny"]
    logging = ["--set", "train.batch_size=4", "--set", "train.log_every=1", "--set", "train.eval_every=3"]
    code, _, err = run_cli(["demo", "--output", out, *settings, *logging], capsys)
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0] == "drawing 210 scenes (8 train, 200 validation, 2 test)"
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    assert [entry["step"] for entry in entries] == [3] and "val_loss" in entries[0]
    assert "captioning 2 unseen scenes in each style the model writes (neutral, positive, negative)" in lines
    assert len((out / "model" / "metrics.jsonl").read_text().splitlines()) >= 3  # every entry is kept there
