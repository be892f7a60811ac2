"""Reference/candidate readers, id matching, and every kind of bad input: one clear InputError each."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from _data import SHARED_DATA
from captionkit.errors import InputError
from captionkit.evaluation import evaluate_captions, parse_metrics, score_captions
from captionkit.evaluation.readers import read_candidates, read_references

DATA = SHARED_DATA
COCO_SUBSET = DATA / "coco" / "captions_val2017_subset.json"
FLICKR_TOKENS = DATA / "flickr8k" / "Flickr8k.token.txt"


def write(path: Path, content: str | bytes | object) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content), encoding="utf-8")
    return path


def test_coco_references_answer_to_ids_and_file_names(tmp_path: Path) -> None:
    refs = read_references(COCO_SUBSET)
    assert len(refs.captions) == 100 and all(len(c) >= 5 for c in refs.captions.values())
    assert refs.resolve("139") == "139"
    assert refs.resolve("000000000139.jpg") == "139"
    assert refs.resolve("val2017/000000000139.jpg") == "139"
    assert refs.resolve("000000000139") == "139"
    assert refs.resolve("nope.jpg") is None
    # The JSONL of `captionkit caption` names images by path; COCO results by numeric id.
    jsonl = write(tmp_path / "c.jsonl", '{"image": "/photos/000000000139.jpg", "caption": "a room", "score": -3.2}\n')
    assert refs.match(read_candidates(jsonl), "c.jsonl") == {"139": "a room"}
    results = write(tmp_path / "r.json", [{"image_id": 139, "caption": "a room"}])
    assert refs.match(read_candidates(results), "r.json") == {"139": "a room"}


def test_flickr_token_file_and_plain_json(tmp_path: Path) -> None:
    refs = read_references(FLICKR_TOKENS)
    assert len(refs.captions) == 200
    name = "1000268201_693b08cb0e.jpg"
    assert refs.captions[name][0].startswith("A child in a pink dress")
    assert refs.resolve("1000268201_693b08cb0e") == name
    plain = read_references(write(tmp_path / "refs.json", {"img/a.jpg": ["a dog"], "b": ["a cat", "cat"]}))
    assert plain.resolve("a.jpg") == "img/a.jpg" and plain.resolve("a") == "img/a.jpg"
    assert read_candidates(write(tmp_path / "c.json", {"a": "a dog", "b": "a cat"})) == {"a": "a dog", "b": "a cat"}


def test_score_from_files_matches_score_from_dicts(tmp_path: Path) -> None:
    refs = read_references(COCO_SUBSET)
    first = {i: caps[0] for i, caps in refs.captions.items()}
    lines = [json.dumps({"image": f"val2017/{int(i):012d}.jpg", "caption": c}) for i, c in first.items()]
    cands = refs.match(read_candidates(write(tmp_path / "c.jsonl", "\n".join(lines))), "c.jsonl")
    from_files = evaluate_captions(refs.captions, cands, metrics="BLEU,CIDEr")
    assert from_files == evaluate_captions(refs.captions, first, metrics="BLEU,CIDEr")
    assert from_files["Bleu_4"] == pytest.approx(1.0, abs=1e-6)  # each candidate is one of its references


def test_non_ascii_captions_work() -> None:
    result = score_captions({"1": ["un café noir", "a black café"]}, {"1": "Un café noir."}, metrics="BLEU,ROUGE_L")
    assert result.scores["Bleu_1"] == pytest.approx(1.0, abs=1e-8)
    assert result.scores["ROUGE_L"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("refs", "cands", "message"),
    [
        ({"1": ["a dog"]}, {"1": "  "}, "image '1': empty caption"),
        ({"1": ["a dog"], "2": ["a cat"]}, {"1": "a dog", "3": "x"}, "1 candidate image without references"),
        ({"1": ["a dog"], "2": ["a cat"]}, {"1": "a dog"}, "1 of 2 reference images have no candidate caption"),
        ({"1": []}, {"1": "a dog"}, "image '1' has no reference captions"),
        ({"1": ["a dog", ""]}, {"1": "a dog"}, "empty or non-text reference caption"),
        ({"1": ["a dog"], "2": ["a cat", 5]}, {"1": "a dog", "2": "a cat"}, "image '2': empty or non-text reference"),
        ({"1": ["a dog"], "2": ["a cat"]}, {"1": "a dog", "2": None}, "image '2': caption must be a string"),
        ({"1": "a dog"}, {"1": "a dog"}, "references must be a list"),
        ({}, {"1": "a dog"}, "no reference captions"),
        ({"1": ["a dog"]}, {}, "no candidate captions"),
    ],
)
def test_bad_caption_sets(refs: dict, cands: dict, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        score_captions(refs, cands, metrics="BLEU")


def test_references_may_be_any_sequence_of_captions() -> None:
    as_lists = score_captions({"1": ["a dog", "a cat"]}, {"1": "a dog"}, metrics="BLEU").scores
    assert score_captions({"1": ("a dog", "a cat")}, {"1": "a dog"}, metrics="BLEU").scores == as_lists


def test_missing_ids_are_counted_with_examples() -> None:
    refs = {str(i): ["a dog"] for i in range(10)}
    with pytest.raises(InputError, match=r"^candidates: 6 of 10 reference images .* e\.g\. '4', '5', '6', \.\.\.$"):
        score_captions(refs, {str(i): "a dog" for i in range(4)}, metrics="BLEU")


def test_an_unknown_meteor_engine_is_named_by_the_argument() -> None:
    """From Python it was named by the CLI's flag: "--meteor: unknown METEOR engine 'jav'"."""
    with pytest.raises(InputError, match=r"^meteor: unknown METEOR engine 'jav' \(known: python, java\)$"):
        score_captions({"1": ["a dog"]}, {"1": "a dog"}, metrics="METEOR", meteor="jav")


