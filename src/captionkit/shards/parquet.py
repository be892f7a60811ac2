"""Parquet files with image bytes, as img2dataset writes them (``--output_format parquet``): a ``jpg`` (or
``image``/``img``/``png``/``webp``) binary column, ``key`` and ``caption`` columns.

Only the key and caption columns are read to index a file; an image's bytes come from its row group when asked for,
and the last row groups read are cached, so reading rows in order decodes each group once. A file of URLs only is
an error saying how to download the images first. pyarrow is the optional extra ``captionkit[parquet]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from captionkit.errors import InputError, first_line

IMAGE_COLUMNS = ("jpg", "image", "img", "png", "webp")
URL_COLUMNS = ("url", "URL", "image_url")
CAPTION_COLUMNS = ("caption", "text", "TEXT")
INSTALL = "reading Parquet needs pyarrow: pip install 'captionkit[parquet]'"


def download_hint(path: Path | str, input_format: str, url_column: str, caption_column: str = "caption") -> str:
    """The one-line advice for a table of URLs: download with img2dataset first, then read its shards."""
    return (
        f"column {url_column!r} holds image URLs, not images: download them first, e.g. img2dataset --url_list {path} "
        f"--input_format {input_format} --url_col {url_column} --caption_col {caption_column} "
        "--output_format webdataset --output_folder shards, then read shards/"
    )


def _pyarrow_parquet(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(path, INSTALL) from None
    return pq


@dataclass(frozen=True)
class ParquetIndex:
    """A file's keys in row order, where each row sits (row group, row in it), its captions, and the image column."""

    keys: list[str]
    rows: dict[str, tuple[int, int]]
    captions: list[str | None]
    image_column: str


def parquet_index(path: Path) -> ParquetIndex:
    info = path.stat()
    return _cached_index(path.resolve(), info.st_mtime_ns, info.st_size)


@lru_cache(maxsize=4)
def _cached_index(path: Path, mtime_ns: int, size: int) -> ParquetIndex:  # mtime and size: the cache key
    pq = _pyarrow_parquet(path)
    try:
        handle = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises its own ArrowInvalid and OSError subclasses
        raise InputError(path, f"not a readable Parquet file ({first_line(error)})") from None
    names = handle.schema_arrow.names
    image_column = next((name for name in IMAGE_COLUMNS if name in names), None)
    if image_column is None:
        url_column = next((name for name in URL_COLUMNS if name in names), None)
        if url_column is not None:
            raise InputError(path, download_hint(path, "parquet", url_column))
        raise InputError(path, f"no image bytes column (expected one of {', '.join(IMAGE_COLUMNS)})")
    caption_column = next((name for name in CAPTION_COLUMNS if name in names), None)
    wanted = [name for name in ("key", caption_column) if name is not None and name in names]
    keys: list[str] = []
    captions: list[str | None] = []
    rows: dict[str, tuple[int, int]] = {}
    for group in range(handle.num_row_groups):
        table = handle.read_row_group(group, columns=wanted).to_pydict()
        count = handle.metadata.row_group(group).num_rows
        group_keys = table.get("key") or [None] * count
        for row in range(count):
            key = str(group_keys[row]) if group_keys[row] is not None else f"{len(keys):09d}"
            rows[key] = (group, row)
            keys.append(key)
        captions.extend(table[caption_column] if caption_column in table else [None] * count)
    return ParquetIndex(keys, rows, captions, image_column)


@lru_cache(maxsize=2)
def _row_group_images(path: Path, mtime_ns: int, group: int, column: str) -> list[bytes | None]:
    pq = _pyarrow_parquet(path)
    return pq.ParquetFile(path).read_row_group(group, columns=[column]).column(column).to_pylist()


def read_parquet_member(path: Path, key: str, limit: int) -> bytes:
    """The image bytes of row ``key`` (at most ``limit + 1`` of them, so a cap can be checked)."""
    index = parquet_index(path)
    where = index.rows.get(key)
    if where is None:
        raise InputError(f"{path}/{key}", "no such key in the Parquet file")
    images = _row_group_images(path.resolve(), path.stat().st_mtime_ns, where[0], index.image_column)
    data = images[where[1]]
    if not data:
        raise InputError(f"{path}/{key}", f"no image bytes in column {index.image_column!r}")
    return bytes(data[: limit + 1])
