"""What the readers leave out is said once: a run whose data.val is its data.train says what the reader dropped once,
not once per reading."""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _shards import real_photos
from captionkit.config import load_train_config
from captionkit.training.setup import build_setup

FAILED = "(img2dataset status failed_to_download)"


def write_img2dataset_rows(path: Path, statuses: list[str | None]) -> Path:
    """A Parquet file of img2dataset's columns (``status`` only when every row has one): a row is a real photo
    where its status is ``success``, a null ``jpg`` (a failed download) elsewhere."""
    photos = iter(real_photos(statuses.count("success")))
    images = [next(photos).read_bytes() if status == "success" else None for status in statuses]
    columns = {
        "key": [f"{number:09d}" for number in range(len(statuses))],
        "caption": [f"a photo number {number}" for number in range(len(statuses))],
        "jpg": pa.array(images, pa.binary()),
    }
    if None not in statuses:
        columns["status"] = statuses
    pq.write_table(pa.table(columns), path)
    return path


def training_setup(shard: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, *more: str) -> list[str]:
    """The warnings ``build_setup`` logs (what ``captionkit train`` writes to stderr after "captionkit: ") for a run
    that trains and validates on ``shard``."""
    settings = [f"data.train={shard}", f"data.val={shard}", "model.preset=tiny", "tokenizer.vocab_size=300", *more]
    with caplog.at_level(logging.WARNING, logger="captionkit.training"):
        build_setup(load_train_config(None, settings))
    return [record.getMessage() for record in caplog.records]


def test_a_run_validating_on_its_streamed_shards_says_what_was_dropped_once(tmp_path, caplog):
    shard = write_img2dataset_rows(tmp_path / "00000.parquet", ["success", "failed_to_download", "success"])
    assert training_setup(shard, tmp_path, caplog) == [f"{shard}: dropped 1 x row without image bytes {FAILED}"]


def test_a_run_validating_on_its_records_says_what_was_dropped_once(tmp_path, caplog):
    shard = write_img2dataset_rows(tmp_path / "00000.parquet", ["success", "failed_to_download", "success"])
    # With SCST the shards are read into records rather than streamed.
    assert training_setup(shard, tmp_path, caplog, "train.objective=scst") == [
        f"{shard}: dropped 1 x row without image bytes {FAILED}",
        "data.val holds every image of data.train: the run validates on the images it trains on (give data.val "
        "other images, or leave it empty to hold out data.val_fraction of data.train)",
    ]


def test_a_run_validating_on_other_data_says_what_each_dropped(tmp_path, caplog):
    train = write_img2dataset_rows(tmp_path / "00000.parquet", ["success", "failed_to_download", "success"])
    val = write_img2dataset_rows(tmp_path / "00001.parquet", ["failed_to_download", "success"])
    settings = [f"data.train={train}", f"data.val={val}", "model.preset=tiny", "tokenizer.vocab_size=300"]
    with caplog.at_level(logging.WARNING, logger="captionkit.training"):
        build_setup(load_train_config(None, settings))
    assert [record.getMessage() for record in caplog.records] == [
        f"{train}: dropped 1 x row without image bytes {FAILED}",
        f"{val}: dropped 1 x row without image bytes {FAILED}",
    ]
