"""`caption --format parquet`: key, image, caption, score, n-best and error columns; resumable from its journal after
an interruption; `merge` reads and writes Parquet parts."""

from __future__ import annotations

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from _captioning import read_jsonl
from _helpers import run_cli, save_tiny_model
from _shards import real_photos, write_webdataset
from captionkit.jobs.parquet_records import journal_path

ARGS = ["--beams", "2", "--max-length", "5", "--batch-size", "2"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    photos = real_photos(5)
    root = tmp_path_factory.mktemp("shards")
    write_webdataset(photos, root, per_shard=3, image_bytes={4: b"\xff\xd8\xff broken"})
    return root, photos


def caption(args, capsys):
    return run_cli(["caption", *map(str, args), *ARGS], capsys)


def caption_parquet(args, capsys):
    return caption([*args, "--format", "parquet"], capsys)


def test_parquet_holds_the_jsonl_records_with_keys(model_dir, shards, tmp_path, capsys):
    root, photos = shards
    jsonl, parquet = tmp_path / "out.jsonl", tmp_path / "out.parquet"
    assert caption([root, "--model", model_dir, "--output", jsonl, "--n-best", "2"], capsys)[0] == 2
    assert caption_parquet([root, "--model", model_dir, "--output", parquet, "--n-best", "2"], capsys)[0] == 2
    table = pq.read_table(parquet)
    assert table.column_names == ["key", "image", "caption", "score", "captions", "error"]
    assert table.column("key").to_pylist() == [photo.stem for photo in photos]
    rows = [{k: v for k, v in row.items() if v is not None and k != "key"} for row in table.to_pylist()]
    assert rows == read_jsonl(jsonl)
    assert rows[4]["error"] == "corrupt JPEG header (Pillow cannot identify the image data)"
    assert len(rows[0]["captions"]) == 2
    assert not journal_path(parquet).exists()


def test_an_interrupted_parquet_run_resumes_from_its_journal(model_dir, shards, tmp_path, capsys):
    root = shards[0]
    full = tmp_path / "full.parquet"
    assert caption_parquet([root, "--model", model_dir, "--output", full], capsys)[0] == 2
    expected = pq.read_table(full).to_pylist()
    # What a killed run leaves: no Parquet file yet, a journal with two records and a torn third line.
    out = tmp_path / "out.parquet"
    done = [{k: v for k, v in row.items() if v is not None and k != "key"} for row in expected[:2]]
    journal_path(out).write_text("".join(json.dumps(r) + "\n" for r in done) + '{"image": "cut')
    code, _, err = caption_parquet([root, "--model", model_dir, "--output", out, "--resume"], capsys)
    assert code == 2
    assert "resuming: 2 of 5 images already done" in err
    assert pq.read_table(out).to_pylist() == expected
    assert not journal_path(out).exists()


def caption_two_parts(model_dir, root, tmp_path, capsys) -> list:
    """``out.part-0-of-2.parquet`` and ``out.part-1-of-2.parquet``: the shards captioned as two parts."""
    for index in range(2):
        args = [root, "--model", model_dir, "--output", tmp_path / "out.parquet", "--shard", f"{index}/2"]
        assert caption_parquet(args, capsys)[0] in (0, 2)
    parts = sorted(tmp_path.glob("out.part-*.parquet"))
    assert len(parts) == 2
    return parts


def test_merge_reads_and_writes_parquet_parts(model_dir, shards, tmp_path, capsys):
    root, photos = shards
    parts = caption_two_parts(model_dir, root, tmp_path, capsys)
    merged = tmp_path / "merged.parquet"
    code, _, err = run_cli(["merge", *parts, "--output", merged, "--inputs", root], capsys)
    assert code == 2, err  # one corrupt image: its error record is kept
    assert "merged 2 parts: 5 records (1 error)" in err
    assert pq.read_table(merged).column("key").to_pylist() == [photo.stem for photo in photos]
    code, _, _ = run_cli(["merge", *parts, "--output", tmp_path / "merged.jsonl"], capsys)
    assert len(read_jsonl(tmp_path / "merged.jsonl")) == 5


def test_merge_counts_an_interrupted_parquet_part_by_its_journal(model_dir, shards, tmp_path, capsys):
    root, photos = shards
    first, second = caption_two_parts(model_dir, root, tmp_path, capsys)
    whole = tmp_path / "whole.jsonl"
    assert run_cli(["merge", first, second, "--output", whole, "--inputs", root], capsys)[0] == 2
    # What a run of part 1 killed before closing leaves: no Parquet file, its records in the journal.
    rows = [{k: v for k, v in row.items() if v is not None and k != "key"} for row in pq.read_table(second).to_pylist()]
    second.unlink()
    journal_path(second).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    merged = tmp_path / "merged.jsonl"
    code, _, err = run_cli(["merge", first, journal_path(second), "--output", merged, "--inputs", root], capsys)
    assert code == 2, err  # the corrupt image's error record, as in a whole run; no part is missing
    assert "missing parts" not in err and "missing" not in err
    assert read_jsonl(merged) == read_jsonl(whole) and len(read_jsonl(whole)) == len(photos)


def test_parquet_to_stdout_is_a_usage_error(model_dir, shards, capsys):
    code, _, err = caption_parquet([shards[0], "--model", model_dir], capsys)
    assert code == 1
    assert (
        err.strip().splitlines()[-1] == "captionkit: error: --format: parquet output needs --output (a .parquet file)"
    )


def test_a_file_name_that_is_not_utf8_is_refused_in_one_line_before_parquet_holds_it(model_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    name = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes: a name Linux allows and UTF-8 cannot decode
    shutil.copy(real_photos(1)[0], photos / name)
    out = tmp_path / "out.parquet"
    code, _, err = caption_parquet([photos, "--model", model_dir, "--output", out], capsys)
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"captionkit: error: {out}: cannot hold the image '{photos}/caf\\udce9.jpg': it is not valid UTF-8, which "
        "Parquet's strings must be (write --format jsonl, csv or json instead)"
    )
    assert not out.exists() or pq.read_table(out).num_rows == 0  # nothing written under a mangled name
    # JSON lines keep the name's bytes.
    code, _, err = caption([photos, "--model", model_dir, "--output", tmp_path / "out.jsonl"], capsys)
    assert code == 0, err
    assert os.fsencode(read_jsonl(tmp_path / "out.jsonl")[0]["image"]).endswith(b"caf\xe9.jpg")


def test_a_parquet_output_whose_own_name_is_not_utf8_is_written_resumed_and_merged(model_dir, tmp_path, capsys):
    """pyarrow opened the path itself and ended in a UnicodeEncodeError traceback, the records left in the journal."""
    photos = real_photos(2)
    out = tmp_path / os.fsdecode(b"r\xe9sultats.parquet")
    code, _, err = caption_parquet([photos[0], "--model", model_dir, "--output", out], capsys)
    assert code == 0, err
    code, _, err = caption_parquet([*photos, "--model", model_dir, "--output", out, "--resume"], capsys)
    assert code == 0 and "resuming: 1 of 2 images already done" in err, err
    assert not journal_path(out).exists()
    merged = tmp_path / "merged.parquet"
    code, _, err = run_cli(["merge", out, "--output", merged], capsys)
    assert code == 0, err
    assert pq.read_table(merged).column("image").to_pylist() == [str(photo) for photo in photos]
