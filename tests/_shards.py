"""Collections built in the tests from real photos: WebDataset tar shards, img2dataset Parquet and "files" folders.

Each sample's key is the photo's stem, its caption ``a photo number N`` (N = its position), as img2dataset writes them.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from _data import SHARED_DATA

COCO = SHARED_DATA / "coco" / "val2017"


def real_photos(count: int) -> list[Path]:
    photos = sorted(COCO.glob("*.jpg"))[:count]
    assert len(photos) == count, f"expected {count} real photos in {COCO}"
    return photos


def caption_of(index: int) -> str:
    return f"a photo number {index}"


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_webdataset(
    photos: list[Path], directory: Path, per_shard: int, image_bytes: dict[int, bytes] | None = None
) -> list[Path]:
    """Shards ``00000.tar, 00001.tar, ...`` of ``per_shard`` samples: KEY.jpg, KEY.txt, KEY.json (``image_bytes``
    replaces the bytes of the photos at those positions, e.g. with a corrupt JPEG)."""
    directory.mkdir(parents=True, exist_ok=True)
    shards = []
    for number, start in enumerate(range(0, len(photos), per_shard)):
        shard = directory / f"{number:05d}.tar"
        with tarfile.open(shard, "w") as archive:
            for index in range(start, min(start + per_shard, len(photos))):
                key = photos[index].stem
                data = (image_bytes or {}).get(index, photos[index].read_bytes())
                _add(archive, f"{key}.jpg", data)
                _add(archive, f"{key}.txt", caption_of(index).encode())
                _add(archive, f"{key}.json", json.dumps({"key": key, "caption": caption_of(index)}).encode())
        shards.append(shard)
    return shards


def write_parquet(photos: list[Path], path: Path, row_group_size: int = 4, with_images: bool = True) -> Path:
    """img2dataset's Parquet layout: key, caption, jpg (bytes); ``with_images=False`` leaves only a url column."""
    columns: dict[str, list] = {
        "key": [photo.stem for photo in photos],
        "caption": [caption_of(index) for index in range(len(photos))],
    }
    if with_images:
        columns["jpg"] = [photo.read_bytes() for photo in photos]
    else:
        columns["url"] = [f"https://example.org/{photo.name}" for photo in photos]
    path.parent.mkdir(parents=True, exist_ok=True)
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
