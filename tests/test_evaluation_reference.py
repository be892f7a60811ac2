"""Equality with pycocoevalcap 1.2 on real captions: each image's first caption scored against its other ones.

The reference pipeline is pycocoevalcap's: captions tokenized by its Java PTB tokenizer (the jar run as
``PTBTokenizer`` runs it, on a file in a temporary folder), then its ``Bleu(4)``, ``Rouge()``, ``Cider()`` and
``Meteor()`` scorers. Reference values are computed once per module.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from _data import SHARED_DATA
from _helpers import run_cli
from _java import require_java, require_pycocoevalcap
from captionkit.evaluation import score_captions
from captionkit.evaluation.meteor import meteor_unavailable_reason

DATA = SHARED_DATA
TOLERANCE = 1e-6

Split = tuple[dict[str, list[str]], dict[str, str]]


def coco_split(limit: int | None = None) -> Split:
    data = json.loads((DATA / "coco" / "captions_val2017.json").read_text(encoding="utf-8"))
    by_image: dict[str, list[str]] = {}
    for annotation in data["annotations"]:
        by_image.setdefault(str(annotation["image_id"]), []).append(annotation["caption"])
    ids = list(by_image)[:limit]
    return {i: by_image[i][1:] for i in ids}, {i: by_image[i][0] for i in ids}


def flickr_split() -> Split:
    by_image: dict[str, list[str]] = {}
    for line in (DATA / "flickr8k" / "Flickr8k.token.txt").read_text(encoding="utf-8").splitlines():
        if line.strip():
            name, caption = line.split("\t", 1)
            by_image.setdefault(name.split("#")[0], []).append(caption)
    return {i: c[1:] for i, c in by_image.items()}, {i: c[0] for i, c in by_image.items()}


def _java_tokenize(captions: list[str], folder: Path) -> list[str]:
    from pycocoevalcap.tokenizer import ptbtokenizer

    jar = Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR
    source = folder / "captions.txt"
    source.write_bytes("\n".join(c.replace("\n", " ") for c in captions).encode())
    command = ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase"]
    lines = subprocess.run([*command, str(source)], capture_output=True, check=True).stdout.decode().split("\n")
    punctuation = ptbtokenizer.PUNCTUATIONS
    return [" ".join(w for w in line.rstrip().split(" ") if w not in punctuation) for line in lines][: len(captions)]


def pycocoevalcap_scores(split: Split, folder: Path, meteor: bool = False) -> tuple[dict[str, float], dict[str, Any]]:
    """Corpus and per-image scores the way ``COCOEvalCap.evaluate`` computes them."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs, cands = split
    ids = list(refs)
    flat = _java_tokenize([c for i in ids for c in refs[i]], folder)
    gts, start = {}, 0
    for i in ids:
        gts[i] = flat[start : start + len(refs[i])]
        start += len(refs[i])
    res = {i: [c] for i, c in zip(ids, _java_tokenize([cands[i] for i in ids], folder), strict=True)}
    corpus: dict[str, float] = {}
    per_image: dict[str, Any] = {}
    bleu, bleu_images = Bleu(4).compute_score(gts, res, verbose=0)
    for k in range(4):
        corpus[f"Bleu_{k + 1}"], per_image[f"Bleu_{k + 1}"] = bleu[k], bleu_images[k]
    corpus["ROUGE_L"], per_image["ROUGE_L"] = Rouge().compute_score(gts, res)
    corpus["CIDEr"], per_image["CIDEr"] = Cider().compute_score(gts, res)
    if meteor:
        from pycocoevalcap.meteor.meteor import Meteor

        corpus["METEOR"], per_image["METEOR"] = Meteor().compute_score(gts, res)
    per_image = {name: dict(zip(ids, values, strict=True)) for name, values in per_image.items()}
    return corpus, per_image


