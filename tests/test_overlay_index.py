"""DIR/index.jsonl of `captionkit caption --attention-maps`: which folder is whose, kept across runs."""

from __future__ import annotations

import itertools
import multiprocessing
import shutil
from pathlib import Path

import pytest

from _data import real_photos
from _helpers import run_cli, save_tiny_model
from captionkit.errors import InputError
from captionkit.jobs.overlay_index import append_entries, drop_unfinished_line, read_index
from captionkit.jobs.overlays import overlay_folders

PATHS = [Path("a/x.jpg"), Path("b/x-2.png"), Path("c/X.jpg"), Path("d/x.png"), Path("e/y.jpg"), Path("f/x-2.jpg")]


def test_an_index_of_some_images_gives_the_others_the_names_they_get_without_one():
    """Shards and resumed runs read an index that another process is still filling: any part of the full assignment
    must lead to the same full assignment, or two processes would draw two images into one folder."""
    full = overlay_folders(PATHS)
    assert full == {
        Path("a/x.jpg"): "x",
        Path("b/x-2.png"): "x-2",
        Path("c/X.jpg"): "X-3",
        Path("d/x.png"): "x-4",
        Path("e/y.jpg"): "y",
        Path("f/x-2.jpg"): "x-2-2",
    }
    for size in range(len(PATHS) + 1):
        for part in itertools.combinations(PATHS, size):
            assert overlay_folders(PATHS, {str(path): full[path] for path in part}) == full


def test_indexed_folders_stay_their_images_and_are_never_given_to_another():
    indexed = {"old/x.jpg": "x", "c/x.jpg": "x-2"}  # an earlier run, over other inputs
    assert overlay_folders([Path("a/x.jpg"), Path("c/x.jpg"), Path("old/x.jpg")], indexed) == {
        Path("a/x.jpg"): "x-3",
        Path("c/x.jpg"): "x-2",
        Path("old/x.jpg"): "x",
    }
    # The index file is no folder to give an image named after it, in any case.
    assert overlay_folders([Path("p/index.jsonl.png"), Path("q/INDEX.JSONL.jpg")]) == {
        Path("p/index.jsonl.png"): "index.jsonl-2",
        Path("q/INDEX.JSONL.jpg"): "INDEX.JSONL-3",
    }


def test_an_unfinished_last_line_is_left_out_then_cut_before_the_next_append(tmp_path):
    append_entries(tmp_path, {"a/x.jpg": "x", "caf\udce9/x.jpg": "x-2"})  # a name that is not UTF-8 too
    with (tmp_path / "index.jsonl").open("ab") as handle:
        handle.write(b'{"image": "b/x.jp')  # a run killed mid-write
    assert read_index(tmp_path) == {"a/x.jpg": "x", "caf\udce9/x.jpg": "x-2"}
    drop_unfinished_line(tmp_path)
    append_entries(tmp_path, {"b/x.jpg": "x-3"})
    assert read_index(tmp_path) == {"a/x.jpg": "x", "caf\udce9/x.jpg": "x-2", "b/x.jpg": "x-3"}
    assert (tmp_path / "index.jsonl").read_bytes().count(b"\n") == 3
    assert read_index(tmp_path / "none") == {}


def _append_many(directory: Path, worker: int) -> None:
    drop_unfinished_line(directory)
    for number in range(100):
        append_entries(directory, {f"w{worker}/{number}.jpg": f"f{worker}-{number}", f"w{worker}/{number}b.jpg": "b"})


def test_processes_that_share_dir_append_whole_lines_side_by_side(tmp_path):
    """Shards and torchrun ranks append to one index at once: every line stays whole and none is lost."""
    (tmp_path / "index.jsonl").write_bytes(b'{"image": "a.jpg", "folder": "a"}\n{"image": "torn')
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(tmp_path, worker)) for worker in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
    assert [process.exitcode for process in workers] == [0] * 4
    index = read_index(tmp_path)
    assert len(index) == 1 + 4 * 200 and index["a.jpg"] == "a" and index["w3/99.jpg"] == "f3-99"
    assert (tmp_path / "index.jsonl").read_bytes().count(b"\n") == len(index)


@pytest.mark.parametrize(
    "line",
    ['{"image": "a.jpg", "folder": "../elsewhere"}', '{"image": "a.jpg"}', '["a.jpg", "a"]', "{not json"],
)
def test_an_index_line_that_is_no_entry_is_one_error_naming_the_file_and_line(tmp_path, line):
    (tmp_path / "index.jsonl").write_text('{"image": "b.jpg", "folder": "b"}\n' + line + "\n")
    with pytest.raises(InputError) as refused:
        read_index(tmp_path)
    assert str(refused.value).startswith(str(tmp_path / "index.jsonl"))
    assert "line 2" in str(refused.value) and "\n" not in str(refused.value)


def test_cli_refuses_a_broken_index_before_the_output_is_touched(tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "model")
    maps, out = tmp_path / "maps", tmp_path / "o.jsonl"
    maps.mkdir()
    (maps / "index.jsonl").write_text('{"image": "a.jpg", "folder": ".."}\n')
    photo = tmp_path / "x.jpg"
    shutil.copy(real_photos(1)[0], photo)
    args = ["caption", photo, "--model", model_dir, "--max-length", "3", "--attention-maps", maps, "--output", out]
    code, _, err = run_cli(args, capsys)
    assert code == 1
    assert err.startswith(f"captionkit: error: {maps / 'index.jsonl'}: line 1 is not an entry") and err.count("\n") == 1
    assert not out.exists() and sorted(p.name for p in maps.iterdir()) == ["index.jsonl"]
