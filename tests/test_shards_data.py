"""Web-scale collections as datasets: shards, Parquet and img2dataset folders read by ``load_dataset`` and checked
by ``captionkit data check``, with sample keys as image ids and captions from ``.txt``/``.json``."""

from __future__ import annotations

import json
import math
import shutil
import tarfile
import tracemalloc
from pathlib import Path

import pytest

from _helpers import run_cli
from _shards import caption_of, real_photos, write_files_layout, write_parquet, write_webdataset
from captionkit.data.sources import load_dataset
from captionkit.errors import InputError
from captionkit.images import load_image
from captionkit.shards import parquet, read_member
from captionkit.shards.patterns import directory_containers, expand_braces


@pytest.fixture(scope="module")
def photos():
    return real_photos(5)


@pytest.fixture(scope="module")
def collections(photos, tmp_path_factory):
    root = tmp_path_factory.mktemp("collections")
    write_webdataset(photos, root / "shards", per_shard=2)
    write_parquet(photos, root / "parquet" / "part-0.parquet", row_group_size=2)
    write_files_layout(photos, root / "files", per_folder=2)
    return root


@pytest.mark.parametrize(
    ("spec", "fmt"),
    [
        ("shards", "webdataset"),
        ("shards/{00000..00002}.tar", "webdataset"),
        ("parquet", "parquet"),
        ("parquet/part-0.parquet", "parquet"),
        ("files", "img2dataset"),
    ],
)
def test_every_layout_gives_keys_as_image_ids_and_its_captions(collections, photos, spec, fmt):
    result = load_dataset(f"{collections}/{spec}")
    assert result.format == fmt
    assert [(record.image_id, record.caption) for record in result.records] == [
        (photo.stem, caption_of(index)) for index, photo in enumerate(photos)
    ]
    for record, photo in zip(result.records, photos, strict=True):
        assert load_image(record.image_path).size == load_image(photo).size


@pytest.mark.parametrize(("layout", "fmt"), [("shards", "webdataset"), ("files", "img2dataset")])
def test_img2dataset_metadata_parquet_beside_each_shard_is_not_data(collections, photos, tmp_path, layout, fmt):
    # img2dataset writes 00000.parquet (url, key, caption: no image bytes) beside each 00000.tar or 00000/ folder.
    copy = shutil.copytree(collections / layout, tmp_path / layout)
    for shard in sorted({path.stem for path in copy.iterdir()}):
        write_parquet(photos, copy / f"{shard}.parquet", with_images=False)
    result = load_dataset(copy)
    assert result.format == fmt
    assert [(record.image_id, record.caption) for record in result.records] == [
        (photo.stem, caption_of(index)) for index, photo in enumerate(photos)
    ]


def test_listing_a_directory_asks_the_disk_about_its_containers_only(tmp_path, monkeypatch):
    """Detection lists every directory it is given: a stat per photo of a 100,000-photo folder took seconds."""
    for name in ("00000.tar", "00000.parquet", "00001.parquet", "data.parquet", *(f"{i}.jpg" for i in range(50))):
        (tmp_path / name).touch()
    (tmp_path / "00001").mkdir()  # img2dataset's files layout: 00001/ with its metadata 00001.parquet
    asked: list[str] = []
    for method in ("is_file", "is_dir"):
        original = getattr(Path, method)
        monkeypatch.setattr(Path, method, lambda path, _original=original: asked.append(path.name) or _original(path))
    assert directory_containers(tmp_path) == [tmp_path / "00000.tar", tmp_path / "data.parquet"]
    assert not [name for name in asked if name.endswith(".jpg")]


def test_a_hugging_face_image_column_is_read_by_its_bytes(photos, tmp_path):
    # `datasets` writes an Image feature to Parquet as a struct {bytes, path}, beside a "text" column.
    import pyarrow as pa
    import pyarrow.parquet as pq

    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([{"bytes": photo.read_bytes(), "path": photo.name} for photo in photos], type=image_type)
    texts = [caption_of(index) for index in range(len(photos))]
    path = tmp_path / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({"image": images, "text": texts}), path, row_group_size=2)
    result = load_dataset(path)
    assert result.format == "parquet"
    assert [record.caption for record in result.records] == texts
    for record, photo in zip(result.records, photos, strict=True):
        assert load_image(record.image_path).tobytes() == load_image(photo).tobytes()


