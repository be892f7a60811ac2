"""BLEU-1..4 as pycocoevalcap computes it (``pycocoevalcap/bleu/bleu_scorer.py``, option ``"closest"``).

Definition (Papineni et al. 2002, with pycocoevalcap's choices): for each image, the candidate's n-gram counts are
clipped by the largest count of that n-gram in any one reference; ``guess_k`` is the number of candidate k-grams.
The effective reference length of an image is the reference length closest to the candidate's (the shorter one on a
tie). Corpus BLEU-n sums counts and lengths over images::

    BLEU-n = (prod_{k<=n} (correct_k + 1e-15) / (guess_k + 1e-9)) ** (1/n) * BP,
    BP = exp(1 - 1/ratio) if ratio < 1 else 1,   ratio = (c + 1e-15) / (r + 1e-9)

(``c``, ``r``: candidate and effective reference lengths). Per-image BLEU is the same formula on one image's counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from captionkit.evaluation.corpus import Corpus

_TINY = 1e-15  # pycocoevalcap: "so that if guess is 0 still return 0"
_SMALL = 1e-9


@dataclass(frozen=True)
class BleuScores:
    """``corpus[k]`` is BLEU-(k+1) over all images; ``per_image[i][k]`` the same for image ``i``."""

    corpus: tuple[float, ...]
    per_image: list[tuple[float, ...]]


def _combine(correct: Sequence[float], guess: Sequence[float], testlen: float, reflen: float) -> list[float]:
    scores = []
    product = 1.0
    for k in range(len(correct)):
        product *= (float(correct[k]) + _TINY) / (float(guess[k]) + _SMALL)
        scores.append(product ** (1.0 / (k + 1)))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    if ratio < 1:
        penalty = math.exp(1 - 1 / ratio)
        scores = [s * penalty for s in scores]
    return scores


def bleu_from_corpus(corpus: Corpus, n: int = 4) -> BleuScores:
    """BLEU-1..n of a prepared :class:`~captionkit.evaluation.corpus.Corpus` (n at most its n-gram order)."""
    import numpy as np

    testlen = corpus.candidate_lengths
    reflen = corpus.closest_reference_lengths()
    correct = np.zeros((corpus.num_images, n), dtype=np.int64)
    for k in range(n):
        rows, grams, counts = corpus.candidate_ngrams(k + 1)
        best = corpus.reference_max_counts(k + 1, rows, grams)
        correct[:, k] = np.bincount(rows, np.minimum(counts, best), minlength=corpus.num_images).astype(np.int64)
    guess = np.maximum(0, testlen[:, None] - np.arange(n)[None, :])
    # Per image, vectorised in exactly pycocoevalcap's order of operations.
    fractions = (correct.astype(np.float64) + _TINY) / (guess.astype(np.float64) + _SMALL)
    products = np.cumprod(fractions, axis=1)
    per_image = products ** (1.0 / np.arange(1, n + 1))
    ratio = (testlen + _TINY) / (reflen + _SMALL)
    short = ratio < 1
    per_image[short] *= np.exp(1 - 1 / ratio[short])[:, None]
    totals = _combine(correct.sum(axis=0).tolist(), guess.sum(axis=0).tolist(), int(testlen.sum()), int(reflen.sum()))
    return BleuScores(tuple(totals), [tuple(row) for row in per_image.tolist()])


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]], n: int = 4) -> BleuScores:
    """BLEU-1..n of tokenized ``candidates[i]`` against tokenized ``references[i]`` (at least one each).

    >>> round(bleu(["a cat sat on the mat"], [["a cat sat on the mat"]]).corpus[3], 6)
    1.0
    """
    return bleu_from_corpus(Corpus(candidates, references, max(n, 1)), n)
