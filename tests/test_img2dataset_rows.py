"""img2dataset's Parquet output holds a row for every URL: failed downloads have a null ``jpg`` and a ``status`` saying
why. Those rows are no samples: readers leave them out and count them, and neither `data check` nor `caption` takes
them for the user's unreadable images."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _captioning import read_jsonl
from _helpers import run_cli, save_tiny_model
from _shards import real_photos
from captionkit.data.shard_set import scan_shards
from captionkit.data.sources import load_dataset
from captionkit.shards import iter_samples
from captionkit.shards.parquet import parquet_index

FAILED = "row without image bytes (img2dataset status failed_to_download)"
NOT_RESIZED = "row without image bytes (img2dataset status failed_to_resize)"
# Each row: its status; the photos fill the successful ones in order.
STATUSES = ["success", "failed_to_download", "success", "failed_to_resize", "failed_to_download", "success"]
SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("status", pa.string()),
        ("error_message", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("jpg", pa.binary()),
    ]
)


def write_img2dataset_parquet(path: Path, statuses: list[str], **options) -> list[str]:
    """A Parquet file as img2dataset's ParquetSampleWriter writes it (a failed row keeps its key, url and caption,
    with a null ``jpg``); the keys of its successful rows."""
    photos = iter(real_photos(statuses.count("success")))
    rows = []
    for number, status in enumerate(statuses):
        image = next(photos).read_bytes() if status == "success" else None
        rows.append(
            {
                "key": f"{number:09d}",
                "url": f"https://example.org/{number}.jpg",
                "caption": f"a photo number {number}",
                "status": status,
                "error_message": None if image else "HTTP Error 404: Not Found",
                "width": 32 if image else None,
                "height": 32 if image else None,
                "jpg": image,
            }
        )
    pq.write_table(pa.Table.from_pylist(rows, SCHEMA), path, row_group_size=4, **options)
    return [row["key"] for row in rows if row["jpg"] is not None]


@pytest.fixture
def shard(tmp_path) -> Path:
    path = tmp_path / "00000.parquet"
    write_img2dataset_parquet(path, STATUSES)
    return path


def test_load_dataset_drops_failed_downloads_and_counts_them_by_status(shard):
    result = load_dataset(shard)
    assert [(r.image_id, r.caption) for r in result.records] == [
        ("000000000", "a photo number 0"),
        ("000000002", "a photo number 2"),
        ("000000005", "a photo number 5"),
    ]
    assert [r.image_path for r in result.records] == [shard / "000000000", shard / "000000002", shard / "000000005"]
    assert result.dropped == {FAILED: 2, NOT_RESIZED: 1}
    assert [sample.key for sample in iter_samples([shard])] == ["000000000", "000000002", "000000005"]


def test_a_streamed_training_set_counts_them_as_the_reader_does(shard):
    scanned = scan_shards([shard])
    assert scanned.train.counts == (3,)
    assert scanned.dropped == {FAILED: 2, NOT_RESIZED: 1}


def test_failed_rows_are_found_without_reading_image_bytes(shard, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the image column was read to index the file")

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", refuse)
    assert parquet_index(shard).dropped == {FAILED: 2, NOT_RESIZED: 1}


def test_without_statistics_or_a_status_column_the_null_images_are_counted(tmp_path):
    plain = tmp_path / "plain.parquet"
    write_img2dataset_parquet(plain, STATUSES, write_statistics=False)
    assert load_dataset(plain).dropped == {FAILED: 2, NOT_RESIZED: 1}
    bare = tmp_path / "bare.parquet"
    pq.write_table(pq.read_table(plain).drop_columns(["status"]), bare, row_group_size=4)
    result = load_dataset(bare)
    assert [r.image_id for r in result.records] == ["000000000", "000000002", "000000005"]
    assert result.dropped == {"row without image bytes": 3}


def test_a_hugging_face_image_column_that_is_null_is_counted(tmp_path):
    photo = real_photos(1)[0].read_bytes()
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([{"bytes": photo, "path": "a.jpg"}, None, {"bytes": None, "path": "c.jpg"}], kind)
    path = tmp_path / "hf.parquet"
    pq.write_table(pa.table({"image": images, "text": ["one", "two", "three"]}), path)
    result = load_dataset(path)
    assert [(r.image_id, r.caption) for r in result.records] == [("000000000", "one")]
    assert result.dropped == {"row without image bytes": 2}


def test_img2dataset_txt_column_is_a_caption_column(tmp_path):
    path = tmp_path / "txt.parquet"
    photo = real_photos(1)[0].read_bytes()
    pq.write_table(pa.table({"key": ["k"], "txt": ["a dog on a sofa"], "jpg": [photo]}), path)
    assert [(r.image_id, r.caption) for r in load_dataset(path).records] == [("k", "a dog on a sofa")]


def test_data_check_passes_and_says_how_many_downloads_failed(shard, capsys):
    code, out, _ = run_cli(["data", "check", shard], capsys)
    assert code == 0, out
    lines = out.splitlines()
    assert f"dropped: 2 x {FAILED}" in lines
    assert f"dropped: 1 x {NOT_RESIZED}" in lines
    assert "unreadable image" not in out
    assert lines[-1] == "ok: no errors"


def test_a_success_row_without_bytes_is_still_an_unreadable_image(tmp_path, capsys):
    path = tmp_path / "lost.parquet"
    write_img2dataset_parquet(path, STATUSES)
    table = pq.read_table(path)
    images = table.column("jpg").to_pylist()
    images[0] = None  # img2dataset said it downloaded this one: its bytes lost since, it is damage
    pq.write_table(table.set_column(7, "jpg", pa.array(images, pa.binary())), path, row_group_size=4)
    assert load_dataset(path).dropped == {FAILED: 2, NOT_RESIZED: 1}
    code, out, _ = run_cli(["data", "check", path], capsys)
    assert code == 1
    assert f"  {path}/000000000: no image bytes in column 'jpg'" in out.splitlines()


def test_caption_records_no_error_for_failed_downloads(shard, tmp_path, capsys):
    model = save_tiny_model(tmp_path / "tiny")
    out = tmp_path / "out.jsonl"
    args = ["caption", shard, "--model", model, "--output", out, "--beams", "1", "--max-length", "5"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    records = read_jsonl(out)
    assert [r["image"] for r in records] == [str(shard / key) for key in ("000000000", "000000002", "000000005")]
    assert all("caption" in r and "error" not in r for r in records)
    # Left out, not silently: the job says which rows it did not caption, and why.
    lines = err.splitlines()
    assert f"left out: 3 samples of the shards with no image to caption (2 x {FAILED}, 1 x {NOT_RESIZED})" in lines
    assert "3 images: 3 captioned, 0 errors; 3 samples of the shards with no image left out" in err
