import csv
import io
import json
from pathlib import Path

import pytest

from _helpers import run_cli
from captionkit.errors import InputError
from captionkit.files import url_of
from captionkit.jobs.inputs import collect_images, collect_inputs, iter_inputs
from captionkit.jobs.outputs import RecordWriter, read_records, read_records_and_tail, repair_torn_tail
from captionkit.shards import writing


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
    assert caught.value.reason == "no such file or directory"


def test_a_quoted_glob_says_how_to_name_many_files(tmp_path):
    (tmp_path / "shards").mkdir()
    with pytest.raises(InputError) as caught:
        collect_images([f"{tmp_path}/shards/*.tar"])
    assert caught.value.source == f"{tmp_path}/shards/*.tar"
    assert caught.value.reason == (
        "no such file or directory (a glob is not expanded here: leave it unquoted for the shell, or name shards by a "
        "brace pattern, shards/{00000..00099}.tar, or by their folder)"
    )


def test_a_url_is_named_as_given_and_said_to_be_a_url(tmp_path, monkeypatch):
    """It was "https:/example.com/cat.jpg: no such file or directory": Path() had mangled it, and nothing said that
    URLs are not fetched."""
    reason = "a URL: captionkit opens local files only (download the image first)"
    for url in ("https://example.com/cat.jpg", "s3://bucket/shards/{000..009}.tar"):
        with pytest.raises(InputError) as caught:
            collect_images([url])
        assert str(caught.value) == f"{url}: {reason}"
    # A folder that happens to be called "https:" is a path like any other.
    monkeypatch.chdir(tmp_path)
    local = touch(tmp_path / "https:" / "example.com" / "cat.jpg")
    assert [p.resolve() for p in collect_images(["https://example.com/cat.jpg"])] == [local]


def test_a_url_given_as_data_or_as_scores_file_is_named_as_written(tmp_path, capsys, monkeypatch):
    """`evaluate --data https://...` said "unknown format 'https'", `score --cands https://...` "https:/...: no such
    file" (Path() had mangled it)."""
    url = "https://example.com/coco/captions_val2017.json"
    reason = "a URL: captionkit reads datasets from local files only (download it first)"
    for args in (["data", "check", url], ["evaluate", "--model", tmp_path, "--data", url]):
        code, out, err = run_cli(args, capsys)
        assert (code, out, err) == (1, "", f"captionkit: error: {url}: {reason}\n")
    refs = tmp_path / "refs.json"
    refs.write_text('{"a": ["a dog"]}')
    for flag, args in (("--cands", ["--refs", refs, "--cands", url]), ("--refs", ["--refs", url, "--cands", refs])):
        code, out, err = run_cli(["score", *args], capsys)
        why = "a URL: captionkit reads local files only (download it first)"
        assert (code, out, err) == (1, "", f"captionkit: error: {flag}: {url}: {why}\n")
    monkeypatch.chdir(tmp_path)  # a folder called "https:" is a path like any other
    local = tmp_path / "https:" / "example.com" / "c.json"
    local.parent.mkdir(parents=True)
    local.write_text("{}")
    assert url_of(Path("https://example.com/c.json")) is None
    assert url_of(Path("https://example.com/d.json")) == "https://example.com/d.json"
    assert url_of(Path("data/https:/x")) is None


def test_a_url_in_an_image_list_is_named_with_its_line(tmp_path):
    """A list's URL became a missing file relative to the list (lists/https:/example.com/cat.jpg), an error record
    per URL at caption time; it is refused before anything runs, naming the list, the line and the URL."""
    touch(tmp_path / "a.jpg")
    listing = tmp_path / "list.txt"
    listing.write_text("# photos\na.jpg\nhttps://example.com/cat.jpg\n\nhttp://example.com/dog.png\n", encoding="utf-8")
    with pytest.raises(InputError) as caught:
        collect_images([listing])
    reason = "a URL: captionkit opens local files only (download the image first)"
    assert str(caught.value) == f"{listing}: line 3 (and 1 more line): https://example.com/cat.jpg: {reason}"


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
    with pytest.raises(InputError, match="not valid jsonl"):
        read_records(bad, "jsonl")


def test_inputs_carry_keys_relative_to_where_they_came_from(tmp_path):
    nested = touch(tmp_path / "photos" / "a" / "b.jpg")
    explicit = touch(tmp_path / "one.png")
    listing = tmp_path / "lists" / "list.txt"
    touch(tmp_path / "lists" / "x" / "c.gif")
    listing.write_text("x/c.gif\n", encoding="utf-8")
    found = collect_inputs([tmp_path / "photos", explicit, listing])
    assert [item.key for item in found] == ["a/b.jpg", explicit.as_posix(), "x/c.gif"]
    assert found[0].path == nested
    assert found[2].path == tmp_path / "lists" / "x" / "c.gif"


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_torn_last_line_is_dropped_on_read_and_repaired_before_appending(tmp_path, fmt):
    path = tmp_path / f"out.{fmt}"
    writer = RecordWriter(path, fmt)
    writer.write(RECORDS)
    writer.close()
    whole = path.read_text()
    path.write_text(whole + ('{"image": "c.jpg", "capt' if fmt == "jsonl" else "c.jpg,a torn capt"))
    records, torn = read_records_and_tail(path, fmt)
    assert [r["image"] for r in records] == ["a.jpg", "b.jpg"]
    assert torn.startswith('{"image": "c.jpg"' if fmt == "jsonl" else "c.jpg")
    assert repair_torn_tail(path, fmt) == torn
    assert path.read_text() == whole
    if fmt == "csv":
        assert records[0]["score"] == -0.5  # CSV scores come back as numbers