def test_unknown_metric() -> None:
    with pytest.raises(InputError, match="unknown metric 'BLUE'"):
        parse_metrics("BLUE,CIDEr")
    assert parse_metrics("bleu, cider-d,rouge") == (("BLEU", "CIDEr", "ROUGE_L"), True)
    for empty in (",", " ", []):
        with pytest.raises(InputError, match=r"^metrics: names no metric \(known: BLEU, "):
            parse_metrics(empty)
    assert parse_metrics(None)[1] is False


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"  \n\n", "empty file"),
        (b'{"1": ["caf\xe9"]}', r"not UTF-8 text \(byte 0xe9 at offset 11\)"),
        (b'{"1": ["a dog"]', "invalid JSON: Expecting ',' delimiter"),
        (b'{"1": ["a"], "1": ["b"]}', "duplicate key '1'"),
        (b'[{"image_id": 1, "caption": "a"}]', "not a references file"),
        (b'{"annotations": [{"image_id": 1}]}', 'annotation 0: expected an object with "image_id" and "caption"'),
        (b'{"1": ["a", 2]}', "captions must be strings"),
        (b"x.jpg#0\tA dog.\nbroken line\n", "line 2 is not NAME#N<TAB>caption"),
    ],
)
def test_bad_reference_files(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message) as error:
        read_references(write(tmp_path / "refs.json", content))
    assert "\n" not in str(error.value) and str(tmp_path) in str(error.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (b"\xff\xfe\x00{", "UTF-16 text: save it as UTF-8"),
        (b"\xe9t\xe9", "not UTF-8 text"),
        (b"[{", "invalid JSON"),
        (b"a dog\n", "not a candidates file"),
        (b'{"1": ["a dog"]}', "not a candidates file"),
        (b'{"1": "a", "1": "b"}', "duplicate key '1'"),
        (b'[{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}]', "duplicate image_id '1'"),
        (b'[{"image_id": 1, "caption": 5}]', "caption must be a string"),
        (b'{"image": "a/x.jpg", "caption": "a"}\n{"image": "b/x.jpg", "caption": "b"}\n', "duplicate image 'x.jpg'"),
        (b'{"image": "x.jpg", "caption": "a"}\n{"image": "y.jpg", "error": "not an image"}\n', "1 image"),
        (b'{"image": "x.jpg", "caption": "a"}\n{oops\n', "line 2: invalid JSON"),
    ],
)
def test_bad_candidate_files(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(InputError, match=message) as error:
        read_candidates(write(tmp_path / "cands.json", content))
    assert "\n" not in str(error.value)


def test_failed_captions_are_reported_with_their_reason(tmp_path: Path) -> None:
    lines = b'{"image": "x.jpg", "caption": "a"}\n{"image": "dir/y.png", "error": "cannot identify image file"}\n'
    with pytest.raises(InputError, match=r"1 image failed to caption, e\.g\. y\.png: cannot identify image file"):
        read_candidates(write(tmp_path / "c.jsonl", lines))


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_failed_images_go_to_failed_when_asked_and_a_retried_image_keeps_its_caption(tmp_path: Path, fmt: str) -> None:
    """`score` leaves the images that failed to caption out (it collects them); a library caller without ``failed``
    still gets the error. An image met as an error, then captioned (a retry), has its caption, as `merge` keeps it."""
    records = [
        {"image": "x.jpg", "caption": "a dog"},
        {"image": "dir/y.png", "error": "cannot identify image file"},
        {"image": "z.jpg", "error": "truncated image"},
        {"image": "z.jpg", "error": "truncated image again"},
        {"image": "w.jpg", "error": "truncated image"},
        {"image": "w.jpg", "caption": ""},
    ]
    if fmt == "jsonl":
        content = "".join(json.dumps(r) + "\n" for r in records)
    else:
        content = "image,caption,score,error\n" + "".join(
            f"{r['image']},{r.get('caption', '')},{'' if 'error' in r else -1.0},{r.get('error', '')}\n"
            for r in records
        )
    path = write(tmp_path / f"c.{fmt}", content)
    failed: dict[str, str] = {}
    assert read_candidates(path, failed) == {"x.jpg": "a dog", "w.jpg": ""}
    assert failed == {"y.png": "cannot identify image file", "z.jpg": "truncated image"}
    with pytest.raises(InputError, match=r"2 images failed to caption, e\.g\. y\.png: cannot identify image file"):
        read_candidates(path)


def test_two_names_for_one_image_are_duplicates(tmp_path: Path) -> None:
    refs = read_references(COCO_SUBSET)
    cands = read_candidates(write(tmp_path / "c.json", {"139": "a room", "000000000139.jpg": "a kitchen"}))
    with pytest.raises(InputError, match="two candidates for image '139'"):
        refs.match(cands, "c.json")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        read_references(tmp_path / "nope.json")


def test_a_raw_line_separator_inside_a_jsonl_caption_is_part_of_it(tmp_path: Path) -> None:
    line = json.dumps({"image": "x.jpg", "caption": "a sign\u2028that says open"}, ensure_ascii=False)
    assert read_candidates(write(tmp_path / "c.jsonl", line + "\n")) == {"x.jpg": "a sign\u2028that says open"}


FLICKR_KARPATHY = DATA / "flickr8k" / "dataset_flickr8k.json"
FLICKR_KAGGLE_CSV = DATA / "flickr8k" / "captions.txt"
SENTICAP = DATA / "senticap" / "senticap.json"


def test_karpathy_json_references_equal_the_flickr_token_file() -> None:
    tokens = read_references(FLICKR_TOKENS).captions
    karpathy = read_references(FLICKR_KARPATHY)
    assert karpathy.captions == tokens  # "raw" is the token file's caption; every split is read
    assert karpathy.resolve("1000268201_693b08cb0e") == "1000268201_693b08cb0e.jpg"


def test_a_senticap_image_listed_twice_has_the_captions_of_both() -> None:
    data = json.loads(SENTICAP.read_text())
    expected: dict[str, list[str]] = {}
    for image in data["images"]:
        expected.setdefault(image["filename"], []).extend(s["raw"] for s in image["sentences"])
    assert len(expected) < len(data["images"])  # 2,360 entries, 2,225 images: some once per sentiment
    assert read_references(SENTICAP).captions == expected


def test_karpathy_coco_images_answer_to_their_coco_id(tmp_path: Path) -> None:
    image = {"filename": "COCO_val2014_000000000042.jpg", "cocoid": 42, "split": "test",
             "sentences": [{"raw": "A dog.", "tokens": ["a", "dog"]}, {"tokens": ["a", "puppy"]}]}  # fmt: skip
    refs = read_references(write(tmp_path / "dataset_coco.json", {"images": [image], "dataset": "coco"}))
    assert refs.captions == {"COCO_val2014_000000000042.jpg": ["A dog.", "a puppy"]}
    results = write(tmp_path / "r.json", [{"image_id": 42, "caption": "a dog"}])
    assert refs.match(read_candidates(results), "r.json") == {"COCO_val2014_000000000042.jpg": "a dog"}
    assert refs.resolve("val2017/000000000042.jpg") == refs.resolve("42") == "COCO_val2014_000000000042.jpg"
    assert refs.resolve("42.5") is None


def test_senticap_images_answer_to_their_coco_2017_names_and_ids(tmp_path: Path) -> None:
    """SentiCap gives no cocoid: captions of shared/data's COCO 2017 files of its images (000000000139.jpg, the
    2014 file renamed) had "no references in senticap_subset.json"; its file names hold the id."""
    refs = read_references(SENTICAP.with_name("senticap_subset.json"))
    assert "COCO_val2014_000000000139.jpg" in refs.captions
    assert refs.resolve("coco/val2017/000000000139.jpg") == refs.resolve("139") == "COCO_val2014_000000000139.jpg"
    lines = [{"image": "val2017/000000000139.jpg", "caption": "a room"}, {"image_id": 370208, "caption": "a cat"}]
    results = write(tmp_path / "c.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    assert refs.match(read_candidates(results), "c.jsonl") == {
        "COCO_val2014_000000000139.jpg": "a room",
        "COCO_val2014_000000370208.jpg": "a cat",
    }


def test_a_karpathy_image_without_sentences_text_is_one_clear_error(tmp_path: Path) -> None:
    bad = {"images": [{"filename": "x.jpg", "sentences": [{"imgid": 0}]}]}
    with pytest.raises(InputError, match=r"x\.jpg': a sentence without \"raw\" text or \"tokens\"$"):
        read_references(write(tmp_path / "k.json", bad))


def test_kaggle_csv_references_equal_the_flickr_token_file() -> None:
    assert read_references(FLICKR_KAGGLE_CSV).captions == read_references(FLICKR_TOKENS).captions


def test_every_output_format_of_captionkit_caption_is_a_candidates_file(tmp_path: Path) -> None:
    records = [{"image": "/photos/a.jpg", "caption": "a dog, running", "score": -1.5},
               {"image": "/photos/b.jpg", "caption": "un café", "score": -2.0}]  # fmt: skip
    expected = {"a.jpg": "a dog, running", "b.jpg": "un café"}
    jsonl = write(tmp_path / "c.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    as_json = write(tmp_path / "c.json", records)
    rows = "".join(f'{r["image"]},"{r["caption"]}",{r["score"]},\n' for r in records)
    as_csv = write(tmp_path / "c.csv", "image,caption,score,error\n" + rows)
    for path in (jsonl, as_json, as_csv):
        assert read_candidates(path) == expected, path.name


def test_coco_results_one_a_line_are_a_candidates_file(tmp_path: Path) -> None:
    lines = '{"image_id": 139, "caption": "a room"}\n{"image_id": "000000249025", "caption": "a bear"}\n'
    refs = read_references(COCO_SUBSET)
    assert refs.match(read_candidates(write(tmp_path / "r.jsonl", lines)), "r.jsonl") == {
        "139": "a room",
        "249025": "a bear",
    }


def test_numeric_ids_match_by_value_as_in_pycocoevalcap(tmp_path: Path) -> None:
    results = write(tmp_path / "r.json", [{"image_id": 139.0, "caption": "a room"}])
    assert read_references(COCO_SUBSET).match(read_candidates(results), "r.json") == {"139": "a room"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"image,caption,score,error\nx.jpg,,,truncated image\n", "1 image failed to caption, e.g. x.jpg: trunc"),
        (b"image,caption\nx.jpg,a dog\nx.jpg,a cat\n", "row 3: duplicate image 'x.jpg'"),
        (b"image,caption\nx.jpg\n", "row 2: 1 of the header's 2 columns"),
        (b'image,caption\nx.jpg,"a dog\n', "bad CSV at line 2"),
        (b"file,text\nx.jpg,a dog\n", "not a candidates file"),
    ],
)
def test_bad_csv_candidate_files(tmp_path: Path, content: bytes, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)) as error:
        read_candidates(write(tmp_path / "cands.csv", content))
    assert "\n" not in str(error.value) and str(tmp_path) in str(error.value)


