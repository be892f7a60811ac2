"""`captionkit caption` end to end: real photos from ../shared/data, bad files mixed in, a tiny model."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _captioning import read_jsonl
from _data import SHARED_DATA
from _helpers import run_cli, save_tiny_model

DATA = SHARED_DATA
COCO = DATA / "coco" / "val2017"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Five real COCO photos plus four bad files, in nested folders."""
    root = tmp_path_factory.mktemp("photos")
    good = sorted(COCO.glob("*.jpg"))[:5]
    assert len(good) == 5, f"expected real photos in {COCO}"
    (root / "sub").mkdir()
    for index, path in enumerate(good):
        shutil.copy(path, root / ("sub" if index % 2 else ".") / path.name)
    (root / "empty.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes(good[0].read_bytes()[:3000])
    (root / "sub" / "notes.png").write_text("not an image")
    (root / "vector.webp").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (root / "README.md").write_text("ignored: not an image extension")
    return root


def test_folder_with_bad_files_gives_one_record_each_and_exit_2(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "captions.jsonl"
    code, _, err = run_cli(
        [
            "caption",
            str(photos),
            "--model",
            str(model_dir),
            "--output",
            str(out),
            "--beams",
            "2",
            "--max-length",
            "6",
            "--batch-size",
            "3",
        ],
        capsys,
    )
    assert code == 2
    records = read_jsonl(out)
    assert len(records) == 9
    errors = {Path(r["image"]).name: r["error"] for r in records if "error" in r}
    assert set(errors) == {"empty.jpg", "truncated.jpg", "notes.png", "vector.webp"}
    assert "empty" in errors["empty.jpg"]
    assert "truncated" in errors["truncated.jpg"]
    assert "SVG" in errors["vector.webp"]
    for record in records:
        if "error" not in record:
            assert set(record) == {"image", "caption", "score"}
            assert isinstance(record["caption"], str) and isinstance(record["score"], float)
    assert "9 images: 5 captioned, 4 errors" in err  # every image read counts, failed ones too


def test_closing_line_gives_the_jobs_pace_without_the_model_load(model_dir, photos, capsys):
    code, _, err = run_cli(["caption", str(photos), "--model", str(model_dir), "--beams", "1"], capsys)
    assert code == 2  # the bad files
    closing = err.strip().splitlines()[-1]
    pattern = r"9 images: 5 captioned, 4 errors; ([\d.]+) images/s \(([\d.]+) s; loading the model ([\d.]+) s\)"
    found = re.fullmatch(pattern, closing)
    assert found, closing
    assert all(float(value) > 0 for value in found.groups())


def test_pace_counts_every_image_read_over_the_captioning_time_alone():
    from captionkit.cli.caption import _summary_line
    from captionkit.jobs.batch import JobSummary
    from captionkit.jobs.run import JobOutcome

    summary = JobSummary(images=9, captioned=5, errors=4)
    outcome = JobOutcome(summary, 0, False, load_seconds=3.104, caption_seconds=0.36)
    # "captioned 5 images, 4 errors" read as 5 + 4 images: the count is of every image read, failed ones too.
    assert _summary_line(outcome) == "9 images: 5 captioned, 4 errors; 25.0 images/s (0.36 s; loading the model 3.10 s)"
    # Nothing captioned (or no time measured): no pace.
    assert _summary_line(JobOutcome(JobSummary(), 0, False, caption_seconds=0.5)) == "0 images: 0 captioned, 0 errors"
    assert _summary_line(JobOutcome(summary, 0, False)) == "9 images: 5 captioned, 4 errors"
    one = JobOutcome(JobSummary(images=1, captioned=1), 2, False)
    assert _summary_line(one) == "1 image: 1 captioned, 0 errors (and 2 errors recorded before resuming)"


def test_resume_skips_done_images_and_loses_nothing(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "captions.jsonl"
    first = sorted((photos / "sub").glob("*.jpg"))[0]
    code, _, first_err = run_cli(
        [
            "caption",
            str(first),
            "--model",
            str(model_dir),
            "--output",
            str(out),
            "--beams",
            "1",
            "--max-length",
            "4",
        ],
        capsys,
    )
    assert code == 0
    assert "1 image: 1 captioned, 0 errors" in first_err
    code, _, err = run_cli(
        [
            "caption",
            str(photos),
            "--model",
            str(model_dir),
            "--output",
            str(out),
            "--beams",
            "1",
            "--max-length",
            "4",
            "--resume",
        ],
        capsys,
    )
    assert code == 2
    assert "1 of 9 images already done" in err
    images = [r["image"] for r in read_jsonl(out)]
    assert len(images) == 9 == len(set(images))


def test_resume_continues_only_with_the_settings_the_output_was_begun_with(model_dir, photos, tmp_path, capsys):
    """Another style, beam width, length or model would mix two kinds of captions in one file: refused in one line,
    the output left as it was; the same settings (the model named by another path too) resume."""
    out = tmp_path / "captions.jsonl"
    first = sorted((photos / "sub").glob("*.jpg"))[0]
    base = ["caption", "--model", str(model_dir), "--output", str(out), "--beams", "1", "--max-length", "4"]
    code, _, err = run_cli([*base, str(first)], capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / ".captions.jsonl.settings.json").read_text())
    assert saved["model"] == str(model_dir.resolve()) and saved["num_beams"] == 1 and saved["style"] == "neutral"
    with out.open("a") as handle:  # an interrupted write: the refusals must not drop it either
        handle.write('{"image": "torn')
    before = out.read_text()
    for changed, shown in (
        (["--beams", "2"], "num_beams 1; this run asks for num_beams 2:"),
        (["--max-length", "5"], "max_new_tokens 4; this run asks for max_new_tokens 5"),
        (["--dtype", "bf16"], 'dtype "fp32"; this run asks for dtype "bf16"'),
    ):
        code, _, err = run_cli([*base, *changed, str(photos), "--resume"], capsys)
        assert code == 1 and err.count("\n") == 1, err
        assert err.startswith(f"captionkit: error: --resume: {out} was begun with "), err
        assert shown in err and err.endswith("resume with the same settings, or caption into a new --output\n")
        assert out.read_text() == before
    # A setting one side lacks is not compared (one added to captionkit since the output began, or dropped).
    kept = tmp_path / ".captions.jsonl.settings.json"
    edited = {key: value for key, value in json.loads(kept.read_text()).items() if key != "top_k"}
    kept.write_text(json.dumps(edited | {"a_later_option": 3}))
    elsewhere = os.path.relpath(model_dir, tmp_path)  # the same model by a relative path, from another directory
    args = [*base, "--resume", str(photos)]
    args[2] = elsewhere
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code, _, err = run_cli(args, capsys)
    finally:
        os.chdir(cwd)
    assert code == 2 and "1 of 9 images already done" in err
    assert "dropped an unfinished last line" in err and '"torn' not in out.read_text()
    (tmp_path / ".captions.jsonl.settings.json").write_text("{not json")
    code, _, err = run_cli([*base, str(photos), "--resume"], capsys)
    assert code == 1 and "unreadable run settings" in err and "delete it to resume unchecked" in err


def test_run_settings_go_into_a_new_output_directory(model_dir, photos, tmp_path, capsys):
    """The output's directory is made for its hidden settings file too: no traceback for a folder yet to exist."""
    out = tmp_path / "new" / "deeper" / "captions.jsonl"
    first = sorted((photos / "sub").glob("*.jpg"))[0]
    code, _, err = run_cli(["caption", str(first), "--model", str(model_dir), "--output", str(out)], capsys)
    assert code == 0, err
    assert len(read_jsonl(out)) == 1
    assert json.loads((out.parent / ".captions.jsonl.settings.json").read_text())["model"] == str(model_dir.resolve())


def test_resume_of_a_deleted_output_starts_afresh_whatever_its_old_settings(model_dir, photos, tmp_path, capsys):
    """Settings left behind by an output that is gone name no captions to mix with: --resume captions afresh (and
    keeps the new settings); an interrupted Parquet output, only its journal written, is still checked."""
    first = sorted((photos / "sub").glob("*.jpg"))[0]
    for name in ("captions.jsonl", "captions.parquet"):
        out = tmp_path / name
        base = ["caption", str(first), "--model", str(model_dir), "--output", str(out), "--max-length", "4"]
        code, _, err = run_cli([*base, "--beams", "1"], capsys)
        assert code == 0, err
        out.unlink()
        if name.endswith(".parquet"):  # an interrupted run: its records in the journal, no Parquet file yet
            (tmp_path / f"{name}.partial.jsonl").write_text(json.dumps({"image": "x.jpg", "caption": "a"}) + "\n")
            code, _, err = run_cli([*base, "--beams", "2", "--resume"], capsys)
            assert code == 1 and "was begun with num_beams 1; this run asks for num_beams 2" in err, err
            continue
        code, _, err = run_cli([*base, "--beams", "2", "--resume"], capsys)
        assert code == 0, err
        assert [r["image"] for r in read_jsonl(out)] == [str(first)]
        assert json.loads((tmp_path / f".{name}.settings.json").read_text())["num_beams"] == 2


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_other_formats(model_dir, photos, tmp_path, capsys, fmt):
    out = tmp_path / f"captions.{fmt}"
    code, _, _ = run_cli(
        [
            "caption",
            str(photos / "sub"),
            "--model",
            str(model_dir),
            "--output",
            str(out),
            "--format",
            fmt,
            "--beams",
            "1",
            "--max-length",
            "4",
        ],
        capsys,
    )
    assert code == 2
    text = out.read_text()
    if fmt == "json":
        assert len(json.loads(text)) == 3
    else:
        assert text.splitlines()[0] == "image,caption,score,error"
        assert len(text.splitlines()) == 4


def test_stdout_and_list_file(model_dir, photos, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    names = sorted(p.name for p in photos.glob("*.jpg") if p.stat().st_size > 5000)
    listing.write_text("\n".join(str(photos / name) for name in names) + "\n")
    code, out, _ = run_cli(
        ["caption", str(listing), "--model", str(model_dir), "--beams", "1", "--max-length", "4"], capsys
    )
    assert code == 0
    assert [Path(json.loads(line)["image"]).name for line in out.splitlines()] == names


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["caption", "/no/such/photo.jpg"], "/no/such/photo.jpg: no such file or directory"),
        (["caption", "{photos}", "--format", "xml"], "unknown format 'xml'"),
        (["caption", "{photos}", "--resume"], "--resume needs --output"),
        (["caption", "{photos}", "--beams", "0"], "--beams: must be in [1, 64], got 0"),
        (["caption", "{photos}", "--top-p", "1.5", "--sample"], "--top-p: must be in (0, 1], got 1.5"),
        (["caption", "{photos}", "--batch-size", "0"], "--batch-size"),
        (["caption", "{photos}", "--model", "/no/such/model"], "/no/such/model"),
        (["caption", "{photos}", "--beams", "many"], "--beams"),
        (["caption", "{photos}", "--max-length", "100"], "--max-length: must be at most 64 for this model, got 100"),
        (["caption", "{photos}", "--threads", "100000"], "--threads: must be in [1, 1024], got 100000"),
        (["caption", "{photos}", "--threads", "0"], "--threads: must be in [1, 1024], got 0"),
        (
            ["caption", "{photos}", "--n-best", "2", "--format", "csv"],
            "--n-best: CSV output holds one caption per image; use --format jsonl, json or parquet for several",
        ),
    ],
)
def test_usage_and_input_errors_exit_1_with_one_line(model_dir, photos, capsys, args, message):
    args = [a.replace("{photos}", str(photos)) for a in args]
    if "--model" not in args:
        args += ["--model", str(model_dir)]
    code, out, err = run_cli(args, capsys)
    assert code == 1
    assert err.startswith("captionkit: error: ") and err.count("\n") == 1, err
    assert message in err
    assert out == ""


