"""METEOR 1.5 in Python, equal to pycocoevalcap's jar run with ``-l en -norm``: no Java needed."""

from __future__ import annotations

import gc
from collections.abc import Sequence
from functools import lru_cache
from itertools import chain
from pathlib import Path

from captionkit.evaluation.meteor.align import align
from captionkit.evaluation.meteor.matching import Matcher, Sentence
from captionkit.evaluation.meteor.normalize import normalize
from captionkit.evaluation.meteor.resources import load_meteor_data
from captionkit.evaluation.meteor.scoring import Stats, alignment_stats, corpus_score


@lru_cache(maxsize=2)
def _matcher(cache_root: Path | None) -> Matcher:
    return Matcher(load_meteor_data(cache_root))


def meteor_python(
    candidates: Sequence[str], references: Sequence[Sequence[str]], cache_root: Path | None = None
) -> tuple[float, list[float]]:
    """``(corpus METEOR, per-image METEOR)``, as pycocoevalcap reports them (its ``|||`` clean-up included)."""
    stats = meteor_stats(candidates, references, cache_root)
    return corpus_score(stats), [s.score() for s in stats]


def meteor_stats(
    candidates: Sequence[str], references: Sequence[Sequence[str]], cache_root: Path | None = None
) -> list[Stats]:
    """Each candidate's statistics against its best reference, as the jar's ``SCORE`` answers them."""
    # Millions of small tuples live here and none forms a cycle: the cyclic collector would only rescan them.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _stats(_matcher(cache_root), candidates, references)
    finally:
        if collecting:
            gc.enable()


def _stats(matcher: Matcher, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> list[Stats]:
    tests = [candidate.replace("|||", "").replace("  ", " ") for candidate in candidates]
    words: dict[str, tuple[str, ...]] = {}
    for text in chain(tests, chain.from_iterable(references)):
        if text not in words:
            words[text] = tuple(normalize(text, matcher.data.prefixes))
    texts = [[test, *refs] for test, refs in zip(tests, references, strict=True)]
    groups = [g for g, group in enumerate(texts) for _ in group]
    prepared = iter(matcher.prepare([words[text] for group in texts for text in group], groups))
    return [_best(matcher, next(prepared), [next(prepared) for _ in group[1:]]) for group in texts]


def _best(matcher: Matcher, test: Sentence, refs: Sequence[Sentence]) -> Stats:
    """The statistics of ``test`` against its best-scoring reference (the first one on a tie)."""
    best: Stats | None = None
    best_score = -1.0
    for ref in refs:
        chosen = align(matcher.matches(test, ref), len(test.words))
        stats = alignment_stats(test.function, ref.function, chosen)
        score = stats.score()
        if score > best_score:
            best, best_score = stats, score
    if best is None:
        raise ValueError("METEOR needs at least one reference per candidate")
    return best