def test_image_files_are_needed_only_for_the_images_asked_for(tmp_path: Path) -> None:
    # CLIPScore over the images that have a candidate: the other reference images need no file.
    shutil.copy(DATA / "coco" / "val2017" / "000000000139.jpg", tmp_path)
    files = read_references(COCO_SUBSET).image_files(tmp_path)
    assert files["139"] == tmp_path / "000000000139.jpg" and len(files) == 100 and "249025" in files
    with pytest.raises(InputError, match=r"no image file for image '249025' \(tried '249025', '000000249025\.jpg'"):
        files["249025"]


@pytest.mark.parametrize("document", [[{"image_id": 1, "caption": "a cat"}], {"annotations": []}])
def test_a_lexicon_that_is_no_senticap_json_says_what_it_expected(tmp_path: Path, document: object) -> None:
    """`evaluate --styles --lexicon results.json` said "not a SentiCap json (list indices must be integers or slices,
    not str)": Python's words, not the file's problem."""
    from captionkit.evaluation.style import senticap_sentiment_words

    path = write(tmp_path / "lexicon.json", document)
    with pytest.raises(InputError) as caught:
        senticap_sentiment_words(path)
    expected = 'not a SentiCap json (expected an object {"images": [{"sentences": [...]}]})'
    assert str(caught.value) == f"{path}: {expected}"


