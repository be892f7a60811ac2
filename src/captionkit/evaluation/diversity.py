"""Beyond the COCO metrics: how varied generated captions are, how long, and whether one caption dominates.

All statistics read tokenized captions (words are ``caption.split()``), the same tokens the metrics score.

- ``distinct_1`` / ``distinct_2``: distinct unigrams / bigrams over all captions (corpus level, not averaged per
  image) divided by the number of all unigrams / bigrams, bigrams taken within captions. Li et al. (2016) scale by
  the number of generated *tokens* instead: the same ``distinct_1``, while their ``distinct_2`` is this one times
  ``(tokens - captions) / tokens`` for non-empty captions (many implementations divide by n-grams, as here: say
  which when comparing).
- ``vocab_size``: number of distinct words.
- ``unique_captions``: the number of distinct caption strings.
- ``unique_share``: ``unique_captions`` divided by the number of captions (1.0: no caption repeats).
- ``copied_from_train``: share of captions identical to some training caption (when those are given).
- ``length_*``: caption length in tokens: mean, population standard deviation, min, max, and the 10th, 50th and
  90th percentiles (linear interpolation, as numpy's default).
- :func:`repeated_captions`: captions given to more than ``share`` of the images (and to at least ``min_count``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from captionkit.evaluation.corpus import Corpus

REPEAT_SHARE = 0.05
REPEAT_MIN_COUNT = 3


def distinct_n(captions: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams over ``captions`` (0 when there are none).

    >>> distinct_n(["a dog", "a cat"], 1)
    0.75
    """
    return _distinct([caption.split() for caption in captions], n)


def _distinct(words: Sequence[list[str]], n: int) -> float:
    """:func:`distinct_n` of captions already split into words."""
    distinct, total = _distinct_counts(words, n)
    return distinct / total if total else 0.0


def _distinct_counts(words: Sequence[list[str]], n: int) -> tuple[int, int]:
    """The number of distinct n-grams over captions split into words, and the number of all their n-grams."""
    grams: set[str | tuple[str, ...]] = set()  # words themselves for n = 1: no tuple to build per word
    if n == 1:
        grams.update(word for caption in words for word in caption)
    elif n == 2:  # the common case, without building n shifted copies of each caption
        grams.update(gram for caption in words for gram in pairwise(caption))
    else:
        grams.update(gram for caption in words for gram in zip(*[caption[i:] for i in range(n)], strict=False))
    return len(grams), sum(max(0, len(caption) - n + 1) for caption in words)


def _percentile(ordered: Sequence[int], q: float) -> float:
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def length_stats(captions: Sequence[str]) -> dict[str, float]:
    """Caption length in tokens: ``length_mean``, ``length_std``, ``length_min``, ``length_max``, ``length_p10``,
    ``length_p50``, ``length_p90``."""
    return _length_stats([len(c.split()) for c in captions])


def _length_stats(lengths: list[int]) -> dict[str, float]:
    lengths = sorted(lengths)
    if not lengths:
        return {}
    mean = sum(lengths) / len(lengths)
    return {
        "length_mean": mean,
        "length_std": math.sqrt(sum((x - mean) ** 2 for x in lengths) / len(lengths)),
        "length_min": lengths[0],
        "length_max": lengths[-1],
        "length_p10": _percentile(lengths, 0.10),
        "length_p50": _percentile(lengths, 0.50),
        "length_p90": _percentile(lengths, 0.90),
    }


def diversity(captions: Sequence[str], train_captions: Iterable[str] | None = None) -> dict[str, float]:
    """Distinct-1/2, vocabulary size, unique captions (count and share) and (with training captions) the copied
    share. Counts are ints."""
    if not captions:
        return {}
    words = [caption.split() for caption in captions]
    return _diversity(_distinct_counts(words, 1), _distinct_counts(words, 2), captions, train_captions)


def _diversity(
    unigrams: tuple[int, int],
    bigrams: tuple[int, int],
    captions: Sequence[str],
    train_captions: Iterable[str] | None,
) -> dict[str, float]:
    """The statistics from the (distinct, all) counts of unigrams and bigrams and the captions themselves."""
    unique = len(set(captions))
    stats: dict[str, float] = {
        "distinct_1": unigrams[0] / unigrams[1] if unigrams[1] else 0.0,
        "distinct_2": bigrams[0] / bigrams[1] if bigrams[1] else 0.0,
        "vocab_size": unigrams[0],
        "unique_captions": unique,
        "unique_share": unique / len(captions),
    }
    if train_captions is not None:
        train = set(train_captions)
        stats["copied_from_train"] = sum(c in train for c in captions) / len(captions)
    return stats


def caption_statistics(captions: Sequence[str], train_captions: Iterable[str] | None = None) -> dict[str, float]:
    """:func:`diversity` and :func:`length_stats` together, splitting each caption into words once."""
    if not captions:
        return {}
    words = [caption.split() for caption in captions]
    counts = _distinct_counts(words, 1), _distinct_counts(words, 2)
    return _diversity(*counts, captions, train_captions) | _length_stats([len(caption) for caption in words])


def corpus_statistics(
    corpus: Corpus, captions: Sequence[str], train_captions: Iterable[str] | None = None
) -> dict[str, float]:
    """:func:`caption_statistics` of ``captions``, the corpus's candidates in its image order, from the words and
    n-grams the corpus has counted already (for BLEU and CIDEr-D): the same numbers, without splitting again."""
    import numpy as np

    if not captions:
        return {}
    lengths = corpus.candidate_lengths

    def counts(n: int) -> tuple[int, int]:
        grams = corpus.candidate_ngrams(n)[1]
        seen = np.zeros(corpus.table.orders[n - 1].size, dtype=bool)
        seen[grams] = True
        return int(np.count_nonzero(seen)), int(np.maximum(lengths - (n - 1), 0).sum())

    return _diversity(counts(1), counts(2), captions, train_captions) | _length_stats(lengths.tolist())


def repeated_captions(
    captions: Sequence[str], share: float = REPEAT_SHARE, min_count: int = REPEAT_MIN_COUNT
) -> list[tuple[str, int]]:
    """``(caption, images)`` for each caption given to more than ``share`` of the images and to at least
    ``min_count`` of them, most frequent first.

    >>> repeated_captions(["a dog"] * 3 + ["a cat"] * 17)
    [('a cat', 17), ('a dog', 3)]
    """
    limit = share * len(captions)
    counts = Counter(captions)
    return [(c, k) for c, k in counts.most_common() if k > limit and k >= min_count]
