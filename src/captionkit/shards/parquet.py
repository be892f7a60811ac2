"""Parquet files with image bytes, as img2dataset writes them (``--output_format parquet``): a ``jpg`` (or
``image``/``img``/``png``/``webp``) binary column, ``key`` and ``caption`` columns. A Hugging Face dataset's ``Image``
column (a struct of ``bytes`` and ``path``, as ``datasets`` writes Parquet) is read by its ``bytes``.

img2dataset writes a row for every URL, failed downloads included: their image is null and their ``status`` says why
(``failed_to_download``, ``failed_to_resize``...). Such rows are no samples: the index leaves them out and counts them
by status (:attr:`ParquetIndex.dropped`). Which rows they are comes from the row group's statistics (no nulls: none)
and the status column, without reading image bytes; only where those do not tell is the image column read.

Only the key, caption and status columns are read to index a file; an image's bytes come from its row group when
asked for. The rows read last are cached, at most :data:`ROW_GROUP_CACHE_BYTES` of image bytes per process: a row
group that fits is cached whole, so reading rows in order decodes each group once; of a larger one, a window of rows
that fits is cached from the row asked for on, so reading in order decodes it about (group bytes / cap) + 1 times,
never once per image. A file of URLs only is an error saying how to download the images first. pyarrow is the
optional extra ``captionkit[parquet]``.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from captionkit.errors import InputError, first_line

IMAGE_COLUMNS = ("jpg", "image", "img", "png", "webp")
URL_COLUMNS = ("url", "URL", "image_url")
CAPTION_COLUMNS = ("caption", "text", "TEXT", "txt")  # txt: img2dataset's own, null in a failed row
STATUS_COLUMN = "status"  # img2dataset's outcome of each URL
SUCCESS = "success"
NO_IMAGE_BYTES = "row without image bytes"
ROW_GROUP_CACHE_BYTES = 256 << 20  # image bytes of row groups kept per process (see RowCache)
ROW_GROUP_CACHE_ENTRIES = 2  # windows of rows kept: the group being read and the one before
_STREAM_ROWS = 64  # rows decoded at a time while filling a window
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
    """A file's keys in row order, where each row sits (row group, row in it), its captions, and the image column;
    the rows without image bytes (positions in ``keys``) and why they are left out -> how many."""

    keys: list[str]
    rows: dict[str, tuple[int, int]]
    captions: list[Any]  # per row: a caption, a list of them (Hugging Face datasets), or None
    image_column: str
    imageless: frozenset[int]
    dropped: dict[str, int]


def parquet_index(path: Path) -> ParquetIndex:
    info = path.stat()
    return _cached_index(path.resolve(), info.st_mtime_ns, info.st_size)


def _holds_bytes(schema: Any, name: str) -> bool:
    """Whether column ``name`` holds bytes: captionkit's own results have an ``image`` column of file names, which
    read as images would give one undecodable "image" per result (a results file left among the photos)."""
    import pyarrow as pa

    if name not in schema.names:
        return False
    kind = schema.field(name).type
    if pa.types.is_struct(kind):  # a Hugging Face Image column: {bytes, path}
        at = kind.get_field_index("bytes")
        return at >= 0 and _is_binary(kind.field(at).type)
    return _is_binary(kind)


def _is_binary(kind: Any) -> bool:
    import pyarrow as pa

    return bool(pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind))


def _image_bytes(column: Any) -> Any:
    """An image column's bytes: the column itself, or a Hugging Face Image column's ``bytes`` field."""
    import pyarrow as pa

    return column.field("bytes") if pa.types.is_struct(column.type) else column


@lru_cache(maxsize=4)
def _cached_index(path: Path, mtime_ns: int, size: int) -> ParquetIndex:  # mtime and size: the cache key
    pq = _pyarrow_parquet(path)
    try:
        with path.open("rb") as source:
            return _index(pq.ParquetFile(source), path)
    except InputError:
        raise
    except Exception as error:  # pyarrow raises its own ArrowInvalid and OSError subclasses
        raise InputError(path, f"not a readable Parquet file ({first_line(error)})") from None


def _index(handle: Any, path: Path) -> ParquetIndex:
    """The index of the open Parquet file ``handle`` (opened by Python: pyarrow takes a path for a UTF-8 URI, and
    fails on a file name that is not UTF-8)."""
    names = handle.schema_arrow.names
    image_column = next((name for name in IMAGE_COLUMNS if _holds_bytes(handle.schema_arrow, name)), None)
    if image_column is None:
        url_column = next((name for name in URL_COLUMNS if name in names), None)
        if url_column is not None:
            raise InputError(path, download_hint(path, "parquet", url_column))
        raise InputError(path, f"no image bytes column (expected one of {', '.join(IMAGE_COLUMNS)})")
    caption_column = next((name for name in CAPTION_COLUMNS if name in names), None)
    status_column = STATUS_COLUMN if _holds_text(handle.schema_arrow, STATUS_COLUMN) else None
    wanted = [name for name in ("key", caption_column, status_column) if name is not None and name in names]
    keys: list[str] = []
    captions: list[Any] = []
    rows: dict[str, tuple[int, int]] = {}
    imageless: dict[int, tuple[int, int]] = {}  # position -> where, of the rows without image bytes
    dropped: Counter[str] = Counter()
    for group in range(handle.num_row_groups):
        table = handle.read_row_group(group, columns=wanted).to_pydict()
        count = handle.metadata.row_group(group).num_rows
        group_keys = table.get("key") or [None] * count
        statuses = table.get(STATUS_COLUMN)  # read only when a column of text
        empty = set(_imageless_rows(handle, group, image_column, statuses))
        for row in range(count):
            key = str(group_keys[row]) if group_keys[row] is not None else f"{len(keys):09d}"
            if row in empty:
                imageless[len(keys)] = (group, row)
                dropped[_imageless_reason(statuses[row] if statuses is not None else None)] += 1
            else:
                rows.setdefault(key, (group, row))  # a key that repeats names its first row, as readers give it once
            keys.append(key)
        captions.extend(table[caption_column] if caption_column in table else [None] * count)
    for position, where in imageless.items():  # named alone (a list of member paths), it reads as having no bytes
        rows.setdefault(keys[position], where)
    return ParquetIndex(keys, rows, captions, image_column, frozenset(imageless), dict(dropped))


def _holds_text(schema: Any, name: str) -> bool:
    import pyarrow as pa

    kind = schema.field(name).type if name in schema.names else None
    return kind is not None and bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _imageless_reason(status: str | None) -> str:
    return f"{NO_IMAGE_BYTES} (img2dataset status {status})" if status else NO_IMAGE_BYTES


def _imageless_rows(handle: Any, group: int, column: str, statuses: list[str | None] | None) -> list[int]:
    """The rows of ``group`` whose image is null, but for those whose status says ``success``: a download that
    lost its bytes is damage, for reading the row to report."""
    nulls = _null_count(handle.metadata.row_group(group), column)
    if nulls == 0:
        return []
    if statuses is not None:
        failed = [row for row, status in enumerate(statuses) if status != SUCCESS]
        if len(failed) == nulls:  # img2dataset's layout: its failed rows are the null ones, so no bytes are read
            return failed
    # No statistics, no status column, or one that does not match them: the bytes are read, a few rows at a time.
    found: list[int] = []
    first = 0  # the row group's row that the batch begins with
    for batch in handle.iter_batches(batch_size=_STREAM_ROWS, row_groups=[group], columns=[column]):
        empty = _image_bytes(batch.column(0)).is_null().to_pylist()
        found += [first + row for row, null in enumerate(empty) if null]
        first += len(empty)
    return [row for row in found if statuses is None or statuses[row] != SUCCESS]


def _null_count(group: Any, column: str) -> int | None:
    """How many of ``column``'s values are null in ``group`` (its leaf of bytes, for a Hugging Face Image column:
    a null image counts there too), from the statistics; ``None`` when they do not say."""
    for index in range(group.num_columns):
        chunk = group.column(index)
        if chunk.path_in_schema in (column, f"{column}.bytes"):
            statistics = chunk.statistics
            return statistics.null_count if statistics is not None and statistics.has_null_count else None
    return None


@dataclass(frozen=True)
class RowWindow:
    """Consecutive rows ``first, first + 1, ...`` of one row group's image column, and their bytes in all."""

    first: int
    images: list[bytes | None]
    size: int

    def get(self, row: int) -> bytes | None:
        return self.images[row - self.first]

    def holds(self, row: int) -> bool:
        return self.first <= row < self.first + len(self.images)


