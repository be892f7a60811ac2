"""A training set of WebDataset/Parquet shards held as shard names and per-shard caption counts, never as records.

Training streams such a set (training/shard_stream.py): a process reads a shard's records when it opens the shard,
so memory grows with the size of one shard, not with the number of shards or samples. The set is scanned once when
a run starts, one shard at a time, to count each shard's training captions and to keep the held-out validation
records (``data.val_fraction`` of the images, by :func:`split_by_image`'s hash, so an image lands where the
map-style path would put it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from captionkit.data.formats.base import EMPTY_CAPTION
from captionkit.data.formats.shards import collect_samples
from captionkit.data.records import CaptionRecord
from captionkit.data.splits import first_caption_per_image, split_by_image
from captionkit.errors import InputError
from captionkit.wording import plural


@dataclass(frozen=True)
class ShardSet:
    """Shard files and how many training captions each holds (``counts``), with the rules that pick them."""

    shards: tuple[Path, ...]
    counts: tuple[int, ...]
    val_fraction: float = 0.0
    seed: int = 0
    first_caption_only: bool = False

    @property
    def size(self) -> int:
        return sum(self.counts)

    def records(self, index: int) -> list[CaptionRecord]:
        """The training records of shard ``index``, in member order (read now: nothing is kept)."""
        return self._split(index)[0]

    def captions(self) -> Iterator[str]:
        """Every training caption, shard by shard (what a tokenizer trains on)."""
        for index in range(len(self.shards)):
            yield from (record.caption for record in self.records(index))

    def _split(self, index: int) -> tuple[list[CaptionRecord], list[CaptionRecord], Counter[str]]:
        """(training records, held-out validation records, what the reader dropped: reason -> count) of shard
        ``index``."""
        collector = collect_samples([self.shards[index]])
        train, val = split_by_image(collector.records, self.val_fraction, self.seed)
        if self.first_caption_only:
            train, val = first_caption_per_image(train), first_caption_per_image(val)
        return train, val, collector.dropped


@dataclass
class ScannedShards:
    """What the scan of a shard set gives: the set to stream, its validation records and empty captions dropped."""

    train: ShardSet
    val_records: list[CaptionRecord]
    empty_captions: int
    # What else the readers dropped (reason -> count): samples without a caption, unreadable text, damaged shards.
    dropped: dict[str, int] = field(default_factory=dict)


def scan_shards(
    files: Sequence[Path], val_fraction: float = 0.0, seed: int = 0, first_caption_only: bool = False
) -> ScannedShards:
    """Count the training captions of each shard (one shard in memory at a time); a set without any is an error
    naming its first shard."""
    unscanned = ShardSet(tuple(files), (), val_fraction, seed, first_caption_only)
    counts: list[int] = []
    val_records: list[CaptionRecord] = []
    dropped: Counter[str] = Counter()
    for index in range(len(files)):
        train, val, shard_dropped = unscanned._split(index)
        counts.append(len(train))
        val_records += val
        dropped.update(shard_dropped)
    if not sum(counts):
        raise InputError(files[0], f"no training captions in {plural(len(files), 'shard')}")
    empty = dropped.pop(EMPTY_CAPTION, 0)
    return ScannedShards(replace(unscanned, counts=tuple(counts)), val_records, empty, dict(dropped))
