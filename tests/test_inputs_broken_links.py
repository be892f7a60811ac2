"""Every entry named as an image in an input folder is accounted for: a broken or looping link, or an entry that
cannot be looked at, used to vanish from `caption` and `compare` without a word; each now gets its error record (exit
2), counted once by --shard, --resume and `merge --inputs` alike."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from _captioning import read_jsonl
from _data import real_photos
from _helpers import run_cli, save_tiny_model, unsearchable
from captionkit.jobs.inputs import collect_images, collect_inputs

FAST = ["--beams", "1", "--max-length", "4"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("m") / "tiny")


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Two real photos and a link, named as a JPEG, to a file that is not there."""
    root = tmp_path / "photos"
    root.mkdir()
    for photo in real_photos(2):
        (root / photo.name).write_bytes(photo.read_bytes())
    (root / "gone.jpg").symlink_to(tmp_path / "moved" / "gone.jpg")
    return root


def records_of(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_a_folder_gives_its_broken_and_looping_links_named_as_images_but_no_directory(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "album.jpg").mkdir(parents=True)  # a directory named as an image is walked, not taken as one
    inside = root / "album.jpg" / "c.jpg"
    inside.write_bytes(b"x")
    good = root / "a.jpg"
    good.write_bytes(b"x")
    broken = root / "b.png"
    broken.symlink_to(tmp_path / "nowhere.png")
    looping = root / "loop.jpg"
    looping.symlink_to(looping)
    (root / "notes.md").symlink_to(tmp_path / "nowhere.md")  # not named as an image: not an input
    (root / "more").symlink_to(root / "album.jpg")  # a link to a directory: not an image either
    assert collect_images([root]) == [good, inside, broken, looping]
    assert [item.key for item in collect_inputs([root])] == ["a.jpg", "album.jpg/c.jpg", "b.png", "loop.jpg"]


def test_the_images_of_a_folder_that_cannot_be_searched_are_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Such a folder's entries used to stop the walk with a traceback (PermissionError from ``Path.is_file``)."""
    locked = tmp_path / "photos" / "locked"
    locked.mkdir(parents=True)
    for name in ("a.jpg", "b.png", "notes.md"):
        (locked / name).write_bytes(b"x")
    unsearchable(monkeypatch, locked)
    assert collect_images([tmp_path / "photos"]) == [locked / "a.jpg", locked / "b.png"]


def test_caption_records_a_broken_link_and_says_where_it_points(
    model_dir: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, err = run_cli(["caption", photos, "--model", model_dir, *FAST], capsys)
    assert code == 2, err
    records = records_of(stdout)
    assert [record["image"] for record in records] == [str(path) for path in sorted(photos.iterdir())]
    assert records[-1] == {
        "image": str(photos / "gone.jpg"),
        "error": f"no such file (broken link to {tmp_path / 'moved' / 'gone.jpg'})",
    }
    assert all("caption" in record for record in records[:-1])


def test_caption_records_the_images_of_a_folder_that_cannot_be_searched(
    model_dir: Path, photos: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (photos / "gone.jpg").unlink()
    locked = photos / "locked"
    locked.mkdir()
    (locked / "c.jpg").write_bytes(real_photos(1)[0].read_bytes())
    unsearchable(monkeypatch, locked)
    code, stdout, err = run_cli(["caption", photos, "--model", model_dir, *FAST], capsys)
    assert code == 2, err
    records = records_of(stdout)
    assert len(records) == 3 and records[-1] == {"image": str(locked / "c.jpg"), "error": "permission denied"}


def test_a_folder_that_cannot_be_searched_given_itself_records_its_images(
    model_dir: Path, photos: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given as the input (not met in a walk), such a folder stopped in a traceback: the check of whether it is a
    folder of shards looked at its entries."""
    (photos / "gone.jpg").unlink()
    unsearchable(monkeypatch, photos)
    code, stdout, err = run_cli(["caption", photos, "--model", model_dir, *FAST], capsys)
    assert code == 2, err
    assert "Traceback" not in err
    assert {record["error"] for record in records_of(stdout)} == {"permission denied"}
    assert len(records_of(stdout)) == 2


def test_shards_resume_and_merge_count_a_broken_link_once(
    model_dir: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.jsonl"
    base = ["caption", photos, "--model", model_dir, *FAST, "--output", out]
    for shard in ("0/2", "1/2"):
        code, _, err = run_cli([*base, "--shard", shard], capsys)
        assert code in (0, 2), err
    parts = sorted(tmp_path.glob("out.part-*-of-2.jsonl"))
    assert len(parts) == 2
    shards = [record["image"] for part in parts for record in read_jsonl(part)]
    assert sorted(shards) == [str(path) for path in sorted(photos.iterdir())]
    merged = tmp_path / "merged.jsonl"
    code, _, err = run_cli(["merge", *parts, "--output", merged, "--inputs", photos], capsys)
    assert code == 2, err
    assert "merged 2 parts: 3 records (1 error)" in err, err
    for shard in ("0/2", "1/2"):  # each share is done: nothing more to read, and no record twice
        code, _, err = run_cli([*base, "--shard", shard, "--resume"], capsys)
        assert code in (0, 2), err
    assert sorted(record["image"] for part in parts for record in read_jsonl(part)) == sorted(shards)


def test_compare_records_a_broken_link(model_dir: Path, photos: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = save_tiny_model(photos.parent / "other", seed=1)
    args = ["compare", photos, "--model", f"a={model_dir}", "--model", f"b={other}", *FAST]
    code, stdout, err = run_cli(args, capsys)
    assert code == 2, err
    records = records_of(stdout)
    assert [record["image"] for record in records] == [str(path) for path in sorted(photos.iterdir())]
    target = photos.parent / "moved" / "gone.jpg"
    assert records[-1] == {"image": str(photos / "gone.jpg"), "error": f"no such file (broken link to {target})"}
