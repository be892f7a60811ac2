"""Metric definitions on tiny hand-computed cases, the CIDEr-D scorer API, diversity and perplexity."""

from __future__ import annotations

import math
import random

import pytest

from captionkit.evaluation import CiderD, perplexity
from captionkit.evaluation.bleu import bleu
from captionkit.evaluation.cider import cider_d
from captionkit.evaluation.diversity import distinct_n, diversity, length_stats, repeated_captions
from captionkit.evaluation.rouge import lcs_length, rouge_l


def test_bleu_of_an_exact_match_is_one() -> None:
    scores = bleu(["a man rides a horse"], [["a man rides a horse"]])
    assert scores.corpus == pytest.approx((1, 1, 1, 1), abs=1e-8)
    assert scores.per_image[0] == pytest.approx((1, 1, 1, 1), abs=1e-8)


def test_bleu_hand_computed() -> None:
    # Matches: 3/4 unigrams, 2/3 bigrams, 1/2 trigrams, 0/1 4-grams; equal lengths, so no brevity penalty.
    b1, b2, b3, b4 = bleu(["a b c d"], [["a b c e"]]).corpus
    assert b1 == pytest.approx(0.75, rel=1e-9)
    assert b2 == pytest.approx(math.sqrt(0.75 * 2 / 3), rel=1e-9)
    assert b3 == pytest.approx((0.75 * 2 / 3 * 0.5) ** (1 / 3), rel=1e-9)
    assert b4 == pytest.approx((0.25 * 1e-15 / (1 + 1e-9)) ** 0.25, rel=1e-6)  # pycocoevalcap's tiny/small


def test_bleu_brevity_penalty_and_closest_reference_length() -> None:
    short = bleu(["a b"], [["a b c d"]]).corpus
    assert short[0] == pytest.approx(math.exp(1 - 2), rel=1e-8)
    # Lengths 2 and 4 are equally close to 3: the shorter one counts, so there is no penalty.
    assert bleu(["a b c"], [["a b", "a b c d"]]).corpus[0] == pytest.approx(1.0, abs=1e-8)


def test_bleu_clips_counts_by_the_best_single_reference() -> None:
    # "the" appears 4 times in the candidate, at most twice in one reference.
    b1 = bleu(["the the the the"], [["the cat the mat", "a the"]]).corpus[0]
    assert b1 == pytest.approx(2 / 4, rel=1e-8)


def test_bleu_corpus_sums_counts_not_scores() -> None:
    scores = bleu(["a b c d", "x y"], [["a b c d"], ["x z"]])
    assert scores.corpus[0] == pytest.approx(5 / 6, rel=1e-8)
    assert scores.per_image[1][0] == pytest.approx(0.5, rel=1e-8)


def test_lcs_equals_dynamic_programming() -> None:
    def reference(a: list[str], b: list[str]) -> int:
        table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i in range(1, len(a) + 1):
            for j in range(1, len(b) + 1):
                same = a[i - 1] == b[j - 1]
                table[i][j] = table[i - 1][j - 1] + 1 if same else max(table[i - 1][j], table[i][j - 1])
        return table[-1][-1]

    rng = random.Random(0)
    for _ in range(3000):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 14))]
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 14))]
        assert lcs_length(a, b) == reference(a, b)


def test_rouge_l_hand_computed() -> None:
    # LCS "a c d" = 3: P = R = 3/4, so F = 3/4 for any beta.
    assert rouge_l(["a b c d"], [["a c e d"]]).mean == pytest.approx(0.75)
    assert rouge_l(["x"], [["y z"]]).per_image == [0.0]


def test_rouge_l_maximises_precision_and_recall_separately() -> None:
    # Reference 1 gives P = 1/2, R = 1; reference 2 gives P = 1, R = 1/2; pycocoevalcap takes both maxima: F = 1.
    assert rouge_l(["a b c d"], [["a b", "a b c d e f g h"]]).mean == pytest.approx(1.0)


def test_cider_d_of_identical_captions_is_ten() -> None:
    mean, per_image = cider_d(["a b c d", "e f g h"], [["a b c d"], ["e f g h"]])
    assert per_image == pytest.approx([10.0, 10.0])
    assert mean == pytest.approx(10.0)


def test_cider_d_hand_computed_with_length_penalty() -> None:
    # Two images; unigrams only overlap ("a"), which is in both images' references: idf 0, so no credit.
    assert cider_d(["a x", "a y"], [["a b"], ["a c"]])[1] == pytest.approx([0.0, 0.0])
    # Identical n-grams but lengths 3 vs 4 words (2 vs 3 bigrams): the candidate's 1..3-grams are all in the
    # reference; cosine per order = |c . r| / (|c| |r|), times exp(-1 / 72).
    _, (first, _) = cider_d(["p q r", "z"], [["p q r s"], ["y"]])
    idf = math.log(2)
    cosines = [3 / math.sqrt(3 * 4), 2 / math.sqrt(2 * 3), 1 / math.sqrt(1 * 2), 0.0]
    expected = 10 * sum(c * math.exp(-1 / 72) for c in cosines) / 4
    assert idf > 0 and first == pytest.approx(expected, rel=1e-12)


