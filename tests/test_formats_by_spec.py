"""Each reader against its format's published definition, on tiny files written here to that definition: what
test_formats.py and test_formats_wild.py leave out (ids across formats, the COCO 2014 folders as image roots, an
image id of 0, line-exact errors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from captionkit.data.sources import load_dataset, load_records
from captionkit.errors import InputError


def write_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (10, 200, 30)).save(path)
    return path


def write_json(path: Path, document: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


def karpathy_coco_entry(folder: str, cocoid: int, split: str, *raws: str) -> dict:
    """An image of Karpathy's dataset_coco.json, as his and ruotianluo's preprocessing read it."""
    return {
        "filepath": folder,
        "filename": f"COCO_{folder}_{cocoid:012d}.jpg",
        "imgid": 0,
        "cocoid": cocoid,
        "split": split,
        "sentids": list(range(len(raws))),
        "sentences": [{"raw": raw, "tokens": raw.lower().strip(" .\n").split(), "sentid": 0} for raw in raws],
    }


def test_karpathy_coco_images_are_found_in_the_2014_folders_given_as_image_roots(tmp_path):
    # ?images=train2017&images=val2017 found every image under its 2017 name, but the same spec with the 2014
    # folders the file names looked for <root>/val2014/COCO_val2014_...jpg inside val2014/ itself: all missing.
    val = write_image(tmp_path / "coco" / "val2014" / "COCO_val2014_000000000042.jpg")
    train = write_image(tmp_path / "coco" / "train2014" / "COCO_train2014_000000000009.jpg")
    images = [
        karpathy_coco_entry("val2014", 42, "restval", "A cat on a mat."),
        karpathy_coco_entry("train2014", 9, "train", "A dog.\n"),
    ]
    split_file = write_json(tmp_path / "karpathy" / "dataset_coco.json", {"images": images, "dataset": "coco"})
    roots = f"images={tmp_path / 'coco' / 'train2014'}&images={tmp_path / 'coco' / 'val2014'}"
    records = load_records(f"{split_file}?{roots}")
    assert [(r.image_path, r.caption, r.image_id, r.split) for r in records] == [
        (val, "A cat on a mat.", "42", "train"),
        (train, "A dog.", "9", "train"),
    ]
    # The parent of the 2014 folders, as prepro_labels.py's --images_root takes it, finds them as before.
    assert [r.image_path for r in load_records(f"{split_file}?images={tmp_path / 'coco'}")] == [val, train]
    # Outside COCO, a/1.jpg is not some other folder's 1.jpg: missing, it is named where the file says it is.
    write_image(tmp_path / "other" / "1.jpg")
    entry = {"filepath": "a", "filename": "1.jpg", "split": "train", "sentences": [{"raw": "x"}]}
    custom = write_json(tmp_path / "custom" / "dataset_custom.json", {"images": [entry]})
    assert [r.image_path for r in load_records(f"{custom}?images={tmp_path / 'other'}")] == [tmp_path / "other/a/1.jpg"]


def test_one_coco_photo_is_one_image_id_in_the_coco_karpathy_and_senticap_files(tmp_path):
    photo = write_image(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    coco = write_json(
        tmp_path / "captions_val2014.json",
        {
            "images": [{"id": 42, "file_name": photo.name}],
            "annotations": [{"image_id": "42", "id": 1, "caption": "A cat."}],  # an id written as a string
        },
    )
    karpathy = write_json(tmp_path / "dataset_coco.json", {"images": [karpathy_coco_entry("val2014", 42, "test", "x")]})
    senticap = write_json(
        tmp_path / "senticap_dataset.json",
        {
            "images": [
                {"filename": photo.name, "imgid": 7, "split": "test", "sentences": [{"raw": "y", "sentiment": 1}]}
            ]
        },
    )
    found = {path.name: [(r.image_id, r.image_path) for r in load_records(path)] for path in (coco, karpathy, senticap)}
    assert found == {name: [("42", photo)] for name in found}


def test_karpathy_caption_is_raw_then_tokens_and_the_split_is_the_images(tmp_path):
    write_image(tmp_path / "Images" / "1.jpg")
    sentences = [
        {"raw": " Two dogs\nplay . ", "tokens": ["two", "dogs", "play"]},  # raw wins, on one line
        {"tokens": ["a", "dog", "runs"]},  # no raw: the tokens joined
        {"raw": None, "tokens": ["a", "ball"]},
    ]
    document = {"images": [{"filename": "1.jpg", "imgid": 0, "split": "val", "sentences": sentences}]}
    records = load_records(write_json(tmp_path / "dataset_flickr8k.json", document))
    assert [(r.caption, r.split, r.image_id) for r in records] == [
        ("Two dogs play .", "val", "1.jpg"),
        ("a dog runs", "val", "1.jpg"),
        ("a ball", "val", "1.jpg"),
    ]
    assert records[0].image_path == tmp_path / "Images" / "1.jpg"


def test_coco_ids_as_ints_or_strings_several_captions_in_order_and_an_image_without_any_gives_none(tmp_path):
    write_image(tmp_path / "val2017" / "000000000001.jpg")
    document = {
        "images": [
            {"id": 1, "file_name": "000000000001.jpg"},
            {"id": 2, "file_name": "000000000002.jpg"},  # no annotation names it: no record, counted
            {"id": 3, "file_name": "000000000003.jpg"},
        ],
        "annotations": [
            {"image_id": 1, "id": 10, "caption": "first"},
            {"image_id": "1", "id": 11, "caption": "second"},
            {"image_id": 3, "id": 12, "caption": "  "},
        ],
    }
    result = load_dataset(write_json(tmp_path / "captions_val2017.json", document))
    assert [(r.image_id, r.caption, r.split) for r in result.records] == [("1", "first", None), ("1", "second", None)]
    assert result.records[0].image_path == tmp_path / "val2017" / "000000000001.jpg"
    assert result.dropped == {"empty caption": 1, "image without captions": 1}


@pytest.mark.parametrize(
    ("name", "line"),
    [
        (
            "t.jsonl",
            '{"image": "a.jpg", "caption": "x", "image_id": 0}\n{"image": "b.jpg", "caption": "y", "image_id": 0}\n',
        ),
        ("t.csv", "image,caption,image_id\na.jpg,x,0\nb.jpg,y,0\n"),
    ],
)
def test_an_image_id_of_0_is_the_images_id_not_its_path(tmp_path, name, line):
    # JSONL's 0 read as no id at all: a.jpg and b.jpg, one image by their ids (VizWiz counts from 0), became two.
    path = tmp_path / name
    path.write_text(line, encoding="utf-8")
    assert [r.image_id for r in load_records(path)] == ["0", "0"]


def test_flickr_token_file_as_published_with_a_bom_crlf_and_split_lists(tmp_path):
    token = tmp_path / "Flickr8k_text" / "Flickr8k.token.txt"
    token.parent.mkdir()
    token.write_bytes("\ufeffa.jpg#0\tA dog # 1 .\r\na.jpg#1\tA dog runs .\r\n\r\nb.jpg#0\tA cat .\r\n".encode())
    (token.parent / "Flickr_8k.trainImages.txt").write_bytes(b"a.jpg\r\n")
    (token.parent / "Flickr_8k.devImages.txt").write_bytes(b"b.jpg\r\n")
    write_image(tmp_path / "Flicker8k_Dataset" / "a.jpg")  # the official archive's spelling
    result = load_dataset(tmp_path / "Flickr8k_text")
    assert result.format == "flickr"
    assert [(r.image_id, r.caption, r.split) for r in result.records] == [
        ("a.jpg", "A dog # 1 .", "train"),
        ("a.jpg", "A dog runs .", "train"),
        ("b.jpg", "A cat .", "val"),
    ]
    assert result.records[0].image_path == tmp_path / "Flicker8k_Dataset" / "a.jpg"


def test_kaggle_tables_keep_quoted_commas_doubled_quotes_and_pipes_in_captions(tmp_path):
    captions = tmp_path / "flickr8k" / "captions.txt"
    captions.parent.mkdir()
    captions.write_text('image,caption\na.jpg,"A dog, a ""ball"" ."\n', encoding="utf-8")
    assert [r.caption for r in load_records(captions)] == ['A dog, a "ball" .']
    results = tmp_path / "flickr30k" / "results.csv"
    results.parent.mkdir()
    results.write_text("image_name| comment_number| comment\n1.jpg| 0| A sign says a | b .\n", encoding="utf-8")
    assert [(r.image_id, r.caption) for r in load_records(results)] == [("1.jpg", "A sign says a | b .")]


def test_senticap_sentiment_is_the_style_and_tokens_stand_in_for_a_missing_raw(tmp_path):
    sentences = [
        {"tokens": ["a", "lovely", "dog"], "word_sentiment": [0, 1, 0], "sentiment": 1},
        {"raw": "A gloomy dog.", "tokens": ["a", "gloomy", "dog"], "word_sentiment": [0, 1, 0], "sentiment": 0},
    ]
    image = {"filename": "COCO_val2014_000000000042.jpg", "imgid": 3, "split": "val", "sentences": sentences}
    records = load_records(write_json(tmp_path / "senticap_dataset.json", {"images": [image]}))
    assert [(r.caption, r.style, r.split, r.image_id) for r in records] == [
        ("a lovely dog", "positive", "val", "42"),
        ("A gloomy dog.", "negative", "val", "42"),
    ]


@pytest.mark.parametrize(
    ("name", "content", "where", "reason"),
    [
        ("Flickr8k.token.txt", "a.jpg#0\tx\n\na.jpg 1 y\n", ":3", "expected NAME.jpg#N<TAB>caption"),
        (
            "senticap_dataset.csv",
            'filename,is_positive_sentiment,caption\na.jpg,1,"x"\na.jpg,0\n',
            ":3",
            "expected 3 fields (filename, is_positive_sentiment, caption), got 2",
        ),
        ("results.csv", "image_name| comment_number| comment\n1.jpg| 0| x\n2.jpg\n", ":3", "expected 3 fields, got 1"),
        (
            "captions_val2017.json",
            json.dumps(
                {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "caption": None}]}
            ),
            ": annotations[0]",
            "'caption' must be str, got NoneType",
        ),
        (
            "dataset_coco.json",
            json.dumps({"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": "x"}]}, 5]}),
            ": images[1]",
            "expected a JSON object",
        ),
    ],
    ids=["flickr", "senticap-csv", "flickr30k-results", "coco", "karpathy"],
)
def test_malformed_input_is_one_line_naming_the_file_and_line_or_record(tmp_path, name, content, where, reason):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(InputError) as caught:
        load_records(path)
    assert str(caught.value) == f"{path}{where}: {reason}"
    assert "\n" not in str(caught.value)