def test_complete_jsonl_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "x", "score": -1.0}\n{"image": "b.jpg", "error": "empty file"}')
    assert [r["image"] for r in read_records(path, "jsonl")] == ["a.jpg", "b.jpg"]
    assert repair_torn_tail(path, "jsonl") == ""
    assert path.read_text().endswith("}\n")
    assert len(read_records(path, "jsonl")) == 2


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_file_names_that_are_not_utf8_round_trip(tmp_path, fmt):
    name = b"caf\xe9.jpg".decode("utf-8", "surrogateescape")  # as os.listdir gives a Latin-1 name
    path = tmp_path / f"out.{fmt}"
    writer = RecordWriter(path, fmt)
    writer.write([{"image": name, "caption": "a café", "score": -1.0}, {"image": "ü.jpg", "error": "empty file"}])
    writer.close()
    assert [r["image"] for r in read_records(path, fmt)] == [name, "ü.jpg"]


def test_a_raw_line_separator_in_a_caption_stays_in_its_record(tmp_path):
    path = tmp_path / "out.jsonl"
    record = {"image": "a.jpg", "caption": "a sign that says caf\u00e9\u2028open"}
    writer = RecordWriter(path, "jsonl")
    writer.write([record])
    writer.close()
    assert "\u2028" in path.read_text(encoding="utf-8")  # JSON lines keep it unescaped
    assert read_records(path, "jsonl") == [record]


def test_a_hostile_results_file_is_one_error_naming_it_and_a_minus_infinity_score_reads_back(tmp_path):
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"image": "a.jpg", "caption": "a dog"}\n' + "[" * 1500 + "]" * 1500 + "\n")
    with pytest.raises(InputError) as error:
        read_records(deep, "jsonl")
    assert str(error.value) == f"{deep}: not valid jsonl (invalid JSON: nested more than 64 levels deep)"
    torn = tmp_path / "torn.jsonl"
    torn.write_text('{"image": "a.jpg", "score": -Infinity}\n' + "[" * 1500)  # killed mid-line
    assert read_records_and_tail(torn, "jsonl") == ([{"image": "a.jpg", "score": float("-inf")}], "[" * 1500)


def test_inputs_are_read_lazily_and_a_member_path_met_twice_keeps_its_first_key(tmp_path):
    samples = [writing.Sample(f"{i:03d}", b"not an image", f"caption {i}") for i in range(4)]
    first, second = writing.write_webdataset(samples, tmp_path / "shards", per_shard=2)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{first}/001.jpg\n{second}/002.jpg\n", encoding="utf-8")
    # A member a list names after its shard was read is not given again; one named before its shard keeps its key.
    found = collect_inputs([first, listing, second])
    assert [(item.path.relative_to(tmp_path).as_posix(), item.key) for item in found] == [
        ("shards/00000.tar/000.jpg", "000"),
        ("shards/00000.tar/001.jpg", "001"),
        ("shards/00001.tar/002.jpg", f"{second}/002.jpg"),
        ("shards/00001.tar/003.jpg", "003"),
    ]
    assert collect_inputs([tmp_path / "shards", first]) == collect_inputs([tmp_path / "shards"])
    # A stream: the first shard's samples come before the second shard is even opened.
    second.write_bytes(b"garbage" * 100)
    stream = iter_inputs([f"{tmp_path}/shards/{{00000..00001}}.tar"])
    assert [next(stream).key, next(stream).key] == ["000", "001"]
    with pytest.raises(InputError, match="not a readable tar file"):
        next(stream)


@pytest.mark.parametrize(
    ("content", "first"),
    [(b"\xff\xd8\xff\xe0 a JPEG\n with a newline", "b'\\xff'"), (b"photos/a.jpg\nphotos/b.jpg", "b'p'")],
)
def test_resuming_into_a_file_that_is_not_jsonl_results_refuses_it_untouched(tmp_path, content, first):
    # Its last line would otherwise be dropped as torn before the records failed to read: an image lost its end.
    path = tmp_path / "out.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        repair_torn_tail(path, "jsonl")
    assert str(caught.value) == f"{path}: not captionkit jsonl results (it starts with {first}, not a JSON object)"
    assert path.read_bytes() == content


class _FullDisk(io.StringIO):
    """A file on a disk that fills up: what is written never reaches it."""

    def flush(self) -> None:
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "json"])
def test_a_write_that_fails_is_one_line_naming_the_output_not_a_traceback(tmp_path, monkeypatch, fmt):
    out = tmp_path / f"out.{fmt}"
    monkeypatch.setattr("captionkit.jobs.outputs.Path.open", lambda *args, **kwargs: _FullDisk())
    monkeypatch.setattr("captionkit.jobs.json_array.atomic_writer", lambda *args, **kwargs: _FullDisk())
    writer = RecordWriter(out, fmt)
    with pytest.raises(InputError) as raised:
        writer.write([{"image": "a.jpg", "caption": "a dog", "score": -0.5}])
        writer.close()
    assert str(raised.value) == f"{out}: cannot write (No space left on device)"


def test_an_output_that_cannot_be_created_is_one_line_naming_it(tmp_path):
    (tmp_path / "taken").write_text("a file, where the output's folder would go")
    out = tmp_path / "taken" / "out.jsonl"
    with pytest.raises(InputError) as raised:
        RecordWriter(out, "jsonl")
    assert str(raised.value) == f"{out}: cannot write (File exists)"
