"""Whole-file writes are atomic and text files split only at real line breaks (issue 20, defects 9 and 10)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from captionkit.files import another_process_alive, text_lines, write_atomic, written_path
from captionkit.jobs.earlier_output import remove_stale_staging
from captionkit.jobs.inputs import collect_images
from captionkit.jobs.merge import merge_parts
from captionkit.jobs.outputs import RecordWriter, read_records, repair_torn_tail

# Characters str.splitlines() breaks at although they are no line break in a file.
NOT_BREAKS = "\f\x1c\x1d\x1e\x85\u2028\u2029\v"


def test_text_lines_breaks_only_at_newlines():
    assert text_lines(f"a{NOT_BREAKS}b\r\nc\rd\n\ne\n") == [f"a{NOT_BREAKS}b", "c", "d", "", "e"]
    assert text_lines("") == []
    assert text_lines("one") == ["one"]


def caption_records(count: int) -> list[dict]:
    return [
        {"image": f"img{i:02d}.jpg", "caption": f"a dog{NOT_BREAKS[i % len(NOT_BREAKS)]}runs {i}", "score": -float(i)}
        for i in range(count)
    ]


def test_csv_read_back_keeps_captions_with_unicode_line_separators(tmp_path):
    path = tmp_path / "captions.csv"
    writer = RecordWriter(path, "csv")
    writer.write(caption_records(40))
    writer.close()
    assert read_records(path, "csv") == caption_records(40)


def test_merge_of_csv_parts_keeps_every_row(tmp_path):
    records = caption_records(40)
    for index, part in enumerate((records[:25], records[25:])):
        writer = RecordWriter(tmp_path / f"c.part-{index}-of-2.csv", "csv")
        writer.write(part)
        writer.close()
    with merge_parts(sorted(tmp_path.glob("*.csv"))) as result:
        assert list(result.records()) == records and result.complete


def test_image_lists_split_only_at_newlines(tmp_path):
    names = ["a\u2028b.jpg", "c\x1cd.jpg"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "list.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    assert collect_images([tmp_path / "list.txt"]) == [tmp_path / name for name in names]


def test_json_results_are_replaced_whole_never_rewritten_in_place(tmp_path):
    path = tmp_path / "results.json"
    first = RecordWriter(path, "json")
    first.write(caption_records(3))
    first.close()
    old = path.read_text(encoding="utf-8")
    with path.open(encoding="utf-8") as reader:  # what a crash mid-write would leave: the old file, whole
        second = RecordWriter(path, "json", read_records(path, "json"))
        second.write(caption_records(5)[3:])
        second.close()
        assert reader.read() == old
    assert read_records(path, "json") == caption_records(5)
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_torn_tail_repair_replaces_the_file_whole(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_text('{"image": "a.jpg", "caption": "a dog"}\n{"image": "b.jp', encoding="utf-8")
    old = path.read_text(encoding="utf-8")
    with path.open(encoding="utf-8") as reader:
        assert repair_torn_tail(path, "jsonl") == '{"image": "b.jp'
        assert reader.read() == old
    assert read_records(path, "jsonl") == [{"image": "a.jpg", "caption": "a dog"}]


def test_write_atomic_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    path = write_atomic(tmp_path / "metrics.json", "{}\n")
    assert path.read_text() == "{}\n"

    def no_rename(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, '{"CIDEr": 1.0}\n')
    assert path.read_text() == "{}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind


def test_write_atomic_honours_the_umask(tmp_path):
    before = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "a.txt", b"x")
    finally:
        os.umask(before)
    assert path.stat().st_mode & 0o777 == 0o644
    assert isinstance(path, Path)


def test_written_path_names_the_target_of_a_staging_file(tmp_path):
    assert written_path(tmp_path / ".r.html.4242.tmp") == tmp_path / "r.html"
    assert written_path(tmp_path / ".archive.tar.gz.7.tmp") == tmp_path / "archive.tar.gz"
    # Only atomic_writer's own pattern: other hidden or .tmp files are named as they are.
    for name in (".hidden", "notes.tmp", ".x.tmp", ".x.pid.tmp"):
        assert written_path(tmp_path / name) == tmp_path / name


def test_an_output_that_is_an_input_is_named_once_or_by_both_names(tmp_path):
    from captionkit.files import also_an_input

    out = tmp_path / "a.jsonl"
    assert also_an_input(out, out) == f"{out} is also an input; write the results to a new file"
    other = tmp_path / "sub" / ".." / "a.jsonl"
    assert also_an_input(out, other) == f"{out} is also an input ({other}); write the results to a new file"


def test_a_staging_owner_is_alive_while_its_process_runs():
    """The one check of whether a staging file's or directory's writer still runs (caption's files, exports'
    directories): this process's own number is a killed run's, given again."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert another_process_alive(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not another_process_alive(child.pid)
    assert not another_process_alive(os.getpid())


def test_a_whole_file_write_through_a_link_keeps_the_link(tmp_path):
    """An --output that is a link was replaced by a plain file (the link's target kept the old results), while a
    JSONL run appending to it wrote through the link."""
    target = tmp_path / "store" / "results.json"
    target.parent.mkdir()
    link = tmp_path / "results.json"
    link.symlink_to(target)
    writer = RecordWriter(link, "json")
    writer.write(caption_records(2))
    writer.close()
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert read_records(target, "json") == caption_records(2)
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.json"]


def test_a_killed_write_through_a_link_leaves_no_staging_file_behind(tmp_path):
    """A write through a link stages beside the file it leads to, where the look for what a killed run left did not
    search: every killed run left its (possibly huge) staging file for good."""
    target = tmp_path / "store" / "c.json"
    target.parent.mkdir()
    link = tmp_path / "c.json"
    link.symlink_to(target)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    stale = target.parent / f".c.json.{ended.pid}.tmp"
    stale.write_text("[")
    lines = remove_stale_staging(link, "jsonl")
    assert lines == [f"{link}: removed {stale.name}, left by a run that was killed while writing c.json"]
    assert not stale.exists()