def assert_equal_scores(split: Split, reference: tuple[dict[str, float], dict[str, Any]], metrics: str) -> None:
    corpus, per_image = reference
    ours = score_captions(*split, metrics=metrics)
    for name, value in corpus.items():
        assert math.isclose(ours.scores[name], value, rel_tol=0, abs_tol=TOLERANCE), name
        worst = max(abs(ours.per_image[i][name] - v) for i, v in per_image[name].items())
        assert worst <= TOLERANCE, (name, worst)


@pytest.fixture(scope="module")
def needs_java() -> None:
    require_pycocoevalcap()
    require_java()


@pytest.fixture(scope="module")
def coco_sample(needs_java: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Split, Any]:
    split = coco_split(400)
    return split, pycocoevalcap_scores(split, tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def flickr(needs_java: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Split, Any]:
    split = flickr_split()
    return split, pycocoevalcap_scores(split, tmp_path_factory.mktemp("flickr"))


def test_score_over_the_results_images_of_a_larger_reference_file_equals_pycocoevalcap(
    needs_java: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # As papers score a Karpathy test split against all of captions_val2014.json: pycocoevalcap scores the images
    # of the results, and so does `captionkit score`, saying what it left out.
    references_file = DATA / "coco" / "captions_val2017.json"
    by_image: dict[str, list[str]] = {}
    for annotation in json.loads(references_file.read_text(encoding="utf-8"))["annotations"]:
        by_image.setdefault(str(annotation["image_id"]), []).append(annotation["caption"])
    chosen = list(by_image)[::25]  # 200 of the 5,000 images
    candidates = {image_id: by_image[image_id][0] for image_id in chosen}
    results = tmp_path / "results.json"
    results.write_text(json.dumps([{"image_id": int(i), "caption": c} for i, c in candidates.items()]))
    args = ["score", "--refs", references_file, "--cands", results, "--metrics", "BLEU,ROUGE_L,CIDEr"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    ours = json.loads(out)
    corpus, _ = pycocoevalcap_scores(({i: by_image[i] for i in chosen}, candidates), tmp_path)
    for name, value in corpus.items():
        assert math.isclose(ours[name], value, rel_tol=0, abs_tol=TOLERANCE), name
    assert ours["num_images"] == 200
    note = (
        "scored the 200 images with a candidate caption; 4,800 of the 5,000 reference images have none and are left out"
    )
    assert f"captionkit: note: {note}, as pycocoevalcap leaves them out" in err


def test_coco_sample_equals_pycocoevalcap(coco_sample: tuple[Split, Any]) -> None:
    split, reference = coco_sample
    assert len(split[0]) == 400
    assert_equal_scores(split, reference, "BLEU,ROUGE_L,CIDEr")


def test_flickr8k_equals_pycocoevalcap(flickr: tuple[Split, Any]) -> None:
    split, reference = flickr
    assert len(split[0]) == 200
    assert_equal_scores(split, reference, "BLEU,ROUGE_L,CIDEr")


@pytest.mark.slow
def test_full_coco_val2017_equals_pycocoevalcap(needs_java: None, tmp_path: Path) -> None:
    split = coco_split()
    assert len(split[0]) == 5000
    assert_equal_scores(split, pycocoevalcap_scores(split, tmp_path), "BLEU,ROUGE_L,CIDEr")


@pytest.mark.slow
def test_meteor_equals_pycocoevalcap(needs_java: None, tmp_path: Path) -> None:
    assert meteor_unavailable_reason() is None  # Java and pycocoevalcap are there (needs_java)
    split = coco_split(100)
    assert_equal_scores(split, pycocoevalcap_scores(split, tmp_path, meteor=True), "BLEU,METEOR,ROUGE_L,CIDEr")


def test_meteor_runs_through_the_jar(needs_java: None) -> None:
    assert meteor_unavailable_reason("java") is None  # Java and pycocoevalcap are there (needs_java)
    refs, cands = coco_split(5)
    result = score_captions(refs, cands, metrics="METEOR", meteor="java")
    assert 0.1 < result.scores["METEOR"] < 0.6
    assert all(0 <= s["METEOR"] <= 1 for s in result.per_image.values())
    assert result.notes == [] and result.missing == []
