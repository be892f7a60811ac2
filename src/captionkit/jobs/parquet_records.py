"""Result records as Parquet: columns key, image, caption, score, captions (the n-best list) and error.

A Parquet file cannot be appended to, and one cut short has no footer and cannot be read at all. So while a run
goes, its records are appended to a JSON-lines journal beside the output (``OUT.parquet.partial.jsonl``), flushed
batch by batch like JSONL output; closing the writer streams the file's earlier rows and the journal into a new
file (row group by row group), swaps it in atomically and deletes the journal. An interrupted run leaves the
journal, which ``--resume`` and ``merge`` read as part of the output.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from captionkit.errors import InputError, first_line
from captionkit.shards import sample_key
from captionkit.shards.parquet import INSTALL

ROWS_PER_GROUP = 10_000
FIELDS = ("image", "caption", "score", "captions", "error")


JOURNAL_SUFFIX = ".partial.jsonl"


def check_utf8(record: dict[str, Any], path: Path) -> None:
    """Refuse, in one line naming ``path``, a record Parquet cannot hold: its strings must be UTF-8, and a file name
    that is not (kept in a ``str`` by ``surrogateescape``) is not. Checked before the record reaches the journal."""
    for name in ("image", "caption", "error"):
        value = record.get(name)
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise InputError(
                    path,
                    f"cannot hold the {name} {value!a}: it is not valid UTF-8, which Parquet's strings must be "
                    "(write --format jsonl, csv or json instead)",
                ) from None


def journal_path(path: Path) -> Path:
    return path.with_name(path.name + JOURNAL_SUFFIX)


def journal_owner(path: Path) -> Path | None:
    """The Parquet output whose journal ``path`` is (``OUT.parquet`` for ``OUT.parquet.partial.jsonl``), or None."""
    name = path.name.removesuffix(JOURNAL_SUFFIX)
    return path.with_name(name) if name != path.name and name.lower().endswith(".parquet") else None


def _pyarrow(path: Path) -> tuple[Any, Any]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(path, INSTALL) from None
    return pa, pq


def _schema(pa: Any) -> Any:
    nbest = pa.list_(pa.struct([("caption", pa.string()), ("score", pa.float64())]))
    fields = [("key", pa.string()), ("image", pa.string()), ("caption", pa.string()), ("score", pa.float64())]
    return pa.schema([*fields, ("captions", nbest), ("error", pa.string())])


def read_parquet_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a Parquet results file, row group by row group (null columns left out, ``key`` too)."""
    pa, pq = _pyarrow(path)
    try:
        # Opened here, not by pyarrow, which takes a path for a UTF-8 URI and fails on a name that is not UTF-8.
        with path.open("rb") as source:
            handle = pq.ParquetFile(source)
            names = set(handle.schema_arrow.names)
            if "image" not in names:
                raise InputError(path, "not a results file (no 'image' column)")
            columns = [name for name in FIELDS if name in names]
            for group in range(handle.num_row_groups):
                for row in handle.read_row_group(group, columns=columns).to_pylist():
                    yield {name: value for name, value in row.items() if value is not None}
    # ArrowInvalid (no magic bytes, a bad footer) is a ValueError, ArrowIOError an OSError: both say the file is bad.
    except (OSError, pa.ArrowException) as error:
        raise InputError(path, f"not a valid parquet file ({first_line(error)})") from None


def _journal_records(path: Path) -> Iterator[dict[str, Any]]:
    journal = journal_path(path)
    if not journal.exists():
        return
    with journal.open(encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            if line.strip():  # a torn last line was repaired (outputs.repair_torn_tail) before the writer opened
                yield json.loads(line)


def write_parquet_records(path: Path) -> None:
    """Rewrite ``path`` as its earlier rows plus the journal's records, atomically, then drop the journal."""
    pa, pq = _pyarrow(path)
    schema = _schema(pa)
    staging = path.with_name(path.name + ".tmp")
    earlier = read_parquet_records(path) if path.exists() else iter(())
    try:
        with staging.open("wb") as sink, pq.ParquetWriter(sink, schema) as writer:  # as read_parquet_records opens
            _write_rows(pa, writer, schema, itertools.chain(earlier, _journal_records(path)))
    except BaseException:  # a bad row, a full disk, an interrupt: the output stays as it was, with no staging file
        staging.unlink(missing_ok=True)
        raise
    os.replace(staging, path)
    journal_path(path).unlink(missing_ok=True)


def _write_rows(pa: Any, writer: Any, schema: Any, records: Iterator[dict[str, Any]]) -> None:
    """``records`` as rows of ``schema`` (keyed by image), :data:`ROWS_PER_GROUP` to a row group."""
    rows: list[dict[str, Any]] = []
    for record in records:
        rows.append({"key": sample_key(record["image"]), **{name: record.get(name) for name in FIELDS}})
        if len(rows) == ROWS_PER_GROUP:
            writer.write_table(pa.Table.from_pylist(rows, schema=schema))
            rows = []
    writer.write_table(pa.Table.from_pylist(rows, schema=schema))
