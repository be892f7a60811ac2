"""Results files are written and read as streams: the memory a reader or writer holds does not grow with the
number of records (measured with tracemalloc at N and 4N records, not timed)."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Callable, Iterator

import pytest

from captionkit.jobs import json_array, outputs, parquet_records
from captionkit.jobs.outputs import RecordWriter, iter_records, read_records

N = 500


def records(count: int) -> Iterator[dict]:
    for index in range(count):
        if index % 7 == 3:
            yield {"image": f"/photos/{index:06d}.jpg", "error": "corrupt or truncated image data"}
        else:
            yield {"image": f"/photos/{index:06d}.jpg", "caption": f"a dog number {index}", "score": -index / 8}


def peak_bytes(work: Callable[[], None]) -> int:
    """The most memory ``work`` held at once (tracemalloc), beyond what was held when it started."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        work()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks and Parquet row groups far smaller than the files, so that holding the whole file would show."""
    monkeypatch.setattr(json_array, "CHUNK", 4096)
    monkeypatch.setattr(outputs, "TAIL_CHUNK", 4096)
    monkeypatch.setattr(parquet_records, "ROWS_PER_GROUP", 100)


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "parquet"])
def test_writing_holds_no_record_whatever_the_count(tmp_path, fmt):
    def write(count: int) -> Callable[[], None]:
        def work() -> None:
            writer = RecordWriter(tmp_path / f"{count}.{fmt}", fmt)
            for record in records(count):
                writer.write([record])
            writer.close()

        return work

    write(1)()  # once unmeasured: the first run imports the format's libraries (pyarrow: tens of MB)
    few, many = peak_bytes(write(N)), peak_bytes(write(4 * N))
    assert read_records(tmp_path / f"{4 * N}.{fmt}", fmt) == list(records(4 * N))
    # Under 10 bytes per extra record (allocator noise, when other tests ran first); holding them costs ~300 B each.
    assert many - few < 10 * 3 * N, (few, many)


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_reading_holds_one_record_at_a_time_whatever_the_count(tmp_path, fmt):
    def read(count: int) -> Callable[[], None]:
        path = tmp_path / f"{count}.{fmt}"
        writer = RecordWriter(path, fmt)
        writer.write(records(count))
        writer.close()

        def work() -> None:
            found, torn = iter_records(path, fmt)
            assert sum(1 for _ in found) == count and torn == ""

        return work

    read(1)()  # once unmeasured, as above
    few, many = peak_bytes(read(N)), peak_bytes(read(4 * N))
    assert many - few < 10 * 3 * N, (few, many)  # reading them all at once cost ~500-750 B each


def test_a_json_array_is_written_as_json_dumps_writes_it(tmp_path):
    path = tmp_path / "out.json"
    some = [*records(3), {"image": "b.jpg", "captions": [{"caption": "ü", "score": -1.0}], "caption": "ü"}]
    for written in (some, []):
        writer = RecordWriter(path, "json")
        writer.write(written)
        writer.close()
        assert path.read_text(encoding="utf-8") == json.dumps(written, ensure_ascii=False, indent=2) + "\n"
        assert read_records(path, "json") == written
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"image": "a.jpg"}', "not a results file (expected a JSON list of records)"),
        ('[{"image": "a.jpg"} {"image": "b.jpg"}]', "not valid json (expected ',' or ']' after a record)"),
        ('[{"image": "a.jpg"}] x', "not valid json (extra data after the list)"),
        ('[{"image": "a.jp', "not valid json (invalid JSON: Unterminated string starting at)"),
        ("[" + "[" * 100 + "]" * 100 + "]", "not valid json (invalid JSON: nested more than 64 levels deep)"),
        ('[{"image": "a.jpg"}, 3]', "record 2 is not a JSON object"),
    ],
)
def test_a_bad_json_results_file_is_one_error_naming_it(tmp_path, text, reason):
    path = tmp_path / "out.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(outputs.InputError) as error:
        read_records(path, "json")
    assert str(error.value) == f"{path}: {reason}"
