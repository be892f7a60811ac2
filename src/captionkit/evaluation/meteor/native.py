"""METEOR 1.5 in Python, equal to pycocoevalcap's jar run with ``-l en -norm``: no Java needed."""

from __future__ import annotations

import gc
import multiprocessing
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from itertools import chain, pairwise
from pathlib import Path

from captionkit.cpus import usable_cpus
from captionkit.evaluation.meteor.align import align
from captionkit.evaluation.meteor.matching import Matcher, Sentence
from captionkit.evaluation.meteor.normalize import normalize
from captionkit.evaluation.meteor.resources import load_meteor_data, source_files
from captionkit.evaluation.meteor.scoring import Stats, alignment_stats, corpus_score


def _matcher(cache_root: Path | None) -> Matcher:
    # The data files are looked for on every call (a missing extra is reported, not hidden by the cache below).
    return _loaded_matcher(source_files(), cache_root)


@lru_cache(maxsize=2)
def _loaded_matcher(sources: tuple[Path, Path], cache_root: Path | None) -> Matcher:
    return Matcher(load_meteor_data(cache_root))


#: Images per process below which scoring stays in one process (a process costs about what 50 images do).
MIN_PER_PROCESS = 500


def meteor_python(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    cache_root: Path | None = None,
    processes: int | None = None,
) -> tuple[float, list[float]]:
    """``(corpus METEOR, per-image METEOR)``, as pycocoevalcap reports them (its ``|||`` clean-up included)."""
    stats = meteor_stats(candidates, references, cache_root, processes)
    return corpus_score(stats), [s.score() for s in stats]


def meteor_stats(
    candidates: Sequence[str],
    references: Sequence[Sequence[str]],
    cache_root: Path | None = None,
    processes: int | None = None,
) -> list[Stats]:
    """Each candidate's statistics against its best reference, as the jar's ``SCORE`` answers them.

    Images are independent, so ``processes`` (default: one per core this process may use, with at least
    :data:`MIN_PER_PROCESS` images each; forked on Linux only) score contiguous parts at once, with the same result.
    """
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidates but {len(references)} reference lists")
    matcher = _matcher(cache_root)  # loaded (or built) once, before any process starts
    count = _processes(len(candidates)) if processes is None else max(1, min(processes, len(candidates)))
    if count == 1:
        return _collected(matcher, candidates, references)
    cuts = [len(candidates) * k // count for k in range(count + 1)]
    parts = [(candidates[a:b], references[a:b]) for a, b in pairwise(cuts)]
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    with ProcessPoolExecutor(count - 1, mp_context=context) as pool:
        futures = [pool.submit(_part_values, cache_root, *part) for part in parts[1:]]
        first = _collected(matcher, *parts[0])
        return first + [Stats(values) for future in futures for values in future.result()]


def _processes(images: int) -> int:
    cores = usable_cpus()
    return max(1, min(cores, images // MIN_PER_PROCESS))


def _part_values(
    cache_root: Path | None, candidates: Sequence[str], references: Sequence[Sequence[str]]
) -> list[tuple[int, ...]]:
    """One process's part, as plain tuples (cheap to send back)."""
    return [s.values for s in _collected(_matcher(cache_root), candidates, references)]


def _collected(matcher: Matcher, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> list[Stats]:
    # Millions of small tuples live here and none forms a cycle: the cyclic collector would only rescan them.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _stats(matcher, candidates, references)
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