def test_a_url_input_exits_1_naming_the_url_as_given(model_dir, tmp_path, capsys):
    """`caption https://example.com/cat.jpg` said "https:/example.com/cat.jpg: no such file or directory" (the URL
    mangled by Path(), no hint that URLs are not fetched); a URL in a list became an error record per URL."""
    url = "https://example.com/cat.jpg"
    reason = "a URL: captionkit opens local files only (download the image first)"
    out = tmp_path / "captions.jsonl"
    listing = tmp_path / "list.txt"
    listing.write_text(f"{next(COCO.glob('*.jpg'))}\n{url}\n", encoding="utf-8")
    for given, line in ((url, f"{url}: {reason}"), (listing, f"{listing}: line 2: {url}: {reason}")):
        code, stdout, err = run_cli(["caption", given, "--model", model_dir, "--output", out], capsys)
        assert (code, stdout) == (1, "")
        assert err == f"captionkit: error: {line}\n"
        assert not out.exists()


@pytest.mark.parametrize(
    ("args", "line", "help_of"),
    [
        (["caption", "x.jpg", "--beams", "many"], "--beams: must be an integer, got 'many'", "caption"),
        (["caption", "x.jpg", "--temperature=hot"], "--temperature: must be a number, got 'hot'", "caption"),
        (["serve", "--model", "m", "--port", "80.5"], "--port: must be an integer, got '80.5'", "serve"),
        (["caption", "x.jpg", "--nope"], "No such option: --nope", "caption"),
        (["caption"], "Missing argument 'INPUTS'", "caption"),
        (["caption", "x.jpg", "--beams"], "Option '--beams' requires an argument", "caption"),
        (["train"], "Missing argument 'RECIPE'", "train"),
        (["merge", "--output", "x.jsonl"], "Missing argument 'PARTS'", "merge"),
        (["data", "check"], "Missing argument 'DATASET'", "data check"),
        (["export", "onnx", "--output", "x"], "Missing option '--model'", "export onnx"),
        (["captoin"], "No such command 'captoin'", ""),
    ],
)
def test_usage_errors_are_one_line_that_says_where_the_help_is(capsys, args, line, help_of):
    """click's usage block (Usage:, Try ..., a blank line, Error: ...) becomes one line, like every other error."""
    code, out, err = run_cli(args, capsys)
    assert (code, out, err.count("\n")) == (1, "", 1), err
    assert err.startswith(f"captionkit: error: {line}")
    assert err.rstrip().endswith(f" (see '{' '.join(['captionkit', *help_of.split()])} --help')")


