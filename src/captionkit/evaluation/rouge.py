"""ROUGE-L as pycocoevalcap computes it (``pycocoevalcap/rouge/rouge.py``; Lin 2004).

For each image: with ``LCS`` the longest common subsequence of candidate and reference words
(``caption.split(" ")``, exactly as pycocoevalcap splits), ``P = max_r LCS/len(candidate)`` and
``R = max_r LCS/len(r)`` (each maximised over the references separately), and
``ROUGE-L = (1 + b^2) P R / (R + b^2 P)`` with ``b = 1.2``, 0 when ``P`` or ``R`` is 0. The corpus score is the mean
over images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from captionkit.evaluation.corpus import Corpus

BETA = 1.2


@dataclass(frozen=True)
class RougeScores:
    mean: float
    per_image: list[float]


def _match_masks(words: Sequence[str]) -> dict[str, int]:
    """For each word, a bit mask of its positions in ``words``."""
    masks: dict[str, int] = {}
    for position, word in enumerate(words):
        masks[word] = masks.get(word, 0) | (1 << position)
    return masks


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison & Dix 1986; Hyyro 2004).

    >>> lcs_length("a b c d".split(), "a c x d".split())
    3
    """
    return _lcs(_match_masks(a), len(a), b)


def _lcs(masks: dict[str, int], length: int, other: Sequence[str]) -> int:
    # Bits above ``length`` collect carries but never reach the low bits (carries run upwards, and ``matches`` is
    # a subset of ``row``, so nothing borrows): they are masked off once at the end. A word absent from the other
    # caption leaves the row as it is, so it is skipped.
    row = (1 << length) - 1  # ones where the LCS has not yet grown
    for mask in map(masks.get, other):
        if mask:
            matches = row & mask
            row = (row + matches) | (row - matches)
    return length - (row & ((1 << length) - 1)).bit_count()


