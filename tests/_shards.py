"""Collections built in the tests from real photos: WebDataset tar shards, img2dataset Parquet and "files" folders.

Each sample's key is the photo's stem, its caption ``a photo number N`` (N = its position), as img2dataset writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from _data import real_photos as real_photos  # shard tests import it from here
from captionkit.shards import writing


def caption_of(index: int) -> str:
    return f"a photo number {index}"


def samples(photos: list[Path], image_bytes: dict[int, bytes] | None = None) -> list[writing.Sample]:
    """The photos as samples; ``image_bytes`` replaces the bytes at those positions (e.g. with a corrupt JPEG)."""
    replaced = image_bytes or {}
    return [
        writing.Sample(photo.stem, replaced.get(index, photo.read_bytes()), caption_of(index))
        for index, photo in enumerate(photos)
    ]


def write_webdataset(
    photos: list[Path], directory: Path, per_shard: int, image_bytes: dict[int, bytes] | None = None
) -> list[Path]:
    return writing.write_webdataset(samples(photos, image_bytes), directory, per_shard)


def write_parquet(photos: list[Path], path: Path, row_group_size: int = 4, with_images: bool = True) -> Path:
    """img2dataset's Parquet layout: key, caption, jpg (bytes); ``with_images=False`` leaves only a url column."""
    if with_images:
        return writing.write_parquet(samples(photos), path, row_group_size)
    columns = {
        "key": [photo.stem for photo in photos],
        "caption": [caption_of(index) for index in range(len(photos))],
        "url": [f"https://example.org/{photo.name}" for photo in photos],
    }
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def write_files_layout(photos: list[Path], directory: Path, per_folder: int) -> Path:
    """img2dataset's "files" layout: 00000/KEY.jpg + KEY.txt + KEY.json, ``per_folder`` samples a folder."""
    for index, photo in enumerate(photos):
        folder = directory / f"{index // per_folder:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{photo.stem}.jpg").write_bytes(photo.read_bytes())
        (folder / f"{photo.stem}.txt").write_text(caption_of(index))
        (folder / f"{photo.stem}.json").write_text(json.dumps({"key": photo.stem, "caption": caption_of(index)}))
    return directory
