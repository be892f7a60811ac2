"""Helpers for the batch-captioning tests: a folder of real photos with bad files, CLI runs in subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _data import SHARED_DATA

PHOTO_DIRS = (SHARED_DATA / "coco" / "val2017", SHARED_DATA / "flickr8k" / "Images")
BAD_FILES = ("empty.jpg", "truncated.jpg", "sub/notes.png", "deep/er/vector.webp")
# One torch thread per process: the machine is shared, and tiny models gain nothing from more.
QUIET_ENV = {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}


def make_photo_folder(root: Path, count: int) -> Path:
    """``count`` real JPEGs (COCO and Flickr8k, spread over nested folders) plus the four :data:`BAD_FILES`."""
    photos = [path for folder in PHOTO_DIRS for path in sorted(folder.glob("*.jpg"))[: (count + 1) // 2]][:count]
    assert len(photos) == count, f"expected {count} real photos in {PHOTO_DIRS}"
    for index, photo in enumerate(photos):
        target = root / ("", "sub", "deep/er")[index % 3] / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, target)
    (root / "empty.jpg").write_bytes(b"")
    (root / "truncated.jpg").write_bytes(photos[0].read_bytes()[:3000])
    (root / "sub" / "notes.png").write_text("not an image")
    (root / "deep" / "er" / "vector.webp").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    return root


def spawn_cli(args: list[str | Path], *, launcher: list[str] | None = None, **popen: object) -> subprocess.Popen:
    """Start ``captionkit ARGS`` (or ``LAUNCHER -m captionkit.cli ARGS``) as a subprocess."""
    command = [*(launcher or [sys.executable]), "-m", "captionkit.cli", *map(str, args)]
    env = {**os.environ, **QUIET_ENV}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_same_records(got: list[dict], expected: list[dict]) -> None:
    """Each image once in both, with the same caption or the same error; scores equal to float noise."""
    images = [record["image"] for record in got]
    assert len(images) == len(set(images)), "an image has more than one record"
    assert sorted(images) == sorted(record["image"] for record in expected)
    by_image = {record["image"]: record for record in got}
    for want in expected:
        have = by_image[want["image"]]
        assert set(have) == set(want), want["image"]
        assert have.get("caption") == want.get("caption"), want["image"]
        assert have.get("error") == want.get("error"), want["image"]
        if "score" in want:
            assert have["score"] == pytest.approx(want["score"], abs=1e-4), want["image"]