@pytest.mark.parametrize(("args", "commands"), [([], ("caption", "train", "data")), (["data"], ("check",))])
def test_a_command_group_alone_prints_its_help_and_no_empty_error(capsys, args, commands):
    """`captionkit` or `captionkit data` alone: the help, exit 1, and no "captionkit: error:  (see ...)" line with
    nothing to say (typer's rich help leaves click's message empty)."""
    code, out, err = run_cli(args, capsys)
    shown = out + err
    assert code == 1 and "captionkit: error" not in shown
    assert "Usage: captionkit" in shown and all(command in shown for command in commands)


def test_a_bad_model_keeps_the_previous_results(model_dir, photos, tmp_path, capsys):
    output = tmp_path / "captions.jsonl"
    output.write_text('{"image": "old.jpg", "caption": "earlier work"}\n')
    args = ["caption", str(photos), "--model", "/no/such/model", "--output", str(output), "--overwrite"]
    code, _, err = run_cli(args, capsys)
    assert code == 1 and err.count("\n") == 1 and "/no/such/model" in err
    assert output.read_text() == '{"image": "old.jpg", "caption": "earlier work"}\n'


def test_hub_model_offline_fails_fast_with_one_line(photos, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run(
        [sys.executable, "-m", "captionkit.cli", "caption", str(photos / "sub")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "nlpconnect/vit-gpt2-image-captioning" in lines[0]
    assert "HF_HUB_OFFLINE" in lines[0]


def test_seeded_sampling_does_not_depend_on_batch_size(model_dir, photos, tmp_path, capsys):
    captions = []
    for batch_size in ("1", "4"):
        out = tmp_path / f"b{batch_size}.jsonl"
        code, _, _ = run_cli(
            [
                "caption",
                str(photos),
                "--model",
                str(model_dir),
                "--output",
                str(out),
                "--sample",
                "--seed",
                "7",
                "--top-k",
                "5",
                "--max-length",
                "6",
                "--batch-size",
                batch_size,
            ],
            capsys,
        )
        assert code == 2
        captions.append([r.get("caption") for r in read_jsonl(out)])
    assert captions[0] == captions[1]
    assert len({c for c in captions[0] if c is not None}) > 1  # really sampled, not one caption everywhere


def test_resuming_a_finished_run_keeps_exit_2_for_its_recorded_errors(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "captions.jsonl"
    args = ["caption", str(photos), "--model", str(model_dir), "--output", str(out), "--beams", "1"]
    code, _, _ = run_cli([*args, "--max-length", "4"], capsys)
    assert code == 2
    before = out.read_text()
    code, _, err = run_cli([*args, "--max-length", "4", "--resume", "--workers", "1"], capsys)
    assert code == 2
    assert "9 of 9 images already done" in err
    assert "already complete: 9 images done before (4 errors recorded before resuming), nothing left to do" in err
    assert "captioned" not in err and "0/0" not in err
    assert out.read_text() == before


@pytest.mark.parametrize("kind", ["folder", "list"])
def test_inputs_without_images_fail_in_one_line_and_keep_the_old_output(kind, model_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    if kind == "list":
        empty = tmp_path / "images.txt"
        empty.write_text("", encoding="utf-8")
    out = tmp_path / "captions.jsonl"
    out.write_text('{"image": "a.jpg", "caption": "kept"}\n', encoding="utf-8")
    args = ["caption", str(empty), "--model", str(model_dir), "--output", str(out), "--overwrite"]
    code, _, err = run_cli(args, capsys)
    assert code == 1
    assert err.strip().splitlines() == [f"captionkit: error: {empty}: no images found"]
    assert out.read_text(encoding="utf-8") == '{"image": "a.jpg", "caption": "kept"}\n'


def test_without_format_the_output_suffix_decides_so_merge_and_resume_read_parts(model_dir, photos, tmp_path, capsys):
    # --output c.csv wrote JSON lines, which `merge c.part-*.csv` then failed to read as CSV.
    out = tmp_path / "c.csv"
    base = ["caption", photos, "--model", model_dir, "--output", out, "--beams", "1", "--max-length", "4"]
    for shard in ("0/2", "1/2"):
        code, _, err = run_cli([*base, "--shard", shard], capsys)
        assert code in (0, 2), err
    parts = sorted(tmp_path.glob("c.part-*-of-2.csv"))
    assert [part.read_text().splitlines()[0] for part in parts] == ["image,caption,score,error"] * 2
    merged = tmp_path / "all.jsonl"
    code, _, err = run_cli(["merge", *parts, "--output", merged, "--inputs", str(photos)], capsys)
    assert code == 2 and "merged 2 parts: 9 records (4 errors)" in err
    code, _, err = run_cli([*base, "--shard", "0/2", "--resume"], capsys)
    assert code == 2 and "already complete" in err


def test_an_output_that_is_also_an_input_is_refused_and_left_as_it_was(model_dir, photos, tmp_path, capsys):
    # A fresh run deletes its output before captioning: a list given as both lost its paths and captioned nothing.
    listing = tmp_path / "list.txt"
    photo = tmp_path / "photo.jpg"
    shutil.copy(next(photos.glob("*.jpg")), photo)
    listing.write_text(f"{photo}\n", encoding="utf-8")
    for inputs, output in (([listing], listing), ([photo], photo), ([listing], photo)):
        before = output.read_bytes()
        code, out, err = run_cli(["caption", *inputs, "--model", model_dir, "--output", output], capsys)
        assert (code, out) == (1, "")
        reason = f"{output} is also an input; write the results to a new file"
        assert err == f"captionkit: error: --output: {reason}\n"
        assert output.read_bytes() == before


@pytest.mark.parametrize(("flag", "value"), [("--ray-address", "auto"), ("--gpus-per-worker", "1")])
def test_ray_flags_without_engine_ray_are_refused(model_dir, photos, tmp_path, capsys, flag, value):
    """The local engine would ignore them: a forgotten --engine ray is said before any work."""
    out = tmp_path / "out.jsonl"
    code, _, err = run_cli(["caption", photos, "--model", model_dir, "--output", out, flag, value], capsys)
    assert code == 1 and err == f"captionkit: error: {flag}: only with --engine ray\n"
    assert not out.exists()
