"""`captionkit caption` on web-scale collections: WebDataset shards, Parquet and img2dataset folders of real photos."""

from __future__ import annotations

import gc
import io
import os
import shutil
import tarfile
import weakref
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from _captioning import read_jsonl
from _helpers import run_cli, save_tiny_model
from _shards import real_photos, write_files_layout, write_parquet, write_webdataset
from captionkit.api import Captioner
from captionkit.decoding.options import decoding_request
from captionkit.jobs import batch, run
from captionkit.jobs.batch import caption_files
from captionkit.jobs.inputs import InputImage, collect_images
from captionkit.jobs.outputs import RecordWriter, read_records
from captionkit.jobs.run import CaptionJobOptions
from captionkit.shards import ShardSample, container_files, iter_samples, writing

ARGS = ["--beams", "1", "--max-length", "5", "--batch-size", "3"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def photos():
    return real_photos(7)


def _captions(model_dir, source, tmp_path, capsys, name="out.jsonl", *extra) -> tuple[int, list[dict]]:
    out = tmp_path / name
    code, _, _ = run_cli(["caption", source, "--model", model_dir, "--output", out, *ARGS, *extra], capsys)
    return code, read_jsonl(out)


def test_folder_shards_and_parquet_give_the_same_captions(model_dir, photos, tmp_path, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    for photo in photos:
        shutil.copy(photo, folder / photo.name)
    write_webdataset(photos, tmp_path / "shards", per_shard=3)
    (single,) = write_webdataset(photos, tmp_path / "one", per_shard=7)
    parquet = write_parquet(photos, tmp_path / "parquet" / "part-0.parquet", row_group_size=4)
    write_parquet(photos[:4], tmp_path / "parquets" / "part-0.parquet", row_group_size=3)
    write_parquet(photos[4:], tmp_path / "parquets" / "part-1.parquet", row_group_size=3)
    files = write_files_layout(photos, tmp_path / "files", per_folder=3)
    runs = {
        "folder": _captions(model_dir, folder, tmp_path, capsys, "folder.jsonl"),
        "directory of shards": _captions(model_dir, tmp_path / "shards", tmp_path, capsys, "dir.jsonl"),
        "brace pattern": _captions(model_dir, tmp_path / "shards/{00000..00002}.tar", tmp_path, capsys, "b.jsonl"),
        "parquet": _captions(model_dir, parquet, tmp_path, capsys, "parquet.jsonl"),
        "parquet, 2 workers": _captions(model_dir, parquet, tmp_path, capsys, "p2.jsonl", "--workers", "2"),
        "shards, 2 workers": _captions(model_dir, tmp_path / "shards", tmp_path, capsys, "s2.jsonl", "--workers", "2"),
        "a single tar": _captions(model_dir, single, tmp_path, capsys, "single.jsonl"),
        "parquet directory": _captions(model_dir, tmp_path / "parquets", tmp_path, capsys, "pdir.jsonl"),
        "files layout": _captions(model_dir, files, tmp_path, capsys, "files.jsonl"),
    }
    assert all(code == 0 for code, _ in runs.values())
    reference = [record["caption"] for record in runs["folder"][1]]
    assert len(reference) == 7
    for name, (_, records) in runs.items():
        assert [record["caption"] for record in records] == reference, name
        assert [record["score"] for record in records] == pytest.approx([r["score"] for r in runs["folder"][1]])
    shard_images = [record["image"] for record in runs["directory of shards"][1]]
    assert shard_images[:4] == [str(tmp_path / "shards" / "00000.tar" / f"{photos[i].stem}.jpg") for i in range(3)] + [
        str(tmp_path / "shards" / "00001.tar" / f"{photos[3].stem}.jpg")
    ]
    assert runs["parquet"][1][0]["image"] == str(parquet / photos[0].stem)
    assert runs["parquet directory"][1][4]["image"] == str(tmp_path / "parquets" / "part-1.parquet" / photos[4].stem)
    assert runs["files layout"][1][3]["image"] == str(files / "00001" / f"{photos[3].stem}.jpg")


def test_every_layout_keys_parquet_records_by_the_sample_key(model_dir, photos, tmp_path, capsys):
    write_webdataset(photos[:4], tmp_path / "shards", per_shard=2)
    write_files_layout(photos[:4], tmp_path / "files", per_folder=2)
    parquet = write_parquet(photos[:4], tmp_path / "photos.parquet")
    keys = {}
    for name, source in {"shards": tmp_path / "shards", "files": tmp_path / "files", "parquet": parquet}.items():
        out = tmp_path / f"{name}.out.parquet"
        run_cli(["caption", source, "--model", model_dir, "--output", out, "--format", "parquet", *ARGS], capsys)
        keys[name] = pq.read_table(out).column("key").to_pylist()
    assert keys == {name: [photo.stem for photo in photos[:4]] for name in keys}


def test_corrupt_member_and_torn_tar_give_error_records_and_the_rest_is_read(model_dir, photos, tmp_path, capsys):
    corrupt = photos[1].read_bytes()[:2000]  # a JPEG cut short
    shards = write_webdataset(photos[:6], tmp_path / "shards", per_shard=3, image_bytes={1: corrupt})
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])  # torn: the copy stopped half way through the second shard
    code, records = _captions(model_dir, tmp_path / "shards", tmp_path, capsys)
    assert code == 2
    names = [record["image"].removeprefix(f"{tmp_path}/shards/") for record in records]
    assert names == [f"0000{i // 3}.tar/{photos[i].stem}.jpg" for i in range(len(names))]
    errors = {name: record["error"] for name, record in zip(names, records, strict=True) if "error" in record}
    corrupt_name = f"00000.tar/{photos[1].stem}.jpg"
    assert errors.pop(corrupt_name) == (
        "corrupt or truncated JPEG data (OSError: image file is truncated (1 bytes not processed))"
    )
    assert len(errors) == 1
    ((torn_name, torn_error),) = errors.items()
    assert torn_name.startswith("00001.tar/") and torn_error.endswith("bytes (torn tar)")
    assert torn_error.startswith("cut short: ")
    assert sum("caption" in record for record in records) == len(records) - 2  # the rest of both shards is read


