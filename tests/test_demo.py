"""The demo in a short form: scenes drawn, a model trained, unseen scenes captioned, metrics and report written."""

from __future__ import annotations

import json
import re

import pytest

from _helpers import run_cli
from captionkit.config import load_train_config
from captionkit.demo import demo_config, demo_recipe_path, score_captions, word_accuracy


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


def test_demo_recipe_is_the_configs_recipe(tmp_path):
    # configs/demo.yaml is the packaged recipe (through _base_), so `captionkit train configs/demo.yaml` trains
    # exactly what the demo trains.
    data_file = tmp_path / "captions.jsonl"
    repo_recipe = demo_recipe_path().parents[3] / "configs" / "demo.yaml"
    via_configs = load_train_config(repo_recipe, [f"data.train={data_file}", f"data.val={data_file}"])
    assert via_configs == demo_config(data_file)


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
