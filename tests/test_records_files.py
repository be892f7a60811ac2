"""Results files that ``caption --resume`` continues and ``merge`` joins, when they are not what captionkit wrote:
one line naming the file and the reason, exit 1, the file left as it was and no staging file left behind."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from _captioning import read_jsonl
from _data import SHARED_DATA, copy_coco_photos
from _helpers import run_cli, save_tiny_model
from captionkit.errors import InputError
from captionkit.jobs.outputs import RecordWriter, read_records, read_records_and_tail, repair_torn_tail

COCO = SHARED_DATA / "coco" / "val2017"
HEADER = "image,caption,score,error"
NO_MAGIC = "Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real COCO photos in a folder."""
    return copy_coco_photos(tmp_path_factory.mktemp("photos"), 2)


def write(path: Path, records: list[dict], fmt: str = "jsonl") -> Path:
    writer = RecordWriter(path, fmt)
    writer.write(records)
    writer.close()
    return path


def resume(model_dir: Path, photos: Path, out: Path, fmt: str, capsys) -> tuple[int, str]:
    args = ["caption", photos, "--model", model_dir, "--output", out, "--format", fmt, "--resume"]
    code, _, err = run_cli([*args, "--max-length", "4"], capsys)
    return code, err


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# Defect 1: a Parquet file that is not one.


def test_resuming_a_file_that_is_not_parquet_is_one_line_and_leaves_it(model_dir, photos, tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"garbage\n")
    code, err = resume(model_dir, photos, bad, "parquet", capsys)
    assert (code, err) == (1, f"captionkit: error: {bad}: not a valid parquet file ({NO_MAGIC})\n")
    assert bad.read_bytes() == b"garbage\n"
    assert names(tmp_path) == ["bad.parquet"]  # no journal, no staging file


def test_merging_a_file_that_is_not_parquet_is_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"garbage\n")
    code, _, err = run_cli(["merge", bad, "--output", tmp_path / "mm.jsonl"], capsys)
    assert (code, err) == (1, f"captionkit: error: {bad}: not a valid parquet file ({NO_MAGIC})\n")
    assert names(tmp_path) == ["bad.parquet"]


# Defect 2: a CSV file resume would append to, or merge would read, that is not captionkit's.


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('image,caption\n"unterminated\n', f"not captionkit csv results (header 'image,caption', expected '{HEADER}')"),
        ("\n\n", f"not captionkit csv results (header '', expected '{HEADER}')"),
        (f'{HEADER}\n"unterminated\n', "not valid csv (the quoted field of the row on line 2 is never closed)"),
        (f"{HEADER}\na.jpg,a dog,-1.0\n", "not valid csv (line 2 has 3 fields, the header 4)"),
    ],
)
def test_resuming_a_csv_that_is_not_captionkits_is_one_line_and_leaves_it(
    model_dir, photos, tmp_path, capsys, text, reason
):
    bad = tmp_path / "badres.csv"
    bad.write_text(text, encoding="utf-8")
    code, err = resume(model_dir, photos, bad, "csv", capsys)
    assert (code, err) == (1, f"captionkit: error: {bad}: {reason}\n")
    assert bad.read_text(encoding="utf-8") == text
    assert names(tmp_path) == ["badres.csv"]