def _header_offsets(shard) -> dict[str, int]:
    """Member name -> the offset of its header block."""
    with tarfile.open(shard) as archive:
        return {member.name: member.offset for member in archive}


def test_a_tar_cut_between_members_gives_an_error_record_naming_the_shard(model_dir, photos, tmp_path, capsys):
    (shard,) = write_webdataset(photos[:6], tmp_path / "shards", per_shard=6)
    cut = _header_offsets(shard)[f"{photos[3].stem}.jpg"]
    shard.write_bytes(shard.read_bytes()[:cut])  # a copy that stopped exactly where sample 3 begins
    code, records = _captions(model_dir, shard, tmp_path, capsys)
    assert code == 2
    assert [record["image"] for record in records] == [
        *(str(shard / f"{photo.stem}.jpg") for photo in photos[:3]),
        str(shard / f"@{cut}"),
    ]
    assert all("caption" in record for record in records[:3])
    assert records[3]["error"] == f"torn tar: cut at byte {cut}, between members (no end-of-archive blocks)"


def test_a_garbage_header_mid_shard_gives_an_error_record_and_the_later_members_are_read(
    model_dir, photos, tmp_path, capsys
):
    (shard,) = write_webdataset(photos[:6], tmp_path / "shards", per_shard=6)
    offsets = _header_offsets(shard)
    bad = offsets[f"{photos[2].stem}.jpg"]
    data = bytearray(shard.read_bytes())
    data[bad : bad + 512] = bytes(range(256)) * 2  # sample 2's image header is garbage; its data follows
    shard.write_bytes(bytes(data))
    code, records = _captions(model_dir, shard, tmp_path, capsys)
    assert code == 2
    kept = [0, 1, 3, 4, 5]  # sample 2 lost its image member; its .txt and .json are read but hold no image
    assert [record["image"] for record in records] == [
        *(str(shard / f"{photos[i].stem}.jpg") for i in kept[:2]),
        str(shard / f"@{bad}"),
        *(str(shard / f"{photos[i].stem}.jpg") for i in kept[2:]),
    ]
    skipped = offsets[f"{photos[2].stem}.txt"] - bad
    assert records[2]["error"] == (
        f"damaged tar: bad header at byte {bad} (invalid header), {skipped} bytes skipped to the next member"
    )
    assert sum("caption" in record for record in records) == 5
    clean = tmp_path / "clean"
    write_webdataset([photos[i] for i in kept], clean, per_shard=6)
    _, reference = _captions(model_dir, clean, tmp_path, capsys, "clean.jpg.jsonl")
    assert [r["caption"] for r in records if "caption" in r] == [r["caption"] for r in reference]