def test_cider_d_scorer_with_fixed_document_frequencies() -> None:
    refs = {
        "1": ["a cat on a mat", "a cat sits on the mat"],
        "2": ["a dog runs in a park", "the dog is running"],
        "3": ["two birds on a wire", "birds sitting on a wire"],
    }
    scorer = CiderD.from_references(refs)
    cands = {"1": "a cat on the mat", "2": "a dog runs", "3": "a bird on a wire"}
    mean, per_image = scorer.score(cands)
    expected_mean, expected = cider_d([cands[i] for i in refs], [refs[i] for i in refs])
    assert mean == pytest.approx(expected_mean, rel=1e-12)
    assert [per_image[i] for i in refs] == pytest.approx(expected, rel=1e-12)
    assert scorer.document_frequency[("a",)] == 3 and scorer.document_frequency[("cat", "on")] == 1
    # Several candidates per image (self-critical sampling), scored with the same fixed frequencies.
    _, many = scorer.score_many({"1": ["a cat on the mat", "a dog"], "3": ["birds"]})
    assert many["1"][0] == pytest.approx(per_image["1"], rel=1e-12)
    assert len(many["1"]) == 2 and len(many["3"]) == 1
    # The same frequencies passed explicitly give the same scores for other references.
    explicit = CiderD(dict(scorer.document_frequency), num_documents=3)
    assert explicit.score({"9": "a cat"}, {"9": ["a cat on a mat"]})[0] == pytest.approx(
        scorer.score({"9": "a cat"}, {"9": ["a cat on a mat"]})[0], rel=1e-12
    )
    with pytest.raises(KeyError, match="no references"):
        scorer.score({"4": "a cat"})


def test_perplexity() -> None:
    assert perplexity(0.0, 5) == 1.0
    assert perplexity(12 * math.log(7), 12) == pytest.approx(7.0)
    with pytest.raises(ValueError, match="positive"):
        perplexity(1.0, 0)
    with pytest.raises(ValueError, match="finite"):
        perplexity(float("nan"), 3)


def test_diversity_statistics() -> None:
    captions = ["a dog runs", "a dog runs", "a cat sleeps on a mat"]
    assert distinct_n(captions, 1) == pytest.approx(7 / 12)  # a, dog, runs, cat, sleeps, on, mat
    assert distinct_n(captions, 2) == pytest.approx(7 / 9)
    stats = diversity(captions, train_captions=["a dog runs", "something else"])
    assert stats["vocab_size"] == 7 and stats["unique_captions"] == 2
    assert stats["unique_share"] == pytest.approx(2 / 3)
    assert stats["copied_from_train"] == pytest.approx(2 / 3)
    lengths = length_stats(captions)
    assert lengths["length_mean"] == pytest.approx(4.0)
    assert lengths["length_std"] == pytest.approx(math.sqrt(2.0))
    assert (lengths["length_min"], lengths["length_max"], lengths["length_p50"]) == (3, 6, 3)
    assert lengths["length_p90"] == pytest.approx(5.4)


def test_repeated_caption_warning_rule() -> None:
    captions = ["a dog"] * 6 + [f"caption {i}" for i in range(94)]
    assert repeated_captions(captions) == [("a dog", 6)]  # 6% of 100 images
    assert repeated_captions(["a dog"] * 5 + [f"c {i}" for i in range(95)]) == []  # exactly 5%: no warning
    assert repeated_captions(["x", "x", "y"]) == []  # fewer than 3 images


def test_empty_model_output_scores_zero_when_allowed() -> None:
    from captionkit.evaluation import evaluate_captions

    refs = {"1": ["a cat on a mat"], "2": ["a dog in the park"]}
    result = evaluate_captions(refs, {"1": "a cat on a mat", "2": ""}, metrics="BLEU,CIDEr", allow_empty=True)
    full = evaluate_captions(refs, {"1": "a cat on a mat", "2": "a dog in the park"}, metrics="BLEU,CIDEr")
    assert 0 < result["CIDEr"] < full["CIDEr"]


def test_scoring_cuts_captions_at_the_token_cap_with_a_note():
    from captionkit.evaluation.api import MAX_CAPTION_TOKENS, score_captions

    words = [f"w{i % 97}" for i in range(MAX_CAPTION_TOKENS + 500)]
    refs = {"1": ["w1 w2 w3 w4", " ".join(words)], "2": ["a cat on a mat"]}
    long = {"1": " ".join(words) + " .", "2": "a cat"}
    cut = {"1": " ".join(words[:MAX_CAPTION_TOKENS]), "2": "a cat"}
    capped_refs = {"1": ["w1 w2 w3 w4", " ".join(words[:MAX_CAPTION_TOKENS])], "2": ["a cat on a mat"]}
    metrics = "BLEU,ROUGE_L,CIDEr"
    scored = score_captions(refs, long, metrics, ref_source="refs.json", cand_source="cands.json")
    reference = score_captions(capped_refs, cut, metrics)
    assert scored.scores == reference.scores and scored.per_image == reference.per_image
    assert scored.scores["length_max"] == MAX_CAPTION_TOKENS
    assert scored.notes == [
        "cands.json: 1 caption over 1000 tokens or 50000 characters was cut to 1000 tokens",
        "refs.json: 1 caption over 1000 tokens or 50000 characters was cut to 1000 tokens",
    ]
    assert not [note for note in reference.notes if "were cut" in note]  # exactly 1000 tokens: nothing cut
    # Past 50,000 characters nothing is tokenized (a 5 MB caption would take seconds): the tail is cut too.
    huge = score_captions({"1": ["a dog"]}, {"1": "a dog " + "x" * 60_000 + " cat"}, "BLEU", cand_source="c")
    assert huge.scores == score_captions({"1": ["a dog"]}, {"1": "a dog " + "x" * 49_994}, "BLEU").scores
    assert huge.notes[0].startswith("c: 1 caption over 1000 tokens or 50000 characters was cut")


