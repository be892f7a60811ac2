"""The paraphrase table's records for a batch of sentences, looked up at once with NumPy.

Every phrase of every sentence, up to the table's longest, is keyed (:func:`.resources.phrase_key`) and looked up;
a record is kept only when its paraphrase is itself a phrase somewhere in the batch, since no other record can
match, and a sentence's phrases are indexed only when they are some kept record's paraphrase.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from captionkit.evaluation.meteor.resources import MULTIPLIER, HashedTable, ParaphraseTable


class SentencePhrases(NamedTuple):
    """``records``: (start, length, paraphrase key, paraphrase length) for each table record of a phrase of the
    sentence, ordered by start, length and table order; ``starts``: phrase key -> the phrase's start positions."""

    records: list[tuple[int, int, int, int]]
    starts: dict[int, list[int]]


def sentence_phrases(table: ParaphraseTable, word_hashes: Sequence[Sequence[int]]) -> list[SentencePhrases]:
    """The records and indexed phrases of each sentence, given its words' :func:`.resources.word_hash`."""
    lengths = np.array([len(h) for h in word_hashes], np.int64)
    hashes = np.fromiter((h for sentence in word_hashes for h in sentence), np.uint64, int(lengths.sum()))
    firsts = np.cumsum(lengths) - lengths
    starts_at = np.arange(len(hashes)) - np.repeat(firsts, lengths)
    tokens, spans, keys = _phrases(hashes, np.repeat(lengths, lengths) - starts_at, table.longest)
    records, phrase = _records(table.records, keys)
    kept = np.isin(table.targets[records], keys)
    records, phrase = records[kept], phrase[kept]
    order = np.lexsort((records, spans[phrase], tokens[phrase]))
    records, phrase = records[order], phrase[order]
    indexed = np.nonzero(np.isin(keys, table.targets[records]))[0]
    indexed = indexed[np.argsort(tokens[indexed], kind="stable")]
    bounds = np.append(firsts, len(hashes))
    record_cuts = np.searchsorted(tokens[phrase], bounds).tolist()
    phrase_cuts = np.searchsorted(tokens[indexed], bounds).tolist()
    record_rows = list(
        zip(
            starts_at[tokens[phrase]].tolist(),
            spans[phrase].tolist(),
            table.targets[records].tolist(),
            table.target_lengths[records].tolist(),
            strict=True,
        )
    )
    phrase_rows = list(zip(starts_at[tokens[indexed]].tolist(), keys[indexed].tolist(), strict=True))
    out = []
    for s in range(len(word_hashes)):
        starts: dict[int, list[int]] = {}
        for start, key in phrase_rows[phrase_cuts[s] : phrase_cuts[s + 1]]:
            starts.setdefault(key, []).append(start)
        out.append(SentencePhrases(record_rows[record_cuts[s] : record_cuts[s + 1]], starts))
    return out


def _phrases(hashes: np.ndarray, remaining: np.ndarray, longest: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first token, word count, key) of every phrase of up to ``longest`` words inside its sentence."""
    tokens, spans, keys = [], [], []
    key = np.zeros(len(hashes), np.uint64)
    for length in range(1, longest + 1):
        at = np.nonzero(remaining >= length)[0]
        if not len(at):
            break
        key[at] = key[at] * np.uint64(MULTIPLIER) + hashes[at + length - 1]
        tokens.append(at)
        spans.append(np.full(len(at), length, np.int64))
        keys.append(key[at])
    if not tokens:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint64)
    return np.concatenate(tokens), np.concatenate(spans), np.concatenate(keys)


def _records(table: HashedTable, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The record numbers of each key that the table has (in table order), and the index of the key of each."""
    if not len(table.keys) or not len(keys):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    at = np.minimum(np.searchsorted(table.keys, keys), len(table.keys) - 1)
    hit = np.nonzero(table.keys[at] == keys)[0]
    first = table.offsets[at[hit]]
    counts = table.offsets[at[hit] + 1] - first
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return table.values[np.repeat(first, counts) + within].astype(np.int64), np.repeat(hit, counts)
