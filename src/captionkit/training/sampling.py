"""The order of training samples: an endless seeded stream, resumable from a cursor and sharded across processes.

Epoch ``e`` is a permutation of the samples drawn from ``seed + e``; the epochs are concatenated and cut into global
micro-batches of ``batch_size * world_size`` consecutive samples (a batch may straddle two epochs, so none is dropped
or short). Process ``rank`` takes its ``batch_size`` slice of each. The whole position in the data is one integer,
the number of samples of the stream consumed so far, which is what a checkpoint stores.

Samples read from tar or Parquet shards as a map-style dataset (runs with style mixing or SCST; other runs stream
shards, see shard_stream.py) come in *blocks* (one per shard): an epoch then permutes the blocks and the
samples within each, so consecutive batches read one shard at a time instead of seeking across all of them. The
integer cursor still says exactly where the run is: which shard of the epoch's order, and how far into it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch


class SampleStream:
    """Batches of dataset indices for one process, from ``cursor`` on (iterating does not move ``cursor``)."""

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        blocks: Sequence[int] | None = None,
    ) -> None:
        if num_samples < 1:
            raise ValueError("no samples to draw from")
        if blocks is not None and sum(blocks) != num_samples:
            raise ValueError(f"blocks cover {sum(blocks)} samples, not {num_samples}")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.blocks = list(blocks) if blocks is not None else None
        self._epoch: tuple[int, list[int]] | None = None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def _order(self, epoch: int) -> list[int]:
        if self._epoch is None or self._epoch[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            if self.blocks is None:
                order = torch.randperm(self.num_samples, generator=generator).tolist()
            else:
                order = self._block_order(self.blocks, generator)
            self._epoch = (epoch, order)
        return self._epoch[1]

    @staticmethod
    def _block_order(blocks: list[int], generator: torch.Generator) -> list[int]:
        starts = [0]
        for length in blocks[:-1]:
            starts.append(starts[-1] + length)
        order: list[int] = []
        for block in torch.randperm(len(blocks), generator=generator).tolist():
            within = torch.randperm(blocks[block], generator=generator) + starts[block]
            order.extend(within.tolist())
        return order

    def indices(self, start: int, count: int) -> list[int]:
        """Samples ``start .. start + count - 1`` of the endless stream."""
        out = []
        for position in range(start, start + count):
            epoch, offset = divmod(position, self.num_samples)
            out.append(self._order(epoch)[offset])
        return out

    def batches(self, cursor: int) -> Iterator[list[int]]:
        """This process's micro-batches, the first one starting at stream position ``cursor``."""
        while True:
            yield self.indices(cursor + self.rank * self.batch_size, self.batch_size)
            cursor += self.global_batch
