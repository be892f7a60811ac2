"""The index of what a resumed run's output holds: images looked up on disk, memory that does not grow with the
number of records (measured with tracemalloc at N and 4N records, not timed)."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

from captionkit.jobs.done_index import DoneIndex
from captionkit.jobs.outputs import RecordWriter, iter_records

N = 2000


def records(count: int) -> Iterator[dict]:
    for index in range(count):
        image = f"/photos/{index:06d}.jpg"
        yield {"image": image, "error": "empty file"} if index % 5 == 0 else {"image": image, "caption": "a dog"}


def test_the_index_says_which_images_are_done_and_counts_their_error_records():
    latin1 = b"caf\xe9.jpg".decode("utf-8", "surrogateescape")
    found = [*records(6), {"image": "/photos/000000.jpg", "error": "again"}, {"image": latin1, "caption": "x"}]
    found.append({"caption": "a record without an image"})
    index = DoneIndex(found)
    assert len(index) == 7
    assert "/photos/000005.jpg" in index and latin1 in index and "/photos/000006.jpg" not in index
    assert [index.errors(f"/photos/{i:06d}.jpg") for i in (0, 1, 5, 6)] == [2, 0, 1, 0]
    index.close()


def test_building_and_asking_the_index_holds_no_record_whatever_the_count(tmp_path):
    def peak(count: int) -> int:
        path = tmp_path / f"{count}.jsonl"
        writer = RecordWriter(path, "jsonl")
        writer.write(records(count))
        writer.close()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            index = DoneIndex(iter_records(path, "jsonl")[0])
            assert sum(f"/photos/{i:06d}.jpg" in index for i in range(0, count, 7)) == len(range(0, count, 7))
            assert len(index) == count
            held = tracemalloc.get_traced_memory()[1] - base
            index.close()
            return held
        finally:
            tracemalloc.stop()

    few, many = peak(N), peak(4 * N)
    # A set of the names held ~150 bytes per record: 900 kB more at 4N; the index holds a batch of inserts.
    assert many - few < 10 * 3 * N, (few, many)  # under 10 bytes per extra record: allocator noise
    assert not list(Path(tmp_path).glob("*.sqlite"))
