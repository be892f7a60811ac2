import csv
import io
import json

import pytest

from captionkit.errors import InputError
from captionkit.inputs import collect_images
from captionkit.outputs import RecordWriter, read_records


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_directories_recurse_by_extension_and_lists_resolve_relative(tmp_path):
    a = touch(tmp_path / "photos" / "b.JPG")
    b = touch(tmp_path / "photos" / "sub" / "a.png")
    touch(tmp_path / "photos" / "notes.md")
    explicit = touch(tmp_path / "odd.name")
    listing = tmp_path / "list.txt"
    listing.write_text("# my images\nphotos/b.JPG\n\nodd.name\n", encoding="utf-8")
    found = collect_images([tmp_path / "photos", explicit, listing])
    assert found == [a, b, explicit]  # sorted walk, then explicit file; duplicates from the list dropped


def test_missing_input_is_named(tmp_path):
    with pytest.raises(InputError) as caught:
        collect_images([tmp_path / "nope"])
    assert caught.value.source == str(tmp_path / "nope")


def test_non_utf8_list(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"\xff\xfe\x00a")
    with pytest.raises(InputError, match="not UTF-8"):
        collect_images([listing])


RECORDS = [
    {"image": "a.jpg", "caption": "a dog, running", "score": -0.5},
    {"image": "b.jpg", "error": "corrupt or truncated image data"},
]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_writer_round_trips_and_appends_for_resume(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    writer = RecordWriter(path, fmt)
    writer.write(RECORDS[:1])
    writer.close()
    existing = read_records(path, fmt)
    writer = RecordWriter(path, fmt, existing)
    writer.write(RECORDS[1:])
    writer.close()
    back = read_records(path, fmt)
    assert [r["image"] for r in back] == ["a.jpg", "b.jpg"]
    assert back[0]["caption"] == "a dog, running"
    assert back[1]["error"] == "corrupt or truncated image data"
    assert "caption" not in back[1]
    if fmt == "csv":
        rows = list(csv.reader(io.StringIO(path.read_text())))
        assert rows[0] == ["image", "caption", "score", "error"]
        assert len(rows) == 3
    if fmt == "json":
        assert isinstance(json.loads(path.read_text()), list)


def test_unknown_format_and_corrupt_resume_file(tmp_path):
    with pytest.raises(InputError, match="unknown format"):
        RecordWriter(tmp_path / "x", "xml")
    bad = tmp_path / "out.jsonl"
    bad.write_text("{broken\n")
    with pytest.raises(InputError, match="cannot resume"):
        read_records(bad, "jsonl")