def test_a_parquet_caption_column_of_lists_gives_each_caption_and_a_repeated_key_is_counted(photos, tmp_path):
    """Hugging Face datasets keep several captions per row as a list (it crashed on .strip()); a later row whose key
    repeats an earlier one's is left out, as before, and now counted instead of vanishing."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    captions = [["a dog", " ", "a brown dog"], [], ["a cat"]]
    table = pa.table({"key": ["5", "7", "5"], "jpg": [photo.read_bytes() for photo in photos[:3]], "caption": captions})
    path = tmp_path / "data.parquet"
    pq.write_table(table, path)
    result = load_dataset(path)
    assert [(record.image_id, record.caption) for record in result.records] == [("5", "a dog"), ("5", "a brown dog")]
    repeated = f"{path}: a row whose key repeats an earlier row's (left out: the key names the first row's image)"
    assert result.dropped == {"sample without a caption": 1, repeated: 1}


def test_json_caption_is_used_without_a_txt_member(tmp_path, photos):
    shard = tmp_path / "only-json.tar"
    with tarfile.open(shard, "w") as archive:
        archive.add(photos[0], "k1.jpg")
        meta = tmp_path / "k1.json"
        meta.write_text(json.dumps({"caption": "from the json"}))
        archive.add(meta, "k1.json")
        archive.add(photos[1], "k2.jpg")  # no caption at all: dropped and counted
    result = load_dataset(shard)
    assert [(r.image_id, r.caption) for r in result.records] == [("k1", "from the json")]
    assert result.dropped == {"sample without a caption": 1}


def test_a_byte_order_mark_is_no_part_of_a_tar_members_caption(tmp_path, photos):
    """A .txt saved by a Windows editor starts with a BOM: it was the caption's first character, and a .json that
    starts with one failed to parse (its sample dropped as unreadable)."""
    shard = tmp_path / "bom.tar"
    with tarfile.open(shard, "w") as archive:
        for key, name, text in (("k1", "k1.txt", "a dog\n"), ("k2", "k2.json", json.dumps({"caption": "a cat"}))):
            archive.add(photos[0], f"{key}.jpg")
            member = tmp_path / name
            member.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
            archive.add(member, name)
    result = load_dataset(shard)
    assert [(r.image_id, r.caption) for r in result.records] == [("k1", "a dog"), ("k2", "a cat")]
    assert result.dropped == {}


def test_captions_of_a_sample_without_an_image_member_are_counted_not_silently_lost(tmp_path, photos):
    shard = tmp_path / "no-image.tar"
    with tarfile.open(shard, "w") as archive:
        archive.add(photos[0], "k1.jpg")
        caption = tmp_path / "k.txt"
        caption.write_text("a caption\n")
        for key in ("k1", "k2", "k3"):  # k2's image was lost; k3's is a kind no shard image is
            archive.add(caption, f"{key}.txt")
        archive.add(photos[1], "k3.gif")
    result = load_dataset(shard)
    assert [(r.image_id, r.caption) for r in result.records] == [("k1", "a caption")]
    assert result.dropped == {"sample without an image member (its captions unused)": 2}


def test_a_tar_cut_inside_an_image_before_its_caption_says_where_it_was_cut(tmp_path, photos):
    shard = tmp_path / "torn.tar"
    with tarfile.open(shard, "w") as archive:
        for key, photo in (("k1", photos[0]), ("k2", photos[1])):
            archive.add(photo, f"{key}.jpg")
            caption = tmp_path / f"{key}.txt"
            caption.write_text(f"caption of {key}\n")
            archive.add(caption, f"{key}.txt")
    with tarfile.open(shard) as archive:
        member = archive.getmember("k2.jpg")
    cut = member.offset_data + member.size // 2  # the copy stopped inside k2's image: its caption came after it
    shard.write_bytes(shard.read_bytes()[:cut])
    result = load_dataset(shard)
    assert [(r.image_id, r.caption) for r in result.records] == [("k1", "caption of k1")]
    # Counted once, by the cut and naming the shard, not as a sample that came without a caption.
    assert result.dropped == {f"{shard}: torn tar: cut at byte {cut}, inside k2.jpg": 1}


def test_an_unreadable_caption_member_names_its_shard(tmp_path, photos):
    shard = tmp_path / "bad-text.tar"
    with tarfile.open(shard, "w") as archive:
        archive.add(photos[0], "k1.jpg")
        caption = tmp_path / "k1.txt"
        caption.write_bytes(b"caf\xe9 latin-1\n")
        archive.add(caption, "k1.txt")
        archive.add(photos[1], "k2.jpg")
        caption.write_text("a good caption\n")
        archive.add(caption, "k2.txt")
    result = load_dataset(shard)
    assert [(r.image_id, r.caption) for r in result.records] == [("k2", "a good caption")]
    ((reason, count),) = result.dropped.items()
    assert count == 1 and reason.startswith(f"{shard}: k1.txt: unreadable (")


def test_data_check_opens_shard_members_and_reports_a_corrupt_one(tmp_path, photos, capsys):
    write_webdataset(photos[:3], tmp_path / "shards", per_shard=3, image_bytes={2: b"not a jpeg"})
    code, out, _ = run_cli(["data", "check", tmp_path / "shards", "--json"], capsys)
    report = json.loads(out)
    assert code == 1
    assert report["total"]["captions"] == 3
    assert report["unreadable_images"] == [
        {
            "image": str(tmp_path / "shards" / "00000.tar" / f"{photos[2].stem}.jpg"),
            "reason": report["unreadable_images"][0]["reason"],
        }
    ]
    assert report["unreadable_images"][0]["reason"].startswith("unsupported image format")


def test_brace_patterns_expand_in_order_with_padding():
    assert expand_braces("s/{08..11}.tar") == ["s/08.tar", "s/09.tar", "s/10.tar", "s/11.tar"]
    assert expand_braces("{a,b}/{1..2}.tar") == ["a/1.tar", "a/2.tar", "b/1.tar", "b/2.tar"]
    with pytest.raises(InputError, match=r"brace range \{3\.\.1\} counts down"):
        expand_braces("{3..1}.tar")


def test_missing_shard_of_a_pattern_is_named(collections):
    with pytest.raises(InputError) as error:
        load_dataset(f"{collections}/shards/{{00000..00003}}.tar")
    assert str(error.value) == f"{collections}/shards/00003.tar: no such file"


def test_a_pattern_of_a_million_names_fails_at_its_first_missing_shard_without_listing_them_all(collections):
    # A typo's extra digit ({00000..0999999}) built every name (and its Path) before looking at the disk: seconds
    # and hundreds of MB for a million, minutes for ten; now the names are made as the shards are checked.
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as error:
            load_dataset(f"{collections}/shards/{{00000..0999999}}.tar")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(error.value) == f"{collections}/shards/00003.tar: no such file"
    assert peak < 5_000_000


def _read_in_order(monkeypatch, photos, cap: int, tmp_path) -> tuple[int, int]:
    """Read every image of a one-row-group Parquet file of ``photos`` in order, the row cache capped at ``cap``
    bytes: checks each image's bytes and returns (reads of the group, most bytes the cache held)."""
    path = write_parquet(photos, tmp_path / f"{cap}.parquet", row_group_size=len(photos))
    monkeypatch.setattr(parquet, "_ROWS", parquet.RowCache(cap))
    reads = []
    column_rows = parquet._column_rows
    monkeypatch.setattr(parquet, "_column_rows", lambda *args: reads.append(args) or column_rows(*args))
    held = 0
    for photo in photos:
        assert read_member(path / photo.stem, 1 << 30) == photo.read_bytes()
        held = max(held, parquet._ROWS.size)
    return len(reads), held


