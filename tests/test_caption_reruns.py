"""`captionkit caption` run again over its own output loses nothing it was not asked to: an output that holds records
is refused without --resume (continue it) or --overwrite (replace it), a killed JSON run's staging file is removed and
said, Ctrl-C says how many records the output holds and how to go on, and a wrong path in a list says where it was
looked for."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import captionkit.jobs.run
from _captioning import read_jsonl, spawn_cli
from _data import real_photos
from _helpers import run_cli, save_tiny_model
from captionkit.jobs.outputs import read_records
from captionkit.jobs.sharding import parse_shard

FAST = ["--beams", "1", "--max-length", "4"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Three real photos."""
    root = tmp_path_factory.mktemp("photos")
    for photo in real_photos(3):
        (root / photo.name).write_bytes(photo.read_bytes())
    return root


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json", "parquet"])
def test_a_rerun_without_resume_keeps_the_records_and_says_how_to_go_on(model_dir, photos, tmp_path, capsys, fmt):
    """A forgotten --resume after a crash replaced the output, exit 0, not a word: every earlier record lost."""
    out = tmp_path / f"c.{fmt}"
    base = ["caption", photos, "--model", model_dir, "--output", out, *FAST]
    code, _, err = run_cli(base, capsys)
    assert code == 0, err
    first, saved = read_records(out, fmt), out.read_bytes()
    code, stdout, err = run_cli(base, capsys)
    assert (code, stdout) == (1, "")
    reason = f"{out} exists (3 records): --resume continues it, --overwrite replaces it"
    assert err == f"captionkit: error: --output: {reason}\n"
    assert out.read_bytes() == saved
    code, _, err = run_cli([*base, "--overwrite"], capsys)
    assert code == 0 and "3 images: 3 captioned, 0 errors" in err
    assert read_records(out, fmt) == first  # replaced, not appended to
    code, _, err = run_cli([*base, "--overwrite", "--resume"], capsys)
    reason = "not with --resume: --resume continues --output, --overwrite replaces it"
    assert (code, err) == (1, f"captionkit: error: --overwrite: {reason}\n")


def test_an_output_without_records_is_no_loss_and_other_files_are_kept(model_dir, photos, tmp_path, capsys):
    """An empty file, a CSV header or a JSON [] holds nothing to lose: the run goes on. A file that is no results
    (a note, a list of paths) is refused as the records are, naming why it cannot be read."""
    for name, text in (("a.jsonl", ""), ("b.csv", "image,caption,score,error\n"), ("c.json", "[]\n")):
        out = tmp_path / name
        out.write_text(text)
        code, _, err = run_cli(["caption", photos, "--model", model_dir, "--output", out, *FAST], capsys)
        assert code == 0 and "3 images: 3 captioned" in err, err
        assert len(read_records(out, out.suffix[1:])) == 3
    notes = tmp_path / "notes.jsonl"
    notes.write_text("my notes\n")
    code, _, err = run_cli(["caption", photos, "--model", model_dir, "--output", notes, *FAST], capsys)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"captionkit: error: --output: {notes} exists: not valid jsonl (invalid JSON")
    assert err.endswith("; --overwrite replaces it\n")
    assert notes.read_text() == "my notes\n"


def test_each_shard_checks_its_own_part(model_dir, photos, tmp_path, capsys):
    """A shard's part holds that shard's records: it is the file refused, and another shard's part is no reason to
    refuse (torchrun's ranks each write their own)."""
    keys = [photo.name for photo in photos.glob("*.jpg")]
    first = next(index for index in (0, 1) if any(parse_shard(f"{index}/2").owns(key) for key in keys))
    other = 1 - first
    out = tmp_path / "c.jsonl"
    base = ["caption", photos, "--model", model_dir, "--output", out, *FAST]
    code, _, err = run_cli([*base, "--shard", f"{first}/2"], capsys)
    part = tmp_path / f"c.part-{first}-of-2.jsonl"
    held = len(read_jsonl(part))
    assert code == 0 and held > 0, err
    code, _, err = run_cli([*base, "--shard", f"{other}/2"], capsys)
    assert code == 0, err
    code, _, err = run_cli([*base, "--shard", f"{first}/2"], capsys)
    noun = "record" if held == 1 else "records"
    reason = f"{part} exists ({held} {noun}): --resume continues it, --overwrite replaces it"
    assert (code, err) == (1, f"captionkit: error: --output: {reason}\n")
    code, _, err = run_cli([*base, "--shard", f"{first}/2", "--resume"], capsys)
    assert code == 0 and "already complete" in err


def test_a_killed_json_runs_staging_file_is_removed_and_resume_says_it_starts_afresh(
    model_dir, photos, tmp_path, capsys
):
    """SIGKILL during a JSON run left only .c.json.PID.tmp: --resume captioned everything again without a word and
    left the file behind for good. A staging file of a live process (a run writing the same output now) stays."""
    out = tmp_path / "c.json"
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    stale = tmp_path / f".c.json.{ended.pid}.tmp"
    stale.write_text('[\n  {"image": "x.jpg", "caption": "a dog", "score": -1.0},\n  {"ima')
    live = tmp_path / f".c.json.{os.getppid()}.tmp"
    live.write_text("[")
    code, _, err = run_cli(["caption", photos, "--model", model_dir, "--output", out, *FAST, "--resume"], capsys)
    assert code == 0, err
    lines = err.splitlines()
    removed = (
        f"{out}: removed {stale.name}, left by a run that was killed while writing c.json (json is written whole at "
        "the end: use jsonl or parquet for jobs that may be cut off)"
    )
    assert lines[0] == removed
    assert lines[1] == f"resuming: {out} does not exist yet, captioning from scratch"
    assert not stale.exists() and live.exists()
    assert len(json.loads(out.read_text())) == 3


