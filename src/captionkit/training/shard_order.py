"""The order in which one process reads a shard set: ``(shard, item)`` pairs, computed from the shard counts alone.

The reading processes are *slots*: ``slots = world_size x DataLoader workers`` (0 workers count as 1), slot
``rank * workers + worker``. Each slot reads an endless stream of its own epochs; in epoch ``e``:

* the shards holding any training caption are permuted, seeded by ``seed + e`` (the same order on every slot);
* with at least as many shards as slots, slot ``s`` reads shards ``s, s + slots, ...`` of that order, whole;
* with fewer shards than slots, every slot reads every shard in that order and takes the items at positions
  ``s, s + slots, ...`` of the epoch's concatenation (split within shards by item index modulo ``slots``);
* the slot's items pass through a shuffle buffer of ``buffer`` items, seeded by (seed, epoch, slot).

So within an epoch no two slots share an item, and an item's place depends only on the counts, the seed and the
slot: the position of a slot is one integer (items consumed), which a resumed run recomputes from the checkpoint's
cursor and replays as index arithmetic without reading a shard. Slots move to their next epoch independently.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from itertools import count, islice

import torch

Item = tuple[int, int]  # (shard index in the set, item index in the shard's training records)


def shard_order(counts: Sequence[int], seed: int, epoch: int) -> list[int]:
    """Epoch ``epoch``'s permutation of the shards that hold any item."""
    live = [index for index, number in enumerate(counts) if number]
    permutation = torch.randperm(len(live), generator=torch.Generator().manual_seed(seed + epoch))
    return [live[position] for position in permutation.tolist()]


def epoch_items(counts: Sequence[int], seed: int, epoch: int, slot: int, slots: int) -> Iterator[Item]:
    """Slot ``slot``'s items of epoch ``epoch``, before shuffling."""
    order = shard_order(counts, seed, epoch)
    if len(order) >= slots:
        for shard in order[slot::slots]:
            yield from ((shard, item) for item in range(counts[shard]))
        return
    position = 0  # of the shard's first item in the epoch's concatenation
    for shard in order:
        yield from ((shard, item) for item in range((slot - position) % slots, counts[shard], slots))
        position += counts[shard]


def epoch_length(counts: Sequence[int], seed: int, epoch: int, slot: int, slots: int) -> int:
    """How many items slot ``slot`` reads in epoch ``epoch``."""
    order = shard_order(counts, seed, epoch)
    if len(order) >= slots:
        return sum(counts[shard] for shard in order[slot::slots])
    return (sum(counts) - slot + slots - 1) // slots


def buffer_shuffle(items: Iterator[Item], buffer: int, rng: random.Random) -> Iterator[Item]:
    """``items`` shuffled through a buffer of ``buffer`` of them: each new item takes the place of a random one,
    which comes out; what is left at the end comes out shuffled."""
    held: list[Item] = []
    for item in items:
        if len(held) < buffer:
            held.append(item)
            continue
        place = rng.randrange(buffer)
        yield held[place]
        held[place] = item
    rng.shuffle(held)
    yield from held


def slot_stream(counts: Sequence[int], seed: int, slot: int, slots: int, buffer: int, skip: int = 0) -> Iterator[Item]:
    """Slot ``slot``'s endless stream of items, from item ``skip`` on (whole epochs skipped by their lengths, the
    rest replayed)."""
    if sum(counts) < slots:
        raise ValueError(f"{sum(counts)} training captions cannot be split over {slots} reading processes")
    epoch = 0
    while skip >= (length := epoch_length(counts, seed, epoch, slot, slots)):
        skip -= length
        epoch += 1
    for current in count(epoch):
        rng = random.Random(f"{seed}:{current}:{slot}")
        items = buffer_shuffle(epoch_items(counts, seed, current, slot, slots), buffer, rng)
        yield from islice(items, skip, None) if current == epoch else items
