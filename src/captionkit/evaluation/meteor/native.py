"""METEOR 1.5 in Python, equal to pycocoevalcap's jar run with ``-l en -norm``: no Java needed."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from captionkit.evaluation.meteor.align import align
from captionkit.evaluation.meteor.matching import Matcher, Sentence
from captionkit.evaluation.meteor.normalize import normalize
from captionkit.evaluation.meteor.resources import load_meteor_data
from captionkit.evaluation.meteor.scoring import Stats, alignment_stats, corpus_score


@lru_cache(maxsize=2)
def _matcher(cache_root: Path | None) -> Matcher:
    return Matcher(load_meteor_data(cache_root))


def segment_stats(candidate: str, references: Sequence[str], cache_root: Path | None = None) -> Stats:
    """The statistics of ``candidate`` against its best-scoring reference (the first one on a tie)."""
    matcher = _matcher(cache_root)
    test = _sentence(matcher, candidate)
    best: Stats | None = None
    best_score = -1.0
    for reference in references:
        ref = _sentence(matcher, reference)
        chosen = align(matcher.matches(test, ref), len(test.words))
        stats = alignment_stats(test.words, ref.words, chosen, matcher.data.function_words)
        score = stats.score()
        if score > best_score:
            best, best_score = stats, score
    if best is None:
        raise ValueError("METEOR needs at least one reference per candidate")
    return best


def _sentence(matcher: Matcher, text: str) -> Sentence:
    return matcher.sentence(normalize(text, matcher.data.prefixes))


def meteor_python(
    candidates: Sequence[str], references: Sequence[Sequence[str]], cache_root: Path | None = None
) -> tuple[float, list[float]]:
    """``(corpus METEOR, per-image METEOR)``, as pycocoevalcap reports them (its ``|||`` clean-up included)."""
    stats = [
        segment_stats(candidate.replace("|||", "").replace("  ", " "), refs, cache_root)
        for candidate, refs in zip(candidates, references, strict=True)
    ]
    return corpus_score(stats), [s.score() for s in stats]
