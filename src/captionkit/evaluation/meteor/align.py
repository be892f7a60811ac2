"""METEOR's alignment: the subset of candidate matches, each word in at most one, that covers the most words of
both sentences, then has the fewest chunks, then the smallest sum of distances between the start positions of
matched phrases (Denkowski & Lavie 2011). The search here is exact (depth-first with bounds); the jar's is a
beam search, so on rare ties the two may pick different alignments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from captionkit.evaluation.meteor.matching import Match

# An alignment's cost: (-words covered, chunks, distance); smaller is better.
_Cost = tuple[int, int, int]


@dataclass
class _Search:
    by_start: list[list[Match]]
    reach: list[int]  # reach[i]: most words that matches starting at i or later could still cover
    best: _Cost = (1, 0, 0)
    chosen: list[Match] = field(default_factory=list)


def align(matches: Sequence[Match], test_length: int) -> list[Match]:
    """The chosen matches, in test order."""
    by_start: list[list[Match]] = [[] for _ in range(test_length)]
    for m in matches:
        by_start[m.start1].append(m)
    reach = [0] * (test_length + 1)
    for i in range(test_length - 1, -1, -1):
        reach[i] = reach[i + 1] + max((m.length1 + m.length2 for m in by_start[i]), default=0)
    search = _Search(by_start, reach)
    _extend(search, 0, 0, [], 0, 0, 0, (-1, -1))
    return search.chosen


def _extend(
    search: _Search, i: int, used2: int, path: list[Match], covered: int, chunks: int, distance: int,
    end: tuple[int, int],
) -> None:  # fmt: skip
    best = search.best
    if -(covered + search.reach[i]) > best[0] or (-(covered + search.reach[i]) == best[0] and chunks > best[1]):
        return
    if i == len(search.by_start):
        cost = (-covered, chunks, distance)
        if cost < best:
            search.best, search.chosen = cost, list(path)
        return
    for m in search.by_start[i]:
        span = ((1 << m.length2) - 1) << m.start2
        if used2 & span:
            continue
        path.append(m)
        joined = end == (m.start1, m.start2)
        _extend(
            search, i + m.length1, used2 | span, path, covered + m.length1 + m.length2, chunks + (not joined),
            distance, (m.start1 + m.length1, m.start2 + m.length2),
        )  # fmt: skip
        path.pop()
    _extend(search, i + 1, used2, path, covered, chunks, distance, end)