def test_parquet_of_urls_says_how_to_download_first(model_dir, photos, tmp_path, capsys):
    urls = write_parquet(photos, tmp_path / "urls.parquet", with_images=False)
    code, _, err = run_cli(["caption", urls, "--model", model_dir], capsys)
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"captionkit: error: {urls}: column 'url' holds image URLs, not images: download them first, e.g. img2dataset "
        f"--url_list {urls} --input_format parquet --url_col url --caption_col caption --output_format webdataset "
        "--output_folder shards, then read shards/"
    )


def _metadata_parquet(path, photos) -> None:
    """img2dataset's per-shard metadata, written beside each shard by default: urls and statuses, no image bytes."""
    write_parquet(photos, path, with_images=False)


def test_img2dataset_output_folders_skip_their_metadata_parquet_files(model_dir, photos, tmp_path, capsys):
    write_webdataset(photos, tmp_path / "shards", per_shard=4)
    write_files_layout(photos, tmp_path / "files", per_folder=4)
    for folder in ("shards", "files"):
        _metadata_parquet(tmp_path / folder / "00000.parquet", photos[:4])
        _metadata_parquet(tmp_path / folder / "00001.parquet", photos[4:])
        (tmp_path / folder / "00000_stats.json").write_text("{}")
    # (That every layout gives a folder's captions is test_folder_shards_and_parquet_give_the_same_captions.)
    for name in ("shards", "files"):
        code, records = _captions(model_dir, tmp_path / name, tmp_path, capsys, f"{name}.jsonl")
        assert code == 0, name
        assert [Path(r["image"]).stem for r in records] == [photo.stem for photo in photos], name
        assert all("caption" in r and "error" not in r for r in records), name
    shards = tmp_path / "shards"
    assert container_files(shards) == [shards / "00000.tar", shards / "00001.tar"]


def test_a_tar_made_with_dot_member_names_reads_every_image(model_dir, photos, tmp_path, capsys):
    """``tar -cf s.tar -C DIR .`` names members ``./KEY.jpg``, in folders too; member paths drop the ``./``."""
    shard = tmp_path / "dot.tar"
    with tarfile.open(shard, "w") as archive:
        for index, photo in enumerate(photos[:3]):
            folder = "./sub/" if index == 2 else "./"
            archive.add(photo, f"{folder}{photo.stem}.jpg")
    code, records = _captions(model_dir, shard, tmp_path, capsys, "dot.jsonl")
    assert code == 0, records
    names = [f"{photos[0].stem}.jpg", f"{photos[1].stem}.jpg", f"sub/{photos[2].stem}.jpg"]
    assert [r["image"] for r in records] == [str(shard / name) for name in names]
    assert all("caption" in r for r in records)
    out = tmp_path / "dot.parquet"
    assert run_cli(["caption", shard, "--model", model_dir, "--output", out, *ARGS], capsys)[0] == 0
    assert pq.read_table(out).column("key").to_pylist() == [photos[0].stem, photos[1].stem, f"sub/{photos[2].stem}"]