def _interrupt_after(count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Captioning writes ``count`` records, then Ctrl-C."""

    def interrupted(captioner, items, config, writer, *args, **kwargs):
        for _, path in itertools.islice(items, count):
            writer.write([{"image": str(path), "caption": "a dog", "score": -1.0}])
        raise KeyboardInterrupt

    monkeypatch.setattr(captionkit.jobs.run, "caption_items", interrupted)


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_ctrl_c_says_what_the_output_holds_and_how_to_go_on(model_dir, photos, tmp_path, capsys, monkeypatch, fmt):
    """Ctrl-C exited 130 with nothing said: one line counts the records kept and names the command that goes on."""
    out = tmp_path / f"c.{fmt}"
    base = ["caption", photos, "--model", model_dir, "--output", out, *FAST]
    _interrupt_after(2, monkeypatch)
    code, stdout, err = run_cli(base, capsys)
    assert (code, stdout) == (130, "")
    again = "the same command with --resume continues it"
    assert err.splitlines()[-1] == f"captionkit: interrupted: {out} holds 2 records; {again}"
    assert len(read_records(out, fmt)) == 2
    _interrupt_after(1, monkeypatch)
    code, _, err = run_cli([*base, "--resume"], capsys)
    assert code == 130
    assert err.splitlines()[-1] == f"captionkit: interrupted: {out} holds 3 records; the same command continues it"
    monkeypatch.undo()
    code, _, err = run_cli([*base, "--resume"], capsys)
    assert code == 0 and "already complete: 3 images done before" in err


def test_ctrl_c_with_results_on_stdout_says_nothing_to_resume(model_dir, photos, capsys, monkeypatch):
    _interrupt_after(1, monkeypatch)
    code, stdout, err = run_cli(["caption", photos, "--model", model_dir, *FAST], capsys)
    assert code == 130 and len(stdout.splitlines()) == 1
    assert "interrupted" not in err


def test_a_real_sigint_keeps_the_records_written_and_says_so(model_dir, photos, tmp_path):
    out = tmp_path / "c.jsonl"
    slow = ["--beams", "8", "--max-length", "60", "--batch-size", "1"]
    running = spawn_cli(["caption", photos, "--model", model_dir, "--output", out, *slow])
    deadline = time.monotonic() + 120
    while running.poll() is None and time.monotonic() < deadline:
        if out.exists() and out.read_text().count("\n") >= 1:
            running.send_signal(signal.SIGINT)
            break
        time.sleep(0.01)
    _, err = running.communicate(timeout=60)
    if running.returncode == 0:
        pytest.skip("the run ended before it could be interrupted")
    assert running.returncode == 130, err
    held = len(read_jsonl(out))
    found = re.search(r"captionkit: interrupted: (.+) holds (\d+) records?; the same command with --resume", err)
    assert found and found.groups() == (str(out), str(held)), err


def test_a_missing_listed_image_names_the_path_looked_for(model_dir, photos, tmp_path, capsys, monkeypatch):
    """A wrong relative path in a list gave {"image": "x.jpg", "error": "no such file"}: no sign of where x.jpg was
    looked for (beside the list). The record keeps the path the job read; the error says where that is."""
    lists = tmp_path / "lists"
    lists.mkdir()
    name = next(photos.glob("*.jpg")).name
    (lists / "images.txt").write_text(f"{name}\n", encoding="utf-8")  # the photo is in photos/, not beside the list
    monkeypatch.chdir(lists)
    code, stdout, err = run_cli(["caption", "images.txt", "--model", model_dir, *FAST], capsys)
    assert code == 2, err
    looked_for = os.path.join(os.getcwd(), name)
    assert [json.loads(line) for line in stdout.splitlines()] == [
        {"image": name, "error": f"no such file (looked for {looked_for})"}
    ]
    code, stdout, _ = run_cli(["caption", lists / "images.txt", "--model", model_dir, *FAST], capsys)
    assert code == 2
    assert json.loads(stdout)["error"] == f"no such file (looked for {lists / name})"


def test_ctrl_c_before_captioning_exits_130_and_keeps_the_old_output(model_dir, photos, tmp_path, capsys, monkeypatch):
    """Ctrl-C while the model loads, before the output is touched: exit 130 (typer's, as a shell's), the old output as
    it was: --overwrite replaces it only once captions can be written."""
    out = tmp_path / "c.jsonl"
    out.write_text('{"image": "old.jpg", "caption": "earlier work"}\n')

    def loading(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(captionkit.jobs.run.Captioner, "from_pretrained", loading)
    args = ["caption", photos, "--model", model_dir, "--output", out, "--overwrite", *FAST]
    code, stdout, err = run_cli(args, capsys)
    assert (code, stdout) == (130, "")
    assert "Traceback" not in err
    assert out.read_text() == '{"image": "old.jpg", "caption": "earlier work"}\n'


def test_a_run_begun_with_a_long_dtype_name_resumes_with_the_short_one(model_dir, photos, tmp_path, capsys):
    """--dtype bfloat16 then --resume --dtype bf16 was refused: "begun with dtype "bfloat16"; this run asks for
    dtype "bf16"", the same dtype."""
    out = tmp_path / "c.jsonl"
    base = ["caption", photos, "--model", model_dir, "--output", out, *FAST]
    code, _, err = run_cli([*base, "--dtype", "bfloat16"], capsys)
    assert code == 0, err
    code, _, err = run_cli([*base, "--dtype", "BF16", "--resume"], capsys)
    assert code == 0 and "already complete" in err, err
    code, _, err = run_cli([*base, "--resume"], capsys)
    assert code == 1 and 'was begun with dtype "bf16"; this run asks for dtype "fp32"' in err, err
