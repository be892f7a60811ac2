"""METEOR 1.5 scores from alignment statistics, with the jar's default English parameters (task ``rank``).

Precision and recall weight each matched word by its stage (exact 1.0, stem 0.6, synonym 0.8, paraphrase 0.6) and
content words against function words by ``delta``; ``Fmean = P R / (alpha P + (1 - alpha) R)``; the fragmentation
penalty is ``gamma (chunks / matched words) ** beta``, zero when the sentences match word for word in one chunk.
A segment takes its best reference. The corpus score is computed from the statistics summed over segments (the
jar's ``EVAL``), not as a mean of segment scores; there a segment matched whole in one chunk counts no chunk
(observed: the jar's corpus chunks are the sum of the segments' chunks less the number of such segments).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from captionkit.evaluation.meteor.matching import Match

ALPHA, BETA, GAMMA, DELTA = 0.85, 0.20, 0.60, 0.75
STAGE_WEIGHTS = (1.0, 0.6, 0.8, 0.6)


@dataclass(frozen=True)
class Stats:
    """The jar's 23 sufficient statistics, in its order: test and reference length, test and reference function
    words; per stage (exact, stem, synonym, paraphrase) matched test content, reference content, test function and
    reference function words; chunks; matched test words; matched reference words."""

    values: tuple[int, ...]

    @classmethod
    def parse(cls, line: str) -> Stats:
        """The statistics from a line of the jar's ``SCORE`` output."""
        return cls(tuple(int(float(v)) for v in line.split()))

    def __add__(self, other: Stats) -> Stats:
        return Stats(tuple(a + b for a, b in zip(self.values, other.values, strict=True)))

    @property
    def whole(self) -> bool:
        """Every word of both sentences matched, in one chunk: no fragmentation penalty."""
        return self.values[21] == self.values[0] and self.values[22] == self.values[1] and self.values[20] == 1

    def score(self, chunks: int | None = None) -> float:
        """The METEOR score; ``chunks`` overrides the chunk count (the corpus score's)."""
        test_length, ref_length, test_function, ref_function = self.values[:4]
        stages = [self.values[4 + 4 * k : 8 + 4 * k] for k in range(len(STAGE_WEIGHTS))]
        test_matched, ref_matched = self.values[21:23]
        test_weight = sum(w * (DELTA * s[0] + (1 - DELTA) * s[2]) for w, s in zip(STAGE_WEIGHTS, stages, strict=True))
        ref_weight = sum(w * (DELTA * s[1] + (1 - DELTA) * s[3]) for w, s in zip(STAGE_WEIGHTS, stages, strict=True))
        if test_weight == 0 or ref_weight == 0:
            return 0.0
        precision = test_weight / (DELTA * (test_length - test_function) + (1 - DELTA) * test_function)
        recall = ref_weight / (DELTA * (ref_length - ref_function) + (1 - DELTA) * ref_function)
        fmean = precision * recall / (ALPHA * precision + (1 - ALPHA) * recall)
        if chunks is None:
            chunks = 0 if self.whole else self.values[20]
        return fmean * (1 - GAMMA * (chunks / ((test_matched + ref_matched) / 2)) ** BETA)


def corpus_score(segments: Sequence[Stats]) -> float:
    """The jar's corpus score: from the summed statistics, each whole segment counting no chunk."""
    if not segments:
        return 0.0
    total = segments[0]
    for stats in segments[1:]:
        total = total + stats
    return total.score(chunks=total.values[20] - sum(s.whole for s in segments))


def alignment_stats(
    test: Sequence[str], ref: Sequence[str], chosen: Iterable[Match], function: frozenset[str]
) -> Stats:
    """The statistics of one aligned test/reference pair (normalised words)."""
    stages = [[0, 0, 0, 0] for _ in STAGE_WEIGHTS]
    chunks = test_matched = ref_matched = 0
    end = (-1, -1)
    for m in chosen:
        chunks += end != (m.start1, m.start2)
        end = (m.start1 + m.length1, m.start2 + m.length2)
        test_matched += m.length1
        ref_matched += m.length2
        for word in test[m.start1 : end[0]]:
            stages[m.stage][0 if word not in function else 2] += 1
        for word in ref[m.start2 : end[1]]:
            stages[m.stage][1 if word not in function else 3] += 1
    lengths = (len(test), len(ref), sum(w in function for w in test), sum(w in function for w in ref))
    return Stats((*lengths, *(v for stage in stages for v in stage), chunks, test_matched, ref_matched))
