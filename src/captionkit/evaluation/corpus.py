"""A scored set in array form: candidates, references and their n-grams, computed once for BLEU and CIDEr-D."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING

from captionkit.evaluation.ngrams import NGramTable, References, gather, reference_ngrams

if TYPE_CHECKING:
    import numpy as np


class Corpus:
    """Tokenized ``candidates[i]`` (one per image) with tokenized ``references[i]`` (at least one per image)."""

    def __init__(self, candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> None:
        import numpy as np

        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
        references_per_image = [len(refs) for refs in references]
        if not all(references_per_image):
            raise ValueError(f"image {references_per_image.index(0)} has no references")
        flat = [ref for refs in references for ref in refs]
        # Each distinct caption once (candidates first, then references, in order), numbered in that order.
        distinct = dict.fromkeys(candidates)
        distinct.update(dict.fromkeys(flat))
        index = dict(zip(distinct, range(len(distinct)), strict=True))
        self.n = n
        self.num_images = len(candidates)
        self.table = NGramTable.build(list(index), n)
        self.candidate_caption = np.fromiter(map(index.__getitem__, candidates), np.int64, len(candidates))
        # One entry per (image, reference), in image order.
        self.pair_image = np.repeat(np.arange(len(candidates), dtype=np.int64), references_per_image)
        self.pair_caption = np.fromiter(map(index.__getitem__, flat), np.int64, len(flat))
        self.candidate_lengths = self.table.lengths[self.candidate_caption]
        self.reference_lengths = self.table.lengths[self.pair_caption]
        self.references_per_image = np.bincount(self.pair_image, minlength=self.num_images)
        self._candidate_ngrams: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._reference_entries: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    @cached_property
    def references(self) -> References:
        return reference_ngrams(self.table, self.pair_image, self.pair_caption, self.reference_entries)

    def reference_entries(self, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(pair, n-gram id, count)`` of every distinct n-gram of this order in each (image, reference) pair,
        pairs in order (shared by BLEU's clipping and CIDEr-D's vectors)."""
        if order not in self._reference_entries:
            self._reference_entries[order] = gather(self.table.orders[order - 1], self.pair_caption)
        return self._reference_entries[order]

    def candidate_ngrams(self, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(image, n-gram id, count)`` of every distinct candidate n-gram of this order, sorted by image, id."""
        if order not in self._candidate_ngrams:
            self._candidate_ngrams[order] = gather(self.table.orders[order - 1], self.candidate_caption)
        return self._candidate_ngrams[order]

    def reference_max_counts(self, order: int, images: np.ndarray, grams: np.ndarray) -> np.ndarray:
        """For each (image, n-gram), its largest count in one reference of that image (0 if none has it)."""
        import numpy as np

        pairs = self.references.pair[order - 1]
        maxima = self.references.max_count[order - 1]
        keys = images * self.table.orders[order - 1].size + grams
        at = np.minimum(np.searchsorted(pairs, keys), max(0, len(pairs) - 1))
        found = pairs[at] == keys if len(pairs) else np.zeros(len(keys), dtype=bool)
        return np.where(found, maxima[at] if len(pairs) else 0, 0)

    def document_frequency(self, order: int) -> np.ndarray:
        """For each n-gram id of this order, the number of images whose references contain it."""
        import numpy as np

        size = self.table.orders[order - 1].size
        return np.bincount(self.references.pair[order - 1] % size, minlength=size)

    def closest_reference_lengths(self) -> np.ndarray:
        """Per image, the reference length closest to the candidate's; the shorter one on a tie."""
        import numpy as np

        span = int(self.reference_lengths.max(initial=0)) + 1
        distance = np.abs(self.reference_lengths - self.candidate_lengths[self.pair_image])
        first = np.concatenate(([0], np.cumsum(self.references_per_image)[:-1]))
        best = np.minimum.reduceat(distance * span + self.reference_lengths, first)
        return best % span
