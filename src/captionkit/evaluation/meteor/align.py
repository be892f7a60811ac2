"""METEOR 1.5's aligner: the jar's beam search over the candidate matches, reproduced step for step.

Before the search, a match is fixed when it is the only one starting at its reference position and no other match
covers any of its words. The search walks the reference left to right, keeping at most :data:`BEAM` partial
alignments, ranked by: the most matched words, weighted 1 for exact and 0.5 for the other stages, each side
truncated to a whole number as the jar's integer sums do (so a one-word stem, synonym or paraphrase match counts
nothing and is kept only when it saves a chunk); then the fewest chunks closed; then the least distance (the
summed ``|reference position - test position|`` of the matches). At each position a path either takes a match
starting there whose words are free (one new path per match, in the matcher's order) or skips the position (kept
last); a fixed match is taken when its position is reached. The ranking sort is stable, so equal paths keep the
order they were made in. One quirk is kept: when the jar branches on a match, it adds that match's distance to the
path being extended (which goes on to branch on the next matches and to skip), not to the new path.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter

from captionkit.evaluation.meteor.matching import EXACT, Match

BEAM = 40
# A path's rank packs (-weighted matches, chunks closed, distance) into one integer, ordered as those tuples are:
# chunks and distance stay far below 2**20 for any caption.
_CHUNK = 1 << 20
_WEIGHT = 1 << 40
# A path: (rank, next reference position, test end of the open chunk (-1: none), used test words, used reference
# words (bit masks), chosen matches (a linked list: (match, rest) or None)).
_Path = tuple[int, int, int, int, int, "tuple | None"]
_RANK = itemgetter(0)
# A match as the search takes it: (match, test mask, reference mask, distance, weight, test start, test end,
# reference end).
_Choice = tuple[Match, int, int, int, int, int, int, int]


def align(by_start: Sequence[Sequence[Match]], test_length: int) -> list[Match]:
    """The matches the jar chooses, in reference order, from the candidates starting at each reference
    position (``by_start``, as :meth:`Matcher.matches` lists them)."""
    fixed, used1, used2 = _fixed(by_start, test_length)
    if all(len(options) == (j in fixed) for j, options in enumerate(by_start)):
        return [fixed[j][0] for j in sorted(fixed)]  # nothing to choose: every path takes the fixed matches
    paths: list[_Path] = [(0, 0, -1, used1, used2, None)]
    for current, options in enumerate(by_start):
        if len(paths) > 1:
            paths.sort(key=_RANK)
            del paths[BEAM:]
        bit = 1 << current
        choices = [_choice(m) for m in options]
        extended: list[_Path] = []
        for path in paths:
            rank, position, end, used1, used2, chosen = path
            if used2 & bit:
                if current < position:
                    extended.append(path)
                elif current in fixed:  # the path has come to a fixed match (position == current)
                    fix = fixed[current]
                    extended.append(_take(path, fix, rank + fix[3]))
                continue
            for m, mask1, mask2, distance, weight, start1, end1, end2 in choices:
                if not (used1 & mask1 or used2 & mask2):
                    # The jar's quirk: the new path gets the distance so far; the path it extends gets the match's.
                    chunk = _CHUNK if end != -1 and start1 != end else 0
                    extended.append((rank - weight + chunk, end2, end1, used1 | mask1, used2 | mask2, (m, chosen)))
                    rank += distance
            extended.append((rank + (_CHUNK if end != -1 else 0), position + 1, -1, used1, used2, chosen))
        paths = extended or paths[:1]
    paths.sort(key=_RANK)
    del paths[BEAM:]
    paths = [(p[0] + (_CHUNK if p[2] != -1 else 0), *p[1:]) for p in paths]
    paths.sort(key=_RANK)
    matches: list[Match] = []
    node = paths[0][5]
    while node is not None:
        matches.append(node[0])
        node = node[1]
    return matches[::-1]


def _choice(m: Match) -> _Choice:
    weight = m.length1 + m.length2 if m.stage == EXACT else m.length1 // 2 + m.length2 // 2
    mask1 = ((1 << m.length1) - 1) << m.start1
    mask2 = ((1 << m.length2) - 1) << m.start2
    end1, end2 = m.start1 + m.length1, m.start2 + m.length2
    return m, mask1, mask2, abs(m.start2 - m.start1), weight * _WEIGHT, m.start1, end1, end2


def _take(path: _Path, choice: _Choice, rank: int) -> _Path:
    """``path`` with a match added, from ``rank`` (the jar's quirk: not always the path's plus the match's)."""
    m, mask1, mask2, _, weight, start1, end1, end2 = choice
    chunk = _CHUNK if path[2] != -1 and start1 != path[2] else 0
    return rank - weight + chunk, end2, end1, path[3] | mask1, path[4] | mask2, (m, path[5])


def _fixed(by_start: Sequence[Sequence[Match]], test_length: int) -> tuple[dict[int, _Choice], int, int]:
    """The fixed matches by reference position, and the bit masks of the test and reference words they use."""
    cover1 = [0] * test_length
    cover2 = [0] * len(by_start)
    for options in by_start:
        for m in options:
            for i in range(m.start1, m.start1 + m.length1):
                cover1[i] += 1
            for j in range(m.start2, m.start2 + m.length2):
                cover2[j] += 1
    fixed: dict[int, _Choice] = {}
    used1 = used2 = 0
    for j, options in enumerate(by_start):
        if len(options) == 1:
            m = options[0]
            alone2 = all(cover2[k] == 1 for k in range(j, j + m.length2))
            if alone2 and all(cover1[k] == 1 for k in range(m.start1, m.start1 + m.length1)):
                fixed[j] = _choice(m)
                used1 |= fixed[j][1]
                used2 |= fixed[j][2]
    return fixed, used1, used2