def test_parquet_row_cache_holds_at_most_its_cap_and_reads_stay_equal(monkeypatch, tmp_path):
    photos = real_photos(8)
    sizes = sorted(photo.stat().st_size for photo in photos)
    # Under the default cap the group is cached whole: one read for all eight images.
    assert _read_in_order(monkeypatch, photos, parquet.ROW_GROUP_CACHE_BYTES, tmp_path) == (1, sum(sizes))
    # A cap of any three images: windows of at least three rows, never the whole group, never a read per image.
    reads, held = _read_in_order(monkeypatch, photos, sum(sizes[-3:]), tmp_path)
    assert 2 <= reads <= math.ceil(len(photos) / 3) and 0 < held <= sum(sizes[-3:])
    # A cap below every image: nothing is kept, each image is read on its own, bytes still right.
    assert _read_in_order(monkeypatch, photos, sizes[0] - 1, tmp_path) == (len(photos), 0)


def test_img2dataset_sidecar_text_is_read_as_utf8_without_its_bom(tmp_path, photos):
    files = write_files_layout(photos[:3], tmp_path / "files", per_folder=3)
    folder = files / "00000"
    (folder / f"{photos[0].stem}.txt").write_bytes(b"\xef\xbb\xbfa caption saved by Notepad\r\n")
    latin1 = folder / f"{photos[1].stem}.txt"
    latin1.write_bytes(b"caf\xe9 latin-1\n")
    result = load_dataset(files)
    assert [(r.image_id, r.caption) for r in result.records] == [
        (photos[0].stem, "a caption saved by Notepad"),
        (photos[2].stem, caption_of(2)),
    ]
    assert result.dropped == {f"{latin1}: not UTF-8 text (byte 0xe9 at offset 3)": 1}