def test_rouge_l_from_the_corpus_equals_rouge_l_caption_by_caption() -> None:
    # Single-spaced captions go through numpy's 64-bit rows; captions with U+00A0 or doubled spaces, empty ones and
    # candidates over 63 words are scored one by one: every image's score is the same float either way.
    from captionkit.evaluation.corpus import Corpus
    from captionkit.evaluation.rouge import rouge_l, rouge_l_from_corpus

    rng = random.Random(7)
    words = ["a", "b", "c", "dog", "on", "the", "2\u00a01/2"]

    def caption(length: int) -> str:
        return " ".join(rng.choice(words) for _ in range(length))

    for _ in range(200):
        images = rng.randint(1, 6)
        cands = [caption(rng.choice([0, 1, 3, 8, 63, 64, 70])) for _ in range(images)]
        refs = [[caption(rng.choice([0, 1, 2, 5, 12, 80])) for _ in range(rng.randint(1, 4))] for _ in range(images)]
        if rng.random() < 0.2:
            cands = [c.replace(" ", "  ", 1) for c in cands]
        expected, scored = rouge_l(cands, refs), rouge_l_from_corpus(Corpus(cands, refs))
        assert scored.per_image == expected.per_image and scored.mean == expected.mean


def test_statistics_from_the_corpus_equal_statistics_from_split_captions() -> None:
    # Duplicated candidates, repeated words, empty captions, U+00A0 and doubled spaces: the corpus's counts give the
    # same diversity and length figures as splitting each caption.
    from captionkit.evaluation.corpus import Corpus
    from captionkit.evaluation.diversity import caption_statistics, corpus_statistics

    rng = random.Random(11)
    words = ["a", "b", "dog", "dog", "on", "2\u00a01/2"]

    def caption(length: int) -> str:
        return " ".join(rng.choice(words) for _ in range(length))

    for _ in range(200):
        images = rng.randint(1, 8)
        cands = [caption(rng.choice([0, 1, 2, 3, 9])) for _ in range(images)]
        if images > 1 and rng.random() < 0.3:
            cands[-1] = cands[0]
        if rng.random() < 0.2:
            cands = [c.replace(" ", "  ", 1) for c in cands]
        refs = [[caption(rng.randint(1, 6))] for _ in range(images)]
        train = [cands[0], "a dog"] if rng.random() < 0.5 else None
        expected, got = caption_statistics(cands, train), corpus_statistics(Corpus(cands, refs), cands, train)
        assert got == expected
        assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in expected.items()}  # counts stay ints


def test_ngram_ranks_equal_numpys_unique_inverse() -> None:
    import numpy as np

    from captionkit.evaluation.ngrams import _ranks

    rng = np.random.default_rng(3)
    for keys in (
        rng.integers(0, 50, 1000),
        rng.integers(0, 2**40, 5000),  # packs with the positions into one int64
        rng.integers(2**55, 2**62, 300),  # too large to pack: np.unique's way
        np.array([7], dtype=np.int64),
        np.zeros(0, dtype=np.int64),
    ):
        unique, inverse = np.unique(keys, return_inverse=True)
        ranks, distinct = _ranks(keys)
        assert distinct == len(unique) and np.array_equal(ranks, inverse)


def test_corpus_words_are_str_split_of_each_caption() -> None:
    # The whole-text split (single spaces, U+00A0 inside words, empty captions) and the caption-by-caption one
    # (doubled spaces, tabs); a caption flagged single-spaced splits at " " into the same words.
    from captionkit.evaluation.ngrams import NGramTable

    rng = random.Random(5)
    for _ in range(300):
        captions = [" ".join(rng.choices(["a", "b", "c\u00a0d"], k=rng.randint(0, 5))) for _ in range(6)]
        spaced = rng.random() < 0.2
        if spaced:
            captions[rng.randrange(6)] += rng.choice(["  e", "\tf", " "])
        table = NGramTable.build(captions, 2)
        assert table.words == [word for caption in captions for word in caption.split()]
        assert table.lengths.tolist() == [len(caption.split()) for caption in captions]
        for caption, flag in zip(captions, table.single_spaced.tolist(), strict=True):
            single = bool(caption) and caption.split(" ") == caption.split() and "\u00a0" not in caption
            assert flag == single if not spaced else not flag or single  # the general split flags none
