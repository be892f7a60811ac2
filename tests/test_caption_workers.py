"""Decoding in DataLoader workers: same records as in-process, bad files as error records, bounded prefetch,
and a run killed mid-way then resumed loses and duplicates nothing."""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image

import captionkit.jobs.pipeline
from _captioning import BAD_FILES, assert_same_records, make_photo_folder, read_jsonl, spawn_cli
from _data import real_photos
from _helpers import run_cli, save_tiny_model
from captionkit import Captioner
from captionkit.decoding import DecodingConfig
from captionkit.images import DEFAULT_LIMITS, Preprocessing, load_image
from captionkit.jobs.batch import caption_pixels
from captionkit.jobs.pipeline import load_batches

ARGS = ["--beams", "2", "--max-length", "5", "--batch-size", "3"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("workers")
    return save_tiny_model(root / "tiny"), make_photo_folder(root / "photos", 30)


def test_two_workers_give_the_in_process_records(job, tmp_path, capsys):
    model, photos = job
    outputs = {}
    for workers in ("0", "2"):
        outputs[workers] = tmp_path / f"w{workers}.jsonl"
        code, _, err = run_cli(
            ["caption", photos, "--model", model, *ARGS, "--workers", workers, "--output", outputs[workers]], capsys
        )
        assert code == 2
        assert "34 images: 30 captioned, 4 errors" in err
    in_process, in_workers = read_jsonl(outputs["0"]), read_jsonl(outputs["2"])
    assert in_workers == in_process  # same records, same (input) order
    errors = {r["image"].removeprefix(str(photos) + "/"): r["error"] for r in in_process if "error" in r}
    assert set(errors) == set(BAD_FILES)
    assert "truncated" in errors["truncated.jpg"] and "SVG" in errors["deep/er/vector.webp"]


def test_a_decoder_crash_is_one_error_record_not_a_dead_worker(job, monkeypatch):
    _, photos = job
    paths = sorted(photos.rglob("*.jpg"))[:6]
    real_load = captionkit.jobs.pipeline.load_image

    def flaky_load(path, **kwargs):
        if path == str(paths[2]):
            raise RuntimeError("decoder bug\nsecond line")
        return real_load(path, **kwargs)

    monkeypatch.setattr(captionkit.jobs.pipeline, "load_image", flaky_load)  # forked workers inherit it
    batches = list(load_batches(paths, Preprocessing.for_size(32, 32), DEFAULT_LIMITS, batch_size=2, workers=2))
    assert [b.positions for b in batches] == [[0, 1], [2, 3], [4, 5]]
    assert batches[1].errors == {2: "cannot decode image (RuntimeError: decoder bug)"}
    assert batches[1].good == [3] and tuple(batches[1].pixels.shape) == (1, 3, 32, 32)
    assert all(not b.errors and tuple(b.pixels.shape) == (2, 3, 32, 32) for b in (batches[0], batches[2]))


def test_prefetch_bounds_the_images_decoded_ahead(monkeypatch):
    """Paths are drawn a batch at a time as batches are sent to the workers, so what is decoded ahead is bounded by
    what was drawn: counted where it is drawn, in this process, with no waiting on the workers."""
    decoded = multiprocessing.get_context("fork").Value("i", 0)

    def counting_load(path, **kwargs):
        with decoded.get_lock():
            decoded.value += 1
        return Image.new("RGB", (8, 8))

    drawn = 0

    def paths() -> Iterator[str]:
        nonlocal drawn
        for index in range(200):
            drawn += 1
            yield f"img{index}.jpg"

    monkeypatch.setattr(captionkit.jobs.pipeline, "load_image", counting_load)  # forked workers inherit it
    batches = load_batches(paths(), Preprocessing.for_size(8, 8), DEFAULT_LIMITS, 2, 2, 1)
    assert next(batches).positions == [0, 1]
    # 2 workers x prefetch 1 batches sent at the start, plus the one sent when the first was taken: 3 batches of 2.
    assert drawn == 6
    assert next(batches).positions == [2, 3] and drawn == 8  # one more batch for each one taken
    assert sum(len(b.positions) for b in batches) == 196
    assert drawn == decoded.value == 200


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--workers", "many", "--workers: expected a number of processes (0 = none) or auto, got 'many'"),
        ("--workers", "-1", "--workers: expected a number of processes (0 = none) or auto, got '-1'"),
        ("--prefetch", "0", "--prefetch: must be at least 1, got 0"),
        ("--prefetch", "-1", "--prefetch: must be at least 1, got -1"),
        # Not a hang: the DataLoader would loop prefetch x workers times before its first batch.
        ("--prefetch", "100000000000000000000", "--prefetch: must be at most 1024, got 100000000000000000000"),
    ],
)
def test_bad_worker_counts_exit_1(job, capsys, option, value, message):
    model, photos = job
    code, out, err = run_cli(["caption", photos, "--model", model, "--workers", "2", option, value], capsys)
    assert (code, out, err.count("\n")) == (1, "", 1), err
    assert err.startswith(f"captionkit: error: {message}")


