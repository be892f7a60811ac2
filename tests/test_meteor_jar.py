"""METEOR in Python against pycocoevalcap's jar, image by image, on real captions and perturbed candidates.

The jar runs once for the module (``--meteor java``'s bridge, pycocoevalcap's ``-stdio`` protocol) on raw captions,
so that ``-norm`` has work: each image's first caption against its others, for COCO val2017, Flickr8k and SentiCap;
then candidates made from a reference by swapping in synonyms, other word forms and paraphrases, reordering its
thirds or doubling its words (scored against the image's other references), and nearly empty candidates.
Tolerances (issue 19): the corpus score within 1e-4, every image within 1e-3.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from _java import require_java, require_pycocoevalcap
from _meteor_cases import EDGE_CANDIDATES, PERTURBATIONS, caption_groups
from captionkit.evaluation.meteor.matching import PARAPHRASE, STEM, SYNONYM
from captionkit.evaluation.meteor.native import meteor_python, meteor_stats

CORPUS_TOLERANCE, SEGMENT_TOLERANCE = 1e-4, 1e-3


@dataclass
class Cases:
    kinds: list[str]  # what each case is: a dataset name, a perturbation name or "edge"
    candidates: list[str]
    references: list[list[str]]


def build_cases() -> Cases:
    cases = Cases([], [], [])
    groups = caption_groups(120)
    for name, found in groups.items():
        for group in found:
            cases.kinds.append(name)
            cases.candidates.append(group[0])
            cases.references.append(group[1:])
    for name, perturb in PERTURBATIONS.items():
        for group in groups["coco"][:80] + groups["flickr8k"][:40]:
            cases.kinds.append(name)
            cases.candidates.append(perturb(group[1]))
            cases.references.append([group[0], *group[2:]])
    for k, candidate in enumerate(EDGE_CANDIDATES):
        cases.kinds.append("edge")
        cases.candidates.append(candidate)
        cases.references.append(groups["coco"][k])
    return cases


@dataclass
class Scored:
    cases: Cases
    jar: tuple[float, list[float]]
    python: tuple[float, list[float]]


@pytest.fixture(scope="module")
def scored() -> Scored:
    from captionkit.evaluation.meteor.java import meteor as meteor_java

    require_pycocoevalcap()  # the jar and the METEOR data come from it
    require_java()
    cases = build_cases()
    return Scored(
        cases, meteor_java(cases.candidates, cases.references), meteor_python(cases.candidates, cases.references)
    )


def test_every_image_and_the_corpus_equal_the_jar(scored: Scored) -> None:
    (jar_corpus, jar_images), (corpus, images) = scored.jar, scored.python
    assert len(images) == len(jar_images) > 800
    assert abs(corpus - jar_corpus) <= CORPUS_TOLERANCE
    apart = [
        (kind, candidate, ours, theirs)
        for kind, candidate, ours, theirs in zip(
            scored.cases.kinds, scored.cases.candidates, images, jar_images, strict=True
        )
        if abs(ours - theirs) > SEGMENT_TOLERANCE
    ]
    assert apart == []


@pytest.mark.parametrize(("kind", "stage"), [("synonyms", SYNONYM), ("stems", STEM), ("paraphrases", PARAPHRASE)])
def test_perturbed_candidates_use_their_stage_and_score_as_the_jar(scored: Scored, kind: str, stage: int) -> None:
    chosen = [k for k, found in enumerate(scored.cases.kinds) if found == kind]
    stats = meteor_stats([scored.cases.candidates[k] for k in chosen], [scored.cases.references[k] for k in chosen])
    matched_by_stage = sum(s.values[4 + 4 * stage] + s.values[6 + 4 * stage] for s in stats)
    assert matched_by_stage >= 20  # the perturbation does reach the stage it targets
    assert [s.score() for s in stats] == [scored.python[1][k] for k in chosen]
    assert max(abs(scored.python[1][k] - scored.jar[1][k]) for k in chosen) <= SEGMENT_TOLERANCE


def test_reordered_repeated_and_nearly_empty_candidates_score_as_the_jar(scored: Scored) -> None:
    for kind in ("reordered", "repeated", "edge"):
        chosen = [k for k, found in enumerate(scored.cases.kinds) if found == kind]
        assert max(abs(scored.python[1][k] - scored.jar[1][k]) for k in chosen) <= SEGMENT_TOLERANCE, kind
    edge = {c: scored.jar[1][k] for k, c in enumerate(scored.cases.candidates) if scored.cases.kinds[k] == "edge"}
    assert edge[""] == 0.0 and edge["..."] == 0.0  # nothing to match: the jar answers 0
    assert max(edge.values()) > 0  # ... while a word such as "a" or "man" does match


@pytest.mark.slow
def test_all_coco_val2017_images_equal_the_jar() -> None:
    from _meteor_cases import caption_groups as groups_of
    from captionkit.evaluation.meteor.java import meteor as meteor_java
    from captionkit.evaluation.tokenize import tokenize_captions

    coco = groups_of(5000)["coco"]
    assert len(coco) == 5000
    candidates = tokenize_captions(g[0] for g in coco)
    flat = tokenize_captions(c for g in coco for c in g[1:])
    references, start = [], 0
    for g in coco:
        references.append(flat[start : start + len(g) - 1])
        start += len(g) - 1
    jar_corpus, jar_images = meteor_java(candidates, references)
    corpus, images = meteor_python(candidates, references)
    assert abs(corpus - jar_corpus) <= CORPUS_TOLERANCE
    assert sum(abs(a - b) > SEGMENT_TOLERANCE for a, b in zip(images, jar_images, strict=True)) == 0


def test_processes_give_the_statistics_of_one_process() -> None:
    require_pycocoevalcap()
    cases = build_cases()
    one = meteor_stats(cases.candidates, cases.references, processes=1)
    assert len(one) == len(cases.candidates)
    assert meteor_stats(cases.candidates, cases.references, processes=3) == one
    with pytest.raises(ValueError, match="3 candidates but 2 reference lists"):
        meteor_stats(cases.candidates[:3], cases.references[:2])
