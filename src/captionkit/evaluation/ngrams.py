"""n-gram statistics of many captions at once, in numpy arrays: shared by BLEU and CIDEr-D.

A caption here is a PTB-tokenized string; its words are ``caption.split()`` (any whitespace, as pycocoevalcap splits
for BLEU and CIDEr). pycocoevalcap counts n-grams with a dict of word tuples per caption (``precook``); counting them
for a whole corpus with a few sorts is the same arithmetic, an order of magnitude faster.

Each n-gram of order k gets a dense id: the 1-gram id is the word id, and a k-gram's id is the rank of
``id(first k-1 words) * V + id(last word)`` among all k-gram keys (V: vocabulary size), so keys never overflow.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING

from captionkit.evaluation.lines import line_numbers, occurrences

if TYPE_CHECKING:
    import numpy as np

NGram = tuple[str, ...]


@dataclass(frozen=True)
class OrderTable:
    """The k-grams of every caption: entries sorted by (caption, n-gram id), one per distinct pair."""

    caption: np.ndarray  # caption index of each entry
    gram: np.ndarray  # dense n-gram id of each entry, in [0, size)
    count: np.ndarray  # how often the n-gram occurs in the caption (term frequency)
    offsets: np.ndarray  # entries of caption c are offsets[c]:offsets[c + 1]
    example: np.ndarray  # for each n-gram id, a token position where it starts (to rebuild its words)
    size: int  # number of n-gram ids


@dataclass(frozen=True)
class NGramTable:
    """n-gram counts of ``captions`` for orders 1..len(orders)."""

    captions: Sequence[str]
    lengths: np.ndarray  # words per caption
    words: list[str]  # all words, caption after caption
    orders: list[OrderTable]
    word_ids: np.ndarray  # the id of each of ``words`` (its 1-gram id)
    # Per caption, whether it is its words joined by single spaces (no other whitespace, no U+00A0, not empty):
    # then ``caption.split(" ")``, as ROUGE-L splits, gives the same words as ``str.split``.
    single_spaced: np.ndarray

    @classmethod
    def build(cls, captions: Sequence[str], n: int = 4) -> NGramTable:
        import numpy as np

        words, lengths, single_spaced = _split_all(captions)
        vocabulary: defaultdict[str, int] = defaultdict()
        vocabulary.default_factory = vocabulary.__len__  # a new word gets the next id: one lookup per word
        ids = np.fromiter(map(vocabulary.__getitem__, words), np.int64, len(words))
        caption_of = np.repeat(np.arange(len(captions), dtype=np.int64), lengths)
        starts = np.concatenate(([0], np.cumsum(lengths)))
        position = np.arange(len(words), dtype=np.int64) - starts[:-1][caption_of]
        words_left = lengths[caption_of] - position  # from each token to the end of its caption
        orders = []
        at, dense, size = np.arange(len(words), dtype=np.int64), ids, max(1, len(vocabulary))
        for k in range(1, n + 1):
            if k > 1:  # k-grams start where (k-1)-grams do, in captions with a word more: only those are sorted
                longer = words_left[at] >= k
                at = at[longer]
                dense, distinct = _ranks(dense[longer] * len(vocabulary) + ids[at + k - 1])
                size = max(1, distinct)
            unique_pairs, counts = np.unique(caption_of[at] * size + dense, return_counts=True)
            example = np.zeros(size, dtype=np.int64)
            example[dense] = at  # any occurrence will do
            caption = unique_pairs // size
            offsets = np.searchsorted(caption, np.arange(len(captions) + 1))
            orders.append(OrderTable(caption, unique_pairs % size, counts, offsets, example, size))
        single_spaced &= lengths > 0
        return cls(captions, lengths, words, orders, ids, single_spaced)

    def ngram(self, order: int, gram: int) -> NGram:
        """The words of n-gram id ``gram`` of order ``order`` (1-based)."""
        start = int(self.orders[order - 1].example[gram])
        return tuple(self.words[start : start + order])


# The characters str.split splits at besides " " and "\n" (U+00A0 is replaced by a space first). Looking for each
# with ``in`` is about forty times faster than one regex search for the class [^\S \n].
_OTHER_WHITESPACE = (
    "\t\x0b\x0c\r\x1c\x1d\x1e\x1f\x85\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)


def _split_all(captions: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """All words (``str.split`` of each caption, in order), the number of words per caption, and per caption
    whether it is single-spaced (only single spaces between words, none before or after, no U+00A0)."""
    import numpy as np

    # U+00A0 (inside PTB tokens such as "2\xa01/2") splits words for str.split, as a space does.
    text = "\n".join(captions)
    without_nbsp = np.ones(len(captions), dtype=bool)
    if "\u00a0" in text:
        without_nbsp[line_numbers(text, occurrences(text, "\u00a0"))] = False
        text = text.replace("\u00a0", " ")
    words = text.split()
    only_spaces = not any(character in text for character in _OTHER_WHITESPACE)
    if only_spaces and text.count("\n") == len(captions) - 1:
        # Only spaces separate words: a caption has at most one word more than spaces, exactly that many when it is
        # single-spaced (as tokenized captions are). If the sum matches the words found, every caption does.
        lines = text.split("\n")
        lengths = np.fromiter(map(str.count, lines, repeat(" ")), np.int64, len(lines)) + 1
        lengths[np.fromiter(map(len, lines), np.int64, len(lines)) == 0] = 0
        if int(lengths.sum()) == len(words):
            return words, lengths, without_nbsp
    split = [c.split() for c in captions]  # the general way, one caption at a time
    return words, np.fromiter(map(len, split), np.int64, len(split)), np.zeros(len(captions), dtype=bool)


def _ranks(keys: np.ndarray) -> tuple[np.ndarray, int]:
    """Each key's rank among the distinct ``keys`` (non-negative), as ``np.unique(keys, return_inverse=True)[1]``,
    and the number of distinct keys.

    One sort of the keys packed with their positions into one int64 each, which takes half the time of the argsort
    ``np.unique`` does (keys too large to pack take ``np.unique``)."""
    import numpy as np

    n = len(keys)
    bits = max(1, (n - 1).bit_length())
    if n == 0 or int(keys.max()) >> (62 - bits):
        unique, inverse = np.unique(keys, return_inverse=True)
        return inverse, len(unique)
    packed = np.sort((keys << bits) | np.arange(n, dtype=np.int64))
    ordered = packed >> bits
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    ranks = np.cumsum(new) - 1
    inverse = np.empty(n, dtype=np.int64)
    inverse[packed & ((1 << bits) - 1)] = ranks
    return inverse, int(ranks[-1]) + 1


def gather(table: OrderTable, captions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries of ``captions[i]`` for every i: ``(row i of each entry, n-gram ids, counts)``, rows in order."""
    import numpy as np

    begin = table.offsets[captions]
    sizes = table.offsets[captions + 1] - begin
    rows = np.repeat(np.arange(len(captions), dtype=np.int64), sizes)
    ends = np.cumsum(sizes)
    index = np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64) + np.repeat(begin - (ends - sizes), sizes)
    return rows, table.gram[index], table.count[index]


@dataclass(frozen=True)
class References:
    """Per order, the distinct (image, n-gram) pairs of each image's references and their largest count."""

    pair: list[np.ndarray]  # image * size + n-gram id, sorted
    max_count: list[np.ndarray]


def reference_ngrams(
    table: NGramTable,
    image_of_ref: np.ndarray,
    ref_caption: np.ndarray,
    entries: Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
) -> References:
    """Merge the references of each image (``image_of_ref[j]`` holds reference caption ``ref_caption[j]``).

    ``entries(k)``, when given, is ``gather(table.orders[k - 1], ref_caption)`` computed already."""
    import numpy as np

    pairs, maxima = [], []
    for k, order in enumerate(table.orders, start=1):
        rows, grams, counts = entries(k) if entries is not None else gather(order, ref_caption)
        keys = image_of_ref[rows] * order.size + grams
        sort = np.argsort(keys, kind="stable")  # runs: each reference's n-grams come sorted; timsort merges them
        keys, counts = keys[sort], counts[sort]
        first = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1]))) if len(keys) else keys
        pairs.append(keys[first])
        maxima.append(np.maximum.reduceat(counts, first) if len(keys) else counts)
    return References(pairs, maxima)