@pytest.mark.slow  # a caption process killed midway, then resumed with worker processes
def test_killed_shard_resumes_without_losing_or_duplicating(job, tmp_path, capsys):
    """SIGKILL a shard's run after some records, tear its last line, resume it; merged = one full run."""
    model, photos = job
    slow = ["--beams", "2", "--max-length", "10", "--batch-size", "1"]  # many small steps: time to kill mid-way
    code, _, _ = run_cli(["caption", photos, "--model", model, *slow, "--output", tmp_path / "one.jsonl"], capsys)
    assert code == 2
    reference = read_jsonl(tmp_path / "one.jsonl")
    out = tmp_path / "run.jsonl"
    part = tmp_path / "run.part-0-of-2.jsonl"
    args = ["caption", photos, "--model", model, *slow, "--output", out, "--shard", "0/2"]
    killed = spawn_cli([*args, "--workers", "1"])
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and killed.poll() is None:
        if part.exists() and part.read_text().count("\n") >= 4:
            killed.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    killed.communicate(timeout=60)
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed mid-way"
    written = read_jsonl(part)
    with part.open("a") as handle:  # what a write cut short leaves behind
        handle.write('{"image": "' + str(photos))
    code, _, err = run_cli([*args, "--resume", "--workers", "2"], capsys)
    assert "dropped an unfinished last line" in err
    assert f"resuming: {len(written)} of" in err
    assert code == exit_code_of(part), err  # 2 when the part holds an error record, the killed run's included
    other = tmp_path / "run.part-1-of-2.jsonl"
    code, _, err = run_cli(["caption", photos, "--model", model, *slow, "--output", out, "--shard", "1/2"], capsys)
    assert code == exit_code_of(other), err
    parts = sorted(tmp_path.glob("run.part-*"))
    code, _, err = run_cli(["merge", *parts, "--output", tmp_path / "merged.jsonl", "--inputs", photos], capsys)
    assert code == 2 and "more than one record" not in err and "no record" not in err
    assert read_jsonl(part)[: len(written)] == written  # kept what the killed run finished
    assert_same_records(read_jsonl(tmp_path / "merged.jsonl"), reference)


def exit_code_of(results: Path) -> int:
    """What a caption run that wrote ``results`` exits with: 2 when an image failed, else 0."""
    return 2 if any("error" in record for record in read_jsonl(results)) else 0


def test_workers_decode_large_jpegs_in_draft_mode_and_small_ones_exactly(tmp_path):
    coco = real_photos(4)
    small = []
    for index, photo in enumerate(coco[:3]):  # below twice the 32 px target: no draft reduction is possible
        small.append(tmp_path / f"small{index}.jpg")
        Image.open(photo).resize((60 - 10 * index, 50)).save(small[-1], quality=90)
    preprocessing = Preprocessing.for_size(32, 32)
    assert preprocessing.draft_size == (32, 32)
    assert Preprocessing(size=(32, 32), crop_from=40).draft_size == (40, 40)  # the shorter edge before the crop
    assert Preprocessing(size=(32, 32), crop_from=(48, 36)).draft_size == (36, 48)
    assert Preprocessing(do_resize=False).draft_size is None
    [batch] = list(load_batches([*coco, *small], preprocessing, DEFAULT_LIMITS, batch_size=7))
    full = torch.from_numpy(preprocessing([load_image(path) for path in [*coco, *small]]))
    drafted = (batch.pixels[:4] - full[:4]).abs().mean(dim=(1, 2, 3)) * 127.5  # in 1/255 steps
    assert all(0.0 < difference < 6.0 for difference in drafted.tolist()), drafted
    assert torch.equal(batch.pixels[4:], full[4:])
    captioner = Captioner.from_pretrained(save_tiny_model(tmp_path / "tiny"))
    config = DecodingConfig(num_beams=2, max_new_tokens=6)
    job = [captions[0].caption for captions in caption_pixels(captioner, batch.pixels[4:], [0, 1, 2], config)]
    assert job == [result.caption for result in captioner.caption(small, num_beams=2, max_new_tokens=6)]
