"""METEOR 1.5 scores from alignment statistics, with the jar's default English parameters (task ``rank``).

Precision and recall weight each matched word by its stage (exact 1.0, stem 0.6, synonym 0.8, paraphrase 0.6) and
content words against function words by ``delta``; ``Fmean = 1 / ((1 - alpha) / P + alpha / R)``; the fragmentation
penalty is ``gamma (chunks / matched words) ** beta``, zero when the sentences match word for word in one chunk.
A segment takes its best reference. The corpus score is computed from the statistics summed over segments (the
jar's ``EVAL``), not as a mean of segment scores; there a segment matched whole in one chunk counts no chunk.
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

    @property
    def whole(self) -> bool:
        """Every word of both sentences matched, in one chunk: no fragmentation penalty."""
        return self.values[21] == self.values[0] and self.values[22] == self.values[1] and self.values[20] == 1

    def score(self) -> float:
        """The METEOR score, computed in the jar's order of operations."""
        test_length, ref_length, test_function, ref_function = self.values[:4]
        stages = [self.values[4 + 4 * k : 8 + 4 * k] for k in range(len(STAGE_WEIGHTS))]
        test_weight = ref_weight = 0.0
        for w, s in zip(STAGE_WEIGHTS, stages, strict=True):
            test_weight += s[0] * w * DELTA
            ref_weight += s[1] * w * DELTA
        for w, s in zip(STAGE_WEIGHTS, stages, strict=True):
            test_weight += s[2] * w * (1.0 - DELTA)
            ref_weight += s[3] * w * (1.0 - DELTA)
        if test_weight == 0 or ref_weight == 0:
            return 0.0  # the jar's NaN
        precision = test_weight / (DELTA * (test_length - test_function) + (1.0 - DELTA) * test_function)
        recall = ref_weight / (DELTA * (ref_length - ref_function) + (1.0 - DELTA) * ref_function)
        fmean = 1.0 / ((1.0 - ALPHA) / precision + ALPHA / recall)
        fragmentation = 0.0 if self.whole else self.values[20] / ((self.values[21] + self.values[22]) / 2)
        return max(fmean * (1.0 - GAMMA * fragmentation**BETA), 0.0)


def corpus_score(segments: Sequence[Stats]) -> float:
    """The jar's corpus score: from the summed statistics, each whole segment counting no chunk."""
    if not segments:
        return 0.0
    total = [sum(column) for column in zip(*(s.values for s in segments), strict=True)]
    total[20] -= sum(s.values[20] for s in segments if s.whole)
    return Stats(tuple(total)).score()


def alignment_stats(test_function: Sequence[bool], ref_function: Sequence[bool], chosen: Iterable[Match]) -> Stats:
    """The statistics of one aligned test/reference pair, given whether each of their words is a function word."""
    stages = [[0, 0, 0, 0] for _ in STAGE_WEIGHTS]
    chunks = test_matched = ref_matched = 0
    end = (-1, -1)
    for m in chosen:
        chunks += end != (m.start1, m.start2)
        end = (m.start1 + m.length1, m.start2 + m.length2)
        test_matched += m.length1
        ref_matched += m.length2
        counts = stages[m.stage]
        for function in test_function[m.start1 : end[0]]:
            counts[2 if function else 0] += 1
        for function in ref_function[m.start2 : end[1]]:
            counts[3 if function else 1] += 1
    lengths = (len(test_function), len(ref_function), sum(test_function), sum(ref_function))
    return Stats((*lengths, *(v for stage in stages for v in stage), chunks, test_matched, ref_matched))
