"""The paraphrase table's records for a batch of sentences, looked up at once with NumPy.

Every phrase of every sentence, up to the table's longest, is keyed (:func:`.resources.phrase_key`) and looked up.
Sentences come in groups (a candidate and its references): a record is kept only when its paraphrase is a phrase
of a sentence of its group, since no other record can match, and a sentence's phrases are indexed only when they
are the paraphrase of a record kept in their group. Nearly all records go: the rest costs little in Python.
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


def sentence_phrases(
    table: ParaphraseTable, word_hashes: Sequence[Sequence[int]], groups: Sequence[int]
) -> list[SentencePhrases]:
    """The records and indexed phrases of each sentence, given its words' :func:`.resources.word_hash` and its
    group number."""
    lengths = np.array([len(h) for h in word_hashes], np.int64)
    hashes = np.fromiter((h for sentence in word_hashes for h in sentence), np.uint64, int(lengths.sum()))
    firsts = np.cumsum(lengths) - lengths
    starts_at = np.arange(len(hashes)) - np.repeat(firsts, lengths)
    tokens, spans, keys = _phrases(hashes, np.repeat(lengths, lengths) - starts_at, table.longest)
    records, phrase = _records(table.records, keys, np.argsort(keys))
    phrase_groups = np.repeat(np.asarray(groups, np.uint64), lengths)[tokens]
    grouped = _in_group(keys, phrase_groups)
    by_grouped = np.argsort(grouped)
    kept = _member(_in_group(table.targets[records], phrase_groups[phrase]), grouped[by_grouped])
    records, phrase = records[kept], phrase[kept]
    order = np.lexsort((records, spans[phrase], tokens[phrase]))
    records, phrase = records[order], phrase[order]
    wanted = np.sort(_in_group(table.targets[records], phrase_groups[phrase]))
    indexed = np.zeros(len(keys), bool)
    indexed[by_grouped] = _member(grouped[by_grouped], wanted)
    indexed = np.nonzero(indexed)[0]
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


def _in_group(keys: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """One 64-bit key for a phrase key within a group."""
    return keys * np.uint64(MULTIPLIER) + groups


def _member(values: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Whether each of ``values`` is in the sorted ``pool`` (searching in sorted order: many times faster on large
    arrays than random probes or ``np.isin``)."""
    found = np.zeros(len(values), bool)
    if len(values) and len(pool):
        order = np.argsort(values)
        at = np.minimum(np.searchsorted(pool, values[order]), len(pool) - 1)
        found[order] = pool[at] == values[order]
    return found


def _records(table: HashedTable, keys: np.ndarray, by_key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The record numbers of each key that the table has (in table order), and the index of the key of each;
    ``by_key`` sorts ``keys``."""
    if not len(table.keys) or not len(keys):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    at = np.minimum(np.searchsorted(table.keys, keys[by_key]), len(table.keys) - 1)
    found = table.keys[at] == keys[by_key]
    hit, at = by_key[found], at[found]
    first = table.offsets[at]
    counts = table.offsets[at + 1] - first
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return table.values[np.repeat(first, counts) + within].astype(np.int64), np.repeat(hit, counts)