def test_json_lines_references_read_as_the_csv_of_the_same_captions(tmp_path: Path) -> None:
    """captionkit's own captions.jsonl (a line per caption, as the synthetic scenes and `data` write it) as --refs
    failed with "invalid JSON: Extra data (line 2, column 1)"; the CSV of the same rows was read."""
    rows = [("images/a.png", "a red circle", "a"), ("images/a.png", "a circle", "a"), ("images/b.png", "a cat", "b")]
    lines = "".join(json.dumps({"image": i, "caption": c, "image_id": n, "split": "test"}) + "\n" for i, c, n in rows)
    jsonl = read_references(write(tmp_path / "captions.jsonl", lines))
    table = read_references(
        write(tmp_path / "captions.csv", "image,caption\n" + "".join(f"{i},{c}\n" for i, c, _ in rows))
    )
    assert jsonl.captions == table.captions == {"images/a.png": ["a red circle", "a circle"], "images/b.png": ["a cat"]}
    assert {jsonl.resolve(name) for name in ("a", "a.png", "x/a.png")} == {"images/a.png"}
    with pytest.raises(InputError, match=r"captions\.jsonl: line 2: expected an object with \"image\""):
        read_references(write(tmp_path / "captions.jsonl", lines.replace('"a circle"', "null")))
