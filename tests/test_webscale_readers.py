"""Readers for the datasets web-scale collections come with: Conceptual Captions TSV, TextCaps and nocaps JSON."""

from __future__ import annotations

import json
import shutil

import pytest

from _helpers import run_cli, save_tiny_model
from _shards import real_photos
from captionkit.data.sources import load_dataset
from captionkit.errors import InputError

DOMAINS = ("in-domain", "near-domain", "out-domain", "out-domain")


def test_conceptual_captions_tsv_needs_downloaded_images(tmp_path):
    tsv = tmp_path / "Train_GCC-training.tsv"
    tsv.write_text("a dog on a beach\thttps://example.org/1.jpg\nsome houses\thttp://example.org/2\n")
    with pytest.raises(InputError) as error:
        load_dataset(tsv)
    assert str(error.value) == (
        f"{tsv}: column 'url' holds image URLs, not images: download them first, e.g. img2dataset --url_list {tsv} "
        "--input_format tsv --url_col url --caption_col caption --output_format webdataset --output_folder shards, "
        "then read shards/ (add the header line caption<TAB>url first: the file has none)"
    )
    photos = real_photos(2)
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(photos[0], images / "000000000.jpg")
    shutil.copy(photos[1], images / "1.jpg")
    result = load_dataset(f"{tsv}?images={images}")
    assert result.format == "conceptual"
    assert [(r.image_path, r.caption, r.image_id) for r in result.records] == [
        (images / "000000000.jpg", "a dog on a beach", "000000000"),
        (images / "1.jpg", "some houses", "000000001"),
    ]


def test_conceptual_captions_tsv_numbers_rows_as_img2dataset_keys_them(tmp_path):
    # img2dataset reads the TSV with its header line (which the download hint says to add) and skips blank lines:
    # row keys count caption rows only, so the caption after a blank line must not get the next row's image.
    tsv = tmp_path / "cc.tsv"
    tsv.write_text("caption\turl\r\na dog\thttp://x.org/1.jpg\r\n\r\na cat\thttp://x.org/2.jpg\r\n\r\n")
    images = tmp_path / "images"
    images.mkdir()
    result = load_dataset(f"{tsv}?images={images}")
    assert result.format == "conceptual"
    assert [(r.image_path.name, r.caption, r.image_id) for r in result.records] == [
        ("000000000.jpg", "a dog", "000000000"),
        ("000000001.jpg", "a cat", "000000001"),
    ]


def test_textcaps_json_reads_entries_with_their_split(tmp_path):
    photos = real_photos(2)
    (tmp_path / "train_images").mkdir()
    for photo in photos:
        shutil.copy(photo, tmp_path / "train_images" / photo.name)
    entries = [
        {
            "image_id": photos[0].stem,
            "image_path": f"train/{photos[0].name}",
            "caption_str": "a sign",
            "set_name": "train",
        },
        {
            "image_id": photos[0].stem,
            "image_path": f"train/{photos[0].name}",
            "caption_str": "a red sign",
            "set_name": "train",
        },
        {
            "image_id": photos[1].stem,
            "image_path": f"train/{photos[1].name}",
            "caption_str": "a can",
            "set_name": "val",
        },
        {"image_id": "t1", "image_path": "test/t1.jpg", "set_name": "test"},
    ]
    path = tmp_path / "TextCaps_0.1_train.json"
    path.write_text(json.dumps({"dataset_name": "textcaps", "data": entries}))
    result = load_dataset(path)
    assert result.format == "textcaps"
    assert [(r.image_path.name, r.caption, r.image_id, r.split) for r in result.records] == [
        (photos[0].name, "a sign", photos[0].stem, "train"),
        (photos[0].name, "a red sign", photos[0].stem, "train"),
        (photos[1].name, "a can", photos[1].stem, "val"),
    ]
    assert all(r.image_path.parent == tmp_path / "train_images" for r in result.records)
    assert result.dropped == {"entry without caption_str (test split)": 1}


@pytest.fixture
def nocaps(tmp_path):
    photos = real_photos(4)
    (tmp_path / "val").mkdir()
    images, annotations = [], []
    for index, (photo, domain) in enumerate(zip(photos, DOMAINS, strict=True)):
        shutil.copy(photo, tmp_path / "val" / photo.name)
        images.append({"id": index, "file_name": photo.name, "domain": domain, "open_images_id": photo.stem})
        annotations += [{"id": 10 * index + k, "image_id": index, "caption": f"a photo number {index}"} for k in (0, 1)]
    path = tmp_path / "nocaps_val_4500_captions.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}))
    return path


def test_nocaps_keeps_each_images_domain(nocaps):
    result = load_dataset(nocaps)
    assert result.format == "nocaps"
    assert [(r.image_id, r.domain) for r in result.records] == [
        (str(index), domain) for index, domain in enumerate(DOMAINS) for _ in (0, 1)
    ]
    assert all(r.image_path.is_file() for r in result.records)


def test_nocaps_image_ids_written_as_strings_are_the_same_images(nocaps):
    # One tool writes "image_id": "3" for the image whose "id" is 3: the captions are still that image's.
    document = json.loads(nocaps.read_text())
    for annotation in document["annotations"]:
        annotation["image_id"] = str(annotation["image_id"])
    nocaps.write_text(json.dumps(document))
    result = load_dataset(nocaps)
    assert result.dropped == {}
    assert [(r.image_id, r.domain) for r in result.records] == [
        (str(index), domain) for index, domain in enumerate(DOMAINS) for _ in (0, 1)
    ]


def test_nocaps_image_id_given_to_two_files_is_an_error(nocaps):
    document = json.loads(nocaps.read_text())
    document["images"][1]["id"] = "0"
    nocaps.write_text(json.dumps(document))
    with pytest.raises(InputError) as error:
        load_dataset(nocaps)
    first, second = (image["file_name"] for image in document["images"][:2])
    assert str(error.value) == f"{nocaps}: images[1]: id '0' is also the id of {first} (images[0]), not of {second}"


def test_evaluate_reports_nocaps_metrics_per_domain(nocaps, tmp_path, capsys):
    model = save_tiny_model(tmp_path / "tiny", captions=tuple(f"a photo number {i}" for i in range(4)))
    args = ["evaluate", "--model", model, "--data", nocaps, "--split", "all", "--metrics", "BLEU", "--beams", "1"]
    code, out, err = run_cli([*args, "--max-length", "5"], capsys)
    assert code == 0, err
    metrics = json.loads(out)
    assert list(metrics["domains"]) == ["in-domain", "near-domain", "out-domain"]
    assert [metrics["domains"][name]["images"] for name in metrics["domains"]] == [1, 1, 2]
    assert all(0.0 <= metrics["domains"][name]["Bleu_1"] <= 1.0 for name in metrics["domains"])
