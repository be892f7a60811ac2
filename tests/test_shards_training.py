"""Training from WebDataset shards: an epoch reads one shard at a time, ranks never overlap, resume is exact."""

from __future__ import annotations

import logging
import multiprocessing

import pytest

from _resume import assert_same_weights, crash_at, untimed
from _shards import real_photos, samples, write_webdataset
from captionkit.config import load_train_config
from captionkit.data.sources import load_records
from captionkit.errors import InputError
from captionkit.run_layout import latest_checkpoint
from captionkit.shards import container_runs, writing
from captionkit.training import checkpoint as ckpt
from captionkit.training.loop import train
from captionkit.training.sampling import SampleStream
from captionkit.training.setup import build_setup

STEPS = 6


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_webdataset(real_photos(12), root, per_shard=4)
    return root


def assignments(shards) -> list[str]:
    return [
        f"data.train={shards}/{{00000..00002}}.tar",
        f"data.val={shards}/00002.tar",
        "data.cache_images=true",
        "model.preset=tiny",
        "model.overrides={decoder_dropout: 0.1, encoder_dropout: 0.1}",
        "tokenizer.vocab_size=300",
        f"train.steps={STEPS}",
        "train.batch_size=4",
        "train.warmup_steps=1",
        "train.eval_every=3",
        "train.eval_images=2",
        "train.log_every=1",
        "train.checkpoint_every=2",
        "train.lr=3e-3",
        "train.threads=1",
        "train.tensorboard=false",
    ]


def test_records_of_shards_form_one_block_per_shard(shards):
    records = load_records(shards)
    assert container_runs(record.image_path for record in records) == [4, 4, 4]
    assert container_runs([shards / "loose.jpg", shards / "other.jpg"]) is None


def test_an_epoch_reads_shard_by_shard_and_ranks_split_each_global_batch():
    blocks = [4, 4, 4]
    stream = SampleStream(12, batch_size=2, seed=5, blocks=blocks)
    epoch = stream.indices(0, 12)
    assert sorted(epoch) == list(range(12))
    assert [len({index // 4 for index in epoch[start : start + 4]}) for start in (0, 4, 8)] == [1, 1, 1]
    ranks = [SampleStream(12, 2, 5, rank, 2, blocks).batches(0) for rank in (0, 1)]
    first = [next(batches) for batches in ranks]
    assert first[0] + first[1] == epoch[:4]  # rank r takes its slice of each global batch: no overlap
    resumed = SampleStream(12, 2, 5, blocks=blocks).batches(6)
    assert next(resumed) == epoch[6:8]  # the integer cursor lands mid-shard exactly


@pytest.mark.parametrize("workers", [0, 2])
def test_crash_then_resume_from_shards_equals_uninterrupted(workers, shards, tmp_path, single_thread):
    settings = [*assignments(shards), f"data.workers={workers}"]
    reference = train(load_train_config(None, settings), tmp_path / "reference")
    assert reference.steps == STEPS and reference.unreadable_images == 0
    out = tmp_path / "run"
    crash_at(5, load_train_config(None, settings), out)
    saved = latest_checkpoint(out / "checkpoints")
    assert saved.name == "step-000004"
    loop = ckpt.read_training_state(saved)[0]["loop"]
    assert (loop["cursor"], loop["data_slots"]) == (16, max(1, workers))  # 4 steps of 4 samples; readers
    resumed = train(load_train_config(None, settings), out)
    assert_same_weights(tmp_path / "reference", out)
    assert untimed(resumed.history) == untimed(reference.history)


def test_training_skips_and_counts_a_corrupt_member(tmp_path, single_thread):
    write_webdataset(real_photos(8), tmp_path / "broken", per_shard=4, image_bytes={2: b"not a jpeg"})
    data = [f"data.train={tmp_path / 'broken'}", f"data.val={tmp_path / 'broken' / '00001.tar'}"]
    result = train(load_train_config(None, [*data, *assignments(tmp_path)[2:], "train.steps=2"]), tmp_path / "run")
    assert result.steps == 2 and result.unreadable_images == 1  # one epoch of 8 samples, the corrupt one in it
    assert result.history[-1]["skipped_samples"] == 1


def test_samples_the_shard_reader_drops_are_logged_naming_the_data(tmp_path, caplog):
    items = samples(real_photos(4))
    items[1] = writing.Sample(items[1].key, items[1].image, "")  # a sample whose caption file is empty
    writing.write_webdataset(items, tmp_path / "shards", per_shard=2)
    data = [f"data.train={tmp_path / 'shards'}", f"data.val={tmp_path / 'shards' / '00001.tar'}"]
    with caplog.at_level(logging.WARNING, logger="captionkit.training"):
        setup = build_setup(load_train_config(None, [*data, *assignments(tmp_path)[2:]]))
    assert setup.train_shards is not None and setup.train_shards.size == 3
    assert [r.getMessage() for r in caplog.records] == [f"{tmp_path / 'shards'}: dropped 1 x sample without a caption"]


def test_fewer_samples_than_shard_readers_is_an_error_naming_the_data(tmp_path, single_thread):
    write_webdataset(real_photos(3), tmp_path / "few", per_shard=2)
    data = [f"data.train={tmp_path / 'few'}", f"data.val={tmp_path / 'few' / '00001.tar'}", "data.workers=4"]
    with pytest.raises(InputError) as raised:
        train(load_train_config(None, [*data, *assignments(tmp_path)[2:]]), tmp_path / "run")
    assert (
        str(raised.value)
        == f"{tmp_path / 'few'}: 3 training captions cannot be split over 4 readers (processes x data.workers)"
    )


def test_resuming_with_another_number_of_shard_readers_warns(shards, tmp_path, caplog, single_thread):
    crash_at(3, load_train_config(None, assignments(shards)), tmp_path / "run")
    resumed = train(load_train_config(None, [*assignments(shards), "data.workers=2"]), tmp_path / "run")
    assert resumed.steps == STEPS
    warned = [r.getMessage() for r in caplog.records if "shard readers" in r.getMessage()]
    assert warned == [
        "resuming with 2 shard readers (processes x data.workers) instead of 1: the samples' order differs from the "
        "interrupted run's"
    ]


def test_a_run_stops_its_loader_workers_when_it_ends_or_crashes(shards, tmp_path, single_thread):
    # torch leaves persistent workers to garbage collection, which then waited 5 s per worker (a 20 s stall in some
    # later, unrelated code): train() stops them itself, on a crash too.
    before = set(multiprocessing.active_children())
    settings = [*assignments(shards), "data.workers=2"]
    crash_at(4, load_train_config(None, settings), tmp_path / "crashed")
    assert set(multiprocessing.active_children()) <= before
    train(load_train_config(None, settings), tmp_path / "run")
    assert set(multiprocessing.active_children()) <= before
