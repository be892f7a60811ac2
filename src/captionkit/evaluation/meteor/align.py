"""METEOR's alignment, as far as it has been observed on the jar: the subset of candidate matches, each word in at
most one, that covers the most words of both sentences, each word weighted by its match's module weight (exact 1.0,
stem 0.6, synonym 0.8, paraphrase 0.6), then has the fewest chunks; among equals, the one that takes each test
word's earliest candidate (no distance criterion: the jar aligns the first ``a`` of the test to
the reference's only ``a`` even when a later one sits closer). Found here by an exact depth-first search over the
reference's words, in order, as the jar lists its alignments.

Also observed: a stem match, a match found twice (by two stages, or a paraphrase listed both ways in the table)
and a one-word synonym or paraphrase match whose words have other candidates are aligned only inside a chunk that
holds another match: ``a b c sitting`` against ``a b sits`` and ``the women`` against ``the qqq woman`` align no
``sitting`` and no ``women``, while ``a sitting`` against ``a sits``, ``office women`` against ``placed woman`` and
``the office`` against ``the qqq placed`` align every word. The jar's beam search still differs on some pairs (see
the README's scoring section), so this module is not yet equal to the jar.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from captionkit.evaluation.meteor.matching import EXACT, STEM, Match
from captionkit.evaluation.meteor.scoring import STAGE_WEIGHTS

# An alignment's cost: (-weighted words covered, chunks); smaller is better. Weights in tenths keep ties exact.
_Cost = tuple[int, int]
_TENTHS = tuple(round(10 * w) for w in STAGE_WEIGHTS)


@dataclass
class _Search:
    by_start: list[list[tuple[Match, bool]]]  # per reference position: (match, whether it may not open a chunk alone)
    reach: list[int]  # reach[j]: most weighted words that matches starting at j or later could still cover
    best: _Cost = (1, 0)
    chosen: list[Match] = field(default_factory=list)


def align(matches: Sequence[Match], ref_length: int) -> list[Match]:
    """The chosen matches, in test order."""
    spans = Counter((m.start1, m.length1, m.start2, m.length2) for m in matches)
    users1: Counter[int] = Counter(i for m in matches for i in range(m.start1, m.start1 + m.length1))
    users2: Counter[int] = Counter(j for m in matches for j in range(m.start2, m.start2 + m.length2))
    by_start: list[list[tuple[Match, bool]]] = [[] for _ in range(ref_length)]
    for m in sorted(matches, key=lambda m: m.start1):
        span = (m.start1, m.length1, m.start2, m.length2)
        if not spans[span]:
            continue  # the same words matched again: listed once, as the first stage that found them
        shared = any(users1[i] > 1 for i in range(m.start1, m.start1 + m.length1)) or any(
            users2[j] > 1 for j in range(m.start2, m.start2 + m.length2)
        )
        one_to_one = m.length1 == m.length2 == 1
        follower = m.stage == STEM or spans[span] > 1 or (m.stage != EXACT and shared and one_to_one)
        by_start[m.start2].append((m, follower))
        spans[span] = 0
    reach = [0] * (ref_length + 1)
    for i in range(ref_length - 1, -1, -1):
        reach[i] = reach[i + 1] + max((_weight(m) for m, _ in by_start[i]), default=0)
    search = _Search(by_start, reach)
    _extend(search, 0, 0, [], 0, 0, (-1, -1), False)
    return sorted(search.chosen, key=lambda m: m.start1)


def _weight(m: Match) -> int:
    return (m.length1 + m.length2) * _TENTHS[m.stage]


def _extend(
    search: _Search, j: int, used1: int, path: list[Match], covered: int, chunks: int, end: tuple[int, int],
    shared_only: bool,
) -> None:  # fmt: skip
    best = search.best
    bound = -(covered + search.reach[j])
    if bound > best[0] or (bound == best[0] and chunks > best[1]):
        return
    if j == len(search.by_start):
        cost = (-covered, chunks)
        if cost < best and not shared_only:
            search.best, search.chosen = cost, list(path)
        return
    for m, shared in search.by_start[j]:
        span = ((1 << m.length1) - 1) << m.start1
        if used1 & span:
            continue
        joined = end == (m.start1, m.start2)
        if not joined and shared_only:
            continue  # the chunk that ends here holds only matches that may not open one
        path.append(m)
        _extend(
            search, j + m.length2, used1 | span, path, covered + _weight(m), chunks + (not joined),
            (m.start1 + m.length1, m.start2 + m.length2),
            shared and (shared_only or not joined),
        )  # fmt: skip
        path.pop()
    _extend(search, j + 1, used1, path, covered, chunks, end, shared_only)
