"""`captionkit evaluate` and `captionkit train` read WebDataset shards and Parquet like any other dataset."""

from __future__ import annotations

import json
import weakref

import pytest

from _helpers import run_cli, save_tiny_model
from _shards import caption_of, real_photos, write_parquet, write_webdataset
from captionkit.api import Captioner
from captionkit.data import load_records
from captionkit.decoding.options import decoding_request
from captionkit.model_evaluation import evaluate_model


@pytest.fixture(scope="module")
def photos():
    return real_photos(6)


@pytest.fixture(scope="module")
def model_dir(photos, tmp_path_factory):
    captions = tuple(caption_of(index) for index in range(len(photos)))
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny", captions=captions)


@pytest.mark.parametrize("layout", ["webdataset", "parquet"])
def test_evaluate_scores_a_collection_by_sample_key(layout, photos, model_dir, tmp_path, capsys):
    if layout == "webdataset":
        data = tmp_path / "shards" / "{00000..00001}.tar"
        write_webdataset(photos, tmp_path / "shards", per_shard=3)
    else:
        data = write_parquet(photos, tmp_path / "c.parquet")
    out = tmp_path / "eval"
    args = ["evaluate", "--model", model_dir, "--data", data, "--split", "all", "--metrics", "BLEU", "--beams", "1"]
    code, stdout, err = run_cli([*args, "--max-length", "5", "--output", out], capsys)
    assert code == 0, err
    assert json.loads(stdout)["images"] == 6 and json.loads(stdout)["failed_images"] == 0
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [result["image_id"] for result in results] == [photo.stem for photo in photos]


def test_evaluate_keeps_each_images_caption_but_no_opened_image_past_its_batch(
    photos, model_dir, tmp_path, monkeypatch
):
    write_webdataset(photos, tmp_path / "shards", per_shard=2)
    captioner = Captioner.from_pretrained(model_dir)
    opened: list[weakref.ref] = []
    load = captioner.load_images

    def watched_load(images):
        loaded = load(images)
        opened.extend(weakref.ref(image) for image in loaded)
        return loaded

    monkeypatch.setattr(captioner, "load_images", watched_load)
    alive: list[int] = []  # opened images still alive as each batch of 2 ends (no garbage collection on the way)
    config = captioner.resolve_decoding(decoding_request(max_new_tokens=3))
    evaluation = evaluate_model(
        captioner,
        load_records(tmp_path / "shards"),
        config,
        metrics="BLEU",
        batch_size=2,
        on_progress=lambda _: alive.append(sum(ref() is not None for ref in opened)),
    )
    assert [result["image_id"] for result in evaluation.results] == [photo.stem for photo in photos]
    assert all("caption" in result for result in evaluation.results)  # what corpus metrics need, kept
    assert len(opened) == 6 and alive == [2, 2, 2]  # the batch being captioned, never an earlier one
    assert sum(ref() is not None for ref in opened) == 0


def test_train_reads_shards_in_dataloader_workers(photos, tmp_path, capsys, single_thread):
    write_webdataset(photos, tmp_path / "shards", per_shard=2)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "model:\n  preset: tiny\ntokenizer:\n  vocab_size: 300\n"
        f"data:\n  train: {tmp_path / 'shards'}\n  val: {tmp_path / 'shards'}\n  workers: 2\n"
        "train:\n  steps: 2\n  batch_size: 3\n  warmup_steps: 1\n  eval_every: 2\n  eval_images: 2\n"
        "  checkpoint_every: 2\n  threads: 1\n  tensorboard: false\n",
        encoding="utf-8",
    )
    code, stdout, err = run_cli(["train", recipe, "--output", tmp_path / "run", "--no-progress"], capsys)
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["steps"] == 2 and summary["unreadable_images"] == 0
