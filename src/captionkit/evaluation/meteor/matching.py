"""METEOR's four matching stages: exact words, Snowball English stems, shared WordNet synsets, paraphrases.

The stem and synonym stages only match words that no earlier stage matched (observed on the jar: ``dog dogs``
against ``dogs dog`` keeps its two exact matches, though two stem matches would make one chunk). Paraphrases may
span matched words (``an elderly man`` against ``an old man`` aligns ``an`` exactly and ``elderly man`` with
``old man``), and a pair listed both ways in the table is two candidates (see :mod:`.align`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from captionkit.evaluation.meteor.resources import MeteorData, phrase_hash

EXACT, STEM, SYNONYM, PARAPHRASE = range(4)
#: The longest phrase in the paraphrase table.
MAX_PHRASE = 7
# WordNet's detachment rules in its order (nouns, verbs, adjectives). A word's synsets are its own plus those of its
# base forms: its entries in the exceptions list, else the first rule's result that WordNet knows (observed on the
# jar: "siting" gives "site", not "sit", so it does not match "sitting"; "runs" gives "run" and matches "ran").
_SUFFIXES = (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
             ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", ""),
             ("er", ""), ("est", ""), ("er", "e"), ("est", "e"))  # fmt: skip


@dataclass(frozen=True)
class Match:
    """Test words ``[start1, start1 + length1)`` matched to reference words ``[start2, start2 + length2)``."""

    stage: int
    start1: int
    length1: int
    start2: int
    length2: int


class Matcher:
    """Finds the candidate matches between a test and a reference sentence (lists of normalised words)."""

    def __init__(self, data: MeteorData) -> None:
        import snowballstemmer

        self.data = data
        stemmer = snowballstemmer.stemmer("english")
        self.stem: Callable[[str], str] = lru_cache(maxsize=None)(stemmer.stemWord)
        self.synsets: Callable[[str], frozenset[int]] = lru_cache(maxsize=None)(self._synsets)
        self.paraphrases: Callable[[str], np.ndarray] = lru_cache(maxsize=None)(self._paraphrases)

    def matches(self, test: list[str], ref: list[str]) -> list[Match]:
        covered1 = [False] * len(test)
        covered2 = [False] * len(ref)
        found: list[Match] = []
        for stage, same in ((EXACT, str.__eq__), (STEM, self._same_stem), (SYNONYM, self._synonyms)):
            new = [
                Match(stage, i, 1, j, 1)
                for i, a in enumerate(test)
                if not covered1[i]
                for j, b in enumerate(ref)
                if not covered2[j] and same(a, b)
            ]
            _cover(new, covered1, covered2)
            found += new
        found += self._paraphrase_matches(test, ref)
        return found

    def _same_stem(self, a: str, b: str) -> bool:
        return self.stem(a) == self.stem(b)

    def _synonyms(self, a: str, b: str) -> bool:
        return not self.synsets(a).isdisjoint(self.synsets(b))

    def _synsets(self, word: str) -> frozenset[int]:
        ids = set(self._lookup(word).tolist())
        bases = self.data.exceptions.get(word)
        if bases is None:
            detached = (word[: -len(end)] + to for end, to in _SUFFIXES if word.endswith(end) and len(word) > len(end))
            bases = next(([base] for base in detached if len(self._lookup(base))), [])
        for base in bases:
            ids.update(self._lookup(base).tolist())
        return frozenset(ids)

    def _lookup(self, word: str) -> np.ndarray:
        return self.data.synsets.lookup(phrase_hash(word))

    def _paraphrases(self, phrase: str) -> np.ndarray:
        return self.data.paraphrases.lookup(phrase_hash(phrase))

    def _paraphrase_matches(self, test: list[str], ref: list[str]) -> list[Match]:
        spans2: dict[int, list[tuple[int, int]]] = {}
        for j, length in _spans(len(ref)):
            spans2.setdefault(phrase_hash(" ".join(ref[j : j + length])), []).append((j, length))
        if not spans2:
            return []
        keys = np.fromiter(spans2, np.uint64, len(spans2))
        found: list[Match] = []
        for i, length1 in _spans(len(test)):
            targets = self.paraphrases(" ".join(test[i : i + length1]))
            if not len(targets):
                continue
            # A pair listed both ways in the table is two candidate matches, as in the jar (see align).
            counts = np.searchsorted(targets, keys, side="right") - np.searchsorted(targets, keys)
            for key, count in zip(keys[counts > 0].tolist(), counts[counts > 0].tolist(), strict=True):
                found += [Match(PARAPHRASE, i, length1, j, length2) for j, length2 in spans2[key]] * count
        return found


def _cover(matches: list[Match], covered1: list[bool], covered2: list[bool]) -> None:
    for m in matches:
        covered1[m.start1 : m.start1 + m.length1] = [True] * m.length1
        covered2[m.start2 : m.start2 + m.length2] = [True] * m.length2


def _spans(length: int) -> list[tuple[int, int]]:
    """``(start, length)`` of every phrase of up to :data:`MAX_PHRASE` words in a sentence of ``length`` words."""
    return [(start, n) for start in range(length) for n in range(1, min(MAX_PHRASE, length - start) + 1)]