def test_resuming_a_csv_whose_torn_row_holds_a_newline_drops_the_whole_row(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "out.csv"
    first = sorted(photos.iterdir())[0]
    write(out, [{"image": str(first), "caption": "a dog", "score": -1.0}], "csv")
    whole = out.read_bytes()
    out.write_bytes(whole + b'"/x/b.jpg","a caption\nwith a newl')  # killed inside a quoted caption
    code, err = resume(model_dir, photos, out, "csv", capsys)
    assert code == 0, err
    assert "dropped an unfinished last line" in err
    records = read_records(out, "csv")
    assert records[0] == {"image": str(first), "caption": "a dog", "score": -1.0}
    assert [record["image"] for record in records] == sorted(str(path) for path in photos.iterdir())
    assert out.read_bytes().startswith(whole) and b"/x/b.jpg" not in out.read_bytes()


def test_a_torn_csv_row_is_cut_where_it_starts_not_at_its_last_newline(tmp_path):
    path = write(tmp_path / "out.csv", [{"image": "a.jpg", "caption": "two\nlines", "score": -0.5}], "csv")
    whole = path.read_text(encoding="utf-8")
    path.write_text(whole + '"b.jpg","x\ny\nz', encoding="utf-8")
    records, torn = read_records_and_tail(path, "csv")
    assert (records, torn) == ([{"image": "a.jpg", "caption": "two\nlines", "score": -0.5}], '"b.jpg","x\ny\nz')
    assert repair_torn_tail(path, "csv") == torn
    assert path.read_text(encoding="utf-8") == whole


def test_a_scored_csv_row_with_an_empty_caption_reads_back_captioned(tmp_path):
    path = write(tmp_path / "out.csv", [{"image": "a.jpg", "caption": "", "score": -2.0}], "csv")
    assert read_records(path, "csv") == [{"image": "a.jpg", "caption": "", "score": -2.0}]


UNCLOSED = "not valid csv (the quoted field of the row on line 2 is never closed)"
NOTHING = "has neither a caption nor an error"


@pytest.mark.parametrize(
    ("name", "text", "reason"),
    [
        ("badres.csv", 'image,caption\n"unterminated\n', UNCLOSED),
        ("nocap.csv", "image,caption\na.jpg,\n", f"line 2 ('a.jpg') {NOTHING}"),
        ("nocap.jsonl", '{"image": "a.jpg", "caption": "x"}\n\n{"image": "b.jpg"}\n', f"line 3 ('b.jpg') {NOTHING}"),
        ("noimage.jsonl", '{"caption": "x"}\n', "line 1 has no image"),
        ("nocap.json", '[{"image": "a.jpg", "error": "empty"}, {"image": "b.jpg"}]', f"record 2 ('b.jpg') {NOTHING}"),
    ],
)
def test_merging_a_part_without_results_is_one_line_naming_the_record(tmp_path, capsys, name, text, reason):
    part = tmp_path / name
    part.write_text(text, encoding="utf-8")
    code, _, err = run_cli(["merge", part, "--output", tmp_path / "mm.jsonl"], capsys)
    assert (code, err) == (1, f"captionkit: error: {part}: {reason}\n")
    assert names(tmp_path) == [name]


def test_merging_a_parquet_row_without_results_names_the_row(tmp_path, capsys):
    part = write(tmp_path / "p.parquet", [{"image": "a.jpg", "caption": "x"}, {"image": "b.jpg"}], "parquet")
    code, _, err = run_cli(["merge", part, "--output", tmp_path / "mm.jsonl"], capsys)
    assert (code, err) == (1, f"captionkit: error: {part}: row 2 ('b.jpg') has neither a caption nor an error\n")


# Defect 3: an --output that cannot be written, and failures while writing.


def test_an_output_that_is_a_directory_or_under_a_file_is_refused_before_merging(tmp_path, capsys):
    part = write(tmp_path / "p.jsonl", [{"image": "a.jpg", "caption": "x"}])
    (tmp_path / "dir.jpg").mkdir()
    (tmp_path / "afile").write_text("x")
    for output, reason in [
        (tmp_path / "dir.jpg", f"{tmp_path / 'dir.jpg'} is a directory"),
        (tmp_path / "afile" / "m.jsonl", f"{tmp_path / 'afile' / 'm.jsonl'}: {tmp_path / 'afile'} is not a directory"),
    ]:
        code, _, err = run_cli(["merge", part, "--output", output], capsys)
        assert (code, err) == (1, f"captionkit: error: --output: {reason}\n")
    assert names(tmp_path) == ["afile", "dir.jpg", "p.jsonl"]
    assert names(tmp_path / "dir.jpg") == [] and (tmp_path / "afile").read_text() == "x"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json", "parquet"])
def test_a_write_that_fails_midway_leaves_the_old_output_and_no_staging_file(tmp_path, capsys, monkeypatch, fmt):
    part = write(tmp_path / "p.jsonl", [{"image": f"{n}.jpg", "caption": "x"} for n in range(3)])
    out = write(tmp_path / f"all.{fmt}", [{"image": "old.jpg", "caption": "old"}], fmt)
    before = out.read_bytes()
    real_write = RecordWriter.write

    def full_disk(self: RecordWriter, records) -> None:
        real_write(self, [next(iter(records))])  # some records reach the staging file first
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RecordWriter, "write", full_disk)
    code, _, err = run_cli(["merge", part, "--output", out], capsys)
    assert (code, err) == (1, f"captionkit: error: --output: {out}: cannot write (No space left on device)\n")
    assert out.read_bytes() == before
    assert names(tmp_path) == sorted([part.name, out.name])


def test_a_csv_part_with_an_empty_caption_merges_as_captioned(tmp_path, capsys):
    part = write(tmp_path / "p.csv", [{"image": "a.jpg", "caption": "", "score": -1.0}], "csv")
    code, _, err = run_cli(["merge", part, "--output", tmp_path / "m.jsonl"], capsys)
    assert code == 0, err
    assert read_jsonl(tmp_path / "m.jsonl") == [{"image": "a.jpg", "caption": "", "score": -1.0}]


def test_reading_a_part_with_an_unclosed_quote_is_an_input_error(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(f'{HEADER}\na.jpg,"open,-1,\n', encoding="utf-8")
    with pytest.raises(InputError, match="line 2 is never closed"):
        read_records(path, "csv")
