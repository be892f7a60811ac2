"""Training from shards: an iterable dataset of full micro-batches, one process's share of a :class:`ShardSet`.

Rank ``r`` draws micro-batches ``0, 1, 2, ...`` of its own; with ``W`` DataLoader workers, micro-batch ``j`` comes
from the worker whose *role* is ``j mod W``, and each role is a reading slot of its own (shard_order.py), so the
shards are split across ranks x workers without overlap. The DataLoader asks its workers in turn, starting with
worker 0, so a loader built at ``start`` (micro-batches drawn before a resume) gives worker ``w`` the role
``(w + start) mod W``: the batches then come in exactly the order an uninterrupted run draws them.

The stream holds the shard names and counts, the position and at most two opened shards (their records and token
ids), never a list of the whole set's samples. An unreadable image becomes an :class:`Unreadable` marker that
:func:`collate` drops and counts, as in the map-style path.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice

from torch.utils.data import IterableDataset, get_worker_info

from captionkit.data.dataset import CaptionDataset, Sample, Unreadable
from captionkit.data.shard_set import ShardSet
from captionkit.images import Preprocessing
from captionkit.text import CaptionTokenizer
from captionkit.training.shard_order import Item, slot_stream

OPEN_SHARDS = 2  # a shuffle buffer spans a shard boundary: the shard before stays open


class ShardStream(IterableDataset):
    """Endless micro-batches (lists of ``batch_size`` samples) for process ``rank`` of ``world_size``."""

    def __init__(
        self,
        shards: ShardSet,
        tokenizer: CaptionTokenizer,
        preprocessing: Preprocessing,
        max_length: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        buffer: int = 1000,
        start: int = 0,
    ) -> None:
        self.shards = shards
        self.tokenizer = tokenizer
        self.preprocessing = preprocessing
        self.max_length = max_length
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.buffer = buffer
        self.start = start  # micro-batches this rank drew before (a resumed run)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Training captions in the set (an epoch of all processes together)."""
        return self.shards.size

    def slots(self, workers: int) -> int:
        """Reading slots of a run with ``workers`` DataLoader workers per process."""
        return self.world_size * max(1, workers)

    def __iter__(self) -> Iterator[list[Sample | Unreadable]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        role = (worker + self.start) % workers
        drawn = len(range(role, self.start, workers))  # this role's micro-batches among those drawn before
        slot = self.rank * workers + role
        items = slot_stream(
            self.shards.counts, self.seed, slot, self.slots(workers), self.buffer, drawn * self.batch_size
        )
        opened: dict[int, CaptionDataset] = {}
        while True:
            yield [self._sample(item, opened) for item in islice(items, self.batch_size)]

    def _sample(self, item: Item, opened: dict[int, CaptionDataset]) -> Sample | Unreadable:
        shard, index = item
        if shard not in opened:
            if len(opened) == OPEN_SHARDS:
                del opened[next(iter(opened))]
            records = self.shards.records(shard)
            opened[shard] = CaptionDataset(records, self.tokenizer, self.preprocessing, self.max_length)
        return opened[shard][index]
