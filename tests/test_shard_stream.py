"""Streaming shards for training: slots split every epoch without overlap, a resumed stream replays nothing it read,
DataLoader workers keep the order, and the set is held as shard counts (memory does not grow with the samples)."""

from __future__ import annotations

import io
import random
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from itertools import islice

import pytest
from PIL import Image
from torch.utils.data import DataLoader

from _shards import real_photos, write_parquet, write_webdataset
from captionkit.config import load_train_config
from captionkit.data.dataset import Sample, Unreadable
from captionkit.data.shard_set import scan_shards
from captionkit.data.sources import load_records
from captionkit.data.splits import split_by_image
from captionkit.images import Preprocessing
from captionkit.models.registry import train_tokenizer
from captionkit.shards import container_files, writing
from captionkit.training.setup import build_setup, streamed_shards
from captionkit.training.shard_order import buffer_shuffle, epoch_items, epoch_length, slot_stream
from captionkit.training.shard_stream import ShardStream

COUNTS = (5, 3, 0, 4, 6)  # a shard without training captions is never read


@pytest.mark.parametrize("slots", [2, 3, 4, 6, 9])  # 4 live shards: whole shards per slot up to 4 slots, split above
def test_every_epoch_is_split_over_the_slots_without_overlap(slots):
    for epoch in range(3):
        read = [list(epoch_items(COUNTS, 7, epoch, slot, slots)) for slot in range(slots)]
        everything = Counter(item for items in read for item in items)
        assert sorted(everything) == [(shard, i) for shard, n in enumerate(COUNTS) for i in range(n)]
        assert set(everything.values()) == {1}
        assert [len(items) for items in read] == [epoch_length(COUNTS, 7, epoch, s, slots) for s in range(slots)]


def test_whole_shards_go_to_a_slot_in_an_order_seeded_by_the_epoch():
    firsts = [[next(epoch_items(COUNTS, 7, epoch, slot, 2))[0] for slot in (0, 1)] for epoch in range(6)]
    assert len({tuple(pair) for pair in firsts}) > 1  # the shard order changes from epoch to epoch
    for epoch in range(3):
        shards = [[shard for shard, _ in epoch_items(COUNTS, 7, epoch, slot, 2)] for slot in (0, 1)]
        assert not set(shards[0]) & set(shards[1])  # each shard whole in one slot
        assert list(epoch_items(COUNTS, 7, epoch, 0, 2)) == list(epoch_items(COUNTS, 7, epoch, 0, 2))


def test_the_shuffle_buffer_is_a_seeded_permutation():
    items = [(0, i) for i in range(20)]
    shuffled = list(buffer_shuffle(iter(items), 5, random.Random("s")))
    assert sorted(shuffled) == items and shuffled != items
    assert shuffled == list(buffer_shuffle(iter(items), 5, random.Random("s")))
    assert list(buffer_shuffle(iter(items), 1, random.Random("s"))) == items  # a buffer of one keeps the order
    # An item comes out no earlier than ``buffer`` places before where it was read.
    assert all(position >= i - 4 for position, (_, i) in enumerate(shuffled))


@pytest.mark.parametrize("skip", [0, 1, 9, 18, 19, 40])  # slot 1 of 2 reads 9 items in epoch 0: skips cross epochs
def test_a_stream_started_at_a_position_equals_the_rest_of_the_whole_stream(skip):
    whole = list(islice(slot_stream(COUNTS, 3, 1, 2, 4), 60))
    assert list(islice(slot_stream(COUNTS, 3, 1, 2, 4, skip), 60 - skip)) == whole[skip:]


def test_fewer_captions_than_reading_processes_is_an_error():
    with pytest.raises(ValueError, match=r"^3 training captions cannot be split over 4 reading processes$"):
        next(slot_stream((1, 2), 0, 0, 4, 8))


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    write_webdataset(real_photos(12), root, per_shard=4, image_bytes={5: b"not a jpeg"})
    return scan_shards(container_files(root)).train


def stream(shard_set, start: int = 0, rank: int = 0, world_size: int = 1) -> ShardStream:
    tokenizer = train_tokenizer("vit-gpt2", ["a photo number one"] * 5, 300)
    return ShardStream(shard_set, tokenizer, Preprocessing.for_size(16, 16), 12, 2, 5, rank, world_size, 3, start)


def image_ids(batch: list[Sample | Unreadable]) -> list[str]:
    return [sample.image_id if isinstance(sample, Sample) else sample.image for sample in batch]


def batches(data: ShardStream, workers: int, count: int) -> Iterator[list[str]]:
    """The image ids of the first ``count`` batches a DataLoader with ``workers`` draws from ``data``."""
    return islice(DataLoader(data, batch_size=None, collate_fn=image_ids, num_workers=workers), count)


def drawn(data: ShardStream, workers: int, count: int) -> list[list[str]]:
    return list(batches(data, workers, count))


def test_a_set_of_shards_is_held_as_counts_and_read_one_shard_at_a_time(shard_set):
    assert shard_set.counts == (4, 4, 4) and shard_set.size == 12
    assert [record.image_id for record in shard_set.records(1)] == [photo.stem for photo in real_photos(12)[4:8]]


