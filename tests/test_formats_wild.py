"""Caption files as users bring them: other column names, Windows paths, Unicode names, Kaggle layouts, filtered
COCO subsets. Each test reads real photos (copied from the shared data) so that "the image was found" is checked
against the disk, not against a path string."""

from __future__ import annotations

import json
import shutil
import unicodedata
from pathlib import Path

import pytest

from _data import SHARED_DATA, copy_coco_photos
from _helpers import run_cli
from captionkit.data.formats.base import ImageResolver
from captionkit.data.formats.senticap import coco_aliases
from captionkit.data.sources import load_dataset
from captionkit.data.splits import assign_splits, split_by_image
from captionkit.errors import InputError
from captionkit.images import load_image

FLICKR_IMAGES = SHARED_DATA / "flickr8k" / "Images"


def flickr_photos(folder: Path, count: int) -> list[str]:
    """Copy the first ``count`` real Flickr8k photos into ``folder``; their names."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = sorted(FLICKR_IMAGES.glob("*.jpg"))[:count]
    assert len(photos) == count
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    return [photo.name for photo in photos]


@pytest.mark.parametrize(
    ("header", "suffix"),
    [
        ("file_name,text", ".csv"),  # Hugging Face ImageFolder metadata.csv
        ("path,caption", ".csv"),
        ("image_path\tsentence", ".tsv"),
        ("filename,sentence", ".csv"),
    ],
)
def test_tables_with_other_column_names(tmp_path, header, suffix):
    names = flickr_photos(tmp_path / "Images", 2)
    separator = "\t" if suffix == ".tsv" else ","
    table = tmp_path / f"labels{suffix}"
    table.write_text(header + "\n" + "".join(f"{name}{separator}a dog {i}\n" for i, name in enumerate(names)))
    result = load_dataset(table)
    assert result.format == "csv"
    assert [(r.image_path, r.caption) for r in result.records] == [
        (tmp_path / "Images" / names[0], "a dog 0"),
        (tmp_path / "Images" / names[1], "a dog 1"),
    ]


@pytest.mark.parametrize(("suffix", "separator"), [(".tsv", ","), (".csv", "\t")])
def test_a_table_named_for_the_other_separator_is_read(tmp_path, suffix, separator):
    # A .tsv of commas said "no image and caption columns in header 'image,caption'", which a .csv of tabs is not.
    names = flickr_photos(tmp_path / "Images", 1)
    table = tmp_path / f"labels{suffix}"
    table.write_text(f"image{separator}caption\n{names[0]}{separator}a dog running\n")
    assert [(r.image_path, r.caption) for r in load_dataset(table).records] == [
        (tmp_path / "Images" / names[0], "a dog running")
    ]


def test_hugging_face_metadata_jsonl_with_file_name_and_text(tmp_path):
    names = flickr_photos(tmp_path / "train", 2)
    lines = [json.dumps({"file_name": f"train/{name}", "text": f"a dog {i}"}) for i, name in enumerate(names)]
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    records = load_dataset(tmp_path / "metadata.jsonl").records
    assert [(r.image_id, r.caption) for r in records] == [
        (f"train/{names[0]}", "a dog 0"),
        (f"train/{names[1]}", "a dog 1"),
    ]
    assert all(r.image_path.is_file() for r in records)


def test_kaggle_flickr30k_results_csv_finds_photos_in_the_flickr30k_images_folder(tmp_path):
    # Kaggle's layout: flickr30k_images/results.csv beside flickr30k_images/flickr30k_images/*.jpg.
    folder = tmp_path / "flickr30k_images"
    names = flickr_photos(folder / "flickr30k_images", 2)
    rows = [f"{name}| {number}| A dog , running .\n" for name in names for number in range(5)]
    (folder / "results.csv").write_bytes(("image_name| comment_number| comment\n" + "".join(rows)).encode())
    result = load_dataset(folder / "results.csv")
    assert len(result.records) == 10
    assert {r.image_path for r in result.records} == {folder / "flickr30k_images" / name for name in names}
    assert all(r.image_path.is_file() for r in result.records)
    assert result.records[0].caption == "A dog , running ."


def test_kaggle_flickr30k_results_csv_keeps_quotes_and_mends_the_row_that_lost_a_separator(tmp_path):
    # results.csv is no quoted CSV: a quote belongs to its caption. Its line 19999 lost the "| " after the number.
    names = flickr_photos(tmp_path / "flickr30k_images", 2)
    rows = [
        f'{names[0]}| 0| "A man" said the sign .',
        f'{names[0]}| 1|"Stop" , says a sign with an open quote " .',
        f"{names[0]}| 2| A sign reads a | b .",
        f"{names[1]}| 4   A dog runs across the grass .",
        f"{names[1]}| 3 2 dogs play .",
    ]
    table = tmp_path / "results.csv"
    table.write_bytes(("\ufeffimage_name| comment_number| comment\r\n" + "\r\n".join(rows) + "\r\n\r\n").encode())
    result = load_dataset(table)
    assert [(r.image_path, r.caption) for r in result.records] == [
        (tmp_path / "flickr30k_images" / names[0], '"A man" said the sign .'),
        (tmp_path / "flickr30k_images" / names[0], '"Stop" , says a sign with an open quote " .'),
        (tmp_path / "flickr30k_images" / names[0], "A sign reads a | b ."),
        (tmp_path / "flickr30k_images" / names[1], "A dog runs across the grass ."),
        (tmp_path / "flickr30k_images" / names[1], "2 dogs play ."),
    ]
    # A row short of a field with no number to mend it by is one error naming its line.
    table.write_text(f"image_name| comment_number| comment\n{names[0]}| 0| a dog\n{names[1]}| a dog .\n")
    with pytest.raises(InputError) as caught:
        load_dataset(table)
    assert str(caught.value) == f"{table}:3: expected 3 fields, got 2"


def test_windows_backslash_paths_with_bom_and_crlf(tmp_path):
    names = flickr_photos(tmp_path / "Images", 2)
    rows = [f"Images\\{names[0]},a dog\r\n", f"./Images/{names[0]},a wet dog\r\n", f".\\Images\\{names[1]},a cat\r\n"]
    (tmp_path / "labels.csv").write_bytes(("\ufeffimage,caption\r\n" + "".join(rows)).encode())
    records = load_dataset(tmp_path / "labels.csv").records
    assert [r.image_path for r in records] == [tmp_path / "Images" / name for name in (names[0], names[0], names[1])]
    assert all(r.image_path.is_file() for r in records)
    # One photo, one id however its separators are written: a split by image keeps its captions together.
    assert [r.image_id for r in records] == [f"Images/{names[0]}", f"Images/{names[0]}", f"Images/{names[1]}"]


def test_nfc_names_in_a_table_find_nfd_files_on_disk(tmp_path):
    # macOS stores "café.jpg" decomposed (NFD); a table typed elsewhere holds the composed (NFC) name.
    photo = sorted(FLICKR_IMAGES.glob("*.jpg"))[0]
    nfc, nfd = (unicodedata.normalize(form, "café.jpg") for form in ("NFC", "NFD"))
    shutil.copy(photo, tmp_path / nfd)
    (tmp_path / "labels.csv").write_text(f"image,caption\n{nfc},a cup\n{nfd},a mug\n", encoding="utf-8")
    records = load_dataset(tmp_path / "labels.csv").records
    assert [r.image_path for r in records] == [tmp_path / nfd, tmp_path / nfd]
    assert [r.image_id for r in records] == [nfc, nfc]


def test_an_absolute_path_that_exists_is_taken_as_written(tmp_path, monkeypatch):
    """Its other spelling was tried first (both NFC and NFD files may exist on Linux), and a relative COCO 2017
    alias was looked for in the working directory."""
    photo = sorted(FLICKR_IMAGES.glob("*.jpg"))[0]
    nfc, nfd = (unicodedata.normalize(form, "café.jpg") for form in ("NFC", "NFD"))
    for name in (nfc, nfd):
        shutil.copy(photo, tmp_path / name)
    assert ImageResolver([tmp_path])(str(tmp_path / nfc)) == tmp_path / nfc
    assert ImageResolver([tmp_path])(str(tmp_path / nfd)) == tmp_path / nfd
    monkeypatch.chdir(tmp_path)
    shutil.copy(photo, tmp_path / "000000000139.jpg")  # the 2017 name, in the working directory only
    missing = tmp_path / "val2014" / "COCO_val2014_000000000139.jpg"
    assert ImageResolver([tmp_path / "elsewhere"], coco_aliases)(str(missing)) == missing


def test_each_image_name_is_looked_up_on_disk_once(tmp_path, monkeypatch):
    # Two roots make every lookup ask the disk; a COCO file names each image once per caption (five times).
    names = flickr_photos(tmp_path / "Images", 3)
    resolve = ImageResolver([tmp_path / "Images", tmp_path / "elsewhere"])
    asked: list[Path] = []
    is_file = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda path: asked.append(path) or is_file(path))
    found = [resolve(name) for _ in range(5) for name in names]
    assert found == [tmp_path / "Images" / name for _ in range(5) for name in names]
    assert asked == [tmp_path / "Images" / name for name in names]


def test_coco_caption_of_an_image_id_not_in_images_is_dropped_and_counted(tmp_path, capsys):
    # A subset whose image list was filtered but not its annotations; images without captions give no records.
    copy_coco_photos(tmp_path / "train2017", 2)
    ids = [int(path.stem) for path in sorted((tmp_path / "train2017").glob("*.jpg"))]
    document = {
        "images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in [*ids, 999999]],
        "annotations": [{"id": k, "image_id": ids[k % 2], "caption": f"a photo {k}"} for k in range(10)]
        + [{"id": 10, "image_id": 424242, "caption": "an orphan"}],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_train2017.json").write_text(json.dumps(document))
    result = load_dataset(tmp_path / "annotations" / "captions_train2017.json")
    assert len(result.records) == 10
    assert {r.image_id for r in result.records} == {str(i) for i in ids}
    assert all(r.image_path.is_file() for r in result.records)
    assert result.dropped == {"caption of an image_id not in 'images'": 1, "image without captions": 1}
    code, out, _ = run_cli(["data", "check", str(tmp_path / "annotations" / "captions_train2017.json")], capsys)
    assert code == 0
    assert "dropped: 1 x caption of an image_id not in 'images'" in out


def test_table_paths_relative_to_the_working_directory(tmp_path, monkeypatch):
    # A script run from a project's root wrote data/labels/train.csv naming data/images/NAME.jpg.
    names = flickr_photos(tmp_path / "data" / "images", 1)
    table = tmp_path / "data" / "labels" / "train.csv"
    table.parent.mkdir()
    table.write_text(f"image,caption\ndata/images/{names[0]},a dog\n")
    monkeypatch.chdir(tmp_path)
    records = load_dataset("data/labels/train.csv").records
    assert [r.image_path for r in records] == [tmp_path / "data" / "images" / names[0]]
    assert records[0].image_id == f"data/images/{names[0]}"


def test_results_over_shards_name_members_found_from_the_working_directory(tmp_path, monkeypatch):
    # `captionkit caption shards --output out/results.jsonl` names each image by its member path from where it ran;
    # such a path is no file to is_file(), so every image read back as pseudo-labels was reported missing.
    from _shards import write_webdataset

    photos = sorted(FLICKR_IMAGES.glob("*.jpg"))[:2]
    write_webdataset(photos, tmp_path / "shards", per_shard=2)
    members = [f"shards/00000.tar/{photo.stem}.jpg" for photo in photos]
    (tmp_path / "out").mkdir()
    lines = [json.dumps({"image": member, "caption": "a dog", "score": -1.0}) for member in members]
    (tmp_path / "out" / "results.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.chdir(tmp_path)
    records = load_dataset("out/results.jsonl").records
    assert [r.image_path.resolve() for r in records] == [tmp_path / member for member in members]
    assert all(load_image(r.image_path).size == load_image(p).size for r, p in zip(records, photos, strict=True))


def test_table_paths_relative_to_the_file_win_over_the_working_directory(tmp_path, monkeypatch):
    names = flickr_photos(tmp_path / "labels" / "images", 1)
    flickr_photos(tmp_path / "images", 1)  # the same name from the working directory: not the one meant
    (tmp_path / "labels" / "l.csv").write_text(f"image,caption\nimages/{names[0]},a dog\n")
    monkeypatch.chdir(tmp_path)
    assert load_dataset("labels/l.csv").records[0].image_path == Path("labels", "images", names[0])


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("labels.csv", "image\tcaption\r\na.jpg\ta dog\r\n"),
        ("captions.txt", "image\tcaption\r\na.jpg\ta dog\r\n"),
        ("labels.tsv", "image\tcaption\r\na.jpg\ta dog\r\n"),
        ("captions.json", '{"images": [], "annotations": []}'),  # read whole, not sniffed: the same words
        ("Flickr8k.token.txt", "a.jpg#0\ta dog\n"),
    ],
)
def test_utf16_files_are_one_error_saying_so(tmp_path, capsys, name, text):
    # Excel's "Unicode Text" export, PowerShell's default: UTF-16 with a byte-order mark, which no reader can read.
    table = tmp_path / name
    table.write_text(text, encoding="utf-16")
    code, _, err = run_cli(["data", "check", str(table)], capsys)
    assert code == 1
    assert err.strip().splitlines() == [f"captionkit: error: {table}: UTF-16 text: save it as UTF-8"]


@pytest.mark.parametrize("name", ["labels.csv", "labels.tsv"])
def test_an_empty_table_says_it_is_empty(tmp_path, capsys, name):
    # It said "no image and caption columns in header ''".
    table = tmp_path / name
    table.write_bytes(b"")
    code, _, err = run_cli(["data", "check", str(table)], capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        f"captionkit: error: {table}: empty file (expected image, caption[, style][, split][, image_id] in a header "
        "row, then a row per caption)"
    ]


def test_styles_written_in_any_case(tmp_path):
    names = flickr_photos(tmp_path, 1)
    rows = "".join(f"{names[0]},a dog,{style}\n" for style in ("Positive", " NEGATIVE", "Neutral", ""))
    (tmp_path / "labels.csv").write_text("image,caption,style\n" + rows)
    styles = [r.style for r in load_dataset(tmp_path / "labels.csv").records]
    assert styles == ["positive", "negative", "neutral", "neutral"]


def test_captions_without_a_split_follow_their_images_labelled_split(tmp_path, capsys):
    # A table that labels only the first row of each image: the other rows are the same image, not new ones to hash.
    names = flickr_photos(tmp_path, 3)
    rows = [f"{names[0]},a dog,val\n", f"{names[0]},a brown dog,\n", f"{names[1]},a cat,test\n", f"{names[1]},cat,\n"]
    (tmp_path / "labels.csv").write_text("image,caption,split\n" + "".join(rows) + f"{names[2]},a bird,\n")
    records = load_dataset(tmp_path / "labels.csv").records
    train, val = split_by_image(records, 0.0, seed=1)
    assert [r.caption for r in val] == ["a dog", "a brown dog"]
    assert [r.caption for r in train] == ["a bird"]  # the test image's unlabelled caption is not trained on
    assigned = assign_splits(records, 0.0, 0.0, seed=1)
    assert [r.split for r in assigned] == ["val", "val", "test", "test", "train"]
    code, out, _ = run_cli(["data", "check", str(tmp_path / "labels.csv"), "--json", "--val-fraction", "0"], capsys)
    assert code == 0
    assert json.loads(out)["images_in_several_splits"] == []


def test_karpathy_coco_split_file_finds_coco_2017_files_in_the_image_roots_given(tmp_path):
    # dataset_coco.json names val2014/COCO_val2014_<id>.jpg; the user downloaded COCO 2017 (the same photos renamed).
    val2017 = copy_coco_photos(tmp_path / "coco" / "val2017", 2)
    (tmp_path / "coco" / "train2017").mkdir()
    ids = [int(path.stem) for path in sorted(val2017.glob("*.jpg"))]
    images = [
        {
            "filepath": "val2014",
            "filename": f"COCO_val2014_{coco_id:012d}.jpg",
            "cocoid": coco_id,
            "split": split,
            "sentences": [{"raw": "A photo.", "tokens": ["a", "photo"]}, {"raw": "A picture.", "tokens": ["a"]}],
        }
        for coco_id, split in zip(ids, ["restval", "test"], strict=True)
    ]
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    roots = f"images={tmp_path / 'coco' / 'train2017'}&images={val2017}"
    records = load_dataset(f"{tmp_path / 'dataset_coco.json'}?{roots}").records
    assert [(r.image_id, r.split) for r in records] == [(str(ids[0]), "train")] * 2 + [(str(ids[1]), "test")] * 2
    assert [r.image_path for r in records[::2]] == [val2017 / f"{coco_id:012d}.jpg" for coco_id in ids]


def flickr30k_folder(root: Path) -> list[str]:
    """A Flickr30k folder as shipped: results_20130124.token (no split lists), flickr30k-images/ and Karpathy's
    dataset_flickr30k.json beside them; two photos, three captions each."""
    names = flickr_photos(root / "flickr30k-images", 2)
    lines = [f"{name}#{number}\t{name} caption {number}\n" for name in names for number in range(3)]
    (root / "results_20130124.token").write_text("".join(lines))
    images = [
        {"filename": name, "split": split, "sentences": [{"raw": f"{name} caption {n}"} for n in range(3)]}
        for name, split in zip(names, ["train", "test"], strict=True)
    ]
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": images, "dataset": "flickr30k"}))
    return names


def test_flickr30k_folder_takes_its_splits_from_the_karpathy_file_beside_the_token_file(tmp_path):
    names = flickr30k_folder(tmp_path)
    result = load_dataset(tmp_path)
    assert result.format == "karpathy"
    assert [(r.image_id, r.split) for r in result.records[::3]] == [(names[0], "train"), (names[1], "test")]
    assert all(r.image_path.is_file() for r in result.records)
    # The token file itself, named, still reads (unsplit), and a folder with split lists stays a Flickr folder.
    assert {r.split for r in load_dataset(tmp_path / "results_20130124.token").records} == {None}
    assert load_dataset(SHARED_DATA / "flickr8k").format == "flickr"