def test_img2dataset_sidecar_of_only_whitespace_holds_no_caption_as_an_empty_one_does(tmp_path, photos):
    """Such a .txt is no broken file ('empty file' dropped its sample, and lost the .json's caption): its sample
    reads as one without a .txt, the .json's caption else a sample without a caption, as a 0-byte .txt does."""
    files = write_files_layout(photos[:4], tmp_path / "files", per_folder=4)
    folder = files / "00000"
    (folder / f"{photos[0].stem}.txt").write_text(" \r\n\t\n")  # the .json still holds its caption
    for index in (1, 2):  # nothing anywhere: whitespace, and a 0-byte file as img2dataset writes
        (folder / f"{photos[index].stem}.txt").write_text(" \n" if index == 1 else "")
        (folder / f"{photos[index].stem}.json").write_text(json.dumps({"key": photos[index].stem}))
    result = load_dataset(files)
    assert [(r.image_id, r.caption) for r in result.records] == [
        (photos[0].stem, caption_of(0)),
        (photos[3].stem, caption_of(3)),
    ]
    assert result.dropped == {"sample without a caption": 2}


def test_img2dataset_json_sidecar_is_read_only_for_a_caption_the_txt_does_not_give(tmp_path, photos):
    # A broken .json beside a good .txt lost the sample (its captions were read), then counted a kept sample as
    # dropped; an empty .json is no metadata, as an empty .txt is no caption.
    files = write_files_layout(photos[:4], tmp_path / "files", per_folder=4)
    folder = files / "00000"
    empty, broken, broken_alone = (folder / f"{photos[i].stem}.json" for i in range(3))
    empty.write_text("")
    broken.write_text("{")
    broken_alone.write_text("{")
    (folder / f"{photos[2].stem}.txt").write_text("")  # nothing else to caption it: dropped, counted once
    result = load_dataset(files)
    assert [(r.image_id, r.caption) for r in result.records] == [
        (photos[0].stem, caption_of(0)),
        (photos[1].stem, caption_of(1)),
        (photos[3].stem, caption_of(3)),
    ]
    bad_json = f"{broken_alone}: invalid JSON: Expecting property name enclosed in double quotes (column 2)"
    assert result.dropped == {bad_json: 1}


@pytest.mark.parametrize("forced", ["webdataset", "parquet"])
def test_a_shard_format_forced_on_another_file_says_it_is_no_shard(tmp_path, forced):
    notes = tmp_path / "notes.txt"
    notes.write_text("a dog\n")
    with pytest.raises(InputError) as caught:
        load_dataset(f"{forced}:{notes}")
    assert str(caught.value) == f"{notes}: not a shard: a WebDataset or Parquet shard is a .tar or .parquet file"


@pytest.mark.parametrize(
    ("spec", "fmt"),
    [("shards", "webdataset"), ("parquet/part-0.parquet", "parquet"), ("files", "img2dataset"), ("folder", "folder")],
)
def test_an_images_option_on_data_that_holds_its_own_images_is_refused_not_ignored(collections, tmp_path, spec, fmt):
    folder = tmp_path / "folder"  # a folder of photos with sidecar captions: also no use for images=DIR
    folder.mkdir()
    shutil.copy(real_photos(1)[0], folder / "a.jpg")
    (folder / "a.txt").write_text("a dog\n")
    path = folder if fmt == "folder" else collections / spec
    with pytest.raises(InputError) as caught:
        load_dataset(f"{path}?images={tmp_path}")
    assert str(caught.value) == f"{path}: images=DIR does not apply to {fmt} data, which holds its own images"


@pytest.mark.parametrize("stray", ["shards/00000.tar", "parquet/part-0.parquet"])
def test_a_folder_of_captioned_photos_with_a_shard_beside_them_stays_a_folder(collections, photos, tmp_path, stray):
    # A backup or an earlier run's output left among the photos: read as shards, the sidecar captions were ignored.
    for index, photo in enumerate(photos[:2]):
        shutil.copy(photo, tmp_path / photo.name)
        (tmp_path / f"{photo.stem}.txt").write_text(f"my caption {index}\n")
    shutil.copy(collections / stray, tmp_path / Path(stray).name)
    result = load_dataset(tmp_path)
    assert result.format == "folder"
    assert [(r.image_id, r.caption) for r in result.records] == [
        (p.name, f"my caption {i}") for i, p in enumerate(photos[:2])
    ]


@pytest.mark.parametrize(
    ("content", "reason"), [(b"", "empty file"), (b"junk" * 10, "40 bytes: shorter than one tar header")]
)
def test_a_shard_too_short_for_a_tar_header_says_so(tmp_path, content, reason):
    # A 40-byte file of garbage was called "empty file".
    shard = tmp_path / "00000.tar"
    shard.write_bytes(content)
    with pytest.raises(InputError) as caught:
        load_dataset(shard)
    assert str(caught.value) == f"{shard.resolve()}: not a readable tar file ({reason})"