class RowCache:
    """The windows of rows read last, by ``(file, mtime, group, column)``: at most ``entries`` of them and
    ``capacity`` image bytes in all; a window larger than ``capacity`` (one huge image) is not kept."""

    def __init__(self, capacity: int, entries: int = ROW_GROUP_CACHE_ENTRIES) -> None:
        self.capacity, self.entries = capacity, entries
        self._windows: OrderedDict[tuple[Path, int, int, str], RowWindow] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """Image bytes held now."""
        return sum(window.size for window in self._windows.values())

    def row(self, path: Path, group: int, row: int, column: str) -> bytes | None:
        """The image bytes of ``row`` of ``group``, from a cached window or a new one read from the file."""
        key = (path.resolve(), path.stat().st_mtime_ns, group, column)
        with self._lock:
            window = self._windows.get(key)
            if window is not None and window.holds(row):
                self._windows.move_to_end(key)
                return window.get(row)
        window = _read_window(path, group, column, row, self.capacity)
        with self._lock:
            self._windows.pop(key, None)
            if window.size <= self.capacity:
                self._windows[key] = window
                while len(self._windows) > self.entries or self.size > self.capacity:
                    self._windows.popitem(last=False)
        return window.get(row)


def _column_rows(path: Path, group: int, column: str) -> Iterator[bytes | None]:
    """The values of ``column`` in row group ``group``, decoded a few rows at a time."""
    pq = _pyarrow_parquet(path)
    with path.open("rb") as source:  # as _cached_index opens it
        handle = pq.ParquetFile(source)
        for batch in handle.iter_batches(batch_size=_STREAM_ROWS, row_groups=[group], columns=[column]):
            yield from _image_bytes(batch.column(0)).to_pylist()


