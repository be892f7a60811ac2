"""Dataset readers: every format on the real files in shared/data (counts from its MANIFEST.md), the others on small
files written here; auto-detection, FORMAT:PATH overrides, spec options, dropped captions and malformed input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from _data import SHARED_DATA, copy_coco_photos
from _helpers import run_cli, save_tiny_model
from captionkit.data.formats import FORMATS, detect
from captionkit.data.formats.base import Probe
from captionkit.data.sources import load_dataset, load_records, parse_spec
from captionkit.data.splits import assign_splits, split_by_image
from captionkit.data.synthetic import write_synthetic_dataset
from captionkit.errors import InputError
from captionkit.jobs.outputs import iter_records

FLICKR = SHARED_DATA / "flickr8k"
COCO = SHARED_DATA / "coco"
SENTICAP = SHARED_DATA / "senticap"


def images_per_split(records) -> dict[str | None, int]:
    return {split: len(ids) for split, ids in _ids_by_split(records).items()}


def _ids_by_split(records) -> dict[str | None, set[str]]:
    found: dict[str | None, set[str]] = {}
    for record in records:
        found.setdefault(record.split, set()).add(record.image_id)
    return found


def write_image(path: Path, colour=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


# --- shared data ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [FLICKR, FLICKR / "Flickr8k.token.txt", f"flickr:{FLICKR / 'Flickr8k.token.txt'}"])
def test_flickr8k_token_file_with_split_lists(spec):
    result = load_dataset(spec)
    assert result.format == "flickr"
    records = result.records
    assert len(records) == 1000
    assert images_per_split(records) == {"train": 150, "val": 25, "test": 25}
    assert Counter(Counter(r.image_id for r in records).values()) == {5: 200}
    assert all(r.image_path.parent == FLICKR / "Images" and r.image_path.is_file() for r in records)
    first = records[0]
    assert (first.image_id, first.caption, first.style) == (
        "1000268201_693b08cb0e.jpg",
        "A child in a pink dress is climbing up a set of stairs in an entry way .",
        "neutral",
    )
    assert result.dropped == {}
    assert FLICKR / "Flickr_8k.devImages.txt" in result.files


def test_kaggle_captions_txt_holds_the_token_files_captions():
    result = load_dataset(FLICKR / "captions.txt")
    assert result.format == "csv"
    assert len(result.records) == 1000
    assert images_per_split(result.records) == {None: 200}
    assert all(r.image_path.parent == FLICKR / "Images" for r in result.records)
    # Captions with commas are quoted in the CSV; both files hold the same five captions per image.
    assert any("," in r.caption for r in result.records)
    tokens = load_records(FLICKR / "Flickr8k.token.txt")
    assert Counter((r.image_id, r.caption) for r in result.records) == Counter((r.image_id, r.caption) for r in tokens)


def test_karpathy_json_matches_the_split_lists():
    records = load_records(FLICKR / "dataset_flickr8k.json")
    assert len(records) == 1000
    assert _ids_by_split(records) == _ids_by_split(load_records(FLICKR))
    assert all(r.image_path.is_file() for r in records)


def test_coco_subset_finds_images_in_sibling_val2017():
    result = load_dataset(COCO / "captions_val2017_subset.json")
    assert result.format == "coco"
    records = result.records
    assert (len(records), len({r.image_id for r in records})) == (500, 100)
    assert {r.split for r in records} == {None}  # one file carries no split
    assert all(r.image_path.parent == COCO / "val2017" and r.image_path.is_file() for r in records)
    first = records[0]
    assert first.image_id == "249025" and first.image_path.name == "000000249025.jpg"


def test_coco_full_val2017_counts():
    records = load_records(COCO / "captions_val2017.json")
    assert (len(records), len({r.image_id for r in records})) == (25014, 5000)
    assert sum(r.image_path.is_file() for r in records) == 500  # the 100 images present, 5 captions each


def test_senticap_json_counts_and_styles():
    records = load_records(SENTICAP / "senticap.json")
    assert len(records) == 8869
    assert len({r.image_id for r in records}) == 2225
    assert Counter(r.style for r in records) == {"positive": 4892, "negative": 3977}
    assert {r.split for r in records} == {"train", "val", "test"}


def test_senticap_subset_finds_images_under_their_2017_names():
    spec = f"{SENTICAP / 'senticap_subset.json'}?images={SENTICAP / 'images'}&images={COCO / 'val2017'}"
    records = load_records(spec)
    assert len(records) == 35
    assert len({r.image_id for r in records}) == 8
    assert Counter(r.style for r in records) == {"positive": 23, "negative": 12}
    assert all(r.image_path.is_file() for r in records)
    by_id = {r.image_id: r.image_path for r in records}
    # Image ids are COCO's, as the COCO reader gives them: one photo is one image across the two datasets.
    assert by_id["139"] == COCO / "val2017" / "000000000139.jpg"
    assert by_id["370208"] == SENTICAP / "images" / "COCO_val2014_000000370208.jpg"
    coco_ids = {r.image_id for r in load_records(COCO / "captions_val2017_subset.json")}
    assert len(coco_ids & set(by_id)) == 7


def test_spec_fractions_assign_splits_by_image():
    records = load_records(f"{COCO / 'captions_val2017_subset.json'}?val=0.2&test=0.1&seed=3")
    splits = _ids_by_split(records)
    assert set(splits) == {"train", "val", "test"}
    assert sum(len(ids) for ids in splits.values()) == 100  # every image in exactly one split
    assert 8 <= len(splits["val"]) <= 35 and 2 <= len(splits["test"]) <= 25
    assert load_records(f"{COCO / 'captions_val2017_subset.json'}?val=0.2&test=0.1&seed=3") == records


# --- formats written here ---------------------------------------------------------------------------------


def test_vizwiz_layout_drops_rejected_captions(tmp_path):
    write_image(tmp_path / "train" / "VizWiz_train_00000000.jpg")
    document = {
        "images": [{"id": 0, "file_name": "VizWiz_train_00000000.jpg", "text_detected": True}],
        "annotations": [
            {"image_id": 0, "id": 0, "caption": "A can of soup.", "is_rejected": False, "is_precanned": False},
            {"image_id": 0, "id": 1, "caption": "Quality issues are too severe.", "is_precanned": True},
            {"image_id": 0, "id": 2, "caption": "blurry", "is_rejected": True, "is_precanned": False},
            {"image_id": 0, "id": 3, "caption": "   ", "is_rejected": False},
        ],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.json").write_text(json.dumps(document))
    for spec in (tmp_path, tmp_path / "annotations" / "train.json", f"vizwiz:{tmp_path / 'annotations/train.json'}"):
        result = load_dataset(spec)
        assert result.format == "coco"
        assert [r.caption for r in result.records] == ["A can of soup.", "Quality issues are too severe."]
        assert result.dropped == {"rejected caption (is_rejected)": 1, "empty caption": 1}
        assert result.records[0].image_path == tmp_path / "train" / "VizWiz_train_00000000.jpg"


def coco_document(ids: list[int], caption: str = "a photo") -> dict:
    return {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in ids],
        "annotations": [{"image_id": i, "id": i, "caption": f"{caption} {i}"} for i in ids],
    }


def test_coco_directory_takes_splits_from_file_names(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_train2017.json").write_text(json.dumps(coco_document([1, 2])))
    (tmp_path / "annotations" / "captions_val2017.json").write_text(json.dumps(coco_document([3])))
    write_image(tmp_path / "train2017" / "000000000001.jpg")
    write_image(tmp_path / "val2017" / "000000000003.jpg")
    records = load_records(tmp_path)
    assert [(r.image_id, r.split) for r in records] == [("1", "train"), ("2", "train"), ("3", "val")]
    assert records[0].image_path == tmp_path / "train2017" / "000000000001.jpg"
    assert records[2].image_path == tmp_path / "val2017" / "000000000003.jpg"


def test_coco_explicit_image_root(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps(coco_document([5])))
    write_image(tmp_path / "pics" / "000000000005.jpg")
    records = load_records(f"coco:{tmp_path / 'labels.json'}?images={tmp_path / 'pics'}")
    assert records[0].image_path == tmp_path / "pics" / "000000000005.jpg"


def test_karpathy_coco_layout_with_filepath_cocoid_and_restval(tmp_path):
    write_image(tmp_path / "coco" / "val2014" / "COCO_val2014_000000000042.jpg")
    images = [
        {
            "filepath": "val2014",
            "filename": "COCO_val2014_000000000042.jpg",
            "cocoid": 42,
            "split": "restval",
            "sentences": [{"raw": "A cat.", "tokens": ["a", "cat"]}, {"tokens": ["a", "sleeping", "cat"]}],
        }
    ]
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    records = load_records(f"{tmp_path}?images={tmp_path / 'coco'}")
    assert [(r.image_id, r.caption, r.split) for r in records] == [
        ("42", "A cat.", "train"),
        ("42", "a sleeping cat", "train"),
    ]
    assert records[0].image_path == tmp_path / "coco" / "val2014" / "COCO_val2014_000000000042.jpg"


def test_generic_csv_with_style_split_and_quoted_commas(tmp_path):
    write_image(tmp_path / "img" / "a.png")
    path = tmp_path / "data.csv"
    path.write_text(
        "image,caption,style,split,image_id\n"
        'img/a.png,"a red, round thing",positive,dev,A\n'
        "img/a.png,a thing,,train,A\n"
        "img/b.png,,neutral,test,B\n"
    )
    result = load_dataset(path)
    assert result.format == "csv"
    assert [(r.caption, r.style, r.split, r.image_id) for r in result.records] == [
        ("a red, round thing", "positive", "val", "A"),
        ("a thing", "neutral", "train", "A"),
    ]
    assert result.records[0].image_path == tmp_path / "img" / "a.png"
    assert result.dropped == {"empty caption": 1}


def test_tsv_and_kaggle_flickr30k_pipe_table(tmp_path):
    (tmp_path / "t.tsv").write_text("image\tcaption\nx.jpg\ta dog\n")
    assert [(r.image_id, r.caption) for r in load_records(tmp_path / "t.tsv")] == [("x.jpg", "a dog")]
    (tmp_path / "flickr30k_images").mkdir()
    results = tmp_path / "flickr30k_images" / "results.csv"
    results.write_text("image_name| comment_number| comment\n1000092795.jpg| 0| Two young guys .\n")
    records = load_records(results)
    assert [(r.image_id, r.caption) for r in records] == [("1000092795.jpg", "Two young guys .")]


def test_jsonl_and_captions_jsonl_directory(tmp_path):
    jsonl = write_synthetic_dataset(tmp_path / "scenes", 3, 1, 1, seed=0, image_size=16)
    result = load_dataset(tmp_path / "scenes")
    assert result.format == "jsonl"
    assert {r.split for r in result.records} == {"train", "val", "test"}
    assert {r.style for r in result.records} == {"neutral", "positive", "negative"}
    assert all(r.image_path.is_file() for r in result.records)
    assert load_records(f"synthetic:{jsonl}") == result.records
    other = tmp_path / "mine.jsonl"
    other.write_text('{"image": "a.jpg", "caption": "one"}\n\n{"image": "a.jpg", "caption": ""}\n')
    result = load_dataset(other)
    assert [r.caption for r in result.records] == ["one"] and result.dropped == {"empty caption": 1}


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_caption_results_read_back_as_training_data(tmp_path, capsys, fmt):
    # Pseudo-labels to train on: each image's best caption; n-best lists and scores ignored, error records counted.
    photos = copy_coco_photos(tmp_path / "photos", 2)
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    model = save_tiny_model(tmp_path / "model")
    results = tmp_path / f"results.{fmt}"
    n_best = ["--n-best", "2"] if fmt == "jsonl" else []
    args = ["caption", photos, "--model", model, "--beams", "2", "--max-length", "4", "--output", results, *n_best]
    assert run_cli(args, capsys)[0] == 2  # the broken image's error record is in the results
    written, _ = iter_records(results, fmt)
    loaded = load_dataset(results)
    assert [(r.image_path, r.caption) for r in loaded.records] == [
        (Path(w["image"]), w["caption"]) for w in written if "error" not in w
    ]
    assert len(loaded.records) == 2 and loaded.dropped == {"error record (an image captioning failed on)": 1}


def test_senticap_csv(tmp_path):
    write_image(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    path = tmp_path / "senticap_dataset.csv"
    path.write_text(
        "filename,is_positive_sentiment,caption\n"
        'COCO_val2014_000000000042.jpg,1,"a lovely, sunny day"\n'
        "COCO_val2014_000000000042.jpg,0,a gloomy day\n"
    )
    for spec in (path, tmp_path):
        result = load_dataset(spec)
        assert result.format == "senticap"
        assert [(r.caption, r.style, r.split) for r in result.records] == [
            ("a lovely, sunny day", "positive", None),
            ("a gloomy day", "negative", None),
        ]
        assert result.records[0].image_path == tmp_path / "val2014" / "COCO_val2014_000000000042.jpg"


def test_image_folder_with_sidecars(tmp_path):
    write_image(tmp_path / "train" / "a.jpg")
    (tmp_path / "train" / "a.txt").write_text("a red square\n\na small red square\n")
    write_image(tmp_path / "test" / "b.png")
    (tmp_path / "test" / "b.txt").write_text("a blue square")
    write_image(tmp_path / "c.jpg")
    (tmp_path / "c.txt").write_text("  \n")
    write_image(tmp_path / "d.jpg")  # no sidecar
    result = load_dataset(tmp_path)
    assert result.format == "folder"
    assert [(r.image_id, r.caption, r.split) for r in result.records] == [
        ("test/b.png", "a blue square", "test"),
        ("train/a.jpg", "a red square", "train"),
        ("train/a.jpg", "a small red square", "train"),
    ]
    assert result.dropped == {"empty caption": 1, "image without a caption file": 1}


def test_flickr_image_in_no_split_list_is_dropped_and_counted(tmp_path):
    (tmp_path / "Flickr8k.token.txt").write_text("a.jpg#0\tone\na.jpg#1\ttwo\nb.jpg#0\tthree\nc.jpg#0\t \n")
    (tmp_path / "Flickr_8k.trainImages.txt").write_text("a.jpg\nc.jpg\n")
    result = load_dataset(tmp_path)
    assert [(r.image_id, r.split) for r in result.records] == [("a.jpg", "train"), ("a.jpg", "train")]
    assert result.dropped == {"caption of an image in no split list": 1, "empty caption": 1}


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("Flickr8k.token.txt", "a.jpg#0\tx\n", "flickr"),
        ("tokens.txt", "a.jpg#0\tx\n", "flickr"),
        ("captions.txt", "image,caption\na.jpg,x\n", "csv"),
        ("s.csv", "filename,is_positive_sentiment,caption\na.jpg,1,x\n", "senticap"),
        ("c.json", json.dumps(coco_document([1])), "coco"),
        (
            "dataset_x.json",
            json.dumps({"images": [{"filename": "a.jpg", "split": "train", "sentences": []}]}),
            "karpathy",
        ),
        (
            "s.json",
            json.dumps({"images": [{"filename": "a.jpg", "sentences": [{"raw": "x", "sentiment": 1}]}]}),
            "senticap",
        ),
        ("x.jsonl", '{"image": "a.jpg", "caption": "x"}\n', "jsonl"),
    ],
)
def test_detection_of_files(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_text(content)
    assert detect(Probe(path)).name == expected


def test_every_format_has_a_unique_name():
    names = [name for f in FORMATS for name in (f.name, *f.aliases)]
    assert len(names) == len(set(names))


# --- bad input ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("c.json", "{not json", "invalid JSON: Expecting property name enclosed in double quotes (column 2)"),
        ("c.json", "", "empty file"),
        (  # JSON Lines in a .json (Hugging Face's to_json writes them so): each line is fine, "Extra data" puzzled
            "c.json",
            '{"image": "a.jpg", "caption": "x"}\n{"image": "b.jpg", "caption": "y"}\n',
            "(line 2, column 1); one JSON object a line is JSON Lines: name the file .jsonl or force the format",
        ),
        ("c.json", "[1, 2]", "unknown dataset format"),
        ("c.json", json.dumps({"images": [{"id": 1}], "annotations": []}), "missing key 'file_name'"),
        (
            "c.json",
            json.dumps({"images": [], "annotations": [{"image_id": 7, "caption": "x"}]}),
            "no captions (1 dropped: 1 x caption of an image_id not in 'images')",
        ),
        ("c.json", json.dumps({"images": [], "annotations": []}), "no captions"),
        ("t.csv", "img,text\na.jpg,x\n", "no image and caption columns"),
        ("t.csv", "image,caption,mood\na.jpg,x,happy\n", "unknown column 'mood'"),
        # pandas' df.to_csv(path) writes its index first under no name: "unknown column ''" left one guessing.
        ("t.csv", ",image,caption\n0,a.jpg,x\n", "column 1 has no name (a pandas index? save the table with to_csv"),
        ("t.csv", "image,caption,\na.jpg,x,\n", "column 3 has no name (expected image, caption"),
        # A LAION-style table of URLs: said "no image and caption columns", where a TSV or Parquet of URLs says this.
        ("t.csv", "url,caption\nhttps://x.org/a.jpg,x\n", "'url' holds image URLs, not images: download them first"),
        ("t.csv", "image,caption\na.jpg,x,y\n", "expected 2 fields, got 3"),
        ("t.csv", "image,caption,style\na.jpg,x,happy\n", "unknown style 'happy'"),
        ("t.csv", "image,caption\n,x\n", "missing 'image'"),
        ("t.csv", "image,caption\na.jpg,\n", "no captions (1 dropped: 1 x empty caption)"),
        ("t.jsonl", '{"image": "a.jpg", "txt": "x"}\n', "unknown key 'txt'"),
        ("t.jsonl", '{"image": "a.jpg", "caption": "x"}\n{oops\n', "invalid JSON"),
        ("t.jsonl", '{"image": "a.jpg", "caption": 3}\n', "'caption' must be a string, got int"),
        ("s.csv", "filename,is_positive_sentiment,caption\na.jpg,2,x\n", "is_positive_sentiment must be 1 or 0"),
        (
            "s.json",
            json.dumps({"images": [{"filename": "a.jpg", "sentences": [{"raw": "x", "sentiment": 5}]}]}),
            "sentiment must be 1 (positive) or 0 (negative)",
        ),
        ("Flickr8k.token.txt", "a.jpg#0\tx\nno tab here\n", "expected NAME.jpg#N<TAB>caption"),
        ("data.parquet", "PAR1", "not a readable Parquet file"),
    ],
)
def test_malformed_files_name_the_file_and_reason(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError) as caught:
        load_records(path)
    assert str(path) in caught.value.source
    assert reason in caught.value.reason


def test_a_misspelt_split_is_an_error_naming_the_line_not_captions_training_leaves_out(tmp_path):
    # Training reads only train and val records: a split name it does not know would drop its captions unseen.
    table = tmp_path / "t.csv"
    table.write_text("image,caption,split\na.jpg,x,train\nb.jpg,y,trian\n")
    lines = tmp_path / "t.jsonl"
    lines.write_text(
        '{"image": "a.jpg", "caption": "x", "split": "Dev"}\n{"image": "b.jpg", "caption": "y", "split": "tst"}\n'
    )
    karpathy = json.loads((FLICKR / "dataset_flickr8k.json").read_text(encoding="utf-8"))
    karpathy["images"][3]["split"] = "tset"
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps(karpathy))
    senticap = json.loads((SENTICAP / "senticap_subset.json").read_text(encoding="utf-8"))
    senticap["images"][1]["split"] = "valid ation"
    (tmp_path / "senticap.json").write_text(json.dumps(senticap))
    cases = [
        (table, f"{table}:3", "'trian'"),
        (lines, f"{lines}:2", "'tst'"),
        (tmp_path / "dataset_flickr8k.json", f"{tmp_path / 'dataset_flickr8k.json'}: images[3]", "'tset'"),
        (tmp_path / "senticap.json", f"{tmp_path / 'senticap.json'}: images[1]", "'valid ation'"),
    ]
    for path, source, name in cases:
        with pytest.raises(InputError) as caught:
            load_records(path)
        assert caught.value.source == source
        assert (
            caught.value.reason == f"unknown split {name} (expected train, restval, val, valid, validation, dev, test)"
        )
    table.write_text("image,caption,split\na.jpg,x,Train\nb.jpg,y,validation\nc.jpg,z,\n")
    assert [r.split for r in load_records(table)] == ["train", "val", None]


def test_karpathy_and_senticap_fields_of_the_wrong_type_are_named(tmp_path):
    # A null cocoid made every such image the one image "None"; a number for filepath a folder "5/"; a raw that is
    # no string read as "missing key 'tokens'".
    karpathy = json.loads((FLICKR / "dataset_flickr8k.json").read_text(encoding="utf-8"))
    path = tmp_path / "dataset_flickr8k.json"
    for index, field, value, reason in [
        (2, "cocoid", None, "'cocoid' must be int or str, got NoneType"),
        (3, "filepath", 5, "'filepath' must be str, got int"),
    ]:
        broken = json.loads(json.dumps(karpathy))
        broken["images"][index][field] = value
        path.write_text(json.dumps(broken))
        with pytest.raises(InputError) as caught:
            load_records(path)
        assert str(caught.value) == f"{path}: images[{index}]: {reason}"
    karpathy["images"][4]["sentences"][1]["raw"] = 7
    path.write_text(json.dumps(karpathy))
    senticap = json.loads((SENTICAP / "senticap_subset.json").read_text(encoding="utf-8"))
    senticap["images"][4]["sentences"][1]["raw"] = ["a", "dog"]
    (tmp_path / "senticap.json").write_text(json.dumps(senticap))
    for broken, reason in [(path, "got int"), (tmp_path / "senticap.json", "got list")]:
        with pytest.raises(InputError) as caught:
            load_records(broken)
        assert str(caught.value) == f"{broken}: images[4].sentences[1]: 'raw' must be str, {reason}"


@pytest.mark.parametrize(
    ("source", "key"),
    [
        (COCO / "captions_val2017_subset.json", "file_name"),
        (FLICKR / "dataset_flickr8k.json", "filename"),
        (SENTICAP / "senticap_subset.json", "filename"),
    ],
    ids=["coco", "karpathy", "senticap"],
)
def test_an_empty_image_file_name_is_named_not_read_as_the_image_folder(tmp_path, source, key):
    document = json.loads(source.read_text(encoding="utf-8"))
    document["images"][1][key] = " "
    path = tmp_path / source.name
    path.write_text(json.dumps(document))
    with pytest.raises(InputError) as caught:
        load_records(path)
    assert str(caught.value) == f"{path}: images[1]: {key!r} is empty: it names no image file"


def test_lines_of_only_spaces_in_a_csv_are_blank_lines_not_rows(tmp_path):
    # An editor leaves them at the end of a file; they read as a row of one field ("expected 2 fields, got 1").
    table = tmp_path / "t.csv"
    table.write_text("image,caption\r\na.jpg,a dog\r\n  \r\nb.jpg,a cat\r\n \t\r\n")
    assert [(r.image_id, r.caption) for r in load_records(table)] == [("a.jpg", "a dog"), ("b.jpg", "a cat")]
    senticap = tmp_path / "senticap.csv"
    senticap.write_text("filename,is_positive_sentiment,caption\na.jpg,1,a nice dog\n   \n")
    assert [(r.caption, r.style) for r in load_records(senticap)] == [("a nice dog", "positive")]
    table.write_text("image,caption\na.jpg,a dog\n  \nb.jpg\n")  # a short row still names its line
    with pytest.raises(InputError) as caught:
        load_records(table)
    assert str(caught.value) == f"{table}:4: expected 2 fields, got 1"


def test_senticap_json_whose_first_image_has_no_sentences_keeps_its_sentiments(tmp_path):
    # Only a sentence's sentiment tells SentiCap from Karpathy's outline: an empty first entry must not hide it.
    document = json.loads((SENTICAP / "senticap_subset.json").read_text(encoding="utf-8"))
    styles = Counter(record.style for record in load_records(SENTICAP / "senticap_subset.json"))
    document["images"].insert(0, {"filename": "COCO_val2014_000000000139.jpg", "split": "train", "sentences": []})
    path = tmp_path / "senticap.json"
    path.write_text(json.dumps(document))
    result = load_dataset(path)
    assert result.format == "senticap"
    assert Counter(record.style for record in result.records) == styles == {"positive": 23, "negative": 12}
    assert result.dropped == {"image entry without sentences": 1}


def test_line_numbers_in_table_errors(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('image,caption\na.jpg,"two\nlines"\nb.jpg,x,extra\n')
    with pytest.raises(InputError) as caught:
        load_records(path)
    assert caught.value.source == f"{path}:4"


def test_non_utf8_file(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"image,caption\na.jpg,caf\xe9\n")
    with pytest.raises(InputError, match="not UTF-8"):
        load_records(path)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("yaml:{dir}/x.yaml", "unknown format 'yaml'"),
        ("{dir}/data.csv?colour=red", "unknown option 'colour'"),
        ("{dir}/data.csv?val=1.5", "val must be in [0, 1), got 1.5"),
        ("{dir}/data.csv?val=x", "val must be a number in [0, 1), got 'x'"),
        ("{dir}/data.csv?seed=x", "seed must be an integer"),
        ("{dir}/data.csv?images={dir}/nowhere", "image root is not a directory"),
        ("{dir}/data.csv?val=0.5&seed=1&val=0.1", "option 'val' is given twice"),  # the last one silently won
        ("{dir}/missing.csv", "no such file or directory"),
        ("{dir}/*.tar", "no such file or directory (a * pattern is not expanded: name the folder, or shards as"),
        ("coco:{dir}/data.csv", "invalid JSON"),
        ("", "empty data spec"),
        ("csv:", "csv:: no path: a spec is [FORMAT:]PATH[?OPTIONS]"),  # as "csv:$DATA" with $DATA unset: read "."
        ("?val=0.1", "no path: a spec is [FORMAT:]PATH[?OPTIONS]"),
    ],
)
def test_bad_specs(tmp_path, spec, message):
    (tmp_path / "data.csv").write_text("image,caption\na.jpg,x\n")
    with pytest.raises(InputError) as caught:
        load_records(spec.format(dir=tmp_path))
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("val=0.6&test=0.5", "val and test must sum below 1, got 0.6 + 0.5"),  # was a ValueError from assign_splits
        ("test=nan", "test must be in [0, 1), got nan"),
        ("seed=-1", "seed must be in [0, 4294967295], got -1"),  # as --seed and train.seed take
        ("seed=4294967296", "seed must be in [0, 4294967295], got 4294967296"),
        ("seed=--3", "seed must be an integer, got '--3'"),  # int() raised a ValueError: a traceback
        ("seed=\u00b2", "seed must be an integer, got '\u00b2'"),
    ],
)
def test_spec_split_options_are_checked_as_data_checks_flags_are(tmp_path, options, message):
    (tmp_path / "data.csv").write_text("image,caption\na.jpg,x\n")
    with pytest.raises(InputError) as caught:
        load_records(f"{tmp_path}/data.csv?{options}")
    assert str(caught.value) == f"{tmp_path}/data.csv?{options}: {message}"
    assert parse_spec(f"{tmp_path}/data.csv?seed=+7&val=0.5&test=0.25").seed == 7


def test_a_fraction_of_the_images_keeps_each_with_all_its_captions_seeded_and_apart_from_the_split(tmp_path):
    """Train on 30% of COCO (as seed 003 did): a seeded share of the images, stable as images come and go, and not
    the val split's images first (a share drawn with the split's own hash would be mostly val)."""
    table = tmp_path / "captions.csv"
    rows = [f"{i}.jpg,caption {j} of {i}" for i in range(2000) for j in range(2)]
    table.write_text("image,caption\n" + "\n".join(rows) + "\n")
    whole = load_records(table)
    loaded = load_dataset(f"{table}?fraction=0.3&seed=4")
    images = {r.image_id for r in loaded.records}
    assert 540 < len(images) < 660 and len(loaded.records) == 2 * len(images)
    assert loaded.dropped == {}  # asked for, not lost
    assert {r.image_id for r in load_records(f"{table}?fraction=0.3&seed=5")} != images
    fewer = tmp_path / "fewer.csv"  # the same images are kept whatever other images the data holds
    fewer.write_text("image,caption\n" + "\n".join(rows[:2000]) + "\n")
    assert {r.image_id for r in load_records(f"{fewer}?fraction=0.3&seed=4")} == images & {
        f"{i}.jpg" for i in range(1000)
    }
    split = load_records(f"{table}?fraction=0.3&seed=4&val=0.2")
    val = {r.image_id for r in split if r.split == "val"}
    assert 0.12 < len(val) / len(images) < 0.28  # the val share of the kept images stays about val=
    assert load_records(f"{table}?fraction=1") == whole
    for bad, reason in (
        ("0", "must be in (0, 1] (the share of the images kept), got 0"),
        ("x", "must be a number in (0, 1], got 'x'"),
    ):
        with pytest.raises(InputError) as caught:
            load_records(f"{table}?fraction={bad}")
        assert str(caught.value) == f"{table}?fraction={bad}: fraction {reason}"


def test_parse_spec_keeps_unknown_prefixes_that_are_paths(tmp_path):
    parsed = parse_spec(f"karpathy:{tmp_path}/d.json?images={tmp_path}&seed=2")
    assert (parsed.format, parsed.path, parsed.image_roots, parsed.seed) == (
        "karpathy",
        tmp_path / "d.json",
        (tmp_path,),
        2,
    )
    assert parse_spec("data/x:y.csv").path == Path("data/x:y.csv")


def test_assign_splits_agrees_with_split_by_image():
    records = load_records(COCO / "captions_val2017_subset.json")
    _train, val = split_by_image(records, 0.2, seed=5)
    assigned = assign_splits(records, 0.2, 0.0, seed=5)
    assert {r.image_id for r in assigned if r.split == "val"} == {r.image_id for r in val}
    with pytest.raises(ValueError, match="sum below 1"):
        assign_splits(records, 0.6, 0.5)


@pytest.mark.parametrize(
    ("directory", "message"),
    [
        (COCO, "several COCO caption files without one split each (captions_val2017.json, "),
        (SENTICAP, "several SentiCap files (senticap.json, senticap_subset.json); name one"),
        (SHARED_DATA, "directory holds no dataset this reads"),
    ],
)
def test_ambiguous_or_foreign_directories(directory, message):
    with pytest.raises(InputError) as caught:
        load_records(directory)
    assert caught.value.source == str(directory)
    assert message in caught.value.reason


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("senticap", "no SentiCap file (senticap*.json, senticap*.csv)"),
        ("flickr", "no Flickr token file (*.token.txt, *.token)"),
    ],
)
def test_a_forced_format_on_a_directory_without_its_file_says_none_is_there(tmp_path, spec, message):
    with pytest.raises(InputError) as caught:
        load_records(f"{spec}:{tmp_path}")
    assert str(caught.value) == f"{tmp_path}: {message}"
