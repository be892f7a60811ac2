"""The order of training samples: an endless seeded stream, resumable from a cursor and sharded across processes.

Epoch ``e`` is a permutation of the samples drawn from ``seed + e``; the epochs are concatenated and cut into global
micro-batches of ``batch_size * world_size`` consecutive samples (a batch may straddle two epochs, so none is dropped
or short). Process ``rank`` takes its ``batch_size`` slice of each. The whole position in the data is one integer,
the number of samples of the stream consumed so far, which is what a checkpoint stores.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class SampleStream:
    """Batches of dataset indices for one process, from ``cursor`` on (iterating does not move ``cursor``)."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if num_samples < 1:
            raise ValueError("no samples to draw from")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self._epoch: tuple[int, list[int]] | None = None

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def _order(self, epoch: int) -> list[int]:
        if self._epoch is None or self._epoch[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._epoch = (epoch, torch.randperm(self.num_samples, generator=generator).tolist())
        return self._epoch[1]

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
