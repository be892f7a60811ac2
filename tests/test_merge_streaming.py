"""`merge` keeps its records in an index on disk: the memory it holds does not grow with the number of records
(measured with tracemalloc at N and 4N records, not timed), and its findings name a few images and count the rest."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

from captionkit.jobs.merge import merge_parts, some
from captionkit.jobs.outputs import RecordWriter, read_records

N = 2000


def records(start: int, stop: int) -> Iterator[dict]:
    for index in range(start, stop):
        image = f"/photos/{index:06d}.jpg"
        yield {"image": image, "error": "empty file"} if index % 9 == 0 else {"image": image, "caption": f"dog {index}"}


def test_merging_holds_a_few_records_whatever_the_count(tmp_path):
    def peak(count: int) -> int:
        parts = [tmp_path / f"{count}.part-{k}-of-2.jsonl" for k in range(2)]
        for k, part in enumerate(parts):
            writer = RecordWriter(part, "jsonl")
            writer.write(records(k * count // 2, (k + 1) * count // 2 + 10))  # 10 records in both parts
            writer.close()
        out = tmp_path / f"{count}.json"
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            inputs = (f"/photos/{index:06d}.jpg" for index in range(count + 5))
            with merge_parts(parts, inputs) as result:
                writer = RecordWriter(out, "json")
                writer.write(result.records())
                writer.close()
            held = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        assert read_records(out, "json") == list(records(0, count + 10))
        assert (result.count, result.errors) == (count + 10, len(range(0, count + 10, 9)))
        first = ", ".join(f"/photos/{i:06d}.jpg" for i in range(count // 2, count // 2 + 5))
        assert some(result.duplicates) == f"{first} and 5 more" and len(result.duplicates) == 10
        assert len(result.missing) == 0 and len(result.unexpected) == 5
        return held

    few, many = peak(N), peak(4 * N)
    # The dict of records it replaced held ~700 bytes per record; what is left is noise of ~10 (SQLite's own memory
    # is not Python's and does not show, but is bounded by its page cache).
    assert many - few < 50 * 3 * N, (few, many)