def rouge_l(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> RougeScores:
    """ROUGE-L (beta 1.2) of tokenized ``candidates[i]`` against tokenized ``references[i]``."""
    beta2 = BETA**2
    scores = []
    for candidate, refs in zip(candidates, references, strict=True):
        words = candidate.split(" ")
        masks, length = _match_masks(words), len(words)
        # P's maximum is the longest LCS over the length (division by one number keeps the order); R's is taken
        # ratio by ratio, as pycocoevalcap does.
        lcs_max, rec_max = 0, 0.0
        for ref in refs:
            ref_words = ref.split(" ")
            lcs = _lcs(masks, length, ref_words)
            lcs_max = max(lcs_max, lcs)
            rec_max = max(rec_max, lcs / float(len(ref_words)))
        prec_max = lcs_max / float(length)
        if prec_max != 0 and rec_max != 0:
            scores.append(((1 + beta2) * prec_max * rec_max) / float(rec_max + beta2 * prec_max))
        else:
            scores.append(0.0)
    return RougeScores(sum(scores) / len(scores) if scores else 0.0, scores)


#: Candidates up to this many words fit the 64-bit rows of :func:`rouge_l_from_corpus` (with a bit for the carry).
MAX_WORDS_IN_64_BITS = 63


def rouge_l_from_corpus(corpus: Corpus) -> RougeScores:
    """:func:`rouge_l` of a prepared corpus: the same numbers, from the same operations in the same order, with the
    LCS rows of all (candidate, reference) pairs advanced together in numpy's 64-bit integers.

    Images whose words the corpus does not hold as ROUGE-L splits them (a caption that is not single-spaced, see
    :attr:`~captionkit.evaluation.ngrams.NGramTable.single_spaced`), or whose candidate has more than
    :data:`MAX_WORDS_IN_64_BITS` words, are scored by :func:`rouge_l`.
    """
    import numpy as np

    table = corpus.table
    first_pair = np.concatenate(([0], np.cumsum(corpus.references_per_image)[:-1]))
    fits = table.single_spaced[corpus.candidate_caption] & (corpus.candidate_lengths <= MAX_WORDS_IN_64_BITS)
    fits &= np.minimum.reduceat(table.single_spaced[corpus.pair_caption], first_pair)
    if not fits.any():
        return rouge_l(
            [table.captions[c] for c in corpus.candidate_caption.tolist()],
            [[table.captions[c] for c in refs] for refs in np.split(corpus.pair_caption, first_pair[1:])],
        )
    # The others' candidates count as empty here; their scores are replaced below.
    candidate_lengths = np.where(fits, corpus.candidate_lengths, 0)
    lcs = _lcs_lengths(corpus, candidate_lengths)
    prec_max = np.maximum.reduceat(lcs, first_pair) / np.maximum(candidate_lengths, 1).astype(np.float64)
    rec_max = np.maximum.reduceat(lcs / np.maximum(corpus.reference_lengths, 1).astype(np.float64), first_pair)
    beta2 = BETA**2
    scores = np.zeros(corpus.num_images)
    both = (prec_max != 0) & (rec_max != 0)
    prec, rec = prec_max[both], rec_max[both]
    scores[both] = ((1 + beta2) * prec * rec) / (rec + beta2 * prec)
    per_image = scores.tolist()
    others = np.flatnonzero(~fits).tolist()
    if others:
        captions = table.captions
        pair_caption = corpus.pair_caption.tolist()
        starts, counts = first_pair.tolist(), corpus.references_per_image.tolist()
        exact = rouge_l(
            [captions[corpus.candidate_caption[i]] for i in others],
            [[captions[j] for j in pair_caption[starts[i] : starts[i] + counts[i]]] for i in others],
        )
        for i, score in zip(others, exact.per_image, strict=True):
            per_image[i] = score
    return RougeScores(sum(per_image) / len(per_image) if per_image else 0.0, per_image)


def _lcs_lengths(corpus: Corpus, candidate_lengths: np.ndarray) -> np.ndarray:
    """The LCS length of every (candidate, reference) pair, bit-parallel as :func:`_lcs`, for candidates of
    ``candidate_lengths`` words (at most 63: a row and its carry fit 64 bits; 0 for an image to leave out)."""
    import numpy as np

    table = corpus.table
    vocabulary = table.orders[0].size
    starts = np.concatenate(([0], np.cumsum(table.lengths)))
    # Bit masks of each (image, word) in the image's candidate, as _match_masks makes them, keyed image * V + word.
    image, position, word = _tokens(table.word_ids, starts, corpus.candidate_caption, candidate_lengths)
    keys = image * vocabulary + word
    order = np.argsort(keys, kind="stable")
    keys, bits = keys[order], np.left_shift(np.uint64(1), position[order].astype(np.uint64))
    first = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    keys, masks = keys[first], np.bitwise_or.reduceat(bits, first)
    # Each reference word's mask in its image's candidate (0: absent), one row per position.
    pair, position, word = _tokens(table.word_ids, starts, corpus.pair_caption, corpus.reference_lengths)
    wanted = corpus.pair_image[pair] * vocabulary + word
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    matched = np.where(keys[at] == wanted, masks[at], np.uint64(0))
    steps = np.zeros((int(corpus.reference_lengths.max()), len(corpus.pair_caption)), dtype=np.uint64)
    steps[position, pair] = matched
    length = candidate_lengths[corpus.pair_image]
    full = np.left_shift(np.uint64(1), length.astype(np.uint64)) - np.uint64(1)
    row = full.copy()
    for mask in steps:  # a row stays below 2**63, so adding its matches never overflows
        matches = row & mask
        row = ((row + matches) | (row - matches)) & full
    return length - _popcount(row)


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (``np.bitwise_count`` from numpy 2.0; a byte table before)."""
    import numpy as np

    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values).astype(np.int64)
    byte_bits = np.array([bin(byte).count("1") for byte in range(256)], dtype=np.int64)
    return byte_bits[values.view(np.uint8)].reshape(-1, 8).sum(axis=1)


def _tokens(
    word_ids: np.ndarray, starts: np.ndarray, captions: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every word of ``captions[i]`` (``lengths[i]`` words each): ``(i, its position, its word id)``."""
    import numpy as np

    owner = np.repeat(np.arange(len(captions), dtype=np.int64), lengths)
    position = np.arange(len(owner), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return owner, position, word_ids[starts[captions][owner] + position]