def _read_window(path: Path, group: int, column: str, row: int, budget: int) -> RowWindow:
    """Rows of ``group`` holding ``row``, as many as fit in ``budget`` bytes: the whole group when it fits, else a
    window from at most ``row`` on (rows before ``row`` are dropped when the budget fills up before it)."""
    kept: list[bytes | None] = []
    first = total = 0
    for index, value in enumerate(_column_rows(path, group, column)):
        size = len(value) if value else 0
        if total + size > budget and kept:
            if index > row:
                break  # full, and the row asked for is in
            kept, first, total = [], index, 0
        kept.append(value)
        total += size
    return RowWindow(first, kept, total)


_ROWS = RowCache(ROW_GROUP_CACHE_BYTES)


def read_parquet_member(path: Path, key: str, limit: int) -> bytes:
    """The image bytes of row ``key`` (at most ``limit + 1`` of them, so a cap can be checked)."""
    index = parquet_index(path)
    where = index.rows.get(key)
    if where is None:
        raise InputError(f"{path}/{key}", "no such key in the Parquet file")
    data = _ROWS.row(path, where[0], where[1], index.image_column)
    if not data:
        raise InputError(f"{path}/{key}", f"no image bytes in column {index.image_column!r}")
    return bytes(data[: limit + 1])
