"""METEOR 1.5 in Python, equal to pycocoevalcap's jar run with ``-l en -norm``: no Java needed."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from captionkit.evaluation.meteor.align import align
from captionkit.evaluation.meteor.matching import Matcher
from captionkit.evaluation.meteor.normalize import normalize
from captionkit.evaluation.meteor.resources import load_meteor_data
from captionkit.evaluation.meteor.scoring import Stats, alignment_stats, corpus_score


@lru_cache(maxsize=2)
def _matcher(cache_root: Path | None) -> Matcher:
    return Matcher(load_meteor_data(cache_root))


def segment_stats(candidate: str, references: Sequence[str], cache_root: Path | None = None) -> Stats:
    """The statistics of ``candidate`` against its best-scoring reference (the first one on a tie)."""
    matcher = _matcher(cache_root)
    data = matcher.data
    test = normalize(candidate, data.prefixes)
    best: Stats | None = None
    for reference in references:
        ref = normalize(reference, data.prefixes)
        stats = alignment_stats(test, ref, align(matcher.matches(test, ref), len(ref)), data.function_words)
        if best is None or stats.score() > best.score():
            best = stats
    if best is None:
        raise ValueError("METEOR needs at least one reference per candidate")
    return best


def meteor_python(
    candidates: Sequence[str], references: Sequence[Sequence[str]], cache_root: Path | None = None
) -> tuple[float, list[float]]:
    """``(corpus METEOR, per-image METEOR)``, as pycocoevalcap reports them (its ``|||`` clean-up included)."""
    stats = [
        segment_stats(candidate.replace("|||", "").replace("  ", " "), refs, cache_root)
        for candidate, refs in zip(candidates, references, strict=True)
    ]
    return corpus_score(stats), [s.score() for s in stats]
