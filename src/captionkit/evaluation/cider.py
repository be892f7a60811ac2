"""CIDEr-D as pycocoevalcap computes it under the name "CIDEr" (``pycocoevalcap/cider/cider_scorer.py``).

Definition (Vedantam et al. 2015, CIDEr-D variant): each caption is a TF-IDF vector per n-gram order n = 1..4,
``g_k(c) = tf_k(c) * (log N - log max(1, df_k))``, where ``df_k`` (the *document frequency*) is the number of images
whose references contain n-gram ``k`` and ``N`` the number of images. For an image with candidate ``c`` and
references ``s_1..s_m``::

    sim_n(c, s) = [sum_k min(g_k(c), g_k(s)) * g_k(s)] / (|g(c)| |g(s)|) * exp(-(l(c) - l(s))^2 / (2 sigma^2))
    CIDEr-D(c) = 10 * (1/4) * sum_n (1/m) * sum_j sim_n(c, s_j)

with ``sigma = 6``, the division skipped when a norm is 0, and -- pycocoevalcap's detail -- ``l`` the number of
*bigrams* of a caption (``len(words) - 1``, 0 for an empty one). The corpus score is the mean over images.

Document frequencies come from the references of the scored set (:func:`cider_d`) unless given: self-critical
training scores samples with frequencies computed once from the training references (:class:`CiderD`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from captionkit.evaluation.corpus import Corpus
from captionkit.evaluation.ngrams import NGram, NGramTable, reference_ngrams

if TYPE_CHECKING:
    import numpy as np

SIGMA = 6.0
ORDER = 4


def cider_from_corpus(
    corpus: Corpus,
    sigma: float = SIGMA,
    document_frequency: Callable[[int], np.ndarray] | None = None,
    num_documents: int | None = None,
) -> np.ndarray:
    """Per-image CIDEr-D of a prepared corpus (n-gram order 4).

    ``document_frequency(order)`` returns the frequency of every n-gram id of that order; by default the
    frequencies and ``N`` come from the corpus's own references.
    """
    import numpy as np

    frequency = document_frequency or corpus.document_frequency
    log_n = math.log(float(num_documents if num_documents is not None else corpus.num_images))
    pairs = len(corpus.pair_image)
    values = np.zeros((pairs, ORDER))
    for k in range(1, ORDER + 1):
        table = corpus.table.orders[k - 1]
        idf = log_n - np.log(np.maximum(1.0, frequency(k)))
        weights = table.count * idf[table.gram]
        norms = np.sqrt(np.bincount(table.caption, weights * weights, minlength=len(corpus.table.captions)))
        rows, grams, counts = corpus.candidate_ngrams(k)
        mine = counts * idf[grams]
        my_keys = rows * table.size + grams  # sorted: rows ascending, ids ascending within a row
        pair, ref_grams, ref_counts = corpus.reference_entries(k)
        theirs = ref_counts * idf[ref_grams]
        keys = corpus.pair_image[pair] * table.size + ref_grams
        at = np.minimum(np.searchsorted(my_keys, keys), max(0, len(my_keys) - 1))
        found = my_keys[at] == keys if len(my_keys) else np.zeros(len(keys), dtype=bool)
        clipped = np.where(found, np.minimum(mine[at] if len(my_keys) else 0.0, theirs) * theirs, 0.0)
        value = np.bincount(pair, clipped, minlength=pairs).astype(np.float64)  # int64 when empty
        norm_mine = norms[corpus.candidate_caption][corpus.pair_image]
        norm_theirs = norms[corpus.pair_caption]
        both = (norm_mine != 0) & (norm_theirs != 0)
        value[both] /= norm_mine[both] * norm_theirs[both]
        values[:, k - 1] = value
    bigrams_mine = np.maximum(0, corpus.candidate_lengths - 1)[corpus.pair_image]
    bigrams_theirs = np.maximum(0, corpus.reference_lengths - 1)
    delta = (bigrams_mine - bigrams_theirs).astype(np.float64)
    values *= (np.e ** (-(delta**2) / (2 * sigma**2)))[:, None]
    totals = [np.bincount(corpus.pair_image, values[:, k], minlength=corpus.num_images) for k in range(ORDER)]
    mean_over_orders = (totals[0] + totals[1] + totals[2] + totals[3]) / ORDER
    return mean_over_orders / corpus.references_per_image * 10.0


def cider_d(
    candidates: Sequence[str], references: Sequence[Sequence[str]], sigma: float = SIGMA
) -> tuple[float, list[float]]:
    """``(mean, per image)`` CIDEr-D of tokenized ``candidates[i]`` against ``references[i]``, with document
    frequencies from these references (what pycocoevalcap reports as "CIDEr").

    >>> round(cider_d(["a cat on a mat", "a dog"], [["a cat on a mat"], ["a dog runs"]])[0], 4)
    6.7434
    """
    scores = cider_from_corpus(Corpus(candidates, references, ORDER), sigma).tolist()
    return (sum(scores) / len(scores) if scores else 0.0), scores


class CiderD:
    """A CIDEr-D scorer whose document frequencies are fixed once, e.g. from training references.

    >>> refs = {"1": ["a cat on a mat", "a cat sits"], "2": ["a dog runs", "the dog is running"]}
    >>> scorer = CiderD.from_references(refs)
    >>> mean, per_image = scorer.score({"1": "a cat on a mat", "2": "a dog"})
    >>> mean == cider_d(["a cat on a mat", "a dog"], [refs["1"], refs["2"]])[0]
    True

    ``score`` takes one candidate per image id and scores it against the references the scorer holds (or the
    ``references`` passed to the call); ``score_many`` takes several candidates per image (self-critical sampling).
    Captions are tokenized strings (see :func:`captionkit.evaluation.tokenize.tokenize_captions`).
    """

    def __init__(
        self,
        document_frequency: Mapping[NGram, float],
        num_documents: int,
        references: Mapping[str, Sequence[str]] | None = None,
        sigma: float = SIGMA,
    ) -> None:
        if num_documents < 1:
            raise ValueError("num_documents must be at least 1")
        self.document_frequency = document_frequency
        self.num_documents = num_documents
        self.references = dict(references or {})
        self.sigma = sigma

    @classmethod
    def from_references(cls, references: Mapping[str, Sequence[str]], sigma: float = SIGMA) -> CiderD:
        """Document frequencies and ``N`` from these references (one entry per image); the scorer keeps them."""
        import numpy as np

        ids = list(references)
        captions: dict[str, int] = {}
        image, caption = [], []
        for i, image_id in enumerate(ids):
            for ref in references[image_id]:
                image.append(i)
                caption.append(captions.setdefault(ref, len(captions)))
        table = NGramTable.build(list(captions), ORDER)
        merged = reference_ngrams(table, np.array(image, dtype=np.int64), np.array(caption, dtype=np.int64))
        frequencies: dict[NGram, float] = {}
        for k, order in enumerate(table.orders, start=1):
            grams, counts = np.unique(merged.pair[k - 1] % order.size, return_counts=True)
            for gram, count in zip(grams.tolist(), counts.tolist(), strict=True):
                frequencies[table.ngram(k, gram)] = float(count)
        return cls(frequencies, max(1, len(ids)), references, sigma)

    def _frequencies(self, corpus: Corpus) -> Callable[[int], np.ndarray]:
        import numpy as np

        def frequency(order: int) -> np.ndarray:
            table = corpus.table.orders[order - 1]
            out = np.zeros(table.size)
            for gram in np.unique(table.gram).tolist():
                out[gram] = self.document_frequency.get(corpus.table.ngram(order, gram), 0.0)
            return out

        return frequency

    def _scores(self, candidates: Sequence[str], references: Sequence[Sequence[str]]) -> list[float]:
        if not candidates:
            return []
        corpus = Corpus(candidates, references, ORDER)
        return cider_from_corpus(corpus, self.sigma, self._frequencies(corpus), self.num_documents).tolist()

    def _refs_for(self, image_id: str, references: Mapping[str, Sequence[str]] | None) -> Sequence[str]:
        refs = (references if references is not None else self.references).get(image_id)
        if not refs:
            raise KeyError(f"no references for image {image_id!r}")
        return refs

    def score(
        self, candidates: Mapping[str, str], references: Mapping[str, Sequence[str]] | None = None
    ) -> tuple[float, dict[str, float]]:
        """``(mean, {image id: CIDEr-D})`` for one candidate per image."""
        ids = list(candidates)
        scores = self._scores([candidates[i] for i in ids], [self._refs_for(i, references) for i in ids])
        return (sum(scores) / len(scores) if scores else 0.0), dict(zip(ids, scores, strict=True))

    def score_many(
        self, candidates: Mapping[str, Sequence[str]], references: Mapping[str, Sequence[str]] | None = None
    ) -> tuple[float, dict[str, list[float]]]:
        """``(mean over all candidates, {image id: [CIDEr-D of each candidate]})``."""
        flat_ids = [i for i, cands in candidates.items() for _ in cands]
        flat = [c for cands in candidates.values() for c in cands]
        scores = self._scores(flat, [self._refs_for(i, references) for i in flat_ids])
        per_image: dict[str, list[float]] = {i: [] for i in candidates}
        for image_id, score in zip(flat_ids, scores, strict=True):
            per_image[image_id].append(score)
        return (sum(scores) / len(scores) if scores else 0.0), per_image