def test_a_parquet_key_that_repeats_is_its_first_row_image_and_caption(model_dir, photos, tmp_path, capsys):
    rows = [writing.Sample("k", photos[0].read_bytes(), "first"), writing.Sample("k", b"not an image", "second")]
    parquet = writing.write_parquet([*rows, writing.Sample("z", photos[1].read_bytes(), "z")], tmp_path / "d.parquet")
    out = tmp_path / "dup.jsonl"
    code, _, err = run_cli(["caption", parquet, "--model", model_dir, "--output", out, *ARGS], capsys)
    assert code == 0, err  # the second row's bytes are not an image: reading them would be an error record
    records = read_jsonl(out)
    assert [r["image"] for r in records] == [str(parquet / "k"), str(parquet / "z")]
    repeated = "1 x Parquet row whose key repeats an earlier row's (the key names the first row's image)"
    assert f"left out: 1 sample of the shards with no image to caption ({repeated})" in err.splitlines()
    samples = list(iter_samples([parquet]))
    assert [(s.key, s.captions, s.problem is None) for s in samples] == [
        ("k", ("first",), True),
        ("k", (), False),  # the repeat: no captions, a problem the readers count
        ("z", ("z",), True),
    ]


def test_tar_samples_without_an_image_are_left_out_and_said_so(model_dir, photos, tmp_path, capsys):
    shard = tmp_path / "00000.tar"
    with tarfile.open(shard, "w") as archive:
        for name, data in [("a.jpg", photos[0].read_bytes()), ("a.txt", b"one"), ("b.txt", b"two"), ("c.json", b"{}")]:
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    out = tmp_path / "tar.jsonl"
    code, _, err = run_cli(["caption", shard, "--model", model_dir, "--output", out, *ARGS], capsys)
    assert code == 0, err
    assert [r["image"] for r in read_jsonl(out)] == [str(shard / "a.jpg")]
    lines = err.splitlines()
    assert (
        "left out: 2 samples of the shards with no image to caption (2 x tar sample without an image member)" in lines
    )
    assert "1 image: 1 captioned, 0 errors; 2 samples of the shards with no image left out" in err
    # Photos alone leave nothing out, and say nothing about it.
    code, _, err = run_cli(
        ["caption", photos[0], "--model", model_dir, "--output", tmp_path / "one.jsonl", *ARGS], capsys
    )
    assert code == 0 and "left out" not in err, err


def test_a_parquet_shard_whose_name_is_not_utf8_is_written_and_read(model_dir, photos, tmp_path, capsys):
    """pyarrow takes a path for a UTF-8 URI: a Latin-1 file name (Linux allows it) is opened by Python instead."""
    parquet = write_parquet(photos[:2], tmp_path / os.fsdecode(b"caf\xe9.parquet"))
    code, records = _captions(model_dir, parquet, tmp_path, capsys, "latin.jsonl")
    assert code == 0, records
    assert [r["image"] for r in records] == [str(parquet / photo.stem) for photo in photos[:2]]
    assert all("caption" in record for record in records)
    assert [s.key for s in iter_samples([parquet])] == [photo.stem for photo in photos[:2]]


