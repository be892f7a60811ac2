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
