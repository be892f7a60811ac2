"""METEOR 1.5's four matching stages, as the jar runs them: exact words, Snowball English stems, shared WordNet
synsets, paraphrases.

Each stage adds every match it finds, whatever earlier stages matched (the aligner chooses among them). The jar
compares words by Java's ``String.hashCode``, so two words with one hash are the same word to it. Exact: equal
words. Stem: different words with equal stems. Synonym: different words sharing a synset, a word's synsets being
its own and those of its base forms (its WordNet exceptions, else the first of WordNet's detachment rules whose
result has synsets). Paraphrase: a phrase of the reference whose paraphrase in the table occurs in the test, then
a phrase of the test whose paraphrase occurs in the reference (the table is directed: a pair listed both ways is
found twice). Identical sentences get exact matches only.

Matches are listed per reference position in the jar's order: by stage; within exact, stem and synonym by test
position; paraphrases of reference phrases by phrase length, table order, test position; then paraphrases of
test phrases by test position, phrase length, table order. The aligner's ties follow this order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from captionkit.evaluation.external import MetricUnavailable
from captionkit.evaluation.meteor.phrases import SentencePhrases, sentence_phrases
from captionkit.evaluation.meteor.resources import INSTALL, MeteorData, word_hash

EXACT, STEM, SYNONYM, PARAPHRASE = range(4)
# WordNet's detachment rules (nouns, verbs, adjectives), in its order: suffix, ending.
_RULES = (("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
          ("ies", "y"), ("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"),
          ("ing", ""), ("er", ""), ("est", ""), ("er", "e"), ("est", "e"))  # fmt: skip


class Match(NamedTuple):
    """Test words ``[start1, start1 + length1)`` matched to reference words ``[start2, start2 + length2)``."""

    stage: int
    start1: int
    length1: int
    start2: int
    length2: int


class _Word(NamedTuple):
    id: int  # its number among the words this matcher has seen
    key: int  # Java's String.hashCode
    stem: int  # the hashCode of its stem
    synsets: frozenset[int]
    hash: int  # resources.word_hash
    function: bool  # a function word


class Sentence:
    """A normalised sentence with what matching needs of it, computed once."""

    def __init__(
        self,
        words: Sequence[str],
        info: Sequence[_Word],
        phrases: SentencePhrases,
        neighbours: Mapping[int, frozenset[int]],
    ) -> None:
        self.words = tuple(words)
        self.keys = tuple(w.key for w in info)
        self.stems = tuple(w.stem for w in info)
        self.function = tuple(w.function for w in info)
        self.by_key: dict[int, list[int]] = {}
        self.by_stem: dict[int, list[int]] = {}
        for i, w in enumerate(info):
            self.by_key.setdefault(w.key, []).append(i)
            self.by_stem.setdefault(w.stem, []).append(i)
        # As a test sentence: (position, word id) of its words with synsets; as a reference: (position, the ids of
        # the words sharing a synset with the word there).
        self.synonyms = [(i, w.id) for i, w in enumerate(info) if w.synsets]
        self.synonym_ids = frozenset(w for _, w in self.synonyms)
        self.neighbours = [(i, neighbours[w]) for i, w in self.synonyms]
        self.paraphrases = phrases.records
        self.targets = frozenset(r[2] for r in phrases.records)
        self.phrases = phrases.starts


class Matcher:
    """Prepares sentences and finds the candidate matches between a test and a reference sentence."""

    def __init__(self, data: MeteorData) -> None:
        try:
            import snowballstemmer
        except ImportError:
            raise MetricUnavailable(f"METEOR needs snowballstemmer: {INSTALL}") from None
        self.data = data
        self._stem: Callable[[str], str] = snowballstemmer.stemmer("english").stemWord
        self._words: dict[str, _Word] = {}

    def prepare(self, sentences: Sequence[Sequence[str]], groups: Sequence[int]) -> list[Sentence]:
        """The prepared sentences of these normalised words, looked up in the paraphrase table together; only
        sentences of one group (``groups[k]``: sentence ``k``'s) are matched with one another."""
        info = [[self._word(w) for w in words] for words in sentences]
        phrases = sentence_phrases(self.data.paraphrases, [[w.hash for w in words] for words in info], groups)
        neighbours = _neighbours({w.id: w for words in info for w in words if w.synsets}.values())
        return [Sentence(*args, neighbours) for args in zip(sentences, info, phrases, strict=True)]

    def matches(self, test: Sentence, ref: Sentence) -> list[list[Match]]:
        """The candidate matches starting at each reference position, in the jar's order."""
        by_start: list[list[Match]] = [[] for _ in ref.keys]
        for j, key in enumerate(ref.keys):
            by_start[j] += [Match(EXACT, i, 1, j, 1) for i in test.by_key.get(key, ())]
        if test.keys == ref.keys:
            return by_start
        for j, (key, stem) in enumerate(zip(ref.keys, ref.stems, strict=True)):
            same = test.by_stem.get(stem)
            if same:
                by_start[j] += [Match(STEM, i, 1, j, 1) for i in same if test.keys[i] != key]
        ids = test.synonym_ids
        for j, near in ref.neighbours:
            if not near.isdisjoint(ids):
                by_start[j] += [Match(SYNONYM, i, 1, j, 1) for i, other in test.synonyms if other in near]
        if not ref.targets.isdisjoint(test.phrases):
            for start, length, target, target_length in ref.paraphrases:
                for i in test.phrases.get(target, ()):
                    by_start[start].append(Match(PARAPHRASE, i, target_length, start, length))
        if not test.targets.isdisjoint(ref.phrases):
            for start, length, target, target_length in test.paraphrases:
                for j in ref.phrases.get(target, ()):
                    by_start[j].append(Match(PARAPHRASE, start, length, j, target_length))
        return by_start

    def _word(self, word: str) -> _Word:
        found = self._words.get(word)
        if found is None:
            stem, function = self._stem(word), word in self.data.function_words
            found = self._words[word] = _Word(
                len(self._words), java_hash(word), java_hash(stem), self._synsets(word), word_hash(word), function
            )
        return found

    def _synsets(self, word: str) -> frozenset[int]:
        ids = set(self._lookup(word).tolist())
        for base in self.data.exceptions.get(word) or [self._detached(word)]:
            ids.update(self._lookup(base).tolist())
        return frozenset(ids)

    def _detached(self, word: str) -> str:
        """WordNet's base form of a word without exceptions: itself for ``-ss`` and short words, else the first
        rule's result that has synsets, else nothing."""
        if word.endswith("ss") or len(word) <= 2:
            return word
        for suffix, ending in _RULES:
            if word.endswith(suffix):
                base = word[: len(word) - len(suffix)] + ending
                if len(self._lookup(base)):
                    return base
        return ""

    def _lookup(self, word: str) -> np.ndarray:
        return self.data.synsets.lookup(word_hash(word))


def _neighbours(words: Iterable[_Word]) -> dict[int, frozenset[int]]:
    """For each of these words (by id), the ids of the others that share a synset with it and are a different word
    to the jar (another hash)."""
    by_synset: dict[int, list[_Word]] = {}
    for w in words:
        for synset in w.synsets:
            by_synset.setdefault(synset, []).append(w)
    near: dict[int, set[int]] = {}
    for group in by_synset.values():
        for w in group:
            near.setdefault(w.id, set()).update(other.id for other in group if other.key != w.key)
    return {w: frozenset(ids) for w, ids in near.items()}


def java_hash(text: str) -> int:
    """Java's ``String.hashCode`` (over UTF-16 code units, modulo 2**32)."""
    h = 0
    units = text.encode("utf-16-le")
    for k in range(0, len(units), 2):
        h = (31 * h + units[k] + (units[k + 1] << 8)) & 0xFFFFFFFF
    return h