def test_two_workers_give_the_batches_of_one_process_and_resume_exactly(shard_set):
    whole = drawn(stream(shard_set), 0, 8)
    assert all(len(batch) == 2 for batch in whole)  # full micro-batches, across epoch ends too
    with_workers = drawn(stream(shard_set), 2, 8)
    # Two workers are two reading slots, batch j from worker j mod 2: worker 0 reads two shards (4 batches) in its
    # first epoch, worker 1 the third (2 batches); together every sample once.
    first_epochs = with_workers[0::2][:4] + with_workers[1::2][:2]
    assert Counter(key for batch in first_epochs for key in batch) == Counter(k for b in whole[:6] for k in b)
    assert len({key for batch in first_epochs for key in batch}) == 12
    for start in (3, 4):  # a resumed loader's first batch may come from either worker
        assert drawn(stream(shard_set, start), 2, 8 - start) == with_workers[start:]
        assert drawn(stream(shard_set, start), 0, 8 - start) == whole[start:]


def test_ranks_read_disjoint_samples(shard_set):
    # 2 ranks x 2 workers = 4 slots over 3 shards: each slot takes every 4th sample of the epoch (3 of them).
    ranks = [drawn(stream(shard_set, rank=rank, world_size=2), 2, 2) for rank in (0, 1)]
    seen = [[key for batch in batches for key in batch] for batches in ranks]
    assert len(seen[0]) == len(seen[1]) == 4
    assert len(set(seen[0]) | set(seen[1])) == 8  # the first two samples of each slot: all different


def test_an_unreadable_member_becomes_a_marker_naming_it(shard_set):
    keys = [key for batch in drawn(stream(shard_set), 0, 6) for key in batch]
    broken = f"{shard_set.shards[1]}/{real_photos(12)[5].stem}.jpg"
    assert broken in keys and len(keys) == 12


def test_parquet_files_stream_like_tar_shards(tmp_path):
    photos = real_photos(6)
    files = [write_parquet(photos[:4], tmp_path / "a.parquet", 3), write_parquet(photos[4:], tmp_path / "b.parquet")]
    parquet = scan_shards(files).train
    assert parquet.counts == (4, 2)
    keys = [key for batch in drawn(stream(parquet), 0, 3) for key in batch]
    assert sorted(keys) == sorted(photo.stem for photo in photos)  # decoded samples carry the key: no marker


def test_a_run_streams_shards_and_holds_out_the_images_the_map_style_split_would(shard_set):
    root = shard_set.shards[0].parent
    config = load_train_config(None, [f"data.train={root}", "data.val_fraction=0.3", "model.preset=tiny"])
    setup = build_setup(config)
    records = load_records(root)
    train, val = split_by_image(records, 0.3, config.train.seed)
    assert setup.train_records == [] and setup.train_shards is not None
    assert setup.val_records == val and setup.train_shards.size == len(train)
    assert sum(len(setup.train_shards.records(i)) for i in range(3)) == len(train)


def test_runs_that_need_every_record_at_hand_read_shards_map_style(shard_set):
    data = f"data.train={shard_set.shards[0].parent}"
    assert streamed_shards(load_train_config(None, [data])) == list(shard_set.shards)
    for needs_records in ("train.objective=scst", "data.styles={neutral: 0.5, positive: 0.5}"):
        assert streamed_shards(load_train_config(None, [data, needs_records])) is None
    assert streamed_shards(load_train_config(None, [f"data.train={real_photos(1)[0].parent}"])) is None


def test_memory_of_scanning_and_streaming_does_not_grow_with_the_number_of_shards(tmp_path):
    buffer = io.BytesIO()
    Image.open(real_photos(1)[0]).resize((8, 8)).save(buffer, "JPEG")
    samples = [writing.Sample(f"{i:06d}", buffer.getvalue(), f"caption number {i}") for i in range(640)]

    def peaks(shards: int) -> tuple[int, int, int]:
        """Peak bytes of: scanning the set, one pass of the stream over it, listing its records."""
        files = writing.write_webdataset(samples[: shards * 20], tmp_path / str(shards), per_shard=20)
        tracemalloc.start()
        scanned = scan_shards(files).train
        scanning = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        data, seen = stream(scanned), bytearray(scanned.size)  # times each sample was drawn
        tracemalloc.start()
        for batch in batches(data, 0, scanned.size // data.batch_size):
            for key in batch:
                seen[int(key)] += 1
        streaming = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        tracemalloc.start()
        records = load_records(files[0].parent)
        listing = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert scanned.size == len(records) == shards * 20
        assert set(seen) == {1}  # one epoch: every sample once
        return scanning, streaming, listing

    peaks(2)  # warm-up: lazy imports and first-call set-ups are no part of either figure
    # 4x the samples, the same shard size; both sets outnumber the four shard indexes kept (shards/tar.py).
    few, many = peaks(8), peaks(32)
    grown = [after - before for before, after in zip(few, many, strict=True)]
    assert grown[2] > 100 * 480  # the measure sees per-sample lists: over 100 bytes per added sample
    assert grown[0] < grown[2] / 5 and grown[1] < grown[2] / 5