def test_results_and_a_tar_beside_the_photos_do_not_hide_them(model_dir, photos, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in photos[:3]:
        shutil.copy(photo, folder / photo.name)
    out = folder / "captions.parquet"  # the results written among the photos
    args = ["caption", folder, "--model", model_dir, "--output", out, *ARGS]
    assert run_cli(args, capsys)[0] == 0
    first = pq.read_table(out).to_pylist()
    assert [row["image"] for row in first] == [str(folder / photo.name) for photo in photos[:3]]
    code, _, err = run_cli([*args, "--resume"], capsys)
    assert code == 0, err
    assert "nothing left to do" in err
    assert pq.read_table(out).to_pylist() == first
    write_webdataset(photos[3:5], folder, per_shard=2)  # a shard beside the photos: the folder is still photos
    code, records = _captions(model_dir, folder, tmp_path, capsys, "with_tar.jsonl")
    assert code == 0
    assert [r["image"] for r in records] == [str(folder / photo.name) for photo in photos[:3]]


def test_a_results_parquet_is_no_image_collection(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "results.parquet"
    assert run_cli(["caption", photos[0], "--model", model_dir, "--output", out, *ARGS], capsys)[0] == 0
    code, _, err = run_cli(["caption", out, "--model", model_dir], capsys)
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"captionkit: error: {out}: no image bytes column (expected one of jpg, image, img, png, webp)"
    )


class _Record(dict):
    """A result record that a weak reference can watch (a plain dict cannot be)."""


class _WatchingWriter(RecordWriter):
    """A real writer that, after each batch it writes, counts the records written so far still alive anywhere (no
    garbage collection on the way: a record must go the moment nothing refers to it)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[weakref.ref] = []
        self.alive: list[int] = []
        self.on_write = lambda: None

    def write(self, records) -> None:
        records = list(records)
        super().write(records)
        self.records += [weakref.ref(record) for record in records]
        del records
        self.alive.append(sum(ref() is not None for ref in self.records))
        self.on_write()


def test_captioning_shards_holds_one_batch_of_records_and_pixels_whatever_the_shard_count(
    model_dir, tmp_path, monkeypatch
):
    buffer = io.BytesIO()
    Image.open(real_photos(1)[0]).resize((8, 8)).save(buffer, "JPEG")
    samples = [writing.Sample(f"{i:06d}", buffer.getvalue(), f"caption {i}") for i in range(48)]
    captioner = Captioner.from_pretrained(model_dir)
    config = captioner.resolve_decoding(decoding_request(max_new_tokens=3))
    record = batch.caption_record
    monkeypatch.setattr(batch, "caption_record", lambda *args: _Record(record(*args)))
    pixels: list[weakref.ref] = []
    load = batch.load_items
    monkeypatch.setattr(batch, "load_items", lambda *a, **k: (_watch(b, pixels) for b in load(*a, **k)))

    def held(shards: int, fmt: str) -> tuple[int, int, int]:
        """(most records alive after a write, most batches of pixels alive then, records alive at the end)."""
        source = writing.write_webdataset(samples[: shards * 8], tmp_path / f"{shards}", per_shard=8)[0].parent
        writer = _WatchingWriter(tmp_path / f"{shards}.{fmt}", fmt)
        alive_pixels: list[int] = []
        writer.on_write = lambda: alive_pixels.append(sum(ref() is not None for ref in pixels))
        pixels.clear()
        caption_files(captioner, collect_images([source]), config, writer, batch_size=8)
        writer.close()
        assert len(writer.alive) == shards and len(read_records(writer.path, fmt)) == shards * 8
        gc.collect()
        return max(writer.alive), max(alive_pixels), sum(ref() is not None for ref in writer.records)

    # Every format streams (JSON too, into its staging file): the batch being written is all that is held, with 2
    # shards as with 6; nothing after.
    assert held(2, "jsonl") == held(6, "jsonl") == held(4, "parquet") == held(2, "json") == held(6, "json") == (8, 1, 0)


def _watch(image_batch, pixels: list[weakref.ref]):
    pixels.append(weakref.ref(image_batch.pixels))
    return image_batch


def test_a_caption_job_holds_a_few_input_samples_whatever_the_sample_count(model_dir, tmp_path, monkeypatch):
    """The job streams shard inputs: at each write, the per-sample input objects alive anywhere (no garbage
    collection on the way) are the few being read, with 16 samples as with 64, not one per sample."""
    buffer = io.BytesIO()
    Image.open(real_photos(1)[0]).resize((8, 8)).save(buffer, "JPEG")
    samples = [writing.Sample(f"{i:06d}", buffer.getvalue(), f"caption {i}") for i in range(64)]
    alive: list[int] = []

    class CountingWriter(RecordWriter):
        def write(self, records) -> None:
            super().write(records)
            alive.append(sum(type(o) in (InputImage, ShardSample) for o in gc.get_objects()))

    monkeypatch.setattr(run, "RecordWriter", CountingWriter)

    def most_alive(shards: int, fmt: str) -> int:
        source = writing.write_webdataset(samples[: shards * 8], tmp_path / f"{shards}", per_shard=8)[0].parent
        alive.clear()
        output = tmp_path / f"{shards}.{fmt}"
        request = decoding_request(max_new_tokens=3)
        options = CaptionJobOptions([str(source)], str(model_dir), request, batch_size=4, output=output, fmt=fmt)
        outcome = run.run_caption_job(options)
        assert outcome.summary.captioned == shards * 8 == len(read_records(output, fmt))
        assert len(alive) == shards * 2  # a write per batch of 4
        return max(alive)

    assert most_alive(2, "jsonl") == most_alive(8, "jsonl") == most_alive(8, "parquet") <= 2
