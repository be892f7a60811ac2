"""``captionkit merge``: one record per image, duplicates dropped, missing inputs and parts reported with exit 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from _captioning import read_jsonl
from _helpers import run_cli
from captionkit.jobs.merge import merge_parts
from captionkit.jobs.outputs import RecordWriter


def caption(image: str, text: str = "a dog", score: float = -1.0) -> dict:
    return {"image": image, "caption": text, "score": score}


def failed(image: str) -> dict:
    return {"image": image, "error": "empty file"}


def write(path: Path, records: list[dict], fmt: str = "jsonl") -> Path:
    writer = RecordWriter(path, fmt)
    writer.write(records)
    writer.close()
    return path


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    for name in ("a.jpg", "b.jpg", "c.jpg", "sub/d.png"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    return root


def test_complete_parts_merge_in_input_order_and_exit_0(tmp_path, photos, capsys):
    a, b, c, d = (str(photos / name) for name in ("a.jpg", "b.jpg", "c.jpg", "sub/d.png"))
    parts = [
        write(tmp_path / "out.part-0-of-2.jsonl", [caption(c), caption(a, "a cat")]),
        write(tmp_path / "out.part-1-of-2.jsonl", [caption(d), caption(b)]),
    ]
    code, _, err = run_cli(["merge", *parts, "--output", tmp_path / "all.jsonl", "--inputs", photos], capsys)
    assert code == 0
    assert "merged 2 parts: 4 records (0 errors)" in err
    assert [r["image"] for r in read_jsonl(tmp_path / "all.jsonl")] == [a, b, c, d]
    assert read_jsonl(tmp_path / "all.jsonl")[0]["caption"] == "a cat"


def test_duplicates_are_dropped_and_reported_keeping_a_caption_over_an_error(tmp_path, capsys):
    parts = [
        write(tmp_path / "p.part-0-of-2.jsonl", [failed("x.jpg"), caption("y.jpg", "first")]),
        write(tmp_path / "p.part-1-of-2.jsonl", [caption("x.jpg", "second try"), caption("y.jpg", "again")]),
    ]
    code, _, err = run_cli(["merge", *parts, "--output", tmp_path / "all.jsonl"], capsys)
    assert code == 0
    assert "2 images had more than one record, one kept: x.jpg, y.jpg" in err
    merged = read_jsonl(tmp_path / "all.jsonl")
    assert merged == [caption("x.jpg", "second try"), caption("y.jpg", "first")]  # sorted by image


def test_missing_inputs_are_named_and_exit_2(tmp_path, photos, capsys):
    a = str(photos / "a.jpg")
    part = write(tmp_path / "only.jsonl", [caption(a), caption("/elsewhere/z.jpg")])
    code, _, err = run_cli(["merge", part, "--output", tmp_path / "all.jsonl", "--inputs", photos], capsys)
    assert code == 2
    assert f"3 inputs have no record: {photos / 'b.jpg'}, {photos / 'c.jpg'}, {photos / 'sub/d.png'}" in err
    assert "1 record is not among --inputs (kept): /elsewhere/z.jpg" in err
    assert [r["image"] for r in read_jsonl(tmp_path / "all.jsonl")] == [a, "/elsewhere/z.jpg"]


def test_missing_parts_and_mixed_shard_counts_exit_2(tmp_path, capsys):
    first = write(tmp_path / "out.part-0-of-3.jsonl", [caption("a.jpg")])
    third = write(tmp_path / "out.part-2-of-3.jsonl", [caption("c.jpg")])
    code, _, err = run_cli(["merge", first, third, "--output", tmp_path / "all.jsonl"], capsys)
    assert code == 2 and "missing parts: 1/3" in err
    other = write(tmp_path / "out.part-1-of-2.jsonl", [caption("b.jpg")])
    code, _, err = run_cli(["merge", first, third, other, "--output", tmp_path / "all.jsonl"], capsys)
    assert code == 2
    assert "different shard counts: 2, 3" in err
    assert "missing parts: 0/2, 1/3" in err


def test_error_records_are_kept_and_exit_2(tmp_path, capsys):
    part = write(tmp_path / "out.jsonl", [caption("a.jpg"), failed("b.jpg")])
    code, _, err = run_cli(["merge", part, "--output", tmp_path / "all.jsonl"], capsys)
    assert code == 2 and "merged 1 part: 2 records (1 error) -> " in err
    assert read_jsonl(tmp_path / "all.jsonl")[1] == failed("b.jpg")


def test_torn_last_line_of_an_interrupted_part_is_left_out_and_reported(tmp_path, capsys):
    part = write(tmp_path / "out.part-0-of-1.jsonl", [caption("a.jpg")])
    part.write_text(part.read_text() + '{"image": "b.jpg", "capt')
    code, _, err = run_cli(["merge", part, "--output", tmp_path / "all.jsonl"], capsys)
    assert code == 2  # b.jpg is lost from the merged file: not complete, even without --inputs to tell
    assert "left out an unfinished last line" in err and str(part) in err
    assert read_jsonl(tmp_path / "all.jsonl") == [caption("a.jpg")]


@pytest.mark.parametrize(("name", "text"), [("p.jsonl", '{"image": "a.jpg"}\n3\n'), ("p.json", '{"image": "a"}')])
def test_a_part_that_is_not_records_is_one_line_exit_1(tmp_path, capsys, name, text):
    part = tmp_path / name
    part.write_text(text)
    code, _, err = run_cli(["merge", part, "--output", tmp_path / "all.jsonl"], capsys)
    assert code == 1 and err.count("\n") == 1 and str(part) in err


@pytest.mark.parametrize("out_name", ["all.json", "all.csv", "all.jsonl"])
def test_formats_mix_csv_parts_keep_numeric_scores(tmp_path, capsys, out_name):
    parts = [
        write(tmp_path / "out.part-0-of-2.csv", [caption("a.jpg", "a dog, running", -0.25), failed("c.jpg")], "csv"),
        write(tmp_path / "out.part-1-of-2.json", [caption("b.jpg")], "json"),
    ]
    out = tmp_path / out_name
    code, _, _ = run_cli(["merge", *parts, "--output", out], capsys)
    assert code == 2  # c.jpg's error
    with merge_parts([out], None) as result:
        merged = list(result.records())
    assert merged == [caption("a.jpg", "a dog, running", -0.25), caption("b.jpg"), failed("c.jpg")]
    if out_name.endswith(".json"):
        assert isinstance(json.loads(out.read_text()), list)


def test_usage_errors_exit_1(tmp_path, capsys):
    part = write(tmp_path / "out.jsonl", [caption("a.jpg")])
    code, _, err = run_cli(["merge", part, "--output", part], capsys)
    assert code == 1 and "is also --output" in err
    code, _, err = run_cli(["merge", tmp_path / "nope.jsonl", "--output", tmp_path / "all.jsonl"], capsys)
    assert code == 1 and "nope.jsonl: no such file" in err
    (tmp_path / "bad.jsonl").write_text("{not json}\n")
    code, _, err = run_cli(["merge", tmp_path / "bad.jsonl", "--output", tmp_path / "all.jsonl"], capsys)
    assert code == 1 and "bad.jsonl: not valid jsonl" in err
    code, _, err = run_cli(["merge", part, "--output", tmp_path / "all.xml", "--format", "xml"], capsys)
    assert code == 1 and "unknown format 'xml'" in err


def test_a_name_parquet_cannot_hold_is_one_line_naming_the_output_and_leaves_nothing(tmp_path, capsys):
    latin1 = os.fsdecode(b"/photos/caf\xe9.jpg")  # a file name that is not UTF-8, as Linux allows
    part = write(tmp_path / "r.part-0-of-1.jsonl", [caption("/photos/a.jpg"), caption(latin1)])
    out = tmp_path / "all.parquet"
    code, _, err = run_cli(["merge", part, "--output", out], capsys)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"captionkit: error: {out}: cannot hold the image '/photos/caf\\udce9.jpg'")
    assert sorted(p.name for p in tmp_path.iterdir()) == [part.name]  # no output, staging file or journal left
    code, _, err = run_cli(["merge", part, "--output", tmp_path / "all.jsonl"], capsys)
    assert code == 0, err
    assert [os.fsencode(r["image"]) for r in read_jsonl(tmp_path / "all.jsonl")][1] == b"/photos/caf\xe9.jpg"


@pytest.mark.parametrize(("name", "written"), [("out.part-0-of-1.json", "[]"), ("out.part-0-of-1.csv", "a header row")])
def test_a_blank_json_or_csv_part_is_cut_off_exit_1(tmp_path, capsys, name, written):
    """A caption run writes ``[]`` or a header even for a shard with no images: 0 bytes is a part that lost them."""
    part = tmp_path / name
    part.write_bytes(b"")
    code, _, err = run_cli(["merge", part, "--output", tmp_path / "all.jsonl"], capsys)
    assert (code, err.count("\n")) == (1, 1)
    fmt = name.rsplit(".", 1)[1]
    assert err == (
        f"captionkit: error: {part}: empty file: caption writes {written} even for no images, so this {fmt} part is "
        "damaged or its run was cut off: caption its shard again\n"
    )
    assert not (tmp_path / "all.jsonl").exists()
    empty = write(tmp_path / "out.part-0-of-1.jsonl", [])  # what an empty shard's JSON lines part is
    code, _, err = run_cli(["merge", empty, "--output", tmp_path / "all.jsonl"], capsys)
    assert code == 0 and "merged 1 part: 0 records (0 errors)" in err


def test_a_part_named_twice_is_read_once_and_counted_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = write(tmp_path / "out.part-0-of-2.jsonl", [caption("a.jpg")])
    second = write(tmp_path / "out.part-1-of-2.jsonl", [caption("b.jpg")])
    args = ["merge", first, second, "./out.part-0-of-2.jsonl", first, "--output", "all.jsonl"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert "merged 2 parts: 2 records (0 errors)" in err and "more than one record" not in err
    assert read_jsonl(tmp_path / "all.jsonl") == [caption("a.jpg"), caption("b.jpg")]


def test_a_directory_given_as_a_part_is_named_as_one(tmp_path, capsys):
    (tmp_path / "parts").mkdir()
    code, _, err = run_cli(["merge", tmp_path / "parts", "--output", tmp_path / "all.jsonl"], capsys)
    assert code == 1
    assert err == f"captionkit: error: {tmp_path / 'parts'}: is a directory, not a part file\n"


def test_output_may_not_be_the_parquet_file_or_journal_of_a_part(tmp_path, capsys):
    """Writing the merged result over an interrupted part's Parquet file (or as a part's journal) would leave the
    part's journal (or the part) to be read again, with every other part's records, as that part."""
    journal = write(tmp_path / "out.part-0-of-2.parquet.partial.jsonl", [caption("a.jpg")])
    other = write(tmp_path / "out.part-1-of-2.parquet", [caption("b.jpg")], "parquet")
    for output in (tmp_path / "out.part-0-of-2.parquet", tmp_path / "out.part-1-of-2.parquet.partial.jsonl"):
        code, _, err = run_cli(["merge", journal, other, "--output", output], capsys)
        assert code == 1 and err.count("\n") == 1 and "is also --output" in err
        assert not output.exists()
    code, _, err = run_cli(["merge", journal, other, "--output", tmp_path / "all.parquet"], capsys)
    assert code == 0, err


def test_inputs_spelled_otherwise_than_the_run_gave_them_get_a_hint(tmp_path, photos, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    relative = [os.path.relpath(photos / name, tmp_path) for name in ("a.jpg", "b.jpg", "c.jpg", "sub/d.png")]
    part = write(tmp_path / "out.part-0-of-1.jsonl", [caption(image) for image in relative])
    code, _, err = run_cli(["merge", part, "--output", "all.jsonl", "--inputs", photos], capsys)
    assert code == 2
    assert "4 inputs have no record" in err and "4 records are not among --inputs" in err
    assert "no record is of an image among --inputs: images are matched by their path as written" in err
    code, _, err = run_cli(["merge", part, "--output", "all.jsonl", "--inputs", os.path.relpath(photos)], capsys)
    assert code == 0 and "matched by their path" not in err
    code, _, err = run_cli(["merge", part, "--output", "all.jsonl", "--inputs", photos / "a.jpg"], capsys)
    assert code == 2 and "matched by their path" in err  # the one input is missing, and no record is of it


def test_a_torn_line_of_a_parquet_parts_journal_names_the_journal(tmp_path, capsys):
    journal = write(tmp_path / "out.part-0-of-1.parquet.partial.jsonl", [caption("a.jpg")])
    journal.write_text(journal.read_text() + '{"image": "b.jpg", "capt')
    code, _, err = run_cli(["merge", journal, "--output", tmp_path / "all.jsonl"], capsys)
    assert code == 2
    assert f"left out an unfinished last line (interrupted run) in {journal}\n" in err
    assert read_jsonl(tmp_path / "all.jsonl") == [caption("a.jpg")]
